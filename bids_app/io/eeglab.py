"""EEGLAB ``.set`` files (single precision, data inside), as the NATVIEW release stores EEG.

Reading goes through MNE (``mne.io.read_raw_eeglab``); this module writes them. The
BrainVision side (headers, markers, reading markers) is in :mod:`bids_app.io.brainvision`;
the release's whole EEG layout is written by :mod:`bids_app.simulate.release_eeg`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bids_app.io.brainvision import Marker
from bids_app.natview import facts as nv

logger = logging.getLogger(__name__)



def write_set(
    fname: Path,
    data_v: np.ndarray,
    sfreq: float,
    markers: list[Marker],
    *,
    ch_names: tuple[str, ...] = nv.CHANNEL_NAMES,
) -> Path:
    """Write continuous EEG as a single-precision EEGLAB ``.set`` (data inside the file).

    Parameters
    ----------
    fname : Path
        Output ``.set`` path.
    data_v : ndarray, shape (n_channels, n_times)
        Data in volts (stored in microvolts as EEGLAB does).
    sfreq : float
        Sampling frequency in Hz.
    markers : list of Marker
        Events; recorder ``New Segment`` markers become EEGLAB ``boundary`` events,
        ``SyncStatus`` markers are not stored (the recorder keeps them in the ``.vmrk``).
    ch_names : tuple of str
        Channel names in data order.

    Returns
    -------
    Path
        ``fname``.
    """
    from eeglabio.raw import export_set

    kept = [m for m in markers if m.kind not in ("SyncStatus",)]
    names = np.array(
        ["boundary" if m.kind == "New Segment" else m.description for m in kept], dtype=object
    )
    onsets = np.array([m.sample / sfreq for m in kept], dtype=float)
    durations = np.zeros(len(kept))
    ch_types = [nv.CHANNEL_TYPES.get(c, "eeg").upper() for c in ch_names]
    export_set(
        str(fname),
        data_v,
        sfreq,
        list(ch_names),
        annotations=[names, onsets, durations],
        ref_channels=nv.EEG_REFERENCE,
        ch_types=ch_types,
        precision="single",
    )
    return Path(fname)
