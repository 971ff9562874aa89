"""Slice epochs of the gradient artifact: plan, sub-sample alignment and per-chunk correction.

Steps 1-5 of :mod:`bids_app.eeg.gradient` for one chunk of channels: the epoch plan
(segments, windows, FFT sizes, template weights), the alignment of every epoch to the mean
artifact through FFT phase ramps, and the template + slice-shape + OBS subtraction with the
optional adaptive noise cancellation. :func:`~bids_app.eeg.gradient.correct_gradient`
orders these over chunks of channels in threads.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import signal

from bids_app.eeg.anc import adaptive_noise_cancel
from bids_app.eeg.gradient_basis import fit_matrix, fit_shapes, shape_basis
from bids_app.eeg.kernels import zero_phase

_MARGIN = 8  # samples of data kept on each side of a slice segment inside its window
_PRE = 4  # a slice segment starts this many samples before the slice onset


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


def align_epochs(spec: np.ndarray, base: np.ndarray, n: int, upsample: int,
                 max_shift: float = 2.0):
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


class EpochPlan:
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


def correct_chunk(plan: EpochPlan, x: np.ndarray, *, obs_components, do_obs, anc):
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
