"""FASTR-class removal of the MR gradient (imaging) artifact from EEG.

Method (Allen et al. 2000; Niazy et al. 2005), slice-wise and vectorised:

1. Slice epochs start at every slice onset (volume triggers plus the onsets within a volume
   measured from the artifact, the sidecar's SliceTiming as a prior:
   :mod:`bids_app.eeg.slice_timing`);
   each epoch is a window of the data high-passed at ``template_highpass`` (5 Hz) for
   template estimation, so slow EEG and the pulse artifact stay out of the templates.
2. Sub-sample alignment: every epoch is shifted by its fractional onset plus a correction
   found by cross-correlation with the mean artifact on the strongest channels, evaluated on
   a grid of ``1/upsample`` samples through FFT phase ramps and refined by parabolic
   interpolation (FASTR too aligns on one channel and applies the shifts to all).
3. Template: Hann-weighted moving average of the ``window`` neighbouring aligned epochs on
   each side (the epoch itself excluded), computed by FFT along the epoch axis and scaled
   to each epoch by least squares on its content above 70 Hz (where EEG has no power);
   then the mixture of slice shapes (:mod:`bids_app.eeg.gradient_basis`) that explains the
   epoch's remaining content above 70 Hz is added to it, full band (slices that differ,
   volume amplitude changes, head movements).
4. Optimal basis set: PCA of the residuals high-passed above ``obs_highpass`` (the part a
   mean template cannot follow), the number of components chosen per channel from the
   Marchenko-Pastur edge of the eigenvalue spectrum, fitted and subtracted per epoch.
5. The artifact estimate is shifted back to each epoch's own timing, subtracted from the
   original data over the epoch's own segment, and the data are low-pass filtered
   (zero-phase Butterworth).
6. Optional adaptive noise cancellation (Allen et al. 2000; :func:`adaptive_noise_cancel`):
   the residual that a FIR filter of the subtracted artifact estimate predicts is removed
   per channel with the least-squares (Wiener) filter an LMS filter converges to, above
   ``obs_highpass`` only (templates carry a trace of EEG, which a fit in the EEG band would
   use to cancel narrow-band EEG).

All steps run on float32 arrays of shape (channels, epochs, samples) in chunks of channels,
processed by ``n_jobs`` threads (FFTs release the GIL); there is no loop over samples or
epochs, and results do not depend on ``n_jobs`` or ``chunk_channels``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import mne
import numpy as np
from scipy import fft as sfft
from scipy import signal

from bids_app.eeg.anc import adaptive_noise_cancel, anc_geometry
from bids_app.eeg.gradient_basis import fit_matrix, fit_shapes, shape_basis
from bids_app.eeg.kernels import copy_for_rewrite, n_threads, zero_phase
from bids_app.eeg.slice_timing import SliceTimingReport, choose_slice_offsets
from bids_app.eeg.triggers import TriggerReport, find_volume_triggers

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
    upsample : int
        Alignment resolution (1/upsample sample before parabolic refinement).
    shift_std_samples : float
        Spread of the sub-sample timing corrections found by alignment.
    obs_components : dict of str to int
        Optimal-basis-set components removed per channel.
    lowpass : float | None
        Low-pass cutoff applied after subtraction (Hz).
    anc : bool
        Whether adaptive noise cancellation was applied.
    anc_taps : int
        FIR taps of the adaptive noise canceller (0 without ANC).
    duration_s : float
        Wall time.
    volume_onsets : ndarray
        Volume onsets used (samples).
    slice_timing : SliceTimingReport | None
        Which slice onsets were used (sidecar, EEG estimate or even spread) and why.
    """

    triggers: TriggerReport | None
    n_volumes: int
    n_slices: int
    window: int
    upsample: int
    shift_std_samples: float = 0.0
    obs_components: dict[str, int] = field(default_factory=dict)
    lowpass: float | None = None
    anc: bool = False
    anc_taps: int = 0
    duration_s: float = 0.0
    volume_onsets: np.ndarray = field(default_factory=lambda: np.array([]))
    slice_timing: SliceTimingReport | None = None

    def to_dict(self) -> dict:
        """Plain-python view for sidecars."""
        # the run time is logged, not recorded: sidecars must not change between reruns
        out = {k: v for k, v in self.__dict__.items()
               if k not in ("triggers", "volume_onsets", "duration_s", "slice_timing")}
        out["triggers"] = None if self.triggers is None else self.triggers.to_dict()
        out["slice_timing"] = None if self.slice_timing is None else self.slice_timing.to_dict()
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


def _ramp(shift: np.ndarray, n_bins: int, n: int) -> np.ndarray:
    """Phase factors (complex64) that advance each epoch by ``shift`` samples."""
    phase = (2 * np.pi / n) * np.asarray(shift, float)[:, None] * np.arange(n_bins)[None, :]
    return np.exp(1j * phase.astype(np.float32))


def _align(spec: np.ndarray, base: np.ndarray, n: int, upsample: int, max_shift: float = 2.0):
    """Sub-sample corrections maximising each epoch's correlation with the mean artifact.

    ``spec`` has shape (channels, epochs, freqs) for a few strong channels.
    """
    grid = np.arange(-max_shift, max_shift + 1e-9, 1.0 / upsample)
    n_bins = spec.shape[-1]
    weights = np.full(n_bins, 2.0)
    weights[0] = 1.0
    ramp = (_ramp(grid, n_bins, n).T * weights[:, None]).astype(np.complex64)
    unshift = _ramp(base, n_bins, n)
    delta = np.zeros(spec.shape[1])
    for _ in range(2):
        ref = (spec * _ramp(base + delta, n_bins, n)[None]).mean(axis=1)
        cross = np.einsum("cef,cf->ef", spec, np.conj(ref)) * unshift
        score = (cross @ ramp).real.astype(float)
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


class _Plan:
    """Epoch geometry, alignment and filters shared by every channel chunk."""

    def __init__(self, onsets, n_times, sfreq, *, window, obs_highpass, template_highpass,
                 lowpass):  # fmt: skip
        onsets = np.asarray(onsets, dtype=float)
        self.n_volumes, self.n_slices = onsets.shape
        starts, self.frac, seg = _segments(onsets, n_times)
        self.sfreq, self.n_times, self.seg = sfreq, n_times, seg
        self.width = width = int(np.max(seg)) + 2 * _MARGIN
        self.n_fft = sfft.next_fast_len(width + 2 * _MARGIN, real=True)
        idx = (starts - _MARGIN)[:, None] + np.arange(width)[None, :]
        self.inside = (idx >= 0) & (idx < n_times)
        self.all_inside = bool(self.inside.all())
        self.idx_c = np.clip(idx, 0, n_times - 1)
        # epochs are gathered n_fft wide (zeros after ``width``): FFTs then need no padding
        self.idx_fft = np.clip((starts - _MARGIN)[:, None] + np.arange(self.n_fft)[None, :],
                               0, n_times - 1)  # fmt: skip
        j = np.arange(width)[None, :]
        first = _MARGIN - _PRE
        self.own = (j >= first) & (j < first + seg[:, None]) & self.inside
        self.idx_own = idx[self.own]
        valid = (j < first + seg[:, None] - 2) & self.inside
        self.n_valid = int(np.max(np.nonzero(valid.any(axis=0))[0])) + 1  # columns averaged
        self.valid = valid[:, : self.n_valid].astype(np.float32)
        l_min = int(np.min(seg[seg >= 0.5 * np.median(seg)]))
        self.obs_use = seg >= l_min
        self.obs_cols = slice(first, first + l_min)
        inner = self.own & (j >= first) & (j < first + l_min)
        self.inner, self.idx_inner = inner, idx[inner]
        # ANC acts above the EEG band, like the OBS: a reference carrying a trace of EEG
        # (templates leak a little of it) would otherwise let it cancel narrow-band EEG.
        # After a low-pass only its transition band is left (work rate ~16 x lowpass).
        self.anc_band = (obs_highpass, min(4.0 * lowpass, 0.45 * sfreq) if lowpass
                         else 0.45 * sfreq)  # fmt: skip
        self.sos_hp = signal.butter(2, template_highpass, "highpass", fs=sfreq, output="sos")
        self.sos_obs = signal.butter(4, obs_highpass, "highpass", fs=sfreq, output="sos")
        self.sos_lp = None if not lowpass else signal.butter(4, lowpass, "lowpass", fs=sfreq,
                                                             output="sos")  # fmt: skip
        # first rfft bin at or above obs_highpass: amplitudes are fitted on bins >= hf0
        self.hf0 = int(np.searchsorted(np.fft.rfftfreq(self.n_fft, 1.0 / sfreq), obs_highpass))
        # Hann moving average along the epoch axis by FFT (linear convolution, "same")
        kernel = _hann_kernel(window)
        self.half = kernel.size // 2
        n_ep = idx.shape[0]
        self.n_conv = sfft.next_fast_len(n_ep + kernel.size - 1, real=True)
        self.kspec = sfft.rfft(kernel, n=self.n_conv).astype(np.complex64)
        den = signal.fftconvolve(valid.astype(float), kernel[:, None], mode="same", axes=0)
        den = den[:, : self.n_valid]
        ok = den > 1e-3 * den.max()
        self.inv_den = np.where(ok, 1.0 / np.where(ok, den, 1.0), 0.0).astype(np.float32)
        self.advance = None
        self.basis = self.shape_matrix = None

    def epochs(self, x: np.ndarray) -> np.ndarray:
        """Slice epochs (channels, epochs, n_fft; zero after ``width``) of ``x``."""
        ep = np.take(x, self.idx_fft, axis=1)
        ep[..., self.width :] = 0.0
        if not self.all_inside:
            ep[..., : self.width] *= self.inside[None]
        return ep

    def set_shifts(self, shifts: np.ndarray) -> None:
        self.advance = _ramp(shifts, self.n_fft // 2 + 1, self.n_fft)

    def aligned(self, x: np.ndarray) -> np.ndarray:
        """Spectra of the aligned slice epochs of ``x`` high-passed for the templates."""
        hp = np.ascontiguousarray(zero_phase(self.sos_hp, x, padlen=int(self.sfreq)))
        spec = sfft.rfft(self.epochs(hp), axis=-1)
        spec *= self.advance[None]
        return spec

    def set_basis(self, data: np.ndarray, rows: np.ndarray, chunk: int) -> None:
        """Slice shapes (:func:`shape_basis`) from the per-slice-position means of ``rows``."""
        full = self.inside.reshape(self.n_volumes, self.n_slices, -1).all(axis=(1, 2))
        if not full.any():
            return
        means = []
        for c0 in range(0, len(rows), chunk):
            z = sfft.irfft(self.aligned(data[rows[c0 : c0 + chunk]].astype(np.float32)),
                           n=self.n_fft, axis=-1)[..., : self.width]  # fmt: skip
            z = z.reshape(z.shape[0], self.n_volumes, self.n_slices, -1)[:, full]
            means.append(z.mean(axis=1).reshape(-1, self.width))
        self.basis = shape_basis(np.concatenate(means), self.n_fft, self.obs_cols, self.hf0)
        if self.basis is not None:
            self.shape_matrix = fit_matrix(self.basis, self.hf0, self.obs_cols)

    def moving_template(self, z: np.ndarray) -> np.ndarray:
        """Hann-weighted masked mean of the neighbouring epochs (the epoch excluded)."""
        n_ep, cols = z.shape[1], self.n_valid
        padded = np.zeros((z.shape[0], self.n_conv, cols), dtype=np.float32)
        np.multiply(z[..., :cols], self.valid[None], out=padded[:, :n_ep])
        spec = sfft.rfft(padded, axis=1)
        del padded
        spec *= self.kspec[None, :, None]
        num = sfft.irfft(spec, n=self.n_conv, axis=1)[:, self.half : self.half + n_ep]
        template = np.zeros(z.shape, dtype=np.float32)
        np.multiply(num, self.inv_den[None], out=template[..., :cols])
        return template


def _correct_chunk(plan: _Plan, x: np.ndarray, *, obs_components, do_obs, anc):
    """Correct one chunk of channels (float32 rows, modified in place); return (y, used)."""
    spec = plan.aligned(x)
    z = sfft.irfft(spec, n=plan.n_fft, axis=-1)
    tspec = sfft.rfft(plan.moving_template(z), axis=-1)
    del z
    # least-squares amplitude from the content above obs_highpass (no EEG there)
    zs, ts = spec[..., plan.hf0 :], tspec[..., plan.hf0 :]
    num = np.einsum("cef,cef->ce", zs.view(np.float32), ts.view(np.float32))
    den = np.einsum("cef,cef->ce", ts.view(np.float32), ts.view(np.float32))
    del zs, ts
    tspec *= (num / np.maximum(den, 1e-30))[..., None]
    if plan.basis is not None:  # what the template misses, fitted above obs_highpass
        tspec += fit_shapes(spec[..., plan.hf0 :] - tspec[..., plan.hf0 :], plan.basis,
                            plan.shape_matrix)  # fmt: skip
    del spec
    tspec *= np.conj(plan.advance)[None]
    back = sfft.irfft(tspec, n=plan.n_fft, axis=-1)[..., : plan.width]
    del tspec
    art = np.zeros_like(x) if anc else None
    for i in range(x.shape[0]):
        piece = back[i][plan.own]
        x[i, plan.idx_own] -= piece
        if anc:
            art[i, plan.idx_own] = piece
    del back
    used = [0] * x.shape[0]
    if do_obs:
        # OBS on the continuous residual high-passed above obs_highpass (FASTR): epochs of
        # the residual, aligned like the artifact, PCA per channel, fit and subtract
        hp = np.ascontiguousarray(zero_phase(plan.sos_obs, x, padlen=200))
        spec = sfft.rfft(plan.epochs(hp), axis=-1)
        del hp
        resid = sfft.irfft(spec * plan.advance[None], n=plan.n_fft, axis=-1)[..., plan.obs_cols]
        fit, used = _obs(resid, plan.obs_use, obs_components)
        fit[:, ~plan.obs_use] = 0.0
        padded = np.zeros((x.shape[0], plan.idx_c.shape[0], plan.n_fft), dtype=np.float32)
        padded[..., plan.obs_cols] = fit
        back = sfft.irfft(sfft.rfft(padded, axis=-1) * np.conj(plan.advance)[None],
                          n=plan.n_fft, axis=-1)[..., : plan.width]  # fmt: skip
        for i in range(x.shape[0]):
            piece = back[i][plan.inner]
            x[i, plan.idx_inner] -= piece
            if anc:
                art[i, plan.idx_inner] += piece
    padlen = int(plan.sfreq // 10)
    y = x if plan.sos_lp is None else zero_phase(plan.sos_lp, x, padlen=padlen)
    if anc:  # after the low-pass, on the same band of data and reference
        ref = art if plan.sos_lp is None else zero_phase(plan.sos_lp, art, padlen=padlen)
        y = adaptive_noise_cancel(y, ref, plan.sfreq, band=plan.anc_band,
                                  span=int(np.median(plan.seg)))  # fmt: skip
    return y, used


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
    anc: bool = False,
    shapes: bool = True,
    shape_rows: np.ndarray | None = None,
    chunk_channels: int = 4,
    n_jobs: int | None = None,
    picks: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Subtract the gradient artifact from an array in place, then low-pass it.

    Parameters
    ----------
    data : ndarray, shape (n_channels, n_times)
        EEG in volts, modified in place (rows in ``picks``).
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
        does not leak into them; also the lower edge of the ANC band.
    lowpass : float | None
        Zero-phase Butterworth (order 4) low-pass applied after subtraction (Hz); None keeps
        the full band. The OBS only acts above ``obs_highpass``, so it is skipped when
        ``lowpass <= obs_highpass`` (it could not change the result).
    anc : bool
        Apply adaptive noise cancellation (:func:`adaptive_noise_cancel`) after the OBS.
    shapes : bool
        Also remove, per epoch, the mixture of slice shapes
        (:mod:`~bids_app.eeg.gradient_basis`) that explains the template's residual above
        ``obs_highpass`` (slices that differ, volume amplitude changes, head movements).
    shape_rows : ndarray of int | None
        Rows the shapes are learnt from (default ``picks``; at most 16 are used).
    chunk_channels : int
        Channels processed together (memory ~ 100 MB per channel of a NATVIEW run).
    n_jobs : int | None
        Threads working on chunks of channels (None: 1; -1: every CPU available).
    picks : ndarray of int | None
        Rows of ``data`` to correct (default: all).
    out : ndarray | None
        Array (shape like ``data``) that receives the corrected rows; None: ``data`` itself.

    Returns
    -------
    data : ndarray
        The corrected array (``out`` when given, else ``data``).
    info : dict
        ``shifts`` (sub-sample corrections), ``obs_components`` (per channel) and
        ``anc_taps``.
    """
    picks = np.arange(data.shape[0]) if picks is None else np.asarray(picks)
    target = data if out is None else out
    plan = _Plan(onsets, data.shape[1], sfreq, window=window, obs_highpass=obs_highpass,
                 template_highpass=template_highpass, lowpass=lowpass)  # fmt: skip
    # timing: the strongest channels define the sub-sample corrections of every slice
    sample = plan.idx_c[:: max(1, plan.idx_c.shape[0] // 200)]
    power = np.array([np.var(data[c, sample]) for c in picks])
    strong = picks[np.argsort(power)[::-1][: min(4, picks.size)]]
    hp = np.ascontiguousarray(zero_phase(plan.sos_hp, data[strong], padlen=int(sfreq)))
    spec = sfft.rfft(plan.epochs(hp), axis=-1)
    del hp
    shifts = plan.frac + _align(spec, plan.frac, plan.n_fft, upsample)
    del spec
    plan.set_shifts(shifts)
    if shapes:  # shapes from (EEG) channels, not from the ECG that would leak into them
        rows = picks if shape_rows is None else np.asarray(shape_rows)
        plan.set_basis(data, rows[:: max(1, rows.size // 16)][:16], chunk_channels)
    do_obs = obs_components != 0 and (lowpass is None or lowpass > obs_highpass)
    chunks = [picks[c0 : c0 + chunk_channels] for c0 in range(0, picks.size, chunk_channels)]

    def work(rows):
        y, used = _correct_chunk(plan, data[rows].astype(np.float32), anc=anc,
                                 obs_components=obs_components, do_obs=do_obs)  # fmt: skip
        target[rows] = y
        return used

    n_jobs = n_threads(n_jobs)
    if n_jobs > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=min(n_jobs, len(chunks))) as pool:
            used = [n for chunk in pool.map(work, chunks) for n in chunk]
    else:
        used = [n for rows in chunks for n in work(rows)]
    _, k = anc_geometry(sfreq, plan.anc_band, int(np.median(plan.seg)))
    return target, {"shifts": shifts - plan.frac, "obs_components": used,
                  "anc_taps": 2 * k + 1 if anc else 0}  # fmt: skip


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
    anc: bool = False,
    picks=None,
    copy: bool = True,
    chunk_channels: int = 4,
    n_jobs: int | None = None,
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
        BIDS SliceTiming of the BOLD sidecar (s), a prior only: the slice onsets are
        measured from the artifact (:func:`~bids_app.eeg.slice_timing.choose_slice_offsets`)
        and the sidecar is used when the measurement confirms it (or cannot be made).
    n_slices : int | None
        Slices per volume, spread evenly over the TR when neither the sidecar nor the
        artifact gives the onsets.
    window : int
        Neighbouring slice artifacts on each side per template (Hann weights).
    upsample : int
        Alignment resolution 1/upsample sample (then refined by parabolic interpolation).
    obs_components : "auto" | int
        Optimal-basis-set components per channel (0: no OBS).
    lowpass : float | None
        Low-pass cutoff after subtraction (Hz); None keeps the full band.
    anc : bool
        Adaptive noise cancellation of the residual correlated with the artifact estimate
        (:func:`adaptive_noise_cancel`).
    picks : str | list | None
        Channels to correct (default: all EEG, EOG and ECG channels).
    copy : bool
        Work on a copy of ``raw``.
    chunk_channels : int
        Channels processed together.
    n_jobs : int | None
        Threads (None: 1; -1: every CPU available); results do not depend on it.
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
    raw, src = copy_for_rewrite(raw) if copy else (raw, raw._data)
    sfreq = raw.info["sfreq"]
    trig_report = None
    if volume_onsets is None:
        volume_onsets, trig_report = find_volume_triggers(raw, marker=marker, tr=tr,
                                                          source=source)  # fmt: skip
    picks = mne.pick_types(raw.info, eeg=True, eog=True, ecg=True, exclude=()) if picks is None \
        else _pick_rows(raw, picks)  # fmt: skip
    offsets, timing = choose_slice_offsets(
        src[_strongest(src, picks, volume_onsets)], volume_onsets, sfreq, prior=slice_timing,
        n_slices=n_slices, tr=tr, source=source)  # fmt: skip
    logger.info("Slice onsets: %s", timing.reason)
    onsets = np.asarray(volume_onsets, dtype=float)[:, None] + offsets[None, :]
    if src is not raw._data:
        rest = np.setdiff1d(np.arange(src.shape[0]), picks)
        raw._data[rest] = src[rest]
    eeg = mne.pick_types(raw.info, eeg=True, exclude="bads")
    _, info = correct_gradient(src, onsets, sfreq, picks=picks, window=window,
                               shape_rows=eeg if eeg.size >= 3 else picks,
                               upsample=upsample, obs_components=obs_components,
                               lowpass=lowpass, anc=anc, chunk_channels=chunk_channels,
                               n_jobs=n_jobs, out=raw._data)  # fmt: skip
    names = [raw.ch_names[p] for p in picks]
    report = GradientReport(
        triggers=trig_report, n_volumes=int(onsets.shape[0]), n_slices=int(onsets.shape[1]),
        window=window, upsample=upsample, shift_std_samples=float(np.std(info["shifts"])),
        obs_components=dict(zip(names, info["obs_components"])), lowpass=lowpass, anc=anc,
        anc_taps=info["anc_taps"], duration_s=time.perf_counter() - t0,
        volume_onsets=np.asarray(volume_onsets, float), slice_timing=timing,
    )  # fmt: skip
    logger.info("Gradient artifact removed: %d volumes x %d slices in %.1f s",
                report.n_volumes, report.n_slices, report.duration_s)  # fmt: skip
    return raw, report


def _strongest(data: np.ndarray, picks: np.ndarray, volume_onsets, n: int = 4) -> np.ndarray:
    """The ``n`` rows of ``picks`` with the most variance during the scan."""
    lo = int(max(np.min(volume_onsets), 0))
    hi = int(min(np.max(volume_onsets) + np.median(np.diff(volume_onsets)), data.shape[1]))
    step = max(1, (hi - lo) // 200_000)
    power = np.array([np.var(data[c, lo:hi:step]) for c in picks])
    return np.asarray(picks)[np.argsort(power)[::-1][: min(n, len(picks))]]


def _pick_rows(raw: mne.io.BaseRaw, picks) -> np.ndarray:
    """Row indices of ``picks`` (channel names or integer indices)."""
    picks = [picks] if isinstance(picks, str | int) else list(picks)
    return np.array([raw.ch_names.index(p) if isinstance(p, str) else int(p) for p in picks])
