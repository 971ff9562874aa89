"""Adaptive noise cancellation of gradient-artifact residuals (closed-form, FIR Wiener)."""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import linalg, signal

from bids_app.eeg.kernels import zero_phase


def anc_geometry(sfreq: float, band: tuple[float, float], span: int) -> tuple[int, int]:
    """Decimation factor (work rate ~ 4 x the band's upper edge) and FIR half-length."""
    q = max(1, int(sfreq // (4 * band[1])))
    return q, max(1, int(np.ceil(span / q)))


def adaptive_noise_cancel(
    data: np.ndarray,
    reference: np.ndarray,
    sfreq: float,
    *,
    band: tuple[float, float | None] = (70.0, None),
    span: int = 280,
    ridge: float = 1e-6,
) -> np.ndarray:
    """Remove from each channel the part that is a linear filter of its artifact reference.

    Adaptive noise cancellation (ANC; Allen et al. 2000, FASTR) passes a reference of the
    artifact through an adaptive FIR filter (LMS) and subtracts its output. This is the
    closed-form counterpart: per channel, the FIR filter with ``2 * K + 1`` taps (lags
    ``-K..K`` covering one slice period) minimising the squared error over the whole
    recording is found from the Toeplitz normal equations (the Wiener solution an LMS filter
    converges to), in ``band``, at a rate of about four times its upper edge. Correlations
    and filtering use FFTs: no loop over samples.

    Parameters
    ----------
    data : ndarray, shape (n_channels, n_times)
        Corrected (and low-passed) data.
    reference : ndarray, shape (n_channels, n_times)
        The artifact estimate that was subtracted from each channel, filtered like ``data``.
    sfreq : float
        Sampling rate (Hz).
    band : tuple of (float, float | None)
        Band (Hz) where the filter is fitted and applied (None: up to 0.45 x ``sfreq``). It
        should exclude the EEG band: templates carry a trace of the EEG, and a filter fitted
        where EEG has power would use that trace to cancel narrow-band EEG (alpha, SSVEP).
        ``data`` must hold no power above the upper edge unless it is close to Nyquist.
    span : int
        Samples (at ``sfreq``) covered by the filter on each side (one slice period).
    ridge : float
        Relative diagonal loading of the normal equations.

    Returns
    -------
    ndarray, float32
        ``data`` minus the filtered reference.
    """
    lo, hi = band[0], band[1] or 0.45 * sfreq
    q, k = anc_geometry(sfreq, (lo, hi), span)
    fs = sfreq / q
    sos = signal.butter(4, [lo, min(hi, 0.45 * fs)], "bandpass", fs=fs, output="sos")
    e = zero_phase(sos, data[..., ::q], padlen=int(fs)).astype(np.float64)
    r = zero_phase(sos, reference[..., ::q], padlen=int(fs)).astype(np.float64)
    n = e.shape[-1]
    n_fft = sfft.next_fast_len(n + 2 * k + 1, real=True)
    rs = sfft.rfft(r, n=n_fft, axis=-1)
    acf = sfft.irfft(np.abs(rs) ** 2, n=n_fft, axis=-1)[..., : 2 * k + 1]
    ccf = sfft.irfft(sfft.rfft(e, n=n_fft, axis=-1) * np.conj(rs), n=n_fft, axis=-1)
    ccf = np.concatenate([ccf[..., -k:], ccf[..., : k + 1]], axis=-1)  # lags -k..k
    taps = np.zeros((e.shape[0], 2 * k + 1))
    for c in range(e.shape[0]):
        col = acf[c].copy()
        if col[0] <= 0:
            continue  # no reference on this channel
        col[0] *= 1.0 + ridge
        taps[c] = linalg.solve_toeplitz(col, ccf[c])
    fit = sfft.irfft(rs * sfft.rfft(taps, n=n_fft, axis=-1), n=n_fft, axis=-1)[..., k : k + n]
    # band-limit the correction too: outside the band the filter is unconstrained
    fit = zero_phase(sos, fit, padlen=int(fs))
    out = np.array(data, dtype=np.float32)
    if q == 1:
        out -= fit.astype(np.float32)
    else:
        t_full, t_low = np.arange(out.shape[-1]), np.arange(n) * q
        for c in range(out.shape[0]):
            out[c] -= np.interp(t_full, t_low, fit[c]).astype(np.float32)
    return out
