"""Pulse (ballistocardiogram, BCG) artifact: heartbeat detection and OBS removal.

Heartbeats come from the ECG channel (Pan-Tompkins-style detector with automatic polarity
and refinement on the band-passed ECG) or, when the ECG is missing or unusable, from the EEG
itself: the principal component of the low-band EEG with the strongest cardiac periodicity.
The BCG is then removed per channel with an optimal basis set (Niazy et al. 2005): the mean
artifact plus the principal components of the beat-to-beat variation (epochs centred on the
estimated BCG delay, detrended so that slow EEG does not enter the basis) are fitted to every
beat and subtracted, cross-faded between beats so that no step is left
at epoch borders. Estimation runs on block-averaged data at ~500 Hz (the BCG has no power
above 40 Hz) and the artifact is interpolated back to the recording's rate.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import mne
import numpy as np
from scipy import linalg, signal

from bids_app.eeg.kernels import copy_for_rewrite, n_threads, zero_phase
from bids_app.errors import InputError

logger = logging.getLogger(__name__)

_WORK_SFREQ = 500.0


@dataclass
class BCGReport:
    """What :func:`remove_bcg_artifact` did.

    Attributes
    ----------
    source : str
        "ecg" (ECG channel), "eeg" (EEG-derived cardiac signal) or "given".
    n_beats : int
        Heartbeats used.
    heart_rate_bpm : float
        Median heart rate.
    delay_s : float
        Delay of the BCG peak after the cardiac event.
    ecg_polarity : int
        +1, or -1 when the ECG lead was inverted (0 when no ECG was used).
    n_components : int
        OBS components per channel.
    ecg_problem : str
        Why the ECG was not used ("" when it was).
    duration_s : float
        Wall time.
    events_s : ndarray
        Cardiac events used (s).
    """

    source: str
    n_beats: int
    heart_rate_bpm: float
    delay_s: float
    ecg_polarity: int
    n_components: int
    ecg_problem: str = ""
    duration_s: float = 0.0
    events_s: np.ndarray = field(default_factory=lambda: np.array([]))

    def to_dict(self) -> dict:
        """Plain-python view for sidecars (without the event times)."""
        out = asdict(self)
        out.pop("events_s")
        out.pop("duration_s")  # logged, not recorded: sidecars must not change between reruns
        return out


def _block_mean(data: np.ndarray, q: int) -> np.ndarray:
    n = data.shape[-1] // q * q
    return data[..., :n].reshape(*data.shape[:-1], -1, q).mean(axis=-1)


def _map(func, items: list) -> list:
    """``[func(i) for i in items]``, one thread per item when there are several."""
    if len(items) < 2:
        return [func(i) for i in items]
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(func, items))


def _block_mean_rows(data: np.ndarray, rows, q: int) -> np.ndarray:
    """Block means of ``data[rows]`` (row by row: no copy of the full-rate rows)."""
    n = data.shape[-1] // q * q
    return np.stack([data[r, :n].reshape(-1, q).mean(axis=-1) for r in rows])


def _subtract_upsampled(src: np.ndarray, dst: np.ndarray, rows, low: np.ndarray,
                        q: int) -> None:  # fmt: skip
    """``dst[rows] = src[rows] - low`` linearly interpolated from the block centres.

    The block centres are ``k * q + (q - 1) / 2``; ``dst`` may be ``src`` (in place).
    """
    t_low = np.arange(low.shape[1]) * q + (q - 1) / 2.0
    t_full = np.arange(src.shape[1], dtype=float)
    for i, r in enumerate(rows):
        np.subtract(src[r], np.interp(t_full, t_low, low[i]), out=dst[r])


def _rr_ok(peaks: np.ndarray, sfreq: float) -> str:
    """Empty string when the beat series is physiological, else the reason."""
    if peaks.size < 5:
        return f"only {peaks.size} beats found"
    rr = np.diff(peaks) / sfreq
    med = float(np.median(rr))
    if not 0.33 <= med <= 2.0:
        return f"median RR {med:.2f} s is not physiological"
    bad = np.mean(np.abs(rr - med) > 0.3 * med)
    if bad > 0.2:
        return f"{100 * bad:.0f}% of RR intervals deviate by more than 30%"
    return ""


def detect_qrs(ecg: np.ndarray, sfreq: float) -> tuple[np.ndarray, int, str]:
    """R-peaks of an ECG trace (robust to inverted leads and gradient residue).

    Parameters
    ----------
    ecg : ndarray, shape (n_times,)
        ECG in volts.
    sfreq : float
        Sampling rate (Hz).

    Returns
    -------
    peaks : ndarray of int
        R-peak samples.
    polarity : int
        +1, or -1 for an inverted lead.
    problem : str
        Empty when the detected series is physiological, else why it is not.
    """
    q = max(1, int(sfreq // _WORK_SFREQ))
    fs = sfreq / q
    x = _block_mean(np.asarray(ecg, dtype=float)[None], q)[0]
    if not np.any(np.isfinite(x)) or np.nanstd(x) == 0:
        return np.array([], dtype=np.int64), 0, "the ECG channel is flat"
    band = signal.sosfiltfilt(signal.butter(3, [8.0, 30.0], "bandpass", fs=fs, output="sos"), x)
    pos, neg = np.percentile(band, 99.7), -np.percentile(band, 0.3)
    polarity = 1 if pos >= neg else -1
    band *= polarity
    feat = np.convolve(np.gradient(band) ** 2, np.ones(int(0.08 * fs)), mode="same")
    block = int(2 * fs)
    n_blocks = feat.size // block
    if n_blocks < 2:
        return np.array([], dtype=np.int64), polarity, "the recording is too short"
    ref = np.median(feat[: n_blocks * block].reshape(n_blocks, block).max(axis=1))
    cand, _ = signal.find_peaks(feat, height=0.3 * ref, distance=int(0.3 * fs))
    # refine to the maximum of the band-passed ECG within +-60 ms
    half = int(0.06 * fs)
    win = np.clip(cand[:, None] + np.arange(-half, half + 1)[None, :], 0, band.size - 1)
    peaks_low = win[np.arange(cand.size), np.argmax(band[win], axis=1)]
    peaks_low = np.unique(peaks_low)
    # back to the full rate: maximum of the polarity-corrected raw ECG near the block peak
    lp = zero_phase(signal.butter(3, 40.0, "lowpass", fs=sfreq, output="sos"), ecg,
                    padtype="odd", dtype=np.float64) * polarity  # fmt: skip
    full = peaks_low * q + q // 2
    win = np.clip(full[:, None] + np.arange(-2 * q, 2 * q + 1)[None, :], 0, lp.size - 1)
    peaks = win[np.arange(full.size), np.argmax(lp[win], axis=1)]
    return peaks.astype(np.int64), polarity, _rr_ok(peaks, sfreq)


def cardiac_from_eeg(
    data: np.ndarray, sfreq: float, *, n_pcs: int = 8, min_periodicity: float = 0.3
) -> np.ndarray:
    """Cardiac events (samples) from the EEG when no usable ECG exists.

    The EEG is band-passed (1-8 Hz, below alpha) at ~100 Hz, its principal components are
    scored by the height of their autocorrelation peak at lags of 0.4-1.5 s (40-150 bpm); the
    peaks of
    the most periodic component (sign chosen by skewness) are the events. They mark the BCG
    itself, so the delay estimated afterwards is close to zero.

    Parameters
    ----------
    data : ndarray, shape (n_channels, n_times)
        EEG (gradient artifact already removed).
    sfreq : float
        Sampling rate (Hz).
    n_pcs : int
        Principal components examined.
    min_periodicity : float
        Smallest autocorrelation peak accepted as a heartbeat rhythm.

    Returns
    -------
    ndarray of int
        Event samples at the recording's rate (empty when no component is periodic enough).
    """
    q = max(1, int(sfreq // 100.0))
    fs = sfreq / q
    x = _block_mean(np.asarray(data, dtype=float), q)
    x = signal.sosfiltfilt(signal.butter(4, [1.0, 8.0], "bandpass", fs=fs, output="sos"), x)
    x -= x.mean(axis=1, keepdims=True)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:n_pcs]
    lags = np.arange(int(0.4 * fs), int(1.5 * fs))
    spec = np.fft.rfft(comps, n=2 * comps.shape[1])
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, : comps.shape[1]]
    ac /= ac[:, :1]
    score = np.zeros(len(comps))
    period_lag = np.full(len(comps), lags[0])
    for k in range(len(comps)):  # highest local maximum (not the edge) of the autocorrelation
        pk, _ = signal.find_peaks(ac[k, lags])
        if pk.size:
            top = pk[np.argmax(ac[k, lags][pk])]
            score[k], period_lag[k] = ac[k, lags][top], lags[top]
    best = int(np.argmax(score))
    period = period_lag[best] / fs
    comp = comps[best] * np.sign(np.mean(comps[best] ** 3) or 1.0)
    peaks, _ = signal.find_peaks(comp, distance=int(0.7 * period * fs),
                                 prominence=0.5 * np.std(comp))  # fmt: skip
    logger.info("Cardiac signal from EEG: component %d, period %.2f s, periodicity %.2f, "
                "%d beats", best, period, score[best], peaks.size)  # fmt: skip
    if score[best] < min_periodicity:
        return np.array([], dtype=np.int64)
    return (peaks * q + q // 2).astype(np.int64)


def _bcg_delay(x: np.ndarray, events: np.ndarray, fs: float) -> float:
    """Lag (s, 0-0.6) of the global-field-power peak of the event-locked average."""
    lags = np.arange(int(-0.1 * fs), int(0.6 * fs))
    ev = events[(events + lags[0] >= 0) & (events + lags[-1] < x.shape[1])]
    if ev.size == 0:
        return 0.0
    avg = x[:, ev[:, None] + lags[None, :]].mean(axis=1)
    avg -= avg.mean(axis=1, keepdims=True)
    return float(lags[np.argmax((avg**2).sum(axis=0))] / fs)


def obs_fit(x: np.ndarray, centres: np.ndarray, half: int, n_components: int,
            x_fit: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Artifact of every channel: OBS fitted per beat, cross-faded between beats.

    Parameters
    ----------
    x : ndarray, shape (n_channels, n_times)
        Data (work rate).
    centres : ndarray of int
        Epoch centres (cardiac event + delay), sorted.
    half : int
        Epochs span ``centre - half .. centre + half`` (at least half the longest beat
        interval plus the cross-fade).
    n_components : int
        Components in the basis: the per-beat scaled mean and ``n_components - 1`` PCs.
    x_fit : ndarray | None
        Version of ``x`` on which the per-beat amplitudes and PCs are fitted (high-passed
        above the slow EEG); the mean beat always comes from ``x``.

    Returns
    -------
    ndarray, shape like ``x``
        The artifact estimate.
    """
    x_fit = x if x_fit is None else x_fit
    n = x.shape[1]
    lags = np.arange(-half, half)
    idx = centres[:, None] + lags[None, :]
    inside = (idx >= 0) & (idx < n)
    idx_c = np.clip(idx, 0, n - 1)
    full = inside.all(axis=1)
    # each beat owns the time up to the midpoints to its neighbours; cos^2 cross-fades of
    # +-fade samples around each midpoint sum to one, so no step is left between beats
    fade = max(1, half // 10)
    prev_mid = np.diff(centres, prepend=centres[0] - 2 * half) / 2.0
    next_mid = np.diff(centres, append=centres[-1] + 2 * half) / 2.0
    rel = lags[None, :].astype(float)
    dist = np.where(rel < 0, -rel - prev_mid[:, None], rel - next_mid[:, None])
    ramp = np.cos(0.25 * np.pi * (np.clip(dist / fade, -1, 1) + 1)) ** 2
    weight = ramp * inside
    trend, _ = np.linalg.qr(np.column_stack([np.ones(lags.size), lags / half]))

    def detrend(v):  # projection removing offset and slope (cheaper than a matrix product)
        return v - (v @ trend) @ trend.T

    n_pcs = max(n_components - 1, 0)
    artifact = np.zeros_like(x)
    for c in range(x.shape[0]):
        mean = x[c][idx_c][full].mean(axis=0)  # the average beat: EEG averages out
        ep = x_fit[c][idx_c]
        # amplitude of the mean artifact per beat and the remaining variation, fitted on
        # data high-passed above the slow EEG (and detrended), so the fit cannot absorb it
        mean_hp = ep[full].mean(axis=0)
        mean_d = detrend(mean_hp)
        scale = (ep @ mean_d) / max(float(mean_d @ mean_d), 1e-30)
        resid = detrend(ep - scale[:, None] * mean_hp)
        est = mean + (scale[:, None] - 1.0) * mean_d
        if n_pcs:
            use = resid[full]
            _, basis = linalg.eigh(use.T @ use, subset_by_index=[lags.size - n_pcs,
                                                                  lags.size - 1])  # fmt: skip
            est += (resid @ basis) @ basis.T  # orthonormal basis: a projection
        for parity in (0, 1):  # beats of one parity have disjoint supports
            rows = np.arange(parity, centres.size, 2)
            m = weight[rows] > 0
            artifact[c, idx_c[rows][m]] += (weight[rows] * est[rows])[m]
    return artifact


def remove_bcg_artifact(
    raw: mne.io.BaseRaw,
    *,
    events: np.ndarray | None = None,
    ecg_channel: str | None = "ECG",
    n_components: int = 4,
    picks=None,
    fit_highpass: float = 1.0,
    copy: bool = True,
    n_jobs: int | None = None,
    source: str | None = None,
) -> tuple[mne.io.BaseRaw, BCGReport]:
    """Remove the pulse (BCG) artifact with a per-channel optimal basis set.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        Preloaded recording, gradient artifact already removed.
    events : ndarray | None
        Cardiac event samples; None detects R-peaks on ``ecg_channel`` and falls back to an
        EEG-derived cardiac signal if the ECG is missing or unusable.
    ecg_channel : str | None
        Name of the ECG channel.
    n_components : int
        OBS components per channel.
    picks : str | list | None
        Channels to correct (default: EEG and EOG channels).
    fit_highpass : float
        Per-beat amplitudes and PCs are fitted above this frequency (Hz) so that slow EEG
        is not absorbed; the mean beat is removed at full band.
    copy : bool
        Work on a copy of ``raw``.
    n_jobs : int | None
        Threads working on groups of channels (None: 1; -1: every CPU available); results
        do not depend on it.
    source : str | None
        File name for error messages.

    Returns
    -------
    raw : mne.io.BaseRaw
        Corrected recording.
    report : BCGReport
        Beat source, heart rate, delay, polarity.
    """
    t0 = time.perf_counter()
    raw, src = copy_for_rewrite(raw) if copy else (raw, raw._data)
    sfreq = raw.info["sfreq"]
    picks = mne.pick_types(raw.info, eeg=True, eog=True, exclude=()) if picks is None else \
        _pick_rows(raw, picks)  # fmt: skip
    if src is not raw._data:  # the copy's picked rows are written below, the others now
        rest = np.setdiff1d(np.arange(src.shape[0]), picks)
        raw._data[rest] = src[rest]
    polarity, problem, origin = 0, "", "given"
    if events is None:
        if ecg_channel and ecg_channel in raw.ch_names:
            events, polarity, problem = detect_qrs(src[raw.ch_names.index(ecg_channel)], sfreq)
            origin = "ecg"
        else:
            problem = f"no channel named {ecg_channel!r}"
        if problem:
            logger.warning("ECG not usable (%s); deriving the cardiac signal from the EEG",
                           problem)  # fmt: skip
            eeg = mne.pick_types(raw.info, eeg=True, exclude="bads")
            if eeg.size == 0:
                raise InputError(
                    f"{source or 'The EEG recording'}: no usable heartbeat in the ECG "
                    f"({problem}) and every EEG channel is marked bad, so none can be derived "
                    "from the EEG; set eeg.bcg = false to skip BCG removal."
                )
            qe = max(1, int(sfreq // _WORK_SFREQ))
            low = _block_mean_rows(src, eeg, qe)
            events = cardiac_from_eeg(low, sfreq / qe) * qe + qe // 2
            polarity, origin = 0, "eeg"
            if _rr_ok(events, sfreq):
                raise InputError(
                    f"{source or 'The EEG recording'}: no usable heartbeat found in the ECG "
                    f"({problem}) nor in the EEG; set eeg.bcg = false to skip BCG removal."
                )
    events = np.unique(np.asarray(events, dtype=np.int64))
    events = events[(events >= 0) & (events < raw.n_times)]
    if events.size < 3:
        raise InputError(
            f"{source or 'The EEG recording'}: {events.size} cardiac events inside the "
            "recording; at least 3 are needed to model the pulse artifact (set eeg.bcg = "
            "false to skip BCG removal)."
        )
    q = max(1, int(sfreq // _WORK_SFREQ))
    fs = sfreq / q
    data = src  # read row by row; corrected rows go to raw._data (the same array unless copy)
    groups = np.array_split(np.arange(len(picks)), max(1, min(n_threads(n_jobs), len(picks))))
    sos_delay = signal.butter(2, 0.5, "highpass", fs=fs, output="sos")
    sos_fit = signal.butter(2, fit_highpass, "highpass", fs=fs, output="sos")

    def prepare(g):  # block means at the work rate and their 0.5 Hz high-pass
        low_g = _block_mean_rows(data, picks[g], q)
        return low_g, zero_phase(sos_delay, low_g, padtype="odd", dtype=np.float64)

    parts = _map(prepare, groups)
    low_hp = np.concatenate([p[1] for p in parts])
    ev_low = events // q
    delay = _bcg_delay(low_hp, ev_low, fs)
    del low_hp
    half = int(0.5 * np.percentile(np.diff(events), 95) / q) + int(0.05 * fs)
    centres = ev_low + int(round(delay * fs))

    def correct(args):  # OBS per channel at the work rate, then subtract at full rate
        g, low_g = args
        low_g -= np.median(low_g, axis=1, keepdims=True)
        fit_hp = zero_phase(sos_fit, low_g, padtype="odd", dtype=np.float64)
        artifact = obs_fit(low_g, centres, half, n_components, fit_hp)
        _subtract_upsampled(data, raw._data, picks[g], artifact, q)

    _map(correct, [(g, p[0]) for g, p in zip(groups, parts)])
    rr = float(np.median(np.diff(events))) / sfreq
    report = BCGReport(
        source=origin, n_beats=int(events.size), heart_rate_bpm=60.0 / rr, delay_s=delay,
        ecg_polarity=int(polarity), n_components=n_components, ecg_problem=problem,
        duration_s=time.perf_counter() - t0, events_s=events / sfreq,
    )  # fmt: skip
    logger.info("BCG removed: %d beats (%s), %.0f bpm, delay %.0f ms in %.1f s", report.n_beats,
                origin, report.heart_rate_bpm, 1e3 * delay, report.duration_s)  # fmt: skip
    return raw, report


def _pick_rows(raw: mne.io.BaseRaw, picks) -> np.ndarray:
    """Row indices of ``picks`` (channel names or integer indices)."""
    picks = [picks] if isinstance(picks, str | int) else list(picks)
    return np.array([raw.ch_names.index(p) if isinstance(p, str) else int(p) for p in picks])
