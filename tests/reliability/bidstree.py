"""Small hand-made BIDS datasets (EEG + BOLD) for input and reliability tests.

``make_bids_tree`` writes a valid simultaneous EEG-fMRI dataset in well under a second:
BrainVision (or EEGLAB) EEG at a low sampling rate with one ``R128`` marker per volume,
a small 4D BOLD with RepetitionTime and SliceTiming, events, channels and a T1w. Tests
copy it and break one thing at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TR = 2.1


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def write_eeg(path_vhdr_or_set: Path, *, n_vols: int, sfreq: float = 100.0, tr: float = TR,
              seed: int = 0, markers: bool = True, extra_s: float = 2.0,
              n_markers: int | None = None, nan: bool = False) -> Path:
    """Write a small EEG recording with R128 markers (format from the extension)."""
    import mne

    rng = np.random.default_rng(seed)
    ch_names = ["Fp1", "Fp2", "Cz", "Pz", "O1", "O2", "ECG"]
    n_times = int((2 * extra_s + n_vols * tr) * sfreq)
    data = rng.normal(0, 10e-6, (len(ch_names), n_times))
    if nan:
        data[2, n_times // 2 : n_times // 2 + 5] = np.nan
    info = mne.create_info(ch_names, sfreq, ["eeg"] * 6 + ["ecg"])
    raw = mne.io.RawArray(data, info, verbose="error")
    count = n_vols if n_markers is None else n_markers
    if markers and count:
        onsets = extra_s + tr * np.arange(count)
        raw.set_annotations(mne.Annotations(onsets, 0.0, ["Response/R128"] * count))
    fmt = "eeglab" if path_vhdr_or_set.suffix == ".set" else "brainvision"
    path_vhdr_or_set.parent.mkdir(parents=True, exist_ok=True)
    mne.export.export_raw(path_vhdr_or_set, raw, fmt=fmt, overwrite=True, verbose="error")
    return path_vhdr_or_set


def write_bold(path: Path, *, n_vols: int, n_slices: int = 6, tr: float = TR, seed: int = 0,
               ndim: int = 4) -> Path:
    """Write a small BOLD NIfTI (4D, 2 mm-ish voxels)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    shape = (8, 8, n_slices, n_vols) if ndim == 4 else (8, 8, n_slices)
    img = nib.Nifti1Image((100 + rng.normal(0, 1, shape)).astype(np.float32),
                          np.diag([3.0, 3.0, 3.33, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    if ndim == 4:
        img.header["pixdim"][4] = tr
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def slice_timing(n_slices: int, tr: float = TR) -> list[float]:
    """Interleaved slice times within the TR."""
    order = list(range(1, n_slices, 2)) + list(range(0, n_slices, 2))
    times = [0.0] * n_slices
    for rank, index in enumerate(order):
        times[index] = round(rank * (tr - 0.1) / n_slices, 4)
    return times


def make_bids_tree(
    root: Path,
    *,
    subjects: Sequence[str] = ("01",),
    runs: Sequence[tuple[str, str | None]] = (("checker", None),),
    eeg_only: Sequence[str] = (),
    session: str | None = "01",
    n_vols: int = 8,
    n_slices: int = 6,
    eeg_format: str = ".vhdr",
    t1w: bool = True,
) -> Path:
    """Write a valid minimal EEG-fMRI BIDS dataset and return its root.

    Parameters
    ----------
    root : Path
        Dataset folder (created).
    subjects : sequence of str
        Subject labels.
    runs : sequence of (task, run label or None)
        Simultaneous EEG-BOLD runs of every subject.
    eeg_only : sequence of str
        Tasks recorded with EEG only (no BOLD, no R128 markers).
    session : str | None
        Session label, or None for no session level.
    n_vols, n_slices : int
        BOLD size.
    eeg_format : str
        ``.vhdr`` or ``.set``.
    t1w : bool
        Write a T1w per subject/session.
    """
    root = Path(root)
    _write_json(root / "dataset_description.json",
                {"Name": "tiny EEG-fMRI", "BIDSVersion": "1.10.0", "DatasetType": "raw",
                 "Authors": ["A", "B"]})
    (root / "README").write_text("Tiny simultaneous EEG-fMRI dataset for tests.\n")
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    tasks = {task for task, _ in runs} | set(eeg_only)
    for task in sorted(tasks):
        _write_json(root / f"task-{task}_bold.json", {"TaskName": task}) if task not in \
            eeg_only else None
    for index, sub in enumerate(subjects):
        base = root / f"sub-{sub}"
        prefix = f"sub-{sub}"
        if session:
            base, prefix = base / f"ses-{session}", f"{prefix}_ses-{session}"
        if t1w:
            import nibabel as nib

            rng = np.random.default_rng(index)
            img = nib.Nifti1Image(rng.random((10, 12, 10)).astype(np.float32),
                                  np.diag([2.0, 2.0, 2.0, 1.0]))
            img.header.set_xyzt_units("mm")
            (base / "anat").mkdir(parents=True, exist_ok=True)
            nib.save(img, base / "anat" / f"{prefix}_T1w.nii.gz")
        for r, (task, run) in enumerate(list(runs) + [(t, None) for t in eeg_only]):
            name = f"{prefix}_task-{task}" + (f"_run-{run}" if run else "")
            simultaneous = task not in eeg_only
            eeg = write_eeg(base / "eeg" / f"{name}_eeg{eeg_format}", n_vols=n_vols,
                            seed=100 * index + r, markers=simultaneous)
            _write_json(eeg.with_name(f"{name}_eeg.json"), {
                "TaskName": task, "EEGReference": "FCz", "SamplingFrequency": 100.0,
                "PowerLineFrequency": 60, "SoftwareFilters": "n/a",
            })
            (eeg.with_name(f"{name}_channels.tsv")).write_text(
                "name\ttype\tunits\n" + "".join(
                    f"{c}\t{'ECG' if c == 'ECG' else 'EEG'}\tuV\n"
                    for c in ("Fp1", "Fp2", "Cz", "Pz", "O1", "O2", "ECG")))
            (eeg.with_name(f"{name}_events.tsv")).write_text(
                "onset\tduration\ttrial_type\n2.0\t0.0\tstart\n10.0\t0.0\tstop\n")
            if not simultaneous:
                continue
            bold = write_bold(base / "func" / f"{name}_bold.nii.gz", n_vols=n_vols,
                              n_slices=n_slices, seed=100 * index + r)
            _write_json(bold.with_name(f"{name}_bold.json"), {
                "TaskName": task, "RepetitionTime": TR,
                "SliceTiming": slice_timing(n_slices),
            })
            (bold.with_name(f"{name}_events.tsv")).write_text(
                "onset\tduration\ttrial_type\n0.0\t4.2\trest\n4.2\t4.2\tflicker\n")
    return root


def tree_hash(root: Path) -> str:
    """SHA-256 over every file's relative path, bytes and mode (input-integrity checks)."""
    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()
