"""Integrity of single input files: NIfTI/gzip streams, BrainVision headers, EEG, events.

Every function opens one file, checks that it holds what its header promises, and raises
:class:`~bids_app.errors.InputError` with one sentence naming the file otherwise:

- :func:`check_nifti` decompresses a ``.nii.gz`` completely in 4 MiB chunks (constant
  memory), so a flipped byte anywhere fails the gzip CRC-32 and a truncated file fails
  the length check; an uncompressed ``.nii`` must be as long as its header needs.
- :func:`read_brainvision_header` parses a ``.vhdr`` (sections, keys) and checks what
  MNE would trip over: ``DataFile``/``MarkerFile`` must resolve inside the dataset and
  exist, ``SamplingInterval`` must be a positive number, ``NumberOfChannels`` must equal
  the channels listed.
- :func:`read_eeg` opens a recording with MNE without loading its data;
  :func:`file_markers` counts volume markers in the marker file itself, including those
  MNE drops because they lie past the end of the data.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.errors import InputError

_CHUNK = 1 << 22


def _gzip_length(path: Path, label: str) -> int:
    """Decompressed length of a gzip file, read completely (verifies every CRC)."""
    size = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        reason = str(err) or type(err).__name__
        raise InputError(f"{label} {path} is truncated or corrupt (gzip: {reason}); "
                         "download or convert it again.") from None
    return size


def check_nifti(path: Path, *, ndim: int | None = None, label: str = "image") -> Any:
    """Open a NIfTI header and verify, by reading it all, that the file holds its data.

    Parameters
    ----------
    path : Path
        ``.nii`` or ``.nii.gz`` file.
    ndim : int | None
        Required number of dimensions (None: any).
    label : str
        What the file is (``BOLD``, ``T1w``), used in messages.

    Returns
    -------
    nibabel image
        The image with a proxy to its data (nothing is kept in memory).

    Raises
    ------
    InputError
        When the header cannot be read, the dimensions differ, or the data are truncated
        or corrupt.
    """
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for broken headers
        with open(path, "rb") as fh:
            if fh.read(2) == b"\x1f\x8b":  # a gzip file: name a broken stream as such
                _gzip_length(path, label)
        raise InputError(f"{label} {path} cannot be read as NIfTI ({err}).") from None
    if ndim is not None and img.ndim != ndim:
        raise InputError(f"{label} {path} has {img.ndim} dimensions {img.shape}; "
                         f"expected a {ndim}D image.")
    header = img.header
    offset = int(getattr(img.dataobj, "offset", header["vox_offset"]))
    expected = offset + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
    if path.name.endswith(".gz"):
        size = _gzip_length(path, label)
        if size < expected:
            raise InputError(f"{label} {path} is truncated or corrupt ({size} bytes "
                             f"decompressed, header needs {expected}); download or convert "
                             "it again.")
    elif path.stat().st_size < expected:
        raise InputError(f"{label} {path} is truncated ({path.stat().st_size} bytes, "
                         f"header needs {expected}); download or convert it again.")
    return img


def check_events(path: Path) -> None:
    """An events TSV must have numeric, non-decreasing ``onset`` and ``duration``."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
    except Exception as err:
        raise InputError(f"Events file {path} cannot be read as TSV ({err}).") from None
    for column in ("onset", "duration"):
        if column not in table.columns:
            raise InputError(f"Events file {path} has no '{column}' column.")
    onset = pd.to_numeric(table["onset"], errors="coerce").to_numpy()
    if np.isnan(onset).any():
        raise InputError(f"Events file {path} has non-numeric onsets.")
    if np.any(np.diff(onset) < 0):
        line = int(np.argmax(np.diff(onset) < 0)) + 3  # header is line 1
        raise InputError(f"Events file {path} has onsets that go backwards (line {line}); "
                         "sort the events by onset.")


def _sections(text: str) -> dict[str, dict[str, str]]:
    """``[Section]`` -> ``key=value`` of an INI-like BrainVision file (``;`` comments)."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif "=" in line and not line.startswith(";"):
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def read_brainvision_header(vhdr: Path, root: Path | None = None) -> dict[str, dict[str, str]]:
    """Parse a ``.vhdr`` and check the fields MNE relies on.

    Parameters
    ----------
    vhdr : Path
        BrainVision header.
    root : Path | None
        Dataset root: ``DataFile`` and ``MarkerFile`` must resolve inside it (None:
        inside the header's folder).

    Returns
    -------
    dict
        Section -> key -> value.

    Raises
    ------
    InputError
        Unreadable header, a referenced file outside the dataset or missing,
        ``SamplingInterval`` not a positive number, or a channel count that disagrees
        with the channels listed.
    """
    try:
        text = vhdr.read_text(errors="replace")
    except OSError as err:
        raise InputError(f"EEG header {vhdr} cannot be read ({err.strerror}).") from None
    if not re.match(r"Brain ?Vision", (text.strip().splitlines() or [""])[0]):
        raise InputError(f"EEG file {vhdr} cannot be read (not a BrainVision header: its "
                         "first line is not 'Brain Vision Data Exchange Header File').")
    sections = _sections(text)
    common = sections.get("Common Infos", {})
    inside = Path(os.path.abspath(root if root is not None else vhdr.parent))
    for key in ("DataFile", "MarkerFile"):
        if key not in common:
            continue
        target = Path(os.path.abspath(vhdr.parent / common[key]))
        if not target.is_relative_to(inside):
            raise InputError(f"EEG header {vhdr} points to {key} {common[key]}, outside the "
                             f"dataset {inside}; header paths must name files inside the "
                             "dataset, normally beside the header.")
        if not target.is_file():
            broken = " (a broken symbolic link)" if target.is_symlink() else ""
            raise InputError(f"EEG header {vhdr} points to {key} {target.name}{broken}, "
                             "which does not exist.")
    interval = common.get("SamplingInterval")
    try:
        value = float(interval) if interval is not None else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"EEG header {vhdr} has SamplingInterval={interval}; it must be the "
                         "positive time between samples in microseconds (200 for 5000 Hz).")
    declared = common.get("NumberOfChannels", "")
    listed = [k for k in sections.get("Channel Infos", {}) if re.fullmatch(r"Ch\d+", k)]
    if not declared.isdigit() or int(declared) != len(listed):
        raise InputError(f"EEG header {vhdr} declares NumberOfChannels={declared} but lists "
                         f"{len(listed)} channels under [Channel Infos]; make the two agree "
                         "with the channels stored in the data file.")
    return sections


def read_eeg(path: Path, root: Path | None = None) -> Any:
    """Open an EEG recording with MNE without loading its data.

    Parameters
    ----------
    path : Path
        ``.set``, ``.vhdr``, ``.edf``, ``.bdf`` or ``.fif`` file.
    root : Path | None
        Dataset root that BrainVision header paths must stay inside.

    Raises
    ------
    InputError
        When the file (or a file it names) cannot be read.
    """
    import mne

    readers = {".set": mne.io.read_raw_eeglab, ".vhdr": mne.io.read_raw_brainvision,
               ".edf": mne.io.read_raw_edf, ".bdf": mne.io.read_raw_bdf,
               ".fif": mne.io.read_raw_fif}
    if path.suffix == ".vhdr":
        read_brainvision_header(path, root)
    try:
        return readers[path.suffix](path, preload=False, verbose="error")
    except Exception as err:  # MNE/scipy/h5py raise many types for corrupt files
        raise InputError(f"EEG file {path} cannot be read ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'corrupt'}).") from None


def check_finite_samples(raw: Any, path: Path, n_chunks: int = 20,
                         chunk_s: float = 1.0) -> None:
    """Look for NaN/inf in ``n_chunks`` evenly spread one-second pieces (whole if short)."""
    n = raw.n_times
    size = max(1, int(chunk_s * raw.info["sfreq"]))
    if n <= n_chunks * size:
        starts = [0]
        size = n
    else:
        starts = np.linspace(0, n - size, n_chunks).astype(int).tolist()
    for start in starts:
        data = raw.get_data(start=start, stop=start + size)
        if not np.isfinite(data).all():
            raise InputError(f"EEG file {path} contains NaN or infinite samples "
                             f"(near {start / raw.info['sfreq']:.1f} s).")


def file_markers(path: Path, marker: str) -> np.ndarray:
    """Onsets (s) of every ``marker`` stored with a recording, even past its data's end.

    MNE drops annotations outside the data when it opens a recording; this reads the
    ``.vmrk`` (BrainVision) or the ``.set`` events (EEGLAB) directly. Other formats
    return an empty array.
    """
    import mne

    source = path
    if path.suffix == ".vhdr":
        marker_file = _sections(path.read_text(errors="replace")).get(
            "Common Infos", {}).get("MarkerFile")
        if marker_file is None:
            return np.array([])
        source = path.parent / marker_file
    elif path.suffix != ".set":
        return np.array([])
    try:
        annotations = mne.read_annotations(source)
    except Exception:  # noqa: BLE001 - the recording itself was read; markers are extra
        return np.array([])
    return np.array([a["onset"] for a in annotations
                     if str(a["description"]).strip().split("/")[-1].strip() == marker])
