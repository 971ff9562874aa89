"""MNI-space coupling runs with known truth: the test and benchmark data of the coupling GLM.

A run is the EEG of :func:`~bids_app.simulate.neural.simulate_neural` (task ``tp``: planted
alpha, beta and theta sources) and in-mask BOLD on nilearn's 3 mm MNI brain mask, as the
pipeline has it before smoothing (motion-corrected, normalised, slice-time corrected to
mid-TR); :meth:`MNIRun.coupling_bold` smooths it as the pipeline does before the coupling
stage, and :meth:`MNIRun.planted_reach` tells which voxels the smoothed planted signal
reaches:

- noise: :func:`~bids_app.simulate.bold.planted_mni_bold`'s AR(1) noise (coefficient 0.3,
  0.5 % of the baseline), or for nulls heterogeneous AR(1) (rho U(0.2, 0.6) per voxel) or
  1/f (exponent U(0.5, 1.5) per voxel) noise of the same size; spatially smooth with the
  ``realism``'s ``bold_noise_fwhm_mm``;
- planted voxels (within each source's radius) follow their source's power convolved with
  ``hrf`` (0.5 % per SD; an :class:`~bids_app.simulate.bold_hard.HRF`, or "variable": a
  new HRF per source drawn by :func:`~bids_app.simulate.bold_hard.draw_hrf`);
- with a hard ``realism``, every BOLD effect of :mod:`bids_app.simulate.bold_hard` on top
  (slice index 0: the data are slice-time corrected) and the planted smooth head motion
  plus the motion spikes as motion parameters (ideal: no motion); with its
  ``stimulus_movie``, the movie features that drive the sources have the statistics of real
  films (:mod:`bids_app.simulate.film`);
- the confounds the pipeline computes from such data
  (:func:`bids_app.fmri.confounds.compute_confounds`: global signal, motion parameters,
  FD, DVARS, motion-outlier spike columns; no tissue priors on this grid, so ``csf`` and
  ``white_matter`` are empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mne
import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import datasets

from bids_app.coupling.design import acquisition_times
from bids_app.fmri.builtin import smooth_series
from bids_app.fmri.confounds import compute_confounds
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.bold import _planted_motion, planted_mni_bold
from bids_app.simulate.bold_hard import (
    HRF,
    bold_effects_on,
    convolved,
    draw_hrf,
    hard_bold,
    spatially_smooth,
)
from bids_app.simulate.neural import simulate_neural
from bids_app.simulate.realism import Realism, resolve_realism
from bids_app.simulate.stimulus import simulate_stimulus

SFREQ, TR, LEAD = 250.0, nv.TR, 3.0
TASK = "tp"
BANDS = (("theta", 4.0, 8.0), ("alpha", 8.0, 13.0), ("beta", 13.0, 30.0))
#: HRFs of the issue-15 claims: canonical (peak 5 s), delayed by 2 s, peaking at 8.5 s.
HRFS = {"canonical": HRF(), "delayed2s": HRF(delay_s=2.0), "peak8p5s": HRF(peak_s=8.5)}
NOISE_SCALE = 0.5  # % of the baseline (100)


@dataclass
class MNIRun:
    """One simulated run in MNI space.

    Attributes
    ----------
    raw : mne.io.RawArray
        Clean 61-channel EEG (250 Hz).
    onsets, times : ndarray, shape (n_volumes,)
        Volume onsets and acquisition times (mid-TR) on the EEG clock.
    mask : nibabel.Nifti1Image
        MNI brain mask; ``bold`` columns follow ``np.argwhere`` order.
    bold : ndarray, shape (n_volumes, n_vox)
        In-mask BOLD around 100.
    planted : dict
        Source name -> boolean mask of its planted voxels (also in nulls).
    band_of : dict
        Source name -> band.
    confounds : DataFrame
        Pipeline confounds computed from ``bold``.
    truth : dict
        HRF per source, each source's true power (``source_power``, at
        :data:`~bids_app.simulate.bold.POWER_SFREQ` on the EEG clock) and, for hard runs,
        spike volumes and non-planted clusters.
    """

    raw: mne.io.RawArray
    onsets: np.ndarray
    times: np.ndarray
    mask: nib.Nifti1Image
    bold: np.ndarray
    planted: dict[str, np.ndarray]
    band_of: dict[str, str]
    confounds: pd.DataFrame | None = None
    truth: dict = field(default_factory=dict)

    def _volume(self, columns: np.ndarray) -> np.ndarray:
        brain = np.asarray(self.mask.dataobj) > 0
        data = np.zeros((*brain.shape, columns.shape[0]), np.float32)
        data[brain] = columns.T  # boolean indexing follows np.argwhere order
        return data

    def coupling_bold(self, fwhm: float) -> np.ndarray:
        """The BOLD the coupling stage receives: smoothed with the pipeline's
        :func:`~bids_app.fmri.builtin.smooth_series` (``[fmri] fwhm``), then masked.

        Returns
        -------
        ndarray, shape (n_volumes, n_vox)
        """
        return self.coupling_bold_of(self.bold, fwhm)

    def planted_reach(self, fwhm: float) -> np.ndarray:
        """Voxels that any planted voxel's signal reaches after smoothing with ``fwhm``.

        A voxel outside it holds none of the planted signal in :meth:`coupling_bold`, so a
        detection there is a false positive; a voxel inside but not planted holds a
        smoothed share of it.

        Returns
        -------
        ndarray of bool, shape (n_vox,)
        """
        planted = np.any(list(self.planted.values()), axis=0).astype(np.float32)
        return (self.coupling_bold_of(planted[None], fwhm)[0] > 0) | planted.astype(bool)

    def coupling_bold_of(self, columns: np.ndarray, fwhm: float) -> np.ndarray:
        """In-mask ``columns`` (n, n_vox) smoothed as :meth:`coupling_bold` smooths BOLD."""
        smoothed = smooth_series(self._volume(columns), self.mask.affine, fwhm=fwhm)
        return smoothed[np.asarray(self.mask.dataobj) > 0].T.astype(float)


def null_noise(kind: str, n: int, n_vox: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance noise: AR(1) with rho ~ U(0.2, 0.6), or 1/f^b with b ~ U(0.5, 1.5)."""
    if kind == "ar1":
        rho = rng.uniform(0.2, 0.6, n_vox)
        out = rng.normal(size=(n, n_vox))
        for i in range(1, n):
            out[i] += rho * out[i - 1]
        return out * np.sqrt(1 - rho**2)
    if kind != "1f":
        raise ValueError(f"noise kind must be 'ar1' or '1f', got {kind!r}.")
    freqs = np.fft.rfftfreq(2 * n)
    spec = np.fft.rfft(rng.normal(size=(2 * n, n_vox)), axis=0)
    spec *= np.maximum(freqs, freqs[1])[:, None] ** (-rng.uniform(0.5, 1.5, n_vox) / 2)
    out = np.fft.irfft(spec, n=2 * n, axis=0)[:n]
    return out / out.std(0)


def simulate_mni_run(hrf: HRF | str | None, *, noise: str = "planted", seed: int = 0,
                     n_volumes: int = 110, realism: str | Realism = "ideal") -> MNIRun:
    """Simulate one run (see the module docstring).

    Parameters
    ----------
    hrf : HRF, str or None
        HRF of the planted voxels: an :class:`HRF`, a key of :data:`HRFS`, "variable" (one
        drawn per source), or None for a null run (null EEG, no planted BOLD).
    noise : {"planted", "ar1", "1f"}
        Base noise: ``planted_mni_bold``'s, or a heterogeneous null spectrum.
    seed : int
        Seed of every draw.
    n_volumes : int
        Volumes.
    realism : str or Realism
        Its ``bold_*`` effects are added (and confounds computed) when switched on; its
        ``stimulus_movie`` selects the stimulus features.

    Returns
    -------
    MNIRun
    """
    real = resolve_realism(realism)
    null = hrf is None
    duration = LEAD + n_volumes * TR + 3.0
    stim = simulate_stimulus(TASK, n_volumes * TR + 10, 10.0, (32, 24),
                             np.random.default_rng(seed + 1), null=null, render=False,
                             realism=real)
    sim = simulate_neural(TASK, stim, SFREQ, int(duration * SFREQ), -LEAD,
                          np.random.default_rng(seed), null=null)
    raw = mne.io.RawArray(sim.eeg.astype(float), mne.create_info(
        list(nv.EEG_CHANNELS), SFREQ, "eeg"), verbose="error")
    onsets = LEAD + np.arange(n_volumes) * TR
    times = acquisition_times(onsets, TR / 2)
    mask = datasets.load_mni152_brain_mask(resolution=3)
    bold, planted = planted_mni_bold(TASK, sim.source_power, times, mask,
                                     np.random.default_rng(seed + 2), null=True)
    if noise != "planted":
        bold = 100 + NOISE_SCALE * null_noise(noise, *bold.shape, np.random.default_rng(seed + 3))
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    xyz = nib.affines.apply_affine(mask.affine, ijk)
    if real.bold_noise_fwhm_mm:
        bold = 100 + spatially_smooth(bold - 100, xyz, real.bold_noise_fwhm_mm)
    sources = scenario.sources_for_task(TASK)
    truth: dict = {"hrf": {}, "source_power": sim.source_power}
    rng = np.random.default_rng(seed + 5)
    if not null:
        for src in sources:
            shape = draw_hrf(rng) if hrf == "variable" else HRFS.get(hrf, hrf)
            truth["hrf"][src.name] = [shape.peak_s, shape.dispersion, shape.undershoot,
                                      shape.delay_s]
            power = sim.source_power[src.name]
            bold[:, planted[src.name]] += src.bold_sign * NOISE_SCALE * convolved(
                power, shape, times)[:, None]
    motion = np.zeros((n_volumes, 6))
    if bold_effects_on(real):
        extra = hard_bold(xyz, np.zeros(len(xyz), int), times[:, None], rng, real,
                          avoid_mm=[s.mni_mm for s in sources])
        bold += 100.0 * extra.signal
        motion = _planted_motion(n_volumes, TR, rng) + extra.motion
        truth.update(spike_volumes=extra.spike_volumes.tolist(), clusters=extra.clusters)
    confounds = _confounds(bold, ijk, mask, motion)
    return MNIRun(raw, onsets, times, mask, bold, planted,
                  {s.name: s.band for s in sources}, confounds, truth)


def _confounds(bold: np.ndarray, ijk: np.ndarray, mask: nib.Nifti1Image,
               motion: np.ndarray) -> pd.DataFrame:
    """The pipeline's confounds table of in-mask BOLD (no tissue priors on this grid)."""
    shape = mask.shape[:3]
    data = np.zeros((*shape, len(bold)), np.float32)
    data[tuple(ijk.T)] = bold.T
    brain = np.asarray(mask.dataobj) > 0
    empty = np.zeros(shape)
    table, _ = compute_confounds(data, brain, empty, empty, motion, tr=TR)
    return table
