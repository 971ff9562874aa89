"""Masking inputs: the windows, the baselines masked units take, and unit occurrences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASELINES = ("zero", "mean", "conditional")
UNIT_KINDS = ("eeg", "fmri")


@dataclass(frozen=True)
class MaskingData:
    """Windows on which the models are occluded.

    Attributes
    ----------
    x_eeg : numpy.ndarray
        ``(N, C, T)`` z-scored EEG windows.
    x_fmri : numpy.ndarray
        ``(N, V)`` z-scored brain-masked volumes.
    stimulus : numpy.ndarray
        ``(N, F)`` stimulus features of each window (targets of VAE-2).
    eeg_units : numpy.ndarray
        ``(N, T)`` integer id of the absolute EEG timestamp at each window position;
        overlapping windows share ids. Ids index the caller's timestamp table.
    window_runs : numpy.ndarray | None
        ``(N,)`` run index of every window (for the ``"mean"`` baseline); None: one run.
    voxel_neighbors : numpy.ndarray | None
        ``(V, K)`` indices of the spatial neighbours of each voxel (``-1`` pads), for the
        ``"conditional"`` baseline; None: the run mean is used instead.
    """

    x_eeg: np.ndarray
    x_fmri: np.ndarray
    stimulus: np.ndarray
    eeg_units: np.ndarray
    window_runs: np.ndarray | None = None
    voxel_neighbors: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, _, t = self.x_eeg.shape
        if self.x_fmri.shape[0] != n or self.stimulus.shape[0] != n:
            raise ValueError("x_eeg, x_fmri and stimulus must have the same number of windows.")
        if self.eeg_units.shape != (n, t):
            raise ValueError(f"eeg_units must have shape {(n, t)}, got {self.eeg_units.shape}.")
        if self.window_runs is not None and self.window_runs.shape != (n,):
            raise ValueError("window_runs must have one entry per window.")

    @property
    def n_windows(self) -> int:
        """Number of windows ``N``."""
        return int(self.x_eeg.shape[0])


def _run_means(x: np.ndarray, runs: np.ndarray | None) -> np.ndarray:
    """Per-run mean of ``x`` over windows (and EEG positions), broadcast to ``x``'s shape."""
    runs = np.zeros(x.shape[0], dtype=int) if runs is None else np.asarray(runs)
    out = np.empty_like(x, dtype=np.float32)
    for r in np.unique(runs):
        sel = runs == r
        axes = (0, 2) if x.ndim == 3 else (0,)
        out[sel] = x[sel].mean(axis=axes, keepdims=True)
    return out


def compute_baseline(data: MaskingData, kind: str, baseline: str) -> np.ndarray:
    """Value every unit takes when it is masked, at every window position.

    Parameters
    ----------
    data : MaskingData
        The windows.
    kind : {"eeg", "fmri"}
        Which modality's units.
    baseline : {"zero", "mean", "conditional"}
        ``"zero"``: 0 (the z-scored mean); ``"mean"``: the run mean of the channel or
        voxel; ``"conditional"``: the mean of the neighbouring units in the same window
        (the two adjacent timestamps; the neighbour voxels), the conditional expectation
        used by prediction-difference analysis (Zintgraf et al. 2017).

    Returns
    -------
    numpy.ndarray
        Same shape as ``data.x_eeg`` (kind "eeg") or ``data.x_fmri`` (kind "fmri").
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}.")
    x = np.asarray(data.x_eeg if kind == "eeg" else data.x_fmri, dtype=np.float32)
    if baseline == "zero":
        return np.zeros_like(x)
    if baseline == "mean":
        return _run_means(x, data.window_runs)
    if kind == "eeg":
        pad = np.pad(x, ((0, 0), (0, 0), (1, 1)), mode="constant")
        count = np.full(x.shape[2], 2.0, dtype=np.float32)
        count[0] -= 1
        count[-1] -= 1
        return (pad[:, :, :-2] + pad[:, :, 2:]) / np.maximum(count, 1.0)
    if data.voxel_neighbors is None:
        return _run_means(x, data.window_runs)
    nb = np.asarray(data.voxel_neighbors)
    valid = nb >= 0
    vals = x[:, np.where(valid, nb, 0)] * valid[None]
    n = valid.sum(axis=1)
    out = vals.sum(axis=2) / np.maximum(n, 1)[None]
    return np.where(n[None] > 0, out, _run_means(x, data.window_runs)).astype(np.float32)


def occurrences(data: MaskingData, kind: str, subset: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (unit, window, position) where a unit appears, grouped by unit.

    ``subset`` restricts the result to these unit ids (e.g. a region of interest).

    Returns
    -------
    units : numpy.ndarray
        ``(U,)`` sorted unit ids (EEG timestamp ids, or voxel indices).
    starts : numpy.ndarray
        ``(U + 1,)`` offsets of each unit's occurrences.
    occ : numpy.ndarray
        ``(n_occ, 2)`` window index and position (EEG column ``t`` or voxel ``v``).
    """
    n = data.n_windows
    if kind == "eeg":
        ids = np.asarray(data.eeg_units).ravel()
        order = np.argsort(ids, kind="stable")
        win, pos = np.divmod(order, data.x_eeg.shape[2])
        all_units, first = np.unique(ids[order], return_index=True)
    elif kind == "fmri":  # every voxel occurs in every window
        all_units = np.arange(data.x_fmri.shape[1])
        if subset is not None:
            all_units, subset = all_units[np.isin(all_units, np.asarray(subset))], None
        first = np.arange(len(all_units)) * n
        pos = np.repeat(all_units, n)
        win = np.tile(np.arange(n), len(all_units))
    else:
        raise ValueError(f"kind must be one of {UNIT_KINDS}, got {kind!r}.")
    starts = np.append(first, len(win)).astype(np.int64)
    occ = np.stack([win, pos], axis=1).astype(np.int64)
    if subset is not None:
        keep = np.isin(all_units, np.asarray(subset))
        counts = np.diff(starts)[keep]
        occ = np.concatenate([occ[starts[i] : starts[i + 1]] for i in np.flatnonzero(keep)]
                             or [occ[:0]])
        all_units, starts = all_units[keep], np.append(0, np.cumsum(counts)).astype(np.int64)
    return all_units, starts, occ
