"""Quality metrics of the in-scanner EEG cleaning (computed, never plotted, here).

The metrics need no ground truth: they compare the data before and after a step.

- gradient: RMS ratio within the scan, power reduction (dB) at the slice-frequency and
  volume-frequency harmonics below 70 Hz;
- BCG: RMS of the cardiac-locked average after / before removal;
- the cleaning chain: bad channels, rejected independent components, markers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import signal

QC_COLUMNS: dict[str, dict[str, str]] = {
    "name": {"LongName": "Channel name", "Description": "Label of the EEG channel."},
    "status": {"LongName": "Channel status",
               "Description": "bad if the channel was detected as bad and interpolated."},
    "gradient_rms_ratio": {
        "LongName": "Gradient residual RMS ratio",
        "Description": "RMS after / before gradient removal within the scan (1-70 Hz).",
        "Units": "ratio"},
    "slice_harmonics_reduction_db": {
        "LongName": "Power reduction at slice harmonics",
        "Description": "Power before / after gradient removal summed within 0.25 Hz of the "
                       "slice-frequency harmonics below 70 Hz.",
        "Units": "dB"},
    "volume_harmonics_reduction_db": {
        "LongName": "Power reduction at volume harmonics",
        "Description": "As slice_harmonics_reduction_db, at the first 20 volume-frequency "
                       "harmonics.",
        "Units": "dB"},
    "bcg_locked_residual_ratio": {
        "LongName": "Cardiac-locked residual",
        "Description": "RMS of the average 0-0.8 s epoch after each cardiac event, after / "
                       "before pulse-artifact removal.",
        "Units": "ratio"},
}  # fmt: skip


def decimated(data: np.ndarray, sfreq: float, target: float = 500.0) -> tuple[np.ndarray, float]:
    """Block-average ``data`` to about ``target`` Hz (cheap summary for QC and figures)."""
    q = max(1, int(sfreq // target))
    n = data.shape[-1] // q * q
    return data[..., :n].reshape(*data.shape[:-1], -1, q).mean(axis=-1), sfreq / q


def harmonic_power(x: np.ndarray, sfreq: float, freqs: np.ndarray, half_width: float = 0.25):
    """Power of each row of ``x`` summed within ``half_width`` Hz of ``freqs`` (Welch, 8 s)."""
    nper = min(x.shape[-1], int(8 * sfreq))
    f, p = signal.welch(x, sfreq, nperseg=nper, axis=-1)
    near = (np.abs(f[:, None] - np.asarray(freqs)[None, :]) <= half_width).any(axis=1)
    return p[..., near].sum(axis=-1)


def gradient_metrics(before: np.ndarray, after: np.ndarray, sfreq: float, *,
                     slice_freq: float, volume_freq: float) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-channel gradient metrics from in-scan data before and after correction.

    Parameters
    ----------
    before, after : ndarray, shape (n_channels, n_times)
        Data within the scan (same samples), e.g. from :func:`decimated`.
    sfreq : float
        Their sampling rate.
    slice_freq, volume_freq : float
        Slice and volume acquisition rates (Hz).

    Returns
    -------
    dict
        ``gradient_rms_ratio``, ``slice_harmonics_reduction_db``,
        ``volume_harmonics_reduction_db`` (one value per channel).
    """
    sos = signal.butter(4, [1.0, min(70.0, 0.45 * sfreq)], "bandpass", fs=sfreq, output="sos")
    b, a = signal.sosfiltfilt(sos, before), signal.sosfiltfilt(sos, after)
    slices = slice_freq * np.arange(1, int(70 // slice_freq) + 1)
    volumes = volume_freq * np.arange(1, 21)
    volumes = volumes[np.abs(volumes[:, None] - slices[None, :]).min(axis=1) > 0.5]
    out = {"gradient_rms_ratio": np.sqrt(np.mean(a**2, axis=1) / np.mean(b**2, axis=1))}
    for key, freqs in (("slice_harmonics_reduction_db", slices),
                       ("volume_harmonics_reduction_db", volumes)):  # fmt: skip
        out[key] = 10 * np.log10(harmonic_power(before, sfreq, freqs)
                                 / harmonic_power(after, sfreq, freqs))  # fmt: skip
    return out


def cardiac_locked(x: np.ndarray, sfreq: float, events_s: np.ndarray,
                   span_s: float = 0.8) -> np.ndarray:  # fmt: skip
    """Average of the epochs 0..``span_s`` after each cardiac event (channels x lags)."""
    lags = np.arange(int(span_s * sfreq))
    ev = np.round(np.asarray(events_s) * sfreq).astype(int)
    ev = ev[(ev >= 0) & (ev + lags[-1] < x.shape[-1])]
    if ev.size == 0:
        return np.zeros((x.shape[0], lags.size))
    sos = signal.butter(2, [0.5, 40.0], "bandpass", fs=sfreq, output="sos")
    xf = signal.sosfiltfilt(sos, x)
    return xf[:, ev[:, None] + lags[None, :]].mean(axis=1)


def bcg_metrics(before: np.ndarray, after: np.ndarray, sfreq: float,
                events_s: np.ndarray, *, locked_before: np.ndarray | None = None
                ) -> np.ndarray:  # fmt: skip
    """Per-channel RMS of the cardiac-locked average after / before BCG removal.

    ``locked_before`` is ``cardiac_locked(before, sfreq, events_s)`` when already computed.
    """
    lb = cardiac_locked(before, sfreq, events_s) if locked_before is None else locked_before
    la = cardiac_locked(after, sfreq, events_s)
    return np.sqrt(np.mean(la**2, axis=1) / np.maximum(np.mean(lb**2, axis=1), 1e-30))


def qc_table(names: list[str], bads: list[str], metrics: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per channel with every metric available (missing ones are n/a)."""
    table = pd.DataFrame({"name": names,
                          "status": ["bad" if n in bads else "good" for n in names]})  # fmt: skip
    for key in QC_COLUMNS:
        if key in ("name", "status"):
            continue
        values = metrics.get(key)
        table[key] = np.round(values, 4) if values is not None else np.nan
    return table
