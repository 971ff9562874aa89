"""FASTR-class removal of the MR gradient (imaging) artifact from EEG.

Method (Allen et al. 2000; Niazy et al. 2005), slice-wise and vectorised:

1. Slice epochs start at every slice onset (from the volume triggers and the SliceTiming);
   each epoch is a window of the data high-passed at ``template_highpass`` (5 Hz) for
   template estimation, so slow EEG and the pulse artifact stay out of the templates.
2. Sub-sample alignment: every epoch is shifted by its fractional onset plus a correction
   found by cross-correlation with the mean artifact, evaluated on a grid of ``1/upsample``
   samples through FFT phase ramps and refined by parabolic interpolation.
3. Template: Hann-weighted moving average of the ``window`` neighbouring aligned epochs on
   each side (the epoch itself excluded), scaled to each epoch by least squares on its
   content above 70 Hz (where EEG has no power).
4. Optimal basis set: PCA of the residuals high-passed above ``obs_highpass`` (the part a
   mean template cannot follow), the number of components chosen per channel from the
   Marchenko-Pastur edge of the eigenvalue spectrum, fitted and subtracted per epoch.
5. The artifact estimate is shifted back to each epoch's own timing, subtracted from the
   original data over the epoch's own segment, and the data are low-pass filtered.

All steps run on arrays of shape (channels, epochs, samples) in chunks of channels; there is
no loop over samples or epochs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import mne
import numpy as np
from scipy import fft as sfft
from scipy import signal

from bids_app.eeg.triggers import TriggerReport, find_volume_triggers, slice_onsets

logger = logging.getLogger(__name__)

_MARGIN = 8  # samples of data kept on each side of a slice segment inside its window
_PRE = 4  # a slice segment starts this many samples before the slice onset


@dataclass
class GradientReport:
    """What :func:`remove_gradient_artifact` did.

    Attributes
    ----------
    triggers : TriggerReport | None
        Volume marker report (None when onsets were given).
    n_volumes, n_slices : int
        Volumes corrected and slices per volume.
    window : int
        Neighbouring slice artifacts averaged into each template.
    shift_std_samples : float
        Spread of the sub-sample timing corrections found by alignment.
    obs_components : dict of str to int
        Optimal-basis-set components removed per channel.
    lowpass : float | None
        Low-pass cutoff applied after subtraction (Hz).
    duration_s : float
        Wall time.
    volume_onsets : ndarray
        Volume onsets used (samples).
    """

    triggers: TriggerReport | None
    n_volumes: int
    n_slices: int
    window: int
    upsample: int
    shift_std_samples: float = 0.0
    obs_components: dict[str, int] = field(default_factory=dict)
    lowpass: float | None = None
    duration_s: float = 0.0
    volume_onsets: np.ndarray = field(default_factory=lambda: np.array([]))

    def to_dict(self) -> dict:
        """Plain-python view for sidecars."""
        # the run time is logged, not recorded: sidecars must not change between reruns
        out = {k: v for k, v in self.__dict__.items()
               if k not in ("triggers", "volume_onsets", "duration_s")}
        out["triggers"] = None if self.triggers is None else self.triggers.to_dict()
        return out


def _segments(onsets: np.ndarray, n_times: int):
    """Integer starts, fractional offsets and own-segment lengths of the slice epochs."""
    n_vol, n_sl = onsets.shape
    flat = onsets.ravel()
    starts = np.floor(flat).astype(np.int64)
    frac = flat - starts
    diffs = np.append(np.diff(starts), np.iinfo(np.int64).max).astype(float)
    by_rank = diffs.reshape(n_vol, n_sl)
    typical = np.array([np.median(c[c < 1e12]) if np.any(c < 1e12) else np.nan
                        for c in by_rank.T])  # fmt: skip
    if np.isnan(typical).any():  # a single volume: the last slice lasts like the others
        typical = np.where(np.isnan(typical), np.nanmedian(typical[:-1]), typical)
    typical_flat = np.tile(typical, n_vol)
    seg = np.where(diffs <= 1.5 * typical_flat, diffs, typical_flat).astype(np.int64)
    seg = np.minimum(seg, np.maximum(n_times - starts, 0))
    return starts, frac, seg


def _shift(spec: np.ndarray, shift: np.ndarray, n: int) -> np.ndarray:
    """Advance each epoch's spectrum by ``shift`` samples (last axis is frequency)."""
    freqs = np.arange(spec.shape[-1])
    return spec * np.exp(2j * np.pi * shift[:, None] * freqs[None, :] / n)


def _align(spec: np.ndarray, base: np.ndarray, n: int, upsample: int, max_shift: float = 2.0):
    """Sub-sample corrections maximising each epoch's correlation with the mean artifact.

    ``spec`` has shape (channels, epochs, freqs) for a few strong channels.
    """
    grid = np.arange(-max_shift, max_shift + 1e-9, 1.0 / upsample)
    freqs = np.arange(spec.shape[-1])
    weights = np.full(freqs.size, 2.0)
    weights[0] = 1.0
    ramp = np.exp(2j * np.pi * freqs[:, None] * grid[None, :] / n) * weights[:, None]
    delta = np.zeros(spec.shape[1])
    for _ in range(2):
        aligned = _shift(spec.reshape(-1, spec.shape[-1]), np.tile(base + delta, spec.shape[0]),
                         n).reshape(spec.shape)  # fmt: skip
        ref = aligned.mean(axis=1)
        cross = (spec * np.conj(ref)[:, None, :] * np.exp(
            2j * np.pi * base[None, :, None] * freqs[None, None, :] / n)).sum(axis=0)
        score = (cross @ ramp).real
        best = np.clip(np.argmax(score, axis=1), 1, grid.size - 2)
        rows = np.arange(score.shape[0])
        y0, y1, y2 = score[rows, best - 1], score[rows, best], score[rows, best + 1]
        denom = y0 - 2 * y1 + y2
        off = np.where(denom < 0, 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1.0), 0.0)
        delta = grid[best] + np.clip(off, -1, 1) / upsample
    return delta - np.median(delta)


def _hann_kernel(window: int) -> np.ndarray:
    half = max(1, window)
    weights = np.hanning(2 * half + 3)[1:-1]
    weights[half] = 0.0
    return weights


def _moving_template(z: np.ndarray, valid: np.ndarray, window: int,
                     den: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Hann-weighted masked mean of ``window`` neighbours on each side (the epoch excluded).

    Hann weights (instead of a boxcar) make the template a comb filter whose side lobes fall
    off as 1/f^3, so EEG and BCG between the slice harmonics do not leak into it. ``den``
    (the convolved mask, the same for every channel) can be passed to save time.
    """
    kernel = _hann_kernel(window)[None, :, None].astype(z.dtype)
    num = signal.oaconvolve(z * valid[None], kernel, mode="same", axes=1)
    if den is None:
        den = signal.oaconvolve(valid[None], kernel, mode="same", axes=1)
    return (num / np.maximum(den, 1e-3)).astype(z.dtype)


def _obs(resid: np.ndarray, use: np.ndarray, n_components: str | int, cap: int = 10):
    """Per-channel PCA basis of the residuals and its fit; returns (fit, n_used)."""
    fits = np.zeros_like(resid)
    used = []
    n_e, length = use.sum(), resid.shape[-1]
    for c in range(resid.shape[0]):
        r = resid[c, use]
        cov = r.T @ r / max(n_e, 1)
        evals, evecs = np.linalg.eigh(cov)
        evals, evecs = evals[::-1], evecs[:, ::-1]
        if n_components == "auto":
            edge = np.median(evals) * (1 + np.sqrt(length / max(n_e, 1))) ** 2
            p = int(min(cap, np.sum(evals > 2.0 * edge)))
        else:
            p = int(n_components)
        used.append(p)
        if p:
            basis = evecs[:, :p]
            fits[c] = (resid[c] @ basis) @ basis.T
    return fits, used


def correct_gradient(
    data: np.ndarray,
    onsets: np.ndarray,
    sfreq: float,
    *,
    window: int = 60,
    upsample: int = 10,
    obs_components: str | int = "auto",
    obs_highpass: float = 70.0,
    template_highpass: float = 5.0,
    lowpass: float | None = 70.0,
    chunk_channels: int = 8,
    picks: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Subtract the gradient artifact from an array in place (before low-pass filtering).

    Parameters
    ----------
    data : ndarray, shape (n_channels, n_times)
        EEG in volts, modified in place.
    onsets : ndarray, shape (n_volumes, n_slices)
        Slice onsets in (fractional) samples.
    sfreq : float
        Sampling rate (Hz).
    window : int
        Neighbouring slice artifacts on each side averaged (Hann weights) into each template.
    upsample : int
        Alignment resolution is ``1 / upsample`` sample before parabolic refinement.
    obs_components : "auto" | int
        Optimal-basis-set components per channel (0 disables the OBS).
    obs_highpass : float
        The OBS and the template amplitudes are fitted on content above this frequency (Hz),
        where the EEG has no power, so neither can remove EEG.
    template_highpass : float
        Templates are averaged from data high-passed at this frequency (Hz), so slow EEG
        does not leak into them.
    lowpass : float | None
        Low-pass the caller applies afterwards; the OBS only acts above ``obs_highpass``, so
        it is skipped when ``lowpass <= obs_highpass`` (it could not change the result).
    chunk_channels : int
        Channels processed together (memory ~ 60 bytes x chunk x epochs x slice length).
    picks : ndarray of int | None
        Rows of ``data`` to correct (default: all).

    Returns
    -------
    data : ndarray
        The corrected array (same object).
    info : dict
        ``shifts`` (sub-sample corrections) and ``obs_components`` (per channel).
    """
    n_times = data.shape[1]
    picks = np.arange(data.shape[0]) if picks is None else np.asarray(picks)
    starts, frac, seg = _segments(np.asarray(onsets, dtype=float), n_times)
    width = int(np.max(seg)) + 2 * _MARGIN
    n_fft = sfft.next_fast_len(width + 2 * _MARGIN, real=True)
    idx = (starts - _MARGIN)[:, None] + np.arange(width)[None, :]
    inside = (idx >= 0) & (idx < n_times)
    idx_c = np.clip(idx, 0, n_times - 1)
    j = np.arange(width)[None, :]
    first = _MARGIN - _PRE
    own = (j >= first) & (j < first + seg[:, None]) & inside
    valid = (j < first + seg[:, None] - 2) & inside
    l_min = int(np.min(seg[seg >= 0.5 * np.median(seg)]))
    obs_use = seg >= l_min
    obs_cols = slice(first, first + l_min)
    sos_hp = signal.butter(2, template_highpass, "highpass", fs=sfreq, output="sos")
    hp_bins = np.fft.rfftfreq(n_fft, 1.0 / sfreq) < obs_highpass
    sos_obs = signal.butter(4, obs_highpass, "highpass", fs=sfreq, output="sos")

    def spectra(rows):
        hp = signal.sosfiltfilt(sos_hp, data[rows].astype(np.float32), axis=-1, padtype="even",
                                padlen=min(data.shape[1] - 1, int(sfreq)))
        x = np.where(inside[None], hp[:, idx_c], np.float32(0.0))
        return sfft.rfft(x, n=n_fft, axis=-1)

    # timing: the strongest channels define the sub-sample corrections of every slice
    sample = idx_c[:: max(1, idx.shape[0] // 200)]
    power = np.array([np.var(data[c, sample]) for c in picks])
    strong = picks[np.argsort(power)[::-1][: min(4, picks.size)]]
    shifts = frac + _align(spectra(strong), frac, n_fft, upsample)
    bins = np.arange(n_fft // 2 + 1)
    advance = np.exp(2j * np.pi * shifts[:, None] * bins[None, :] / n_fft).astype(np.complex64)
    valid32 = valid.astype(np.float32)
    den = signal.oaconvolve(valid32[None], _hann_kernel(window)[None, :, None].astype(np.float32),
                            mode="same", axes=1)  # fmt: skip
    idx_own, idx_inner = idx[own], None
    do_obs = obs_components != 0 and (lowpass is None or lowpass > obs_highpass)
    used: list[int] = []
    for c0 in range(0, picks.size, chunk_channels):
        rows = picks[c0 : c0 + chunk_channels]
        zspec = spectra(rows) * advance[None]
        z = sfft.irfft(zspec, n=n_fft, axis=-1)[..., :width]
        zspec = zspec[..., ~hp_bins]
        template = _moving_template(z, valid32, window, den)
        tspec = sfft.rfft(template, n=n_fft, axis=-1)
        # least-squares amplitude from the content above obs_highpass (no EEG there)
        hf = tspec[..., ~hp_bins]
        alpha = (zspec * np.conj(hf)).real.sum(-1) / np.maximum((np.abs(hf) ** 2).sum(-1),
                                                                1e-30)  # fmt: skip
        del zspec, hf
        est = alpha[..., None].astype(np.float32) * tspec
        back = sfft.irfft(est * np.conj(advance)[None], n=n_fft, axis=-1)[..., :width]
        for i, r in enumerate(rows):
            data[r, idx_own] -= back[i][own]
        if not do_obs:
            used.extend([0] * rows.size)
            continue
        # OBS on the continuous residual high-passed above obs_highpass (FASTR): epochs of
        # the residual, aligned like the artifact, PCA per channel, fit and subtract
        hp = signal.sosfiltfilt(sos_obs, data[rows], axis=-1, padtype="even",
                                padlen=min(data.shape[1] - 1, 200)).astype(np.float32)
        spec = sfft.rfft(np.where(inside[None], hp[:, idx_c], np.float32(0.0)), n=n_fft, axis=-1)
        resid = sfft.irfft(spec * advance[None], n=n_fft, axis=-1)[..., obs_cols]
        fit, n_used = _obs(resid, obs_use, obs_components)
        fit[:, ~obs_use] = 0.0
        padded = np.zeros((rows.size, idx.shape[0], width), dtype=np.float32)
        padded[..., obs_cols] = fit
        back = sfft.irfft(sfft.rfft(padded, n=n_fft, axis=-1) * np.conj(advance)[None],
                          n=n_fft, axis=-1)[..., :width]  # fmt: skip
        inner = own & (j >= obs_cols.start) & (j < obs_cols.stop)
        idx_inner = idx[inner] if idx_inner is None else idx_inner
        for i, r in enumerate(rows):
            data[r, idx_inner] -= back[i][inner]
        used.extend(n_used)
    return data, {"shifts": shifts - frac, "obs_components": used}


def remove_gradient_artifact(
    raw: mne.io.BaseRaw,
    *,
    volume_onsets: np.ndarray | None = None,
    marker: str = "R128",
    tr: float | None = None,
    slice_timing=None,
    n_slices: int | None = None,
    window: int = 60,
    upsample: int = 10,
    obs_components: str | int = "auto",
    lowpass: float | None = 70.0,
    picks=None,
    copy: bool = True,
    chunk_channels: int = 8,
    source: str | None = None,
) -> tuple[mne.io.BaseRaw, GradientReport]:
    """Remove the MR gradient artifact (FASTR-class) from a continuous recording.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        Preloaded recording with volume markers as annotations (or give ``volume_onsets``).
    volume_onsets : ndarray | None
        Volume onsets in samples; None finds them from the ``marker`` annotations with
        :func:`~bids_app.eeg.triggers.find_volume_triggers` (robust to missing, duplicated
        and stray markers).
    marker : str
        Volume marker name.
    tr : float | None
        Repetition time (s); None estimates it from the markers.
    slice_timing : sequence of float | None
        BIDS SliceTiming (s); None spreads ``n_slices`` slices evenly over the TR.
    n_slices : int | None
        Slices per volume (required without ``slice_timing``).
    window : int
        Neighbouring slice artifacts on each side per template (Hann weights).
    upsample : int
        Alignment resolution 1/upsample sample (then refined by parabolic interpolation).
    obs_components : "auto" | int
        Optimal-basis-set components per channel (0: no OBS).
    lowpass : float | None
        Low-pass cutoff after subtraction (Hz); None keeps the full band.
    picks : str | list | None
        Channels to correct (default: all EEG, EOG and ECG channels).
    copy : bool
        Work on a copy of ``raw``.
    chunk_channels : int
        Channels processed together.
    source : str | None
        File name for error messages.

    Returns
    -------
    raw : mne.io.BaseRaw
        The corrected recording.
    report : GradientReport
        Triggers, alignment and OBS summary.
    """
    t0 = time.perf_counter()
    raw = raw.copy() if copy else raw
    sfreq = raw.info["sfreq"]
    trig_report = None
    if volume_onsets is None:
        volume_onsets, trig_report = find_volume_triggers(raw, marker=marker, tr=tr,
                                                          source=source)  # fmt: skip
    if slice_timing is None and not n_slices:
        raise ValueError("Give slice_timing or n_slices to remove the gradient artifact.")
    onsets = slice_onsets(volume_onsets, sfreq, n_slices=n_slices or 0, tr=tr,
                          slice_timing=slice_timing)  # fmt: skip
    onsets = onsets.reshape(len(volume_onsets), -1)
    picks = mne.pick_types(raw.info, eeg=True, eog=True, ecg=True, exclude=()) if picks is None \
        else _pick_rows(raw, picks)  # fmt: skip
    data = raw._data
    data, info = correct_gradient(data, onsets, sfreq, picks=picks, window=window,
                                  upsample=upsample, obs_components=obs_components,
                                  chunk_channels=chunk_channels, lowpass=lowpass)  # fmt: skip
    if lowpass:
        sos = signal.butter(4, lowpass, "lowpass", fs=sfreq, output="sos")
        for c0 in range(0, len(picks), chunk_channels):
            rows = picks[c0 : c0 + chunk_channels]
            data[rows] = signal.sosfiltfilt(sos, data[rows].astype(np.float32), axis=-1,
                                            padtype="even",
                                            padlen=min(data.shape[1] - 1, int(sfreq // 10)))
    names = [raw.ch_names[p] for p in picks]
    report = GradientReport(
        triggers=trig_report, n_volumes=int(onsets.shape[0]), n_slices=int(onsets.shape[1]),
        window=window, upsample=upsample, shift_std_samples=float(np.std(info["shifts"])),
        obs_components=dict(zip(names, info["obs_components"])), lowpass=lowpass,
        duration_s=time.perf_counter() - t0, volume_onsets=np.asarray(volume_onsets, float),
    )  # fmt: skip
    logger.info("Gradient artifact removed: %d volumes x %d slices in %.1f s",
                report.n_volumes, report.n_slices, report.duration_s)  # fmt: skip
    return raw, report


def _pick_rows(raw: mne.io.BaseRaw, picks) -> np.ndarray:
    """Row indices of ``picks`` (channel names or integer indices)."""
    picks = [picks] if isinstance(picks, str | int) else list(picks)
    return np.array([raw.ch_names.index(p) if isinstance(p, str) else int(p) for p in picks])
