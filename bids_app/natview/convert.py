"""Convert the NKI NATVIEW EEG-fMRI raw release into a valid BIDS dataset.

The release is almost BIDS but not quite (see docs/methods.md and shared NATVIEW facts):
its EEG is stored as EEGLAB ``.set`` files next to BrainVision headers without data,
recorder markers are mixed into the events, stimulus codes mean different things per task,
some runs have no or too few volume markers for their BOLD, electrodes lie on a unit sphere
with a sidecar claiming millimetres, sidecars of the release describe files the converter
rewrites, and root files carry questionnaires and dataset facts. :func:`convert_natview`
first refuses placeholders (git-annex pointers, empty data files), then reads the release
as it is (EEG through :func:`mne.io.read_raw_eeglab`, never through the ``.vhdr``), writes
a dataset that ``bids-validator`` accepts, reports every repair (``CHANGES``) and every run
(``conversion.tsv``). The input is only read.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from bids_app import __version__
from bids_app.errors import InputError
from bids_app.io.preflight import EEG_ONLY_TASKS, volume_marker_tolerance
from bids_app.natview import convert_root
from bids_app.natview.conversion_report import (
    BOLD_ONLY,
    EEG_ONLY,
    SIMULTANEOUS,
    SKIPPED,
    ConversionReport,
)
from bids_app.natview.convert_eeg import convert_eeg_run
from bids_app.natview.convert_sidecars import (
    clean_bold_sidecar,
    convert_sidecar,
    copy_physio,
    ensure_bold_sidecar,
    read_json_lenient,
    task_of,
    write_json,
)
from bids_app.natview.markers import is_junk_marker
from bids_app.natview.release_check import check_release_files

logger = logging.getLogger(__name__)

#: Where files of runs whose EEG cannot be aligned with the BOLD go (outside the dataset).
UNALIGNED_DIR = "sourcedata/unaligned"
#: Release sidecars of EEG files the converter rewrites (its own replace them), at any
#: level of a subject's folder; ``_events.json`` only in ``eeg/`` (BOLD events are kept).
REPLACED_SIDECARS = ("_channels.json", "_electrodes.json")


def convert_natview(raw_dir: str | Path, bids_dir: str | Path) -> ConversionReport:
    """Convert a NATVIEW raw release (or a subset of it) into a BIDS dataset.

    Parameters
    ----------
    raw_dir : str | Path
        Unpacked release (``sub-XX/ses-YY/{anat,func,eeg}``, optional ``stimuli/`` and
        ``sourcedata/``); never modified. ``stimuli/`` and ``sourcedata/`` are hard-linked
        into ``bids_dir`` when both lie on one file system (copied otherwise).
    bids_dir : str | Path
        Output directory (absent or empty).

    Returns
    -------
    ConversionReport
        Counts, the list of repairs (also in ``CHANGES``) and one record per run (also in
        ``conversion.tsv``: markers against volumes, repairs, status and why).

    Raises
    ------
    InputError
        When ``raw_dir`` holds no subject, ``bids_dir`` is not empty, a release file is a
        git-annex pointer or an empty placeholder (checked before anything is written), or
        a recording cannot be read (nothing is left in ``bids_dir`` then).
    """
    raw_dir, bids_dir = Path(raw_dir), Path(bids_dir)
    subjects = sorted(p for p in raw_dir.glob("sub-*") if p.is_dir()) if raw_dir.is_dir() else []
    if not subjects:
        raise InputError(f"Release folder {raw_dir} holds no sub-* folder to convert.")
    if bids_dir.exists() and any(bids_dir.iterdir()):
        raise InputError(f"Output folder {bids_dir} is not empty; choose a new folder.")
    if bids_dir.resolve().is_relative_to(raw_dir.resolve()):
        raise InputError(f"Output folder {bids_dir} lies inside the release {raw_dir}.")
    files = {d: sorted(p for p in d.rglob("*") if not p.is_dir()) for d in subjects}
    check_release_files(raw_dir, [p for f in files.values() for p in f]
                        + [p for p in raw_dir.iterdir() if not p.is_dir()])  # fmt: skip
    existed = bids_dir.exists()
    bids_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = _convert(raw_dir, bids_dir, subjects, files)
    except BaseException:
        shutil.rmtree(bids_dir, ignore_errors=True)  # no partial dataset is left behind
        if existed:
            bids_dir.mkdir()
        raise
    logger.info(report.summary())
    return report


def _convert(raw_dir: Path, bids_dir: Path, subjects: list[Path],
             files: dict[Path, list[Path]]) -> ConversionReport:
    """Write the dataset into the (empty) ``bids_dir``; see :func:`convert_natview`."""
    report = ConversionReport(bids_dir=bids_dir)
    tasks: dict[str, dict] = {}
    for sub_dir in subjects:
        report.subjects.append(sub_dir.name[4:])
        for src in files[sub_dir]:
            _convert_file(src, bids_dir / src.relative_to(raw_dir), report, tasks)
    _settle_runs(bids_dir, report)
    _write_root(raw_dir, bids_dir, report, tasks)
    for folder in ("stimuli", "sourcedata"):
        if (raw_dir / folder).is_dir():
            shutil.copytree(
                raw_dir / folder,
                bids_dir / folder,
                ignore=_ignore_junk(report),
                copy_function=_link_or_copy,
                dirs_exist_ok=True,
            )
    _write_changes(bids_dir, report, raw_dir)
    report.write_tsv(bids_dir / "conversion.tsv")
    (bids_dir / ".bidsignore").write_text("conversion.tsv\n")
    return report


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a read-only extra (stimuli, simulation truth) when possible, else copy it.

    The source is never modified either way; linking saves the disk space of large
    simulation truth files on the same file system.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _ignore_junk(report: ConversionReport):
    def ignore(directory: str, names: list[str]) -> set[str]:
        junk = {n for n in names if n in (".DS_Store", "Thumbs.db") or n.startswith("._")}
        for name in sorted(junk):
            report.repair(f"Dropped the non-BIDS leftover {Path(directory) / name}.")
        return junk

    return ignore


def _convert_file(src: Path, dst: Path, report: ConversionReport, tasks: dict) -> None:
    name = src.name
    if name in (".DS_Store", "Thumbs.db") or name.startswith("._"):
        report.repair(f"Dropped the non-BIDS leftover {src}.")
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith("_eeg.set"):
        convert_eeg_run(src, dst.parent, report, tasks)
        report.eeg_runs += 1
    elif name.endswith(("_eeg.vhdr", "_eeg.vmrk", "_eeg.fdt", "_eeg.json", "_channels.tsv")):
        return  # rewritten from the .set by convert_eeg_run
    elif src.parent.name == "eeg" and name.endswith("_events.tsv"):
        return  # EEG events are rebuilt from the recording's markers
    elif name.endswith(("_electrodes.tsv", "_coordsystem.json")):
        return  # replaced by the cap's standard positions (convert_eeg_run)
    elif name.endswith(REPLACED_SIDECARS) or (
        src.parent.name == "eeg" and name.endswith("_events.json")
    ):
        report.repair(f"Dropped {src}: it describes a file the converter rewrote, which "
                      "comes with its own sidecar.")
    elif _duplicate_of_func(src):
        report.repair(f"Dropped {src}: the same file is in the session's func/ folder.")
    elif name.endswith(".json"):
        convert_sidecar(src, dst, report, tasks)
    elif name.endswith("_physio.tsv.gz"):
        copy_physio(src, dst, report)
    else:
        if name.endswith("_bold.nii.gz"):
            report.bold_runs += 1
            ensure_bold_sidecar(src, dst, report, tasks)
            report.run(name[: -len("_bold.nii.gz")]).bold_volumes = _n_volumes(src)
        shutil.copyfile(src, dst)


def _duplicate_of_func(src: Path) -> bool:
    """Whether ``src`` is a scanner physio file of ``eeg/`` also present, equal, in ``func/``."""
    if src.parent.name != "eeg" or "_recording-eyetracking" in src.name:
        return False
    if not src.name.endswith(("_physio.tsv.gz", "_physio.json")):
        return False
    twin = src.parent.parent / "func" / src.name
    return twin.is_file() and twin.read_bytes() == src.read_bytes()


def _n_volumes(bold: Path) -> int:
    """Volumes of a BOLD image, from its header (InputError naming it when unreadable)."""
    import nibabel as nib

    try:
        shape = nib.load(bold).shape
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for broken headers
        raise InputError(f"BOLD {bold} cannot be read as NIfTI ({err}).") from None
    return int(shape[3]) if len(shape) == 4 else 1


def run_status(task: str, markers: int | None, volumes: int | None) -> tuple[str, str]:
    """What the converter does with a run, and why, from its volume markers and volumes.

    A BOLD run whose EEG has no volume marker cannot be aligned with it: the EEG stays
    (EEG only), the BOLD is set aside. When the EEG has volume markers but more or fewer
    than the participant level accepts (:func:`bids_app.io.preflight.volume_marker_tolerance`),
    which volumes they belong to is unknown: the run is set aside (skipped).

    Parameters
    ----------
    task : str
        Task label.
    markers : int | None
        Volume markers written after repair (None without EEG).
    volumes : int | None
        BOLD volumes (None without BOLD).

    Returns
    -------
    status : str
        ``simultaneous``, ``eeg_only``, ``bold_only`` or ``skipped``.
    reason : str
        Why, or the marker/volume counts when they differ ('' otherwise).
    """
    if markers is None:
        return BOLD_ONLY, "no EEG recording in the release"
    if volumes is None:
        return EEG_ONLY, ("recorded without the scanner running" if task in EEG_ONLY_TASKS
                          else "no BOLD run in the release")  # fmt: skip
    what = f"{markers} volume markers for {volumes} BOLD volumes"
    if markers == 0:
        return EEG_ONLY, f"{what}: EEG cannot be aligned; BOLD kept in {UNALIGNED_DIR}/"
    if abs(markers - volumes) > volume_marker_tolerance(volumes):
        return SKIPPED, (f"{what}: which volumes the EEG covers is unknown; run kept in "
                         f"{UNALIGNED_DIR}/")  # fmt: skip
    return SIMULTANEOUS, what if markers != volumes else ""


def _settle_runs(bids_dir: Path, report: ConversionReport) -> None:
    """Give every run its status (:func:`run_status`) and set aside what cannot be used."""
    for stem, record in sorted(report.runs.items()):
        if record.volume_markers is None and record.bold_volumes is None:
            continue  # physio only: flagged on the run it belongs to
        markers = record.markers_written if record.volume_markers is not None else None
        record.status, record.reason = run_status(task_of(stem), markers, record.bold_volumes)
        if record.status == SKIPPED:
            _set_aside(bids_dir, stem, ("func", "eeg"), report)
        elif record.status == EEG_ONLY and record.bold_volumes is not None:
            _set_aside(bids_dir, stem, ("func",), report)


def _set_aside(bids_dir: Path, stem: str, folders: tuple[str, ...],
               report: ConversionReport) -> None:
    """Move the run's files of ``folders`` to :data:`UNALIGNED_DIR` (outside the dataset)."""
    sub, ses = stem.split("_")[:2]
    for folder in folders:
        dest = bids_dir / UNALIGNED_DIR / sub / ses / folder
        dest.mkdir(parents=True, exist_ok=True)
        for path in sorted((bids_dir / sub / ses / folder).glob(f"{stem}_*")):
            path.rename(dest / path.name)
    report.bold_runs -= 1
    if "eeg" in folders:
        report.eeg_runs -= 1
    report.repair(f"Moved the {' and '.join(f.replace('func', 'BOLD').upper() for f in folders)}"
                  f" files of {stem} to {UNALIGNED_DIR}/: its volume markers do not match its "
                  "volumes.")


def _write_root(raw_dir: Path, bids_dir: Path, report: ConversionReport, tasks: dict) -> None:
    convert_root.write_dataset_description(raw_dir, bids_dir, report)
    convert_root.write_readme(raw_dir, bids_dir)
    convert_root.write_participants(raw_dir, bids_dir, report)
    convert_root.write_phenotype(raw_dir, bids_dir, report)
    convert_root.copy_code(raw_dir, bids_dir)
    tables = {p.stem for p in raw_dir.glob("*.tsv")}
    for path in sorted(raw_dir.iterdir()):
        if path.is_file() and path.name not in convert_root.ROOT_FILES and path.stem not in tables:
            report.repair(f"Left out the root file {path.name} (not carried into the dataset).")
    for task, info in sorted(tasks.items()):
        # SliceTiming stays in the run sidecars only (equal lists at two levels make the
        # validator report an override).
        kept = any(bids_dir.glob(f"sub-*/**/func/*_task-{task}_*bold.nii.gz"))
        if "RepetitionTime" in info and kept:  # tasks with BOLD only
            sidecar = {"TaskName": task, "RepetitionTime": info["RepetitionTime"]}
            write_json(bids_dir / f"task-{task}_bold.json", sidecar)


def _write_changes(bids_dir: Path, report: ConversionReport, raw_dir: Path) -> None:
    lines = [f"1.0.0 {np.datetime64('today')}", "  - Converted from the NKI NATVIEW release "
             f"by eegfmri {__version__}."]  # fmt: skip
    prefix = f"{raw_dir}/"
    lines += [f"  - {r.replace(prefix, '')}" for r in _unique(report.repairs)]
    (bids_dir / "CHANGES").write_text("\n".join(lines) + "\n")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


__all__ = [
    "ConversionReport",
    "clean_bold_sidecar",
    "convert_natview",
    "is_junk_marker",
    "run_status",
    "read_json_lenient",
]
