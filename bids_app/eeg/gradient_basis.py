"""Slice-shape basis of the gradient artifact, for artifacts that differ between slices.

A moving-average slice template assumes every slice plays the same waveform. On a real
scanner each slice position has its own waveform (slice-select frequency, eddy currents),
the amplitude changes from volume to volume and a head movement changes every channel's
loop areas; the template then leaves the difference, which has power below the low-pass
and so survives it. Each of these differences is a mixture of the few waveforms the
gradient coils play, the same on every channel. This module finds them and removes them
from each slice epoch without letting EEG into the fit:

1. :func:`shape_basis`: the principal components (across EEG channels and slice
   positions) of the slice artifact averaged per slice position over the volumes, on data
   high-passed at the template frequency; the EEG averages out of these means (thousandths
   of the artifact), so the components are artifact shapes. The ECG is left out: its beats
   do not average out of a few volumes.
2. :func:`fit_shapes`: per channel and slice epoch, the least-squares coefficients of the
   shapes on the template's residual above ``obs_highpass`` (where the EEG has no power)
   and on the columns every slice owns; the full-band shapes times these coefficients are
   added to the epoch's template. Fitted per epoch, they follow a head movement at once
   (a template of neighbouring slices straddles it for a volume or two).
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft


def shape_basis(mean_epochs: np.ndarray, n_fft: int, cols: slice, hf0: int, *,
                max_components: int = 6, min_fraction: float = 1e-4,
                min_high: float = 0.05) -> np.ndarray | None:  # fmt: skip
    """Spectra of the principal slice shapes.

    Parameters
    ----------
    mean_epochs : ndarray, shape (n_rows, width)
        Aligned slice epochs averaged over volumes, one row per channel and slice position.
    n_fft : int
        FFT length of the epochs (the shapes are zero beyond ``width``).
    cols : slice
        Columns that every slice owns.
    hf0 : int
        First rfft bin of the band :func:`fit_shapes` fits on (above the EEG band).
    max_components : int
        Most shapes kept.
    min_fraction : float
        Shapes explaining less than this fraction of the variance of the rows are dropped.
    min_high : float
        Shapes with less than this fraction of their power above ``hf0`` are dropped.

    Returns
    -------
    ndarray, shape (n_shapes, n_fft // 2 + 1), complex64 | None
        Shape spectra (unit norm in time), None when no row carries an artifact.
    """
    rows = np.asarray(mean_epochs, dtype=np.float64)
    if not np.any(rows):
        return None
    u, s, _ = np.linalg.svd(rows[:, cols], full_matrices=False)
    power = s**2 / np.sum(s**2)
    keep = np.flatnonzero(power > min_fraction)[:max_components]
    shapes = np.zeros((keep.size, n_fft))
    shapes[:, : rows.shape[1]] = (u[:, keep] / s[keep]).T @ rows
    spec = sfft.rfft(shapes, axis=-1)
    # a shape with little content above hf0 cannot be fitted there without amplifying noise
    high = np.sum(np.abs(spec[:, hf0:]) ** 2, axis=1) / np.sum(np.abs(spec) ** 2, axis=1)
    spec = spec[high >= min_high]
    return spec.astype(np.complex64) if spec.shape[0] else None


def fit_matrix(basis: np.ndarray, hf0: int, cols: slice) -> np.ndarray:
    """Matrix giving the shape coefficients of a residual from its spectrum above ``hf0``.

    The least-squares coefficients of the shapes' content above ``hf0`` on the columns
    ``cols``, fitted to the same content of a residual, are a linear function of the
    residual's spectrum from bin ``hf0`` on (real and imaginary parts interleaved, as
    ``complex64.view(float32)`` lays them out); this returns that function.

    Parameters
    ----------
    basis : ndarray, shape (n_shapes, n_bins), complex64
        Shape spectra from :func:`shape_basis`.
    hf0 : int
        First bin of the fit.
    cols : slice
        Columns of the epochs on which the fit is made (the part every slice owns).

    Returns
    -------
    ndarray, shape (2 * (n_bins - hf0), n_shapes), float32
    """
    n_bins = basis.shape[-1]
    n_fft = 2 * (n_bins - 1)
    unit = np.zeros((2 * (n_bins - hf0), n_bins), dtype=np.complex128)
    k = np.arange(n_bins - hf0)
    unit[2 * k, hf0 + k] = 1.0
    unit[2 * k + 1, hf0 + k] = 1.0j
    to_time = sfft.irfft(unit, n=n_fft, axis=-1)[:, cols]  # spectrum -> owned columns
    high = basis.astype(np.complex128).copy()
    high[:, :hf0] = 0
    shapes_high = sfft.irfft(high, n=n_fft, axis=-1)[:, cols]
    return (to_time @ np.linalg.pinv(shapes_high)).astype(np.float32)


def fit_shapes(resid_hf: np.ndarray, basis: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Full-band shape mixture that best explains each epoch's residual above ``hf0``.

    Parameters
    ----------
    resid_hf : ndarray, shape (n_channels, n_epochs, n_bins - hf0), complex64
        Residual spectra (aligned epochs minus template) from bin ``hf0`` on.
    basis : ndarray, shape (n_shapes, n_bins), complex64
        Shape spectra from :func:`shape_basis`.
    matrix : ndarray
        :func:`fit_matrix` of ``basis``.

    Returns
    -------
    ndarray, shape (n_channels, n_epochs, n_bins), complex64
        The fitted mixture, full band.
    """
    coef = np.ascontiguousarray(resid_hf).view(np.float32) @ matrix
    return coef.astype(np.complex64) @ basis
