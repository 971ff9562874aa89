"""Band-power features of EEG channels per fMRI volume window.

The band power of any linear projection ``y = k x`` of the channels over a window is
``k C k^T`` with ``C`` the window's covariance of the band-filtered channels, so per-window
band covariances give channel power (their diagonal) and source power (through the inverse
kernel, :func:`bids_app.eeg.source.source_power`) without materialising source time series.
"""

from __future__ import annotations

import logging

import mne
import numpy as np
from scipy import signal

logger = logging.getLogger(__name__)


def band_filter(data: np.ndarray, sfreq: float, l_freq: float, h_freq: float) -> np.ndarray:
    """Zero-phase FIR band-pass of (n_ch, n_times) data (MNE defaults, transition bands auto).

    Parameters
    ----------
    data : ndarray, shape (n_ch, n_times)
        Signals.
    sfreq : float
        Sampling rate.
    l_freq, h_freq : float
        Pass band edges in Hz.

    Returns
    -------
    ndarray
        Filtered data (float64).
    """
    h = min(h_freq, 0.45 * sfreq)
    return mne.filter.filter_data(np.asarray(data, np.float64), sfreq, l_freq, h,
                                  verbose="error")


def band_gain(sfreq: float, l_freq: float, h_freq: float, freqs: np.ndarray) -> np.ndarray:
    """Power gain ``|H(f)|^2`` of :func:`band_filter`'s FIR band-pass at ``freqs``.

    Parameters
    ----------
    sfreq : float
        Sampling rate.
    l_freq, h_freq : float
        Pass band edges in Hz (as given to :func:`band_filter`).
    freqs : ndarray
        Frequencies (Hz).

    Returns
    -------
    ndarray
        Gain at each frequency (1 in the pass band, 0 far in the stop bands).
    """
    h = mne.filter.create_filter(None, sfreq, l_freq, min(h_freq, 0.45 * sfreq),
                                 verbose="error")
    n_fft = max(8192, 2 ** int(np.ceil(np.log2(len(h)))))
    gain = np.abs(np.fft.rfft(h, n_fft)) ** 2
    return np.interp(freqs, np.fft.rfftfreq(n_fft, 1.0 / sfreq), gain)


def welch_csd(data: np.ndarray, sfreq: float, *, fmin: float, fmax: float,
              segment_s: float = 2.0, good: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Real part of the channel cross-spectral density (Welch: Hann, 50 % overlap).

    Only segments whose samples are all good are averaged. The diagonal is the one-sided
    power spectral density (V^2/Hz) of :func:`scipy.signal.welch` with the same segments
    (between DC and Nyquist).

    Parameters
    ----------
    data : ndarray, shape (n_ch, n_times)
        Channel data.
    sfreq : float
        Sampling rate.
    fmin, fmax : float
        Frequency range kept (Hz).
    segment_s : float
        Segment length (s); the frequency resolution is ``1 / segment_s``.
    good : ndarray of bool | None
        Good samples (see :func:`good_samples`); None uses all.

    Returns
    -------
    freqs : ndarray, shape (n_freqs,)
    csd : ndarray, shape (n_freqs, n_ch, n_ch)
        NaN when no segment is good.
    """
    n = int(round(segment_s * sfreq))
    window = signal.get_window("hann", n)
    freqs = np.fft.rfftfreq(n, 1.0 / sfreq)
    keep = (freqs >= fmin) & (freqs <= fmax)
    acc = np.zeros((int(keep.sum()), data.shape[0], data.shape[0]))
    count = 0
    for start in range(0, data.shape[1] - n + 1, n // 2):
        if good is not None and not good[start:start + n].all():
            continue
        seg = np.asarray(data[:, start:start + n], np.float64)
        spec = np.fft.rfft((seg - seg.mean(axis=1, keepdims=True)) * window, axis=1)[:, keep]
        acc += np.einsum("cf,df->fcd", spec.real, spec.real)
        acc += np.einsum("cf,df->fcd", spec.imag, spec.imag)
        count += 1
    if count == 0:
        return freqs[keep], np.full_like(acc, np.nan)
    scale = 2.0 / (sfreq * np.sum(window**2))
    return freqs[keep], acc * (scale / count)


def window_bounds(onsets_s: np.ndarray, length_s: float, sfreq: float, n_times: int,
                  *, first_sample_s: float = 0.0) -> np.ndarray:
    """Sample bounds (n_win, 2) of windows ``[onset, onset + length)`` clipped to the data."""
    start = np.round((np.asarray(onsets_s, float) - first_sample_s) * sfreq).astype(int)
    stop = start + int(round(length_s * sfreq))
    return np.clip(np.stack([start, stop], 1), 0, n_times)


def good_samples(raw: mne.io.BaseRaw) -> np.ndarray:
    """Boolean mask of samples outside annotations whose description starts with "bad"."""
    good = np.ones(raw.n_times, bool)
    for annot in raw.annotations:
        if annot["description"].lower().startswith(("bad", "edge")):
            a = int(round((annot["onset"] - raw.first_time) * raw.info["sfreq"]))
            b = a + int(round(annot["duration"] * raw.info["sfreq"]))
            good[max(a, 0):max(b, 0)] = False
    return good


def window_covariances(data: np.ndarray, bounds: np.ndarray,
                       good: np.ndarray | None = None, *, min_fraction: float = 0.25
                       ) -> np.ndarray:
    """Covariance (mean of outer products, no centring) of each window's good samples.

    Parameters
    ----------
    data : ndarray, shape (n_ch, n_times)
        Band-filtered data (zero mean by construction).
    bounds : ndarray, shape (n_win, 2)
        Sample bounds from :func:`window_bounds`.
    good : ndarray of bool | None
        Samples to use (e.g. :func:`good_samples`); None uses all.
    min_fraction : float
        Windows with fewer good samples than this fraction are NaN.

    Returns
    -------
    ndarray, shape (n_win, n_ch, n_ch)
        NaN for empty or mostly bad windows (volumes outside the recording, bad segments).
    """
    n_ch = data.shape[0]
    covs = np.full((len(bounds), n_ch, n_ch), np.nan)
    for w, (a, b) in enumerate(bounds):
        seg = data[:, a:b] if good is None else data[:, a:b][:, good[a:b]]
        if b > a and seg.shape[1] >= min_fraction * (b - a):
            covs[w] = seg @ seg.T / seg.shape[1]
    return covs


def band_covariances(data: np.ndarray, sfreq: float, bands: tuple[tuple[str, float, float], ...],
                     bounds: np.ndarray, good: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
    """Per-band window covariances of (n_ch, n_times) data.

    Parameters
    ----------
    data : ndarray, shape (n_ch, n_times)
        Channel data in volts.
    sfreq : float
        Sampling rate.
    bands : tuple of (name, l_freq, h_freq)
        Frequency bands (``config.source.bands``).
    bounds : ndarray, shape (n_win, 2)
        Window sample bounds.
    good : ndarray of bool | None
        Good samples (see :func:`window_covariances`).

    Returns
    -------
    dict
        Band name -> (n_win, n_ch, n_ch) covariances in V^2.
    """
    out = {}
    for name, lo, hi in bands:
        out[name] = window_covariances(band_filter(data, sfreq, lo, hi), bounds, good)
        logger.debug("Band %s (%.1f-%.1f Hz): %d windows.", name, lo, hi, len(bounds))
    return out


def channel_power(covs: np.ndarray) -> np.ndarray:
    """Channel band power (n_win, n_ch) from window covariances."""
    return np.einsum("wcc->wc", covs)
