"""Source <-> channel band-power tables at the local maxima of source power."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_app.coupling.design import standardize


def power_peaks(rr_mm: np.ndarray, values: np.ndarray, *, n_peaks: int = 5,
                min_distance_mm: float = 25.0) -> np.ndarray:
    """Indices of the largest values at least ``min_distance_mm`` apart (greedy)."""
    order = np.argsort(np.asarray(values))[::-1]
    chosen: list[int] = []
    for i in order:
        if all(np.linalg.norm(rr_mm[i] - rr_mm[j]) >= min_distance_mm for j in chosen):
            chosen.append(int(i))
        if len(chosen) == n_peaks:
            break
    return np.asarray(chosen, int)


def source_channel_table(band: str, source_power: np.ndarray, channel_power: np.ndarray,
                         rr_mm: np.ndarray, ch_names: list[str],
                         peaks: np.ndarray) -> pd.DataFrame:
    """Correlation across volume windows of peak-source power with every channel's power.

    Parameters
    ----------
    band : str
        Band name (a column of the table).
    source_power : ndarray, shape (n_win, n_src)
        Source band power.
    channel_power : ndarray, shape (n_win, n_ch)
        Channel band power.
    rr_mm : ndarray, shape (n_src, 3)
        Source positions (MNI mm).
    ch_names : list of str
        Channel names.
    peaks : ndarray of int
        Sources to tabulate (e.g. :func:`power_peaks`).

    Returns
    -------
    DataFrame
        Columns band, source, x, y, z, channel, r (one row per source and channel).
    """
    s = standardize(source_power[:, peaks])
    c = standardize(channel_power)
    r = s.T @ c / len(s)
    rows = []
    for k, idx in enumerate(peaks):
        x, y, z = rr_mm[idx]
        label = f"{band}{k + 1:02d}"
        rows += [(band, label, x, y, z, ch, float(r[k, i])) for i, ch in enumerate(ch_names)]
    return pd.DataFrame(rows, columns=["band", "source", "x", "y", "z", "channel", "r"])
