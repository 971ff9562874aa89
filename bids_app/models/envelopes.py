"""Log band-power envelopes: the EEG as EEG-informed fMRI reads it.

BOLD follows the power of EEG rhythms, not the EEG's sign (Goldman et al. 2002; Laufs et
al. 2003), and a linear map of raw EEG samples carries no band power. The group windows
can therefore hold, instead of the EEG, one row per channel and band with the log power
envelope of that band, computed on the continuous run at the EEG's own rate (so bands
above the window rate's Nyquist frequency survive the downsampling). Masking an EEG
timestamp then removes the band power of every channel at that instant.

References
----------
Goldman RI, Stern JM, Engel J, Cohen MS (2002). Simultaneous EEG and fMRI of the alpha
rhythm. NeuroReport 13:2487-2492.
Laufs H, et al. (2003). EEG-correlated fMRI of human alpha activity. NeuroImage
19:1463-1476.
"""

from __future__ import annotations

import mne
import numpy as np


def usable_bands(bands: tuple[tuple[str, float, float], ...], sfreq: float
                 ) -> tuple[tuple[str, float, float], ...]:
    """The bands whose upper edge lies below the Nyquist frequency of ``sfreq``."""
    return tuple((str(b[0]), float(b[1]), float(b[2])) for b in bands if b[2] < sfreq / 2)


def band_envelopes(eeg: np.ndarray, sfreq: float,
                   bands: tuple[tuple[str, float, float], ...]) -> np.ndarray:
    """Log band-power envelopes of continuous EEG, one row per channel and band.

    Each channel is band-pass filtered (zero-phase FIR, MNE defaults) in each band; the
    power envelope is the squared magnitude of the analytic signal (Hilbert transform),
    smoothed by a 0.25 s moving average and log-transformed (``log(p + 1e-3 * mean p)``).
    This is the EEG feature of EEG-informed fMRI (Goldman et al. 2002; Laufs et al. 2003):
    BOLD follows band power, not the EEG's sign.

    Parameters
    ----------
    eeg : numpy.ndarray
        ``(C, n)`` continuous EEG.
    sfreq : float
        Its sampling rate; every band must end below ``sfreq / 2``.
    bands : tuple of (name, low, high)
        Frequency bands (Hz).

    Returns
    -------
    numpy.ndarray
        ``(C * B, n)`` float64, channel-major (row ``c * B + b``).
    """
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import hilbert

    eeg = np.asarray(eeg, dtype=np.float64)
    out = np.empty((eeg.shape[0], len(bands), eeg.shape[1]))
    smooth = max(1, int(round(0.25 * sfreq)))
    for b, (_, lo, hi) in enumerate(bands):
        if hi >= sfreq / 2:
            raise ValueError(f"band {bands[b][0]} ({lo}-{hi} Hz) does not fit below the "
                             f"Nyquist frequency of {sfreq} Hz.")
        filt = mne.filter.filter_data(eeg, sfreq, lo, hi, verbose=False)
        power = uniform_filter1d(np.abs(hilbert(filt, axis=-1)) ** 2, smooth, axis=-1)
        out[:, b] = np.log(power + 1e-3 * power.mean(axis=-1, keepdims=True) + 1e-30)
    return out.reshape(-1, eeg.shape[1])
