"""Numerical kernels shared by the MR-artifact removers (gradient and pulse).

Zero-phase IIR filtering in the working precision without :func:`scipy.signal.sosfiltfilt`'s
copies, the thread count of an ``n_jobs`` argument, and a copy of a recording whose data
array is allocated but not filled.
"""

from __future__ import annotations

import copy as copy_
import os

import mne
import numpy as np
from scipy import signal

try:  # the in-place kernel behind scipy.signal.sosfilt (no copy of the input)
    from scipy.signal._sosfilt import _sosfilt as _SOSFILT
except ImportError:  # pragma: no cover - depends on the scipy version
    _SOSFILT = None

def zero_phase(sos: np.ndarray, x: np.ndarray, *, padlen: int | None = None,
               padtype: str = "even", dtype=np.float32) -> np.ndarray:  # fmt: skip
    """Forward-backward IIR filter along the last axis, without :func:`sosfiltfilt`'s copies.

    Equals :func:`scipy.signal.sosfiltfilt` (same padding and initial conditions) up to
    rounding in ``dtype``; in float32 it avoids the up-cast to float64 and is ~3x faster.

    Parameters
    ----------
    sos : ndarray, shape (n_sections, 6)
        Second-order sections (e.g. from :func:`scipy.signal.butter`).
    x : ndarray, shape (..., n_times)
        Signals.
    padlen : int | None
        Samples of extension at each end (capped at ``n_times - 1``); None: scipy's default.
    padtype : "even" | "odd"
        Extension type, as in :func:`scipy.signal.sosfiltfilt`.
    dtype : numpy dtype
        Working precision (float32 or float64).

    Returns
    -------
    ndarray, shape like ``x``
        The filtered signals.
    """
    x = np.asarray(x, dtype=dtype)
    shape, n = x.shape, x.shape[-1]
    x = x.reshape(-1, n)
    if padlen is None:
        padlen = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    pad = int(min(padlen, n - 1))
    # filter around the mean (restored times the DC gain): float32 rounding scales with |x|
    offset = x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(dtype)
    dc_gain = float(np.prod(sos[:, :3].sum(axis=1) / sos[:, 3:].sum(axis=1)))
    ext = np.empty((x.shape[0], n + 2 * pad), dtype=dtype)
    np.subtract(x, offset, out=ext[:, pad : pad + n])
    if pad > 0:
        ext[:, :pad] = ext[:, 2 * pad : pad : -1]
        ext[:, pad + n :] = ext[:, pad + n - 2 : n - 2 : -1]
        if padtype == "odd":
            ext[:, :pad] = 2 * ext[:, pad : pad + 1] - ext[:, :pad]
            ext[:, pad + n :] = 2 * ext[:, pad + n - 1 : pad + n] - ext[:, pad + n :]
    sos_t = np.ascontiguousarray(sos, dtype=dtype)
    zi = signal.sosfilt_zi(sos).astype(dtype)
    _sosfilt_inplace(sos_t, ext, zi[None] * ext[:, :1, None])
    ext = np.ascontiguousarray(ext[:, ::-1])
    _sosfilt_inplace(sos_t, ext, zi[None] * ext[:, :1, None])
    y = ext[:, ::-1][:, pad : pad + n]
    y = y + dc_gain * offset if abs(dc_gain) > 1e-12 else y
    return y.reshape(shape)


def _sosfilt_inplace(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> None:
    """Filter the rows of C-contiguous ``x`` in place from states ``zi`` (rows, sections, 2).

    scipy's compiled kernel (which releases the GIL) when importable, else the public
    :func:`scipy.signal.sosfilt` (which copies its input first).
    """
    if _SOSFILT is not None:
        _SOSFILT(sos, x, np.ascontiguousarray(zi, dtype=x.dtype))
    else:  # pragma: no cover - depends on the scipy version
        x[:] = signal.sosfilt(sos, x, axis=-1, zi=np.moveaxis(zi, 0, 1))[0]


def n_threads(n_jobs: int | None) -> int:
    """Threads for ``n_jobs`` (MNE/joblib convention: None is 1, -1 all available CPUs)."""
    if n_jobs is None:
        return 1
    return int(n_jobs) if n_jobs > 0 else max(1, len(os.sched_getaffinity(0)) + 1 + n_jobs)


def copy_for_rewrite(raw: mne.io.BaseRaw) -> tuple[mne.io.BaseRaw, np.ndarray]:
    """Copy of a preloaded ``raw`` whose data array is allocated but not filled.

    For steps that write every row they change from the original: it saves reading and
    writing the whole recording once. Returns the copy and the original data array; the
    caller must fill every row of ``copy._data``.
    """
    src = raw._data
    return copy_.deepcopy(raw, {id(src): np.empty_like(src)}), src
