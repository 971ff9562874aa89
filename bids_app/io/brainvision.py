"""BrainVision files: ``.vhdr``/``.vmrk`` headers, marker reading and chunked writing.

The NATVIEW release keeps orphan BrainVision headers beside its EEGLAB files (written for
the simulator by :mod:`bids_app.io.eeglab`); the converter reads their markers and
writes complete BrainVision recordings (``.eeg`` float32 microvolts) for BIDS.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_app.errors import InputError
from bids_app.natview import facts as nv

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Marker:
    """One BrainVision marker.

    Attributes
    ----------
    kind : str
        Marker type ("Response", "Stimulus", "New Segment", "SyncStatus").
    description : str
        Marker description ("R128", "S  1", "Sync On", "").
    sample : int
        0-based sample index.
    """

    kind: str
    description: str
    sample: int


def write_vhdr(fname: Path, *, n_channels_names: tuple[str, ...], sfreq: float) -> Path:
    """Write a BrainVision header whose data file is absent, as in the release.

    Parameters
    ----------
    fname : Path
        Output ``.vhdr`` path; the ``.eeg`` and ``.vmrk`` share its stem.
    n_channels_names : tuple of str
        Channel names.
    sfreq : float
        Sampling frequency in Hz.

    Returns
    -------
    Path
        ``fname``.
    """
    stem = Path(fname).stem
    lines = [
        "Brain Vision Data Exchange Header File Version 1.0",
        "; Data created by the Vision Recorder",
        "",
        "[Common Infos]",
        "Codepage=UTF-8",
        f"DataFile={stem}.eeg",
        f"MarkerFile={stem}.vmrk",
        "DataFormat=BINARY",
        "DataOrientation=MULTIPLEXED",
        f"NumberOfChannels={len(n_channels_names)}",
        f"SamplingInterval={1e6 / sfreq:g}",
        "",
        "[Binary Infos]",
        "BinaryFormat=INT_16",
        "",
        "[Channel Infos]",
    ]
    lines += [f"Ch{i}={name},,0.5,µV" for i, name in enumerate(n_channels_names, start=1)]
    lines += ["", "[Comment]", f"Amplifiers: {nv.AMPLIFIER}; cap: {nv.CAP_MODEL}", ""]
    Path(fname).write_text("\n".join(lines), encoding="utf-8")
    return Path(fname)


def write_vmrk(fname: Path, markers: list[Marker]) -> Path:
    """Write a BrainVision marker file (1-based positions, as the recorder does).

    Parameters
    ----------
    fname : Path
        Output ``.vmrk`` path.
    markers : list of Marker
        Markers in any order (written sorted by sample).

    Returns
    -------
    Path
        ``fname``.
    """
    stem = Path(fname).stem
    lines = [
        "Brain Vision Data Exchange Marker File, Version 1.0",
        "",
        "[Common Infos]",
        "Codepage=UTF-8",
        f"DataFile={stem}.eeg",
        "",
        "[Marker Infos]",
        "; Each entry: Mk<Marker number>=<Type>,<Description>,<Position in data points>,",
        "; <Size in data points>, <Channel number (0 = marker is related to all channels)>",
    ]
    for number, m in enumerate(sorted(markers, key=lambda m: m.sample), start=1):
        extra = ",20180101120000000000" if m.kind == "New Segment" else ""
        desc = m.description.replace(",", r"\1")  # BrainVision escapes commas as \1
        lines.append(f"Mk{number}={m.kind},{desc},{m.sample + 1},1,0{extra}")
    Path(fname).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(fname)


_MARKER_LINE = re.compile(r"^Mk\d+=([^,]*),([^,]*),(\d+),(\d+),(-?\d+)")


def read_vmrk(fname: Path) -> list[Marker]:
    """Read the markers of a BrainVision ``.vmrk`` file.

    Parameters
    ----------
    fname : Path
        Marker file.

    Returns
    -------
    list of Marker
        Markers with 0-based sample indices.

    Raises
    ------
    InputError
        When the file is missing or holds no ``[Marker Infos]`` section.
    """
    try:
        text = Path(fname).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise InputError(f"Marker file {fname} cannot be read ({err.strerror}).") from None
    if "[Marker Infos]" not in text:
        raise InputError(f"Marker file {fname} has no [Marker Infos] section.")
    markers = []
    for line in text.splitlines():
        match = _MARKER_LINE.match(line.strip())
        if match:
            kind, desc, pos = match.group(1), match.group(2), int(match.group(3))
            markers.append(Marker(kind, desc, pos - 1))
    return markers


def write_brainvision(
    vhdr: Path,
    data_v: np.ndarray,
    sfreq: float,
    ch_names: list[str],
    markers: list[Marker],
    *,
    chunk: int = 250_000,
) -> Path:
    """Write BrainVision ``.vhdr``/``.vmrk``/``.eeg`` (float32 microvolts), in chunks.

    Unlike :func:`mne.export.export_raw` this never copies the whole recording, so a
    10-minute 64-channel 5 kHz run converts in about the memory of the data itself.

    Parameters
    ----------
    vhdr : Path
        Output header; the ``.eeg`` and ``.vmrk`` share its stem.
    data_v : ndarray, shape (n_channels, n_times)
        Data in volts.
    sfreq : float
        Sampling frequency (Hz).
    ch_names : list of str
        Channel names.
    markers : list of Marker
        Markers (0-based samples).
    chunk : int
        Samples written per block.

    Returns
    -------
    Path
        ``vhdr``.
    """
    vhdr = Path(vhdr)
    stem = vhdr.stem
    with open(vhdr.with_suffix(".eeg"), "wb") as f:
        for start in range(0, data_v.shape[1], chunk):
            block = np.asarray(data_v[:, start : start + chunk], dtype=np.float64) * 1e6
            f.write(np.ascontiguousarray(block.T, dtype="<f4").tobytes())
    lines = [
        "Brain Vision Data Exchange Header File Version 1.0",
        "; Written by eegfmri (NATVIEW release converted to BIDS)",
        "",
        "[Common Infos]",
        "Codepage=UTF-8",
        f"DataFile={stem}.eeg",
        f"MarkerFile={stem}.vmrk",
        "DataFormat=BINARY",
        "DataOrientation=MULTIPLEXED",
        f"NumberOfChannels={len(ch_names)}",
        f"SamplingInterval={1e6 / sfreq:g}",
        "",
        "[Binary Infos]",
        "BinaryFormat=IEEE_FLOAT_32",
        "",
        "[Channel Infos]",
        "; Each entry: Ch<Channel number>=<Name>,<Reference channel name>,",
        '; <Resolution in "Unit">,<Unit>',
    ]
    lines += [f"Ch{i}={name},,1,µV" for i, name in enumerate(ch_names, start=1)]
    vhdr.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_vmrk(vhdr.with_suffix(".vmrk"), markers)
    return vhdr
