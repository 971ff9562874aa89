"""Read-only access to the input BIDS dataset: subjects, paired EEG/BOLD runs, filters.

:class:`BidsInput` indexes the dataset with one directory walk (faster than a pybids
layout on EEG datasets with many sidecars, and without its database), pairs EEG and
BOLD recordings by (subject, session, task, run), attaches sidecars, events, channels,
electrodes and the T1w of the session (or subject), and applies a ``--bids-filter-file``.
Every name goes through one entity parser (:func:`parse_entities`, :func:`label_problem`):
labels are ASCII letters and digits as BIDS defines them; free text elsewhere (sidecar
values, the dataset's own path) may be any unicode. Entries that cannot be read as files
(directories with a file's name, broken symbolic links such as DataLad files whose
content was never fetched) are attached to their run so the pre-flight names them.
The up-front integrity checks of every input file live in :mod:`bids_app.io.preflight`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_app.errors import InputError
from bids_app.io.entities import (
    DATA_EXTENSIONS,
    EEG_EXTENSIONS,
    label_problem,
    parse_entities,
    unreadable_reason,
)

logger = logging.getLogger(__name__)

_FILTER_KEYS = {"subject": "sub", "session": "ses", "task": "task", "run": "run",
                "acquisition": "acq", "recording": "recording", "echo": "echo"}


def _norm(label: str) -> str:
    """Compare index labels numerically (run-1 == run-01), others as text."""
    return str(int(label)) if label.isdigit() else label


@dataclass
class RunFiles:
    """Files of one recording: paired EEG and BOLD of (sub, ses, task, run).

    Attributes
    ----------
    entities : dict
        ``sub``, ``ses``, ``task``, ``run`` (absent keys are omitted).
    eeg, bold : Path | None
        EEG data file (``.set``/``.vhdr``/...) and BOLD NIfTI.
    bold_json, eeg_sidecar : Path | None
        JSON sidecars.
    events : Path | None
        ``_events.tsv`` of the BOLD run, else of the EEG recording.
    t1w : Path | None
        T1w of the session, else any T1w of the subject.
    channels, electrodes : Path | None
        EEG ``_channels.tsv`` and the session's ``_electrodes.tsv``.
    eeg_events, bold_events, coordsystem : Path | None
        Events of each modality and the EEG ``_coordsystem.json``.
    extra : dict
        ``bold_sidecars``/``eeg_sidecars``: the inherited sidecar chain used by
        :meth:`metadata`.
    """

    entities: dict[str, str]
    eeg: Path | None = None
    bold: Path | None = None
    bold_json: Path | None = None
    events: Path | None = None
    t1w: Path | None = None
    eeg_sidecar: Path | None = None
    channels: Path | None = None
    electrodes: Path | None = None
    eeg_events: Path | None = None
    bold_events: Path | None = None
    coordsystem: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """Short identifier, e.g. ``sub-01_ses-01_task-tp_run-01``."""
        return "_".join(f"{k}-{self.entities[k]}" for k in ("sub", "ses", "task", "run")
                        if k in self.entities)

    def metadata(self, modality: str = "bold") -> dict[str, Any]:
        """Sidecar metadata of the ``bold`` or ``eeg`` file with BIDS inheritance applied.

        Top-level files such as ``task-rest_bold.json`` are read first and the run's own
        sidecar last, so the most specific value wins. A RunFiles built by hand (without
        the chain found by :class:`BidsInput`) reads its own sidecar only.

        Raises
        ------
        InputError
            When one of the sidecars is not a JSON object.
        """
        merged: dict[str, Any] = {}
        own = self.bold_json if modality == "bold" else self.eeg_sidecar
        chain = self.extra.get(f"{modality}_sidecars") or ([own] if own else [])
        for path in chain:
            try:
                data = json.loads(Path(path).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InputError(f"Sidecar {path} is not valid JSON ({err}).") from None
            except OSError as err:
                raise InputError(f"Sidecar {path} cannot be read ({err.strerror}).") from None
            if not isinstance(data, dict):
                raise InputError(f"Sidecar {path} must hold a JSON object.")
            merged.update(data)
        return merged

    @property
    def simultaneous(self) -> bool:
        """Whether both EEG and BOLD were recorded."""
        return self.eeg is not None and self.bold is not None


def _strip(label: str, prefix: str) -> str:
    return label[len(prefix) + 1 :] if label.startswith(prefix + "-") else label


def load_filter_file(path: Path | str) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file`` (fMRIPrep format: ``{"bold": {"session": "01"}}``).

    Raises
    ------
    InputError
        When the file is missing, not JSON, or not an object of objects.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"BIDS filter file {path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"BIDS filter file {path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(
            f"BIDS filter file {path} must be a JSON object of queries, "
            'e.g. {"bold": {"session": "01"}}.'
        )
    for query, filt in data.items():
        for key in filt:
            if key not in _FILTER_KEYS and key not in ("datatype", "suffix", "extension"):
                raise InputError(
                    f"BIDS filter file {path} uses unknown entity '{key}' in query "
                    f"'{query}'; known: {', '.join(sorted(_FILTER_KEYS))}."
                )
    return data


def _matches(entities: Mapping[str, str], filt: Mapping[str, Any] | None) -> bool:
    if not filt:
        return True
    for key, wanted in filt.items():
        short = _FILTER_KEYS.get(key)
        if short is None:
            continue
        have = entities.get(short)
        if wanted is None:
            if have is not None:
                return False
            continue
        options = wanted if isinstance(wanted, list) else [wanted]
        if have is None or _norm(have) not in {_norm(_strip(str(o), short)) for o in options}:
            return False
    return True


class BidsInput:
    """Read-only index of a BIDS dataset holding EEG and/or BOLD recordings.

    Parameters
    ----------
    bids_dir : Path | str
        Root of the raw dataset (holds ``dataset_description.json``).

    Raises
    ------
    InputError
        When the folder does not exist or is not a BIDS dataset.
    """

    def __init__(self, bids_dir: Path | str):
        self.root = Path(bids_dir).absolute()
        if not self.root.is_dir():
            raise InputError(f"BIDS directory {self.root} does not exist.")
        description = self.root / "dataset_description.json"
        if description.exists() or description.is_symlink():
            if (reason := unreadable_reason(description)) is not None:
                raise InputError(f"{description} {reason}.")
        if not description.is_file():
            raise InputError(
                f"{self.root} is not a BIDS dataset (no dataset_description.json); "
                "point bids_dir at the dataset root or run 'eegfmri convert natview' first."
            )
        try:
            about = json.loads(description.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{description} is not valid JSON ({err}).") from None
        except OSError as err:
            raise InputError(f"{description} cannot be read ({err.strerror}).") from None
        if isinstance(about, dict) and str(about.get("DatasetType", "")).lower() == \
                "derivative":
            raise InputError(
                f"{self.root} is a BIDS derivatives dataset (DatasetType 'derivative' in "
                "dataset_description.json), not raw data; give the raw EEG-fMRI dataset as "
                "bids_dir and fMRIPrep outputs with --fmriprep-dir."
            )
        self._files: dict[str, list[tuple[dict[str, str], str, str, Path]]] = {}
        self._unreadable: dict[str, list[tuple[dict[str, str], Path, str]]] = {}
        self._bad_names: dict[str, list[tuple[Path, str]]] = {}
        self._bad_subjects: list[tuple[Path, str]] = []
        for sub_dir in sorted(self.root.glob("sub-*")):
            if not sub_dir.is_dir():
                continue
            problem = label_problem(sub_dir.name)
            if problem:
                self._bad_subjects.append((sub_dir, problem))
                continue
            subject = _strip(sub_dir.name, "sub")
            rows, unreadable, bad = [], [], []
            for path in sorted(sub_dir.rglob("sub-*")):
                entities, suffix, ext = parse_entities(path.name)
                if (problem := label_problem(path.name)) is not None:
                    bad.append((path, problem))
                if path.is_file() or (path.suffix == ".ds" and path.is_dir()):
                    rows.append((entities, suffix, ext, path))
                elif ext in DATA_EXTENSIONS and (reason := unreadable_reason(path)):
                    unreadable.append((entities, path, reason))
            self._files[subject] = rows
            self._unreadable[subject] = unreadable
            self._bad_names[subject] = bad

    def subjects(self) -> list[str]:
        """Subject labels (without ``sub-``), sorted."""
        return sorted(self._files)

    def check_subjects(self, labels: Iterable[str]) -> list[str]:
        """Return ``labels`` (``sub-`` stripped) or raise InputError naming unknown ones."""
        labels = [_strip(lab, "sub") for lab in labels]
        unknown = [lab for lab in labels if lab not in self._files]
        if unknown:
            raise InputError(
                f"Participant label(s) {', '.join(unknown)} not found in {self.root}; "
                f"existing labels: {', '.join(self.subjects()) or 'none'}."
            )
        return labels

    def select_subjects(self, labels: Sequence[str] = ()) -> list[str]:
        """Subjects of ``--participant-label`` (checked), else every subject.

        Raises
        ------
        InputError
            When a label is unknown, or when no label is given and a ``sub-*`` folder
            has a label BIDS does not allow.
        """
        if labels:
            return self.check_subjects(labels)
        if self._bad_subjects:
            folder, problem = self._bad_subjects[0]
            raise InputError(f"Subject folder {folder} has an invalid name: {problem}; rename the "
                             "folder and its files, or choose subjects with "
                             "--participant-label.")
        return self.subjects()

    def check_labels(self, subjects: Sequence[str], sessions: Sequence[str] = (),
                     tasks: Sequence[str] = ()) -> None:
        """Raise InputError when a ``--session-label``/``--task-label`` matches nothing.

        Parameters
        ----------
        subjects : sequence of str
            Selected subjects (without ``sub-``).
        sessions, tasks : sequence of str
            Requested labels (with or without prefix).
        """
        for entity, option, wanted in (("ses", "--session-label", sessions),
                                       ("task", "--task-label", tasks)):
            existing = {ents[entity] for s in subjects for ents, *_ in self._files[s]
                        if entity in ents}
            unknown = [w for w in (_strip(w, entity) for w in wanted) if w not in existing]
            if unknown:
                where = ", ".join(f"sub-{s}" for s in subjects)
                raise InputError(
                    f"Option {option} {' '.join(unknown)} matches no {entity}-* label of "
                    f"{where} in {self.root}; existing: {', '.join(sorted(existing)) or 'none'}."
                )

    def _select(self, subject: str, suffix: str, exts: Sequence[str], datatype: str):
        return [
            (ents, ext, path)
            for ents, suf, ext, path in self._files.get(subject, [])
            if suf == suffix and ext in exts and path.parent.name == datatype
        ]

    def t1w(self, subject: str, session: str | None = None) -> Path | None:
        """T1w of ``session`` if any, else the first T1w of the subject."""
        found = self._select(subject, "T1w", (".nii.gz", ".nii"), "anat")
        same = [p for ents, _, p in found if ents.get("ses") == session]
        return (same or [p for _, _, p in found] or [None])[0]

    def runs(
        self,
        subject: str,
        sessions: Sequence[str] = (),
        tasks: Sequence[str] = (),
        filters: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[RunFiles]:
        """Paired EEG/BOLD recordings of ``subject``.

        Parameters
        ----------
        subject : str
            Label with or without ``sub-``.
        sessions, tasks : sequence of str
            Keep only these sessions / tasks (empty: all).
        filters : mapping | None
            Parsed ``--bids-filter-file``: queries ``eeg``, ``bold``, ``t1w``.

        Returns
        -------
        list of RunFiles
            Sorted by session, task, run; EEG-only recordings have ``bold=None``.
        """
        subject = self.check_subjects([subject])[0]
        if self._bad_names[subject]:
            path, problem = self._bad_names[subject][0]
            raise InputError(f"File {path} has an invalid name: {problem}; rename it.")
        filters = filters or {}
        sessions = {_strip(s, "ses") for s in sessions}
        tasks = {_strip(t, "task") for t in tasks}

        def keep(ents: Mapping[str, str], query: str) -> bool:
            if sessions and ents.get("ses") not in sessions:
                return False
            if tasks and ents.get("task") not in tasks:
                return False
            return _matches(ents, filters.get(query))

        def key(ents: Mapping[str, str]) -> tuple[str, str, str, str]:
            return (ents.get("ses", ""), ents.get("task", ""), _norm(ents.get("run", "")),
                    ents.get("acq", ""))

        eeg: dict[tuple, tuple[dict, Path]] = {}
        for ents, ext, path in self._select(subject, "eeg", EEG_EXTENSIONS, "eeg"):
            if "desc" in ents or not keep(ents, "eeg"):
                continue
            k = key(ents)
            if k not in eeg or EEG_EXTENSIONS.index(ext) < EEG_EXTENSIONS.index(eeg[k][1].suffix):
                eeg[k] = (ents, path)
        bold: dict[tuple, tuple[dict, Path]] = {}
        for ents, _ext, path in self._select(subject, "bold", (".nii.gz", ".nii"), "func"):
            if "desc" in ents or not keep(ents, "bold"):
                continue
            bold[key(ents)] = (ents, path)

        broken = {key(ents): ents for ents, path, _ in self._unreadable[subject]
                  if "task" in ents and path.parent.name in ("eeg", "func")
                  and keep(ents, "bold" if path.parent.name == "func" else "eeg")}
        runs = []
        for k in sorted(set(eeg) | set(bold) | set(broken)):
            ents = dict((eeg.get(k) or bold.get(k) or (broken[k], None))[0])
            entities = {e: ents[e] for e in ("sub", "ses", "task", "run") if e in ents}
            run = RunFiles(entities=entities)
            if k in eeg:
                run.eeg = eeg[k][1]
                run.eeg_sidecar = self._sibling(run.eeg, "eeg", ".json")
                run.extra["eeg_sidecars"] = self.sidecar_chain(run.eeg, "eeg")
                run.channels = self._sibling(run.eeg, "channels", ".tsv")
                run.eeg_events = self._sibling(run.eeg, "events", ".tsv")
                run.electrodes = self._session_file(subject, ents.get("ses"), "electrodes",
                                                    ".tsv")
                run.coordsystem = self._session_file(subject, ents.get("ses"), "coordsystem",
                                                     ".json")
            if k in bold:
                run.bold = bold[k][1]
                run.extra["bold_sidecars"] = self.sidecar_chain(run.bold, "bold")
                run.bold_json = (self._sibling(run.bold, "bold", ".json")
                                 or (run.extra["bold_sidecars"] or [None])[-1])
                run.bold_events = self._sibling(run.bold, "events", ".tsv")
            run.events = run.bold_events or run.eeg_events
            unreadable = {path: reason for path in run.extra.get("eeg_sidecars", [])
                          + run.extra.get("bold_sidecars", [])
                          if (reason := unreadable_reason(path))}
            for ents_u, path, reason in self._unreadable[subject]:
                query = "bold" if path.parent.name == "func" else "eeg"
                same = (key(ents_u) == k if "task" in ents_u
                        else ents_u.get("ses") == ents.get("ses"))
                if same and keep({**ents, **ents_u}, query):
                    unreadable[path] = reason
            run.extra["unreadable"] = sorted(unreadable.items())
            t1w = self.t1w(subject, ents.get("ses"))
            t1w_ents = parse_entities(t1w.name)[0] if t1w else {}
            run.t1w = t1w if t1w and _matches(t1w_ents, filters.get("t1w")) else None
            runs.append(run)
        return runs

    def sidecar_chain(self, data_file: Path, suffix: str) -> list[Path]:
        """JSON sidecars that apply to ``data_file`` (inheritance order: general first)."""
        entities = parse_entities(data_file.name)[0]
        chain: list[tuple[int, int, Path]] = []
        folders = [self.root]
        for part in data_file.parent.relative_to(self.root).parts:
            folders.append(folders[-1] / part)
        for depth, folder in enumerate(folders):
            for candidate in folder.glob(f"*_{suffix}.json"):
                ents, suf, _ = parse_entities(candidate.name)
                if suf == suffix and ents.items() <= entities.items():
                    chain.append((depth, len(ents), candidate))
        return [path for _, _, path in sorted(chain)]

    @staticmethod
    def _sibling(path: Path, suffix: str, ext: str) -> Path | None:
        stem = path.name.split(".", 1)[0].rsplit("_", 1)[0]
        candidate = path.with_name(f"{stem}_{suffix}{ext}")
        return candidate if candidate.is_file() else None

    def _session_file(self, subject: str, session: str | None, suffix: str,
                      ext: str) -> Path | None:
        found = [p for ents, _, p in self._select(subject, suffix, (ext,), "eeg")
                 if ents.get("ses") == session]
        return found[0] if found else None
