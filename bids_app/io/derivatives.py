"""The one writer of every eegfmri output: BIDS names, sidecars, atomic files.

:class:`DerivativesWriter` derives every output name from BIDS entities (no module
assembles a derivative filename by hand), attaches a JSON sidecar to every data file
(``Sources`` as BIDS URIs, ``SkullStripped``, ``Resolution`` when ``res-`` is used, a
column dictionary for every TSV), writes ``dataset_description.json`` and keeps the
output's ``.bidsignore`` up to date for files that BIDS has no name for yet. All writes
are atomic (:mod:`bids_app.io.atomic`), so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bids_app import __version__
from bids_app.errors import InputError
from bids_app.io import atomic

logger = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/eegfmri/eegfmri"
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "mod", "echo", "recording",
    "space", "res", "den", "label", "desc", "stat",
)  # fmt: skip
LOCK_NAME = ".eegfmri-locks"
#: Always ignored by the validator: folders and files BIDS has no name for.
# "work" as well as "work/": the validator needs the bare name to ignore the folder that
# is the default --work-dir (OUTPUT_DIR/work) with its nested subfolders.
BASE_BIDSIGNORE: tuple[str, ...] = (
    "figures", "logs/", "group/", "work/", "work", "*.html", "*.svg", "*.png", "*.pt",
    "*.parquet", f"{LOCK_NAME}/",
)  # fmt: skip
_LABEL = re.compile(r"^[0-9a-zA-Z]+$")
README = """# eegfmri derivatives

Outputs of eegfmri {version}, a BIDS App for simultaneous EEG-fMRI (BIDS derivatives).

- `sub-<label>/[ses-<label>/]eeg/`: cleaned EEG (`desc-preproc_eeg`), channel QC, EEG
  source maps in MNI space and source-channel correlation tables.
- `sub-<label>/[ses-<label>/]func/`: preprocessed BOLD in MNI152NLin2009cAsym, brain mask,
  confounds, and EEG-BOLD coupling statistical maps.
- `sub-<label>.html` and `sub-<label>/figures/`: the participant reports.
- `group/`: trained models, masking annotations and statistical maps; `group.html`.
- `logs/`: run logs, the resolved configuration of each run (`config-*.toml`, reusable
  with `--config-file`) and crash files of failed stages.

Every data file has a JSON sidecar; `Sources` point at the raw dataset through the
`DatasetLinks` entry `raw` of `dataset_description.json`.
"""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable.")


def dumps_json(data: Any) -> str:
    """Serialise ``data`` (numpy scalars/arrays and paths allowed) as indented JSON."""
    return json.dumps(data, indent=2, default=_json_default, allow_nan=False) + "\n"


@lru_cache(maxsize=1)
def _schema_filetypes() -> frozenset[tuple[str, str]]:
    """(suffix, extension) pairs that BIDS names (raw and derivative rules of the schema)."""
    try:
        from bidsschematools.schema import load_schema
    except ImportError:  # pragma: no cover - bidsschematools ships with pybids
        return frozenset()
    pairs: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if "suffixes" in node and "extensions" in node:
                for suffix in node["suffixes"]:
                    for ext in node["extensions"]:
                        pairs.add((suffix, ext))
                return
            for value in node.values():
                walk(value)

    schema = load_schema()
    walk(schema.rules.files.raw)
    walk(schema.rules.files.deriv)
    return frozenset(pairs)


def is_bids_filetype(suffix: str, extension: str) -> bool:
    """Whether the BIDS schema knows files named ``*_<suffix><extension>``."""
    known = _schema_filetypes()
    return not known or (suffix, extension) in known


@contextlib.contextmanager
def output_lock(output_dir: Path | str, names: Sequence[str] = ("dataset",)) -> Iterator[Path]:
    """Hold exclusive locks on parts of ``output_dir`` for the duration of a run.

    The participant level locks its subjects (``names=["sub-01", ...]``), so SLURM array
    jobs can process different subjects into one output folder at the same time, while
    two runs on the same subject cannot. The group level locks every subject and
    ``group``, so it never reads a subject that is being written.

    Parameters
    ----------
    output_dir : Path | str
        Output folder (created).
    names : sequence of str
        Parts to lock; one lock file each in ``output_dir/.eegfmri-locks/``.

    Yields
    ------
    Path
        The folder holding the lock files.

    Raises
    ------
    InputError
        When another eegfmri process holds one of the locks.
    """
    from filelock import FileLock, Timeout

    output_dir = Path(output_dir)
    lock_dir = output_dir / LOCK_NAME
    lock_dir.mkdir(parents=True, exist_ok=True)
    held = []
    try:
        for name in sorted(set(names)):
            path = lock_dir / f"{name}.lock"
            lock = FileLock(str(path), timeout=0, is_singleton=False, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                raise InputError(
                    f"Output directory {output_dir} is in use by another eegfmri run "
                    f"({name}, lock file {path}); wait for it to finish or choose another "
                    "output directory."
                ) from None
            held.append(lock)
        yield lock_dir
    finally:
        for lock in reversed(held):
            lock.release()


class DerivativesWriter:
    """Write BIDS-derivatives outputs of eegfmri into ``output_dir``.

    Parameters
    ----------
    output_dir : Path | str
        Root of the derivatives dataset.
    config : Config
        Resolved configuration (recorded in sidecars by the callers).
    bids_dir : Path | str | None
        The raw dataset; defaults to ``config.execution.bids_dir``. Used for
        ``DatasetLinks`` and :meth:`raw_uri`.
    """

    def __init__(self, output_dir: Path | str, config: Any, bids_dir: Path | str | None = None):
        self.output_dir = Path(output_dir).absolute()
        self.config = config
        if bids_dir is None and config is not None:
            bids_dir = config.execution.bids_dir
        self.bids_dir = Path(bids_dir).absolute() if bids_dir is not None else None
        self._lock = threading.Lock()
        self._ignored: set[str] = set()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.write_dataset_description()
        self.add_bidsignore(BASE_BIDSIGNORE)

    # ------------------------------------------------------------------ dataset level
    def dataset_description(self) -> dict[str, Any]:
        """Content of ``dataset_description.json`` for this derivatives dataset."""
        description: dict[str, Any] = {
            "Name": "eegfmri derivatives",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [
                {
                    "Name": "eegfmri",
                    "Version": __version__,
                    "CodeURL": CODE_URL,
                    "Container": {"Type": "docker", "Tag": f"eegfmri/eegfmri:{__version__}"},
                }
            ],
        }
        if self.bids_dir is not None:
            description["SourceDatasets"] = [{"URL": "bids:raw", "Version": "unknown"}]
            description["DatasetLinks"] = {"raw": self.bids_dir.as_uri()}
        return description

    def write_dataset_description(self) -> Path:
        """Write ``dataset_description.json`` and a README (kept if already present)."""
        path = self.write_json(self.output_dir / "dataset_description.json",
                               self.dataset_description())
        readme = self.output_dir / "README.md"
        if not readme.exists():
            atomic.write_text(readme, README.format(version=__version__))
        return path

    def add_bidsignore(self, patterns: Sequence[str]) -> None:
        """Add ``patterns`` to ``output_dir/.bidsignore`` (each once, order kept)."""
        from filelock import FileLock

        if set(patterns) <= self._ignored:  # already written by this writer
            return
        path = self.output_dir / ".bidsignore"
        lock_dir = self.output_dir / LOCK_NAME
        lock_dir.mkdir(exist_ok=True)
        with self._lock, FileLock(str(lock_dir / "bidsignore.lock"), timeout=60):
            lines = path.read_text().splitlines() if path.exists() else []
            new = [p for p in patterns if p not in lines]
            if new:
                atomic.write_text(path, "\n".join(lines + new) + "\n")
            self._ignored.update(lines + new)

    # ----------------------------------------------------------------------- naming
    def build_path(
        self,
        entities: Mapping[str, Any],
        suffix: str,
        extension: str,
        datatype: str | None = None,
    ) -> Path:
        """Derive an output path from BIDS entities.

        Parameters
        ----------
        entities : mapping
            Entity name -> label (``sub``, ``ses``, ``task``, ... ``desc``, ``stat``);
            ``None`` values are skipped. Without ``sub`` the file goes to ``group/``.
        suffix : str
            BIDS suffix (``bold``, ``eeg``, ``statmap`` ...).
        extension : str
            Extension with leading dot (``.nii.gz``).
        datatype : str | None
            Folder inside the subject/session (``func``, ``eeg``, ``anat``).

        Returns
        -------
        Path
            Absolute path inside ``output_dir``.
        """
        given = {k: v for k, v in entities.items() if v is not None}
        unknown = sorted(set(given) - set(ENTITY_ORDER))
        if unknown:
            raise ValueError(f"Unknown BIDS entities {unknown}; allowed: {ENTITY_ORDER}.")
        if not extension.startswith("."):
            raise ValueError(f"Extension must start with a dot, got {extension!r}.")
        if not _LABEL.match(suffix):
            raise ValueError(f"Invalid BIDS suffix {suffix!r}.")
        parts = []
        for key in ENTITY_ORDER:
            if key in given:
                label = str(given[key])
                if key in ("sub", "ses") and label.startswith(f"{key}-"):
                    label = label[len(key) + 1 :]
                if not _LABEL.match(label):
                    raise ValueError(f"Invalid label {label!r} for BIDS entity '{key}'.")
                parts.append(f"{key}-{label}")
        name = "_".join(parts + [suffix]) + extension
        folder = self.output_dir
        if "sub" in given:
            folder = folder / parts[0]
            if "ses" in given:
                folder = folder / parts[1]
        else:
            folder = folder / "group"
        if datatype:
            folder = folder / datatype
        if "sub" in given and not is_bids_filetype(suffix, extension):
            self.add_bidsignore([f"*_{suffix}{extension}"])
            if extension != ".json":
                self.add_bidsignore([f"*_{suffix}.json"])
        return folder / name

    def _check_inside(self, path: Path) -> Path:
        path = Path(path)
        if not path.is_absolute():
            path = self.output_dir / path
        resolved = path.resolve()
        if not resolved.is_relative_to(self.output_dir.resolve()):
            raise ValueError(f"Refusing to write {path} outside the output directory.")
        return path

    def raw_uri(self, path_in_bids_dir: Path | str) -> str:
        """BIDS URI of an input file: ``bids:raw:sub-01/...``."""
        path = Path(path_in_bids_dir)
        if path.is_absolute():
            if self.bids_dir is None:
                raise ValueError("raw_uri needs the writer's bids_dir for absolute paths.")
            path = path.absolute().relative_to(self.bids_dir)
        return f"bids:raw:{path.as_posix()}"

    @staticmethod
    def sidecar_path(path: Path) -> Path:
        """The JSON sidecar path of a data file (any compound extension removed)."""
        name = path.name
        stem = name.split(".", 1)[0]
        return path.with_name(stem + ".json")

    # ---------------------------------------------------------------------- writers
    def atomic_path(self, path: Path | str) -> contextlib.AbstractContextManager[Path]:
        """Context manager yielding a temporary path that replaces ``path`` on success."""
        return atomic.atomic_path(self._check_inside(Path(path)))

    def write_bytes(self, relpath: Path | str, data: bytes) -> Path:
        """Write raw bytes to ``output_dir/relpath`` atomically."""
        return atomic.write_bytes(self._check_inside(Path(relpath)), data)

    def write_json(self, path: Path | str, data: Mapping[str, Any]) -> Path:
        """Write a JSON document atomically."""
        return atomic.write_text(self._check_inside(Path(path)), dumps_json(data))

    def write_tsv(
        self,
        path: Path | str,
        dataframe: Any,
        columns: Mapping[str, Mapping[str, Any]] | None = None,
        sidecar: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a TSV (``n/a`` for missing values) and its column-dictionary sidecar.

        Parameters
        ----------
        path : Path | str
            Destination ``.tsv``.
        dataframe : pandas.DataFrame
            Table to write (index not written).
        columns : mapping | None
            Column name -> ``{"LongName", "Description", "Units"}``.
        sidecar : mapping | None
            Further top-level sidecar keys.
        """
        path = self._check_inside(Path(path))
        columns = dict(columns or {})
        missing = [c for c in dataframe.columns if c not in columns]
        if missing:
            logger.warning("Columns %s of %s have no description in the sidecar.",
                           missing, path.name)
        text = dataframe.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n")
        atomic.write_text(path, text)
        meta: dict[str, Any] = {c: dict(columns[c]) for c in dataframe.columns if c in columns}
        meta.update(sidecar or {})
        if meta:
            self.write_json(self.sidecar_path(path), meta)
        return path

    def write_nifti(
        self,
        path: Path | str,
        img: Any,
        sidecar: Mapping[str, Any] | None = None,
        sources: Sequence[str] | None = None,
    ) -> Path:
        """Write a NIfTI image and its JSON sidecar.

        The sidecar gets ``Sources`` (BIDS URIs), ``SkullStripped`` (default False),
        ``Resolution`` when the name has ``res-``, and for 4D BOLD ``RepetitionTime``
        and ``TaskName`` from the header and name when the caller did not give them.
        """
        import nibabel as nib

        path = self._check_inside(Path(path))
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header.copy())
        xyz, t = img.header.get_xyzt_units()
        if xyz == "unknown" or (img.ndim == 4 and t == "unknown"):
            img.header.set_xyzt_units("mm", "sec")
        with atomic.atomic_path(path) as tmp:
            nib.save(img, tmp)
        meta = dict(sidecar or {})
        if sources:
            meta.setdefault("Sources", list(sources))
        meta.setdefault("SkullStripped", False)
        entities = dict(part.split("-", 1) for part in path.name.split("_")[:-1] if "-" in part)
        if "res" in entities:
            zooms = ", ".join(f"{z:g}" for z in img.header.get_zooms()[:3])
            meta.setdefault("Resolution", f"Voxel size {zooms} mm (res-{entities['res']}).")
        if img.ndim == 4 and path.name.split("_")[-1].startswith("bold"):
            meta.setdefault("RepetitionTime", float(img.header.get_zooms()[3]))
            if "task" in entities:
                meta.setdefault("TaskName", entities["task"])
        self.write_json(self.sidecar_path(path), meta)
        return path

    def write_raw_brainvision(
        self, path: Path | str, raw: Any, sidecar: Mapping[str, Any] | None = None
    ) -> Path:
        """Write an MNE ``Raw`` as BrainVision (``.vhdr``/``.vmrk``/``.eeg``) plus JSON.

        The three files are written by :func:`mne.export.export_raw` (pybv) in a hidden
        temporary folder and moved into place only when all three exist.
        """
        import mne

        path = self._check_inside(Path(path))
        if path.suffix != ".vhdr":
            raise ValueError(f"BrainVision output must end with .vhdr, got {path.name}.")
        with atomic.atomic_dir_files(path.parent) as tmp_dir:
            mne.export.export_raw(tmp_dir / path.name, raw, fmt="brainvision",
                                  overwrite=True, verbose="error")
            written = {p.suffix for p in tmp_dir.iterdir()}
            if not {".vhdr", ".vmrk", ".eeg"} <= written:
                raise OSError(f"BrainVision export of {path.name} did not write all 3 files.")
        meta = dict(sidecar or {})
        meta.setdefault("SamplingFrequency", float(raw.info["sfreq"]))
        types = raw.get_channel_types()
        meta.setdefault("EEGChannelCount", int(sum(t == "eeg" for t in types)))
        meta.setdefault("ECGChannelCount", int(sum(t == "ecg" for t in types)))
        meta.setdefault("EOGChannelCount", int(sum(t == "eog" for t in types)))
        meta.setdefault("RecordingDuration", float(raw.times[-1] + 1.0 / raw.info["sfreq"]))
        line = getattr(getattr(self.config, "eeg", None), "line_freq", None)
        meta.setdefault("PowerLineFrequency", line if line is not None else "n/a")
        meta.setdefault("SoftwareFilters", "n/a")
        meta.setdefault("EEGReference", "n/a")
        task = re.search(r"_task-([0-9a-zA-Z]+)", path.name)
        if task:
            meta.setdefault("TaskName", task.group(1))
        self.write_json(self.sidecar_path(path), meta)
        return path

    def write_figure(self, fig: Any, subject: str, name: str) -> Path:
        """Save a matplotlib figure as ``sub-XX/figures/<name>.svg`` (or ``.png``)."""
        subject = subject[4:] if subject.startswith("sub-") else subject
        if not _LABEL.match(subject):
            raise ValueError(f"Invalid subject label {subject!r}.")
        if not re.match(r"^[0-9A-Za-z_\-.]+$", name) or ".." in name:
            raise ValueError(f"Invalid figure name {name!r}.")
        fmt = "png" if name.endswith(".png") else "svg"
        stem = name.rsplit(".", 1)[0] if name.endswith((".png", ".svg")) else name
        path = self.output_dir / f"sub-{subject}" / "figures" / f"{stem}.{fmt}"
        return self.save_figure(fig, path)

    def save_figure(self, fig: Any, path: Path) -> Path:
        """Save ``fig`` atomically at ``path`` (SVG or PNG by extension), reproducibly.

        SVG element ids are salted with a constant and the creation date is left out, so
        rerunning with the same inputs writes byte-identical figures.
        """
        import matplotlib

        path = self._check_inside(Path(path))
        fmt = path.suffix.lstrip(".")
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        with matplotlib.rc_context({"svg.hashsalt": "eegfmri"}), atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight", metadata=metadata)
        return path
