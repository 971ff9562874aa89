"""Slice-timing correction by Fourier phase shift.

Each slice's time series is shifted to the reference time ``slice_time_ref * TR`` (the
fraction-of-TR convention of fMRIPrep's ``--slice-time-ref``; 0.5 by default): a slice
acquired ``SliceTiming[k]`` seconds after the volume onset is resampled at
``t * TR + slice_time_ref * TR``. The shift is applied in the frequency domain (band-limited
sinc interpolation, as AFNI ``3dTshift -Fourier``) after removing each voxel's linear trend
and mirror-padding the series, so the ends do not wrap around.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import fft

logger = logging.getLogger(__name__)


def slice_time_reference(slice_timing: Sequence[float], tr: float, ref: float) -> float:
    """Seconds after volume onset that a corrected volume represents.

    Parameters
    ----------
    slice_timing : sequence of float
        SliceTiming in seconds.
    tr : float
        Repetition time in seconds.
    ref : float
        Fraction (0-1) of the acquisition span, as fMRIPrep's ``--slice-time-ref``: 0 = the
        first slice, 1 = the last slice, 0.5 = midway.

    Returns
    -------
    float
    """
    if not 0.0 <= ref <= 1.0:
        raise ValueError(f"slice_time_ref must be within [0, 1], got {ref}.")
    times = np.asarray(slice_timing, dtype=float)
    return float(times.min() + ref * (times.max() - times.min()))


def shift_series(series: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Resample series at fractional sample offsets.

    Parameters
    ----------
    series : array, shape (..., T)
        Time series along the last axis.
    shift : array broadcastable to ``series.shape[:-1]``
        Offset in samples: the output at index ``t`` is the series at ``t + shift``.

    Returns
    -------
    ndarray, same shape as ``series`` (float32)
    """
    x = np.asarray(series, dtype=np.float32)
    n = x.shape[-1]
    if n < 3:
        return x.copy()
    tt = np.arange(n, dtype=np.float32)
    t_mean = tt.mean()
    slope = ((x - x.mean(axis=-1, keepdims=True)) * (tt - t_mean)).sum(-1, keepdims=True) / (
        ((tt - t_mean) ** 2).sum()
    )
    intercept = x.mean(axis=-1, keepdims=True) - slope * t_mean
    resid = x - (intercept + slope * tt)
    padded = np.concatenate([resid, resid[..., ::-1]], axis=-1)
    spectrum = fft.rfft(padded, axis=-1, workers=-1)
    freqs = fft.rfftfreq(2 * n).astype(np.float32)
    shift = np.asarray(shift, dtype=np.float32)[..., None]
    spectrum *= np.exp(2j * np.pi * freqs * shift).astype(np.complex64)
    out = fft.irfft(spectrum, n=2 * n, axis=-1, workers=-1)[..., :n]
    return (out + intercept + slope * (tt + shift)).astype(np.float32)


def slice_time_correct(
    data: np.ndarray,
    slice_timing: Sequence[float],
    tr: float,
    *,
    ref: float = 0.5,
    slice_axis: int = 2,
) -> tuple[np.ndarray, float]:
    """Shift every slice to the reference time.

    Parameters
    ----------
    data : array, shape (X, Y, Z, T)
        BOLD series.
    slice_timing : sequence of float
        Acquisition time (s) of each slice along ``slice_axis``.
    tr : float
        Repetition time (s).
    ref : float
        Reference as a fraction of the acquisition span (see :func:`slice_time_reference`).
    slice_axis : int
        Axis of the slices (BIDS ``SliceEncodingDirection``: i=0, j=1, k=2).

    Returns
    -------
    corrected : ndarray (float32), same shape as ``data``
    ref_time_s : float
        Seconds after each volume onset that the corrected volume represents.
    """
    data = np.asarray(data)
    times = np.asarray(slice_timing, dtype=float)
    if data.ndim != 4 or data.shape[slice_axis] != len(times):
        raise ValueError(
            f"SliceTiming has {len(times)} entries but the BOLD series has shape {data.shape}."
        )
    ref_time = slice_time_reference(times, tr, ref)
    out = np.empty(data.shape, dtype=np.float32)
    for k, t_k in enumerate(times):
        index = [slice(None)] * 4
        index[slice_axis] = k
        out[tuple(index)] = shift_series(data[tuple(index)], (ref_time - t_k) / tr)
    logger.debug("Slice-timing corrected %d slices to %.3f s.", len(times), ref_time)
    return out, ref_time
