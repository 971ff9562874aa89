"""Convert the NKI NATVIEW EEG-fMRI raw release into a valid BIDS dataset.

The release is almost BIDS but not quite (see docs/methods.md): its EEG is stored as
EEGLAB ``.set`` files next to BrainVision headers without data, recorder markers are mixed
into the events, electrodes lie on a unit sphere without a coordinate system, channel types
have inconsistent casing, sidecars carry non-standard keys, eye-tracking TSVs hold ``NaN``
and leftovers such as ``.DS_Store`` sit in the tree. :func:`convert_natview` reads the
release as it is (EEG through :func:`mne.io.read_raw_eeglab`, never through the ``.vhdr``),
writes a dataset that ``bids-validator`` accepts, and reports every repair it made. The
input is only read.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from bids_app import __version__
from bids_app.errors import InputError
from bids_app.natview import facts as nv
from bids_app.natview.convert_eeg import (  # noqa: F401  (public names of this module)
    MARKER_MEANING,
    convert_eeg_run,
    eeg_sidecar,
    is_junk_marker,
    normalize_marker,
)
from bids_app.natview.convert_sidecars import (  # noqa: F401
    NON_STANDARD_KEYS,
    ConversionReport,
    clean_bold_sidecar,
    convert_sidecar,
    copy_physio,
    ensure_bold_sidecar,
    read_json_lenient,
    task_of,
    write_json,
)

logger = logging.getLogger(__name__)


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
        Counts and the list of repairs.

    Raises
    ------
    InputError
        When ``raw_dir`` holds no subject, ``bids_dir`` is not empty, or a recording cannot
        be read.
    """
    raw_dir, bids_dir = Path(raw_dir), Path(bids_dir)
    subjects = sorted(p for p in raw_dir.glob("sub-*") if p.is_dir()) if raw_dir.is_dir() else []
    if not subjects:
        raise InputError(f"Release folder {raw_dir} holds no sub-* folder to convert.")
    if bids_dir.exists() and any(bids_dir.iterdir()):
        raise InputError(f"Output folder {bids_dir} is not empty; choose a new folder.")
    if bids_dir.resolve().is_relative_to(raw_dir.resolve()):
        raise InputError(f"Output folder {bids_dir} lies inside the release {raw_dir}.")
    bids_dir.mkdir(parents=True, exist_ok=True)
    report = ConversionReport(bids_dir=bids_dir)
    tasks: dict[str, dict] = {}
    for sub_dir in subjects:
        report.subjects.append(sub_dir.name[4:])
        for src in sorted(sub_dir.rglob("*")):
            if src.is_dir():
                continue
            rel = src.relative_to(raw_dir)
            _convert_file(src, bids_dir / rel, report, tasks)
    _write_root(raw_dir, bids_dir, report, tasks)
    for folder in ("stimuli", "sourcedata"):
        if (raw_dir / folder).is_dir():
            shutil.copytree(
                raw_dir / folder,
                bids_dir / folder,
                ignore=_ignore_junk(report),
                copy_function=_link_or_copy,
            )
    _write_changes(bids_dir, report, raw_dir)
    logger.info(report.summary())
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
    elif name.endswith("_eeg_events.tsv") or (
        src.parent.name == "eeg" and name.endswith("_events.tsv")
    ):
        return  # EEG events are rebuilt from the recording's markers
    elif name.endswith("_electrodes.tsv") or name.endswith("_coordsystem.json"):
        return  # replaced by the cap's standard positions (convert_eeg_run)
    elif name.endswith(".json"):
        convert_sidecar(src, dst, report, tasks)
    elif name.endswith("_physio.tsv.gz"):
        copy_physio(src, dst, report)
    else:
        if name.endswith("_bold.nii.gz"):
            report.bold_runs += 1
            ensure_bold_sidecar(src, dst, report, tasks)
        shutil.copyfile(src, dst)


def _write_root(raw_dir: Path, bids_dir: Path, report: ConversionReport, tasks: dict) -> None:
    src = read_json_lenient(raw_dir / "dataset_description.json", report)
    write_json(
        bids_dir / "dataset_description.json",
        {
            "Name": src.get("Name", "NKI NATVIEW EEG-fMRI"),
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": src.get("License", "CC-BY-NC-SA-4.0 (as the NATVIEW release)"),
            "Authors": src.get("Authors") or ["NKI NATVIEW EEG-fMRI team"],
            "ReferencesAndLinks": ["https://doi.org/10.1038/s41597-023-02458-8"],
            "GeneratedBy": [
                {"Name": "eegfmri", "Version": __version__,
                 "Description": "NATVIEW release to BIDS conversion (eegfmri convert natview)"}
            ],
            "SourceDatasets": [{"URL": f"{nv.S3_BUCKET_URL}/{nv.S3_PREFIX}raw_data/"}],
        },
    )  # fmt: skip
    readme = raw_dir / "README"
    text = readme.read_text(encoding="utf-8", errors="replace") if readme.exists() else ""
    (bids_dir / "README").write_text(
        (text.strip() + "\n\n" if text.strip() else "NKI NATVIEW EEG-fMRI dataset.\n\n")
        + "Converted to BIDS by eegfmri (see CHANGES for the repairs made).\n"
    )
    _write_participants(raw_dir, bids_dir, report)
    for task, info in sorted(tasks.items()):
        # SliceTiming stays in the run sidecars only (equal lists at two levels make the
        # validator report an override).
        if "RepetitionTime" in info:  # tasks with BOLD only
            sidecar = {"TaskName": task, "RepetitionTime": info["RepetitionTime"]}
            write_json(bids_dir / f"task-{task}_bold.json", sidecar)


def _write_participants(raw_dir: Path, bids_dir: Path, report: ConversionReport) -> None:
    rows: list[list[str]] = []
    header = ["participant_id"]
    src = raw_dir / "participants.tsv"
    if src.exists():
        lines = [ln for ln in src.read_text().splitlines() if ln.strip()]
        header = lines[0].split("\t") if lines else header
        rows = [ln.split("\t") for ln in lines[1:]]
    width = len(header)
    by_id = {}
    for row in rows:
        if len(row) != width:
            report.repair(f"Padded/cut a row of {src} to {width} column(s).")
            row = (row + ["n/a"] * width)[:width]
        pid = row[0] if row[0].startswith("sub-") else f"sub-{row[0]}"
        by_id[pid] = [pid] + [v if v.strip() else "n/a" for v in row[1:]]
    for label in report.subjects:
        if f"sub-{label}" not in by_id:
            by_id[f"sub-{label}"] = [f"sub-{label}"] + ["n/a"] * (width - 1)
            report.repair(f"Added sub-{label} to participants.tsv.")
    kept = [by_id[f"sub-{s}"] for s in report.subjects]
    text = "\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in kept)
    (bids_dir / "participants.tsv").write_text(text)
    described = {
        "participant_id": {"Description": "Participant label."},
        "age": {"Description": "Age at the first session.", "Units": "year"},
        "sex": {"Description": "Sex.", "Levels": {"M": "male", "F": "female"}},
    }
    write_json(
        bids_dir / "participants.json",
        {c: described.get(c, {"Description": f"{c} (from the NATVIEW release)."})
         for c in header},
    )  # fmt: skip


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
    "MARKER_MEANING",
    "clean_bold_sidecar",
    "convert_natview",
    "is_junk_marker",
    "read_json_lenient",
]
