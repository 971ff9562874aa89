"""Slice onsets within a volume, estimated from the gradient artifact itself.

The BOLD sidecar's SliceTiming is often absent or does not match the slice times the
scanner played (vendor conversions, sequences that leave a gap or a trigger delay, wrong
multiband metadata); a slice template built on wrong onsets leaves an error 20 times the
noise floor. The EEG records every slice, so the onsets are measured from it and the
sidecar serves only as a prior:

1. The volume artifact: the average of up to ``max_volumes`` volume epochs (starting at the
   volume markers) of the strongest channels, high-passed at 5 Hz.
2. The slice period: the highest peak of the volume artifact's autocorrelation at lags of
   ``min_period_s`` to half a volume (the shortest repetition wins because the biased
   autocorrelation falls with the lag), refined by parabolic interpolation. Its height
   relative to lag 0 is the *periodicity* (1 for identical slices).
3. The slice phase: where the period-folded artifact energy, after its quietest tenth of a
   period, first reaches ``onset_fraction`` of its maximum; slices are the period-spaced positions
   from there on whose energy exceeds 30 % of the loud slices' (a gap at the end of the
   volume holds none).
4. Each slice's sub-sample offset relative to the mean slice (cross-correlation, parabolic
   peak), then a least-squares line: ``onset_k = first + k * period``.

The sidecar is used when it lists the same number of slices and agrees with the estimate
(within ``tolerance_samples`` after removing a common offset, and the common offset within
1 ms); otherwise the estimate is used and the report says why. Without a usable estimate
(a volume artifact below ``min_artifact``, or a periodicity below ``min_periodicity``)
the sidecar is used, and without a sidecar the slices are spread evenly over the TR.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy import signal

from bids_app.eeg.kernels import zero_phase
from bids_app.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class SliceTimingReport:
    """Which slice onsets the gradient step used, and why.

    Attributes
    ----------
    source : str
        "sidecar" (SliceTiming confirmed by the EEG, or no EEG estimate), "eeg" (estimated
        from the artifact) or "even" (spread evenly over the TR).
    reason : str
        One sentence saying why.
    n_slices : int
        Slices per volume used.
    slice_period_ms, first_slice_ms : float
        Estimated slice spacing and first onset after the volume marker (NaN without an
        estimate).
    periodicity : float
        Height of the slice-period autocorrelation peak (0-1).
    fit_rms_samples : float
        RMS deviation of the measured slice offsets from the fitted line.
    sidecar_max_deviation_ms : float | None
        Largest difference between sidecar and estimate (None when not compared).
    """

    source: str
    reason: str
    n_slices: int
    slice_period_ms: float = float("nan")
    first_slice_ms: float = float("nan")
    periodicity: float = 0.0
    fit_rms_samples: float = float("nan")
    sidecar_max_deviation_ms: float | None = None

    def to_dict(self) -> dict:
        """Plain-python view for sidecars."""
        return asdict(self)


def _volume_artifact(data, volume_onsets, sfreq, max_volumes):
    """Mean volume epoch (channels, samples) of ``data`` high-passed at 5 Hz."""
    onsets = np.round(np.asarray(volume_onsets, dtype=float)).astype(np.int64)
    length = int(np.floor(np.median(np.diff(onsets))))
    onsets = onsets[(onsets >= 0) & (onsets + length <= data.shape[1])]
    if onsets.size == 0:
        return np.zeros((data.shape[0], max(length, 0))), 0
    if onsets.size > max_volumes:
        onsets = onsets[np.linspace(0, onsets.size - 1, max_volumes).round().astype(int)]
    sos = signal.butter(2, 5.0, "highpass", fs=sfreq, output="sos")
    lo, hi = int(max(onsets.min() - sfreq, 0)), int(min(onsets.max() + length + sfreq,
                                                        data.shape[1]))  # fmt: skip
    hp = zero_phase(sos, np.asarray(data[:, lo:hi], dtype=np.float64), padlen=int(sfreq))
    epochs = hp[:, (onsets - lo)[:, None] + np.arange(length)[None, :]]
    return epochs.mean(axis=1), onsets.size


def _parabola(y0: float, y1: float, y2: float) -> float:
    denom = y0 - 2 * y1 + y2
    return float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5)) if denom < 0 else 0.0


def estimate_slice_offsets(
    data: np.ndarray,
    volume_onsets: np.ndarray,
    sfreq: float,
    *,
    min_period_s: float = 0.015,
    max_volumes: int = 40,
    onset_fraction: float = 0.01,
) -> tuple[np.ndarray, dict]:
    """Slice onsets (samples after each volume marker) measured from the artifact.

    Parameters
    ----------
    data : ndarray, shape (n_channels, n_times)
        A few channels with a strong gradient artifact.
    volume_onsets : ndarray
        Volume marker samples.
    sfreq : float
        Sampling rate (Hz).
    min_period_s : float
        Shortest slice period considered (s).
    max_volumes : int
        Volumes averaged into the volume artifact.
    onset_fraction : float
        A slice starts where the period-folded artifact energy, after its quietest stretch,
        first reaches this fraction of its maximum.

    Returns
    -------
    offsets : ndarray
        Onset of each slice after the volume marker (samples, fractional, increasing);
        empty when the artifact is not periodic.
    info : dict
        ``period`` (samples), ``first`` (samples), ``periodicity``, ``fit_rms``,
        ``artifact_rms`` (RMS of the volume artifact, data units).
    """
    raw_avg, _ = _volume_artifact(data, volume_onsets, sfreq, max_volumes)
    # smooth peaks make parabolic interpolation exact enough (sharp ramps are ~1 sample wide)
    sos = signal.butter(4, 0.1 * sfreq, "lowpass", fs=sfreq, output="sos")
    avg = signal.sosfiltfilt(sos, raw_avg, axis=-1)
    length = avg.shape[1]
    spec = np.fft.rfft(avg, n=2 * length)
    ac = np.fft.irfft(np.abs(spec) ** 2).sum(axis=0)[:length]
    lags = np.arange(max(2, int(np.ceil(min_period_s * sfreq))), length // 2)
    info = {"period": float("nan"), "first": float("nan"), "periodicity": 0.0,
            "fit_rms": float("nan"), "artifact_rms": float(np.sqrt(np.mean(raw_avg**2)))}
    if ac[0] <= 0 or lags.size < 3:
        return np.array([]), info
    p0 = int(lags[np.argmax(ac[lags])])
    for m in (5, 4, 3, 2):  # a multiple of the period can win by sub-sample luck
        near = np.arange(int(p0 / m) - 2, int(p0 / m) + 3)
        near = near[near >= lags[0]]
        if near.size and ac[near].max() >= 0.7 * ac[p0]:
            p0 = int(near[np.argmax(ac[near])])
            break
    info["periodicity"] = float(ac[p0] / ac[0])
    period = p0 + _parabola(ac[p0 - 1], ac[p0], ac[p0 + 1])
    # phase: where the period-folded energy turns from quiet to loud
    energy = (raw_avg**2).sum(axis=0)  # full band: sharp onsets
    folded = np.bincount(np.floor(np.arange(length) % period).astype(int) % p0,
                         weights=energy, minlength=p0)  # fmt: skip
    w = max(2, p0 // 10)
    ring = np.tile(folded, 3)
    csum = np.concatenate([[0.0], np.cumsum(ring)])
    start = np.arange(p0) + p0  # candidate phases on the second copy
    quiet = int(np.argmin(csum[start + w] - csum[start]))  # quietest stretch of the period
    rise = np.flatnonzero(ring[quiet: quiet + p0] >= onset_fraction * folded.max())
    phase = (quiet + int(rise[0])) % p0
    ks = np.arange(-1, int(length / period) + 1)
    cand = phase + ks * period
    cand = cand[(cand > -w) & (cand < length - w)]
    seg_energy = np.array([energy[max(int(c), 0): int(c) + p0].sum() for c in cand])
    active = seg_energy >= 0.3 * np.percentile(seg_energy, 90)
    cand = cand[active]
    if cand.size < 2:
        return np.array([]), info
    # sub-sample offsets of every slice relative to the mean slice, then a straight line
    m = 4
    idx = np.clip(np.round(cand).astype(int)[:, None] + np.arange(-m, p0 + m)[None, :], 0,
                  length - 1)  # fmt: skip
    segs = avg[:, idx]  # channels, slices, samples
    ref = segs.mean(axis=1)
    offsets = np.zeros(cand.size)
    for k in range(cand.size):
        xc = np.array([np.sum(segs[:, k, m + d: m + d + p0 - 2 * m] * ref[:, m: p0 - m])
                       for d in range(-3, 4)])  # fmt: skip
        b = int(np.clip(np.argmax(xc), 1, 5))
        offsets[k] = (b - 3) + _parabola(xc[b - 1], xc[b], xc[b + 1])
    measured = np.round(cand) + offsets
    k_idx = np.round((cand - cand[0]) / period)
    slope, first = np.polyfit(k_idx, measured, 1)
    fitted = first + slope * k_idx
    info.update(period=float(slope), first=float(first),
                fit_rms=float(np.sqrt(np.mean((measured - fitted) ** 2))))  # fmt: skip
    return fitted, info


def choose_slice_offsets(
    data: np.ndarray,
    volume_onsets: np.ndarray,
    sfreq: float,
    *,
    prior=None,
    n_slices: int | None = None,
    tr: float | None = None,
    min_periodicity: float = 0.3,
    min_artifact: float = 50e-6,
    tolerance_samples: float = 1.0,
    source: str | None = None,
) -> tuple[np.ndarray, SliceTimingReport]:
    """Slice onsets after each volume marker: the EEG estimate, with the sidecar as prior.

    Parameters
    ----------
    data : ndarray, shape (n_channels, n_times)
        A few channels with a strong gradient artifact.
    volume_onsets : ndarray
        Volume marker samples.
    sfreq : float
        Sampling rate (Hz).
    prior : sequence of float | None
        BIDS SliceTiming of the BOLD sidecar (s), or None when absent.
    n_slices : int | None
        Slices per volume for the even fallback (no prior, no estimate).
    tr : float | None
        Repetition time (s) for the even fallback; None: the median volume interval.
    min_periodicity : float
        Smallest slice-period autocorrelation accepted as an estimate.
    min_artifact : float
        Smallest RMS of the volume artifact (data units, default 50 uV) accepted as a
        gradient artifact: EEG, mains and vibration lines locked to the volumes stay below
        it, the gradient artifact is ten to a hundred times larger.
    tolerance_samples : float
        Largest deviation of the sidecar from the estimate (after removing a common offset)
        for which the sidecar is confirmed.
    source : str | None
        File name for error messages.

    Returns
    -------
    offsets : ndarray
        Slice onsets after the volume marker (samples, increasing).
    report : SliceTimingReport
        Which onsets were used and why.

    Raises
    ------
    InputError
        If neither the sidecar, nor the EEG, nor ``n_slices`` gives the slice onsets.
    """
    prior_off = None if prior is None else np.unique(np.asarray(prior, dtype=float)) * sfreq
    est, info = estimate_slice_offsets(data, volume_onsets, sfreq)
    common = {"slice_period_ms": 1e3 * info["period"] / sfreq,
              "first_slice_ms": 1e3 * info["first"] / sfreq,
              "periodicity": info["periodicity"], "fit_rms_samples": info["fit_rms"]}
    if info["artifact_rms"] < min_artifact:
        why = (f"the EEG shows no gradient artifact (volume-locked RMS "
               f"{1e6 * info['artifact_rms']:.1f} uV < {1e6 * min_artifact:.0f} uV)")
    elif est.size < 2 or info["periodicity"] < min_periodicity:
        why = (f"the artifact shows no slice periodicity (autocorrelation "
               f"{info['periodicity']:.2f} < {min_periodicity})")  # fmt: skip
    else:
        why = ""
    if why:
        if prior_off is not None:
            return prior_off, SliceTimingReport("sidecar", f"SliceTiming of the sidecar used: "
                                                f"{why}.", prior_off.size, **common)
        if not n_slices:
            raise InputError(f"{source or 'The EEG recording'}: cannot find the slice onsets "
                             f"({why}) and the BOLD sidecar has no SliceTiming; give "
                             "SliceTiming in the BOLD sidecar or set eeg.gradient = false.")
        diffs = np.diff(np.asarray(volume_onsets, dtype=float))
        tr_samp = tr * sfreq if tr else float(np.median(diffs))
        even = np.arange(n_slices) * tr_samp / n_slices
        return even, SliceTimingReport("even", f"No SliceTiming in the sidecar and {why}: "
                                       f"{n_slices} slices spread evenly over the TR.",
                                       n_slices, **common)
    if prior_off is None:
        return est, SliceTimingReport("eeg", "No SliceTiming in the sidecar: slice onsets "
                                      "estimated from the gradient artifact.", est.size,
                                      **common)
    if prior_off.size != est.size:
        return est, SliceTimingReport(
            "eeg", f"The sidecar lists {prior_off.size} slice times but the artifact shows "
            f"{est.size} slices per volume: estimate used.", est.size, **common)
    dev = prior_off - est
    shift = float(np.median(dev))
    worst = float(np.max(np.abs(dev - shift)))
    max_ms = 1e3 * float(np.max(np.abs(dev))) / sfreq
    if worst <= tolerance_samples and abs(shift) <= 1e-3 * sfreq:
        return prior_off, SliceTimingReport(
            "sidecar", f"SliceTiming of the sidecar confirmed by the artifact (largest "
            f"difference {max_ms:.2f} ms).", prior_off.size, **common,
            sidecar_max_deviation_ms=max_ms)
    return est, SliceTimingReport(
        "eeg", f"SliceTiming of the sidecar disagrees with the artifact by up to {max_ms:.2f} "
        "ms: estimate used.", est.size, **common, sidecar_max_deviation_ms=max_ms)
