"""Simulated BOLD run and T1w with planted anatomy, head motion, slice timing and coupling.

The subject's brain is the MNI152 template that nilearn bundles, moved into a native scanner
space by a planted transform ``native_to_mni`` (affine: a few degrees of rotation, a
translation and a slight scaling; plus a mild, smooth sinusoidal displacement). In native
space:

- **T1w** (``scale.t1w_voxel_mm`` isotropic): template T1 contrast, a scalp/skull shell
  (bright fat layer outside a dark gap, so brain extraction is needed as on real data), a
  smooth receive-coil bias field and Rician noise.
- **BOLD** (``scale.matrix`` x ``scale.n_slices``, 3 x 3 x 3.33 mm, TR 2.1 s): T2*-like
  tissue contrast (CSF > GM > WM) from the template's tissue priors, the same coil bias,
  slow drift, a global physiological fluctuation, Rician thermal noise (tSNR about 80),
  smooth rigid head motion per volume (planted parameters, motion.py convention), and
  planted coupled voxels: tissue within ``PlantedSource.radius_mm`` of each active source's
  MNI position follows the HRF-convolved source power (``bold_sign``, 1 % of baseline per
  standard deviation of the regressor). Every slice is sampled at its own ``SliceTiming``
  offset (natview_facts.slice_timing), so slice timing is physically present in the data.

``source_power`` envelopes are sampled at 10 Hz with time 0 at the onset of the first
volume (the first R128 trigger). ``null=True`` plants no coupled voxels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

from bids_app.fmri.motion import grid_center, rigid_matrix, rotation_matrix
from bids_app.fmri.template import load_template
from bids_app.natview import facts as nv
from bids_app.simulate.bold_hard import HRF, bold_effects_on, draw_hrf, hard_bold
from bids_app.simulate.realism import Realism, resolve_realism
from bids_app.simulate.scenario import Scale, sources_for_task

logger = logging.getLogger(__name__)

POWER_SFREQ = 10.0
COUPLING_AMPLITUDE = 0.01


@dataclass(frozen=True)
class NativeToMNI:
    """Planted mapping from native scanner mm to MNI mm: ``m = A @ y + d(y)``.

    ``d`` is a smooth displacement, ``d_i(y) = amplitude_mm[i] * sin(2 pi y_{i+1} / wavelength
    + phase[i])`` (indices modulo 3), evaluated at the native point.
    """

    affine: np.ndarray
    amplitude_mm: np.ndarray
    wavelength_mm: float
    phase: np.ndarray

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Map native points (n, 3) to MNI (n, 3)."""
        pts = np.asarray(points, dtype=float)
        out = pts @ self.affine[:3, :3].T + self.affine[:3, 3]
        return out + self.displacement(pts)

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Nonlinear part ``d(y)`` in mm, shape (n, 3)."""
        rolled = np.roll(points, -1, axis=1)
        return self.amplitude_mm * np.sin(2 * np.pi * rolled / self.wavelength_mm + self.phase)

    def inverse(self, points: np.ndarray, *, n_iter: int = 20) -> np.ndarray:
        """Map MNI points to native by fixed-point iteration (the displacement is small)."""
        pts = np.asarray(points, dtype=float)
        a_inv = np.linalg.inv(self.affine)
        y = pts @ a_inv[:3, :3].T + a_inv[:3, 3]
        for _ in range(n_iter):
            y = (pts - self.displacement(y)) @ a_inv[:3, :3].T + a_inv[:3, 3]
        return y


@dataclass
class BoldSim:
    """Simulated run and its truth.

    Attributes
    ----------
    bold : nib.Nifti1Image
        Native 4D BOLD (float32), slice timing physically present.
    t1w : nib.Nifti1Image | None
        Native T1w with scalp (None when not asked for).
    motion : ndarray, shape (n_volumes, 6)
        Planted motion (motion.py convention, about the BOLD grid centre); ``motion[0] = 0``.
    native_to_mni : NativeToMNI
        Planted anatomy transform.
    coupled : dict
        Source name -> MNI mask image (template grid at ``mni_resolution_mm``).
    slice_timing : list of float
    tr : float
    regressors : dict
        Source name -> planted fractional signal change, shape (n_volumes, n_slices).
    brain_mask : nib.Nifti1Image
        Native brain mask on the BOLD grid (motion-free position).
    hard : dict
        Hard-mode truth (empty for ideal data): ``hrf`` (source -> peak_s, dispersion,
        undershoot), ``spike_volumes`` and ``clusters`` (:mod:`bids_app.simulate.bold_hard`).
    """

    bold: nib.Nifti1Image
    t1w: nib.Nifti1Image | None
    motion: np.ndarray
    native_to_mni: NativeToMNI
    coupled: dict[str, nib.Nifti1Image]
    slice_timing: list[float]
    tr: float
    regressors: dict[str, np.ndarray] = field(default_factory=dict)
    brain_mask: nib.Nifti1Image | None = None
    hard: dict = field(default_factory=dict)


def centered_affine(shape: tuple[int, int, int], voxel_mm: tuple[float, ...]) -> np.ndarray:
    """RAS affine of a grid centred on the scanner isocentre."""
    affine = np.diag([*voxel_mm, 1.0])
    affine[:3, 3] = -np.asarray(voxel_mm) * (np.asarray(shape) - 1) / 2
    return affine


def _planted_anatomy(rng: np.random.Generator) -> NativeToMNI:
    angles = np.deg2rad(rng.uniform(2.0, 5.0, 3) * rng.choice([-1, 1], 3))
    scaling = rng.uniform(1.02, 1.08, 3)
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix(angles) @ np.diag(scaling)
    # Native isocentre lands near the centre of the brain (MNI 0, -17, 8) plus an offset.
    affine[:3, 3] = np.array([0.0, -17.0, 8.0]) + rng.uniform(-6.0, 6.0, 3)
    return NativeToMNI(
        affine=affine,
        amplitude_mm=rng.uniform(1.5, 2.5, 3),
        wavelength_mm=float(rng.uniform(110.0, 150.0)),
        phase=rng.uniform(0, 2 * np.pi, 3),
    )


def _planted_motion(n: int, tr: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random-walk motion, up to ~1.5 mm / ~1.2 degrees, first volume at zero."""
    walk = np.cumsum(rng.normal(size=(n + 20, 6)), axis=0)
    walk = ndimage.gaussian_filter1d(walk, sigma=max(1.0, 8.0 / tr), axis=0)[10 : 10 + n]
    walk -= walk[0]
    peak = np.maximum(np.abs(walk).max(axis=0), 1e-9)
    limits = np.r_[rng.uniform(0.6, 1.5, 3), np.deg2rad(rng.uniform(0.5, 1.2, 3))]
    return walk / peak * limits


def _bias(points: np.ndarray) -> np.ndarray:
    """Smooth receive-coil sensitivity in scanner coordinates (+-15 %)."""
    r = points / 100.0
    return 1.0 + 0.08 * r[:, 0] - 0.1 * r[:, 1] + 0.06 * r[:, 2] - 0.05 * (r**2).sum(axis=1)


def spm_hrf(dt: float, *, time_length: float = 32.0) -> np.ndarray:
    """SPM canonical HRF (difference of gammas 6 s / 16 s, ratio 1/6) sampled every ``dt``.

    Same kernel as ``nilearn.glm.first_level.spm_hrf(dt, oversampling=1)`` (unit sum),
    without importing nilearn's GLM stack (seconds of import time).
    """
    times = np.linspace(0, time_length, int(np.rint(time_length / dt)))
    hrf = stats.gamma.pdf(times, 6.0, loc=dt) - 0.167 * stats.gamma.pdf(times, 16.0, loc=dt)
    return hrf / hrf.sum()


def _regressor(power: np.ndarray, times_s: np.ndarray, hrf_shape: HRF | None = None
               ) -> np.ndarray:
    """HRF-convolved (SPM canonical, or ``hrf_shape``), standardised power at ``times_s``."""
    power = np.asarray(power, dtype=float)
    dt = 1.0 / POWER_SFREQ
    hrf = spm_hrf(dt) if hrf_shape is None else hrf_shape.kernel(dt)
    conv = np.convolve(power - power.mean(), hrf)[: len(power)]
    conv = (conv - conv.mean()) / max(conv.std(), 1e-12)
    grid = np.arange(len(conv)) / POWER_SFREQ
    return np.interp(times_s, grid, conv)


def planted_mni_bold(
    task: str,
    source_power: Mapping[str, np.ndarray],
    times_s: np.ndarray,
    mask: nib.Nifti1Image,
    rng: np.random.Generator,
    *,
    null: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """In-mask BOLD on an MNI mask whose planted voxels follow their source's power.

    A lighter stand-in for :func:`simulate_bold` when a test or benchmark needs BOLD
    already in MNI space: AR(1) noise (coefficient 0.3, scale 0.5 around 100) plus, for
    each source of ``task``, its HRF-convolved standardised power (scale 0.5, the
    source's BOLD sign) in the voxels within its radius of its MNI centre.

    Parameters
    ----------
    task : str
        Task whose planted sources are used.
    source_power : mapping
        Source name -> power envelope at ``POWER_SFREQ`` (``NeuralSim.source_power``).
    times_s : numpy.ndarray
        Acquisition time of each volume on the power's clock.
    mask : nibabel.Nifti1Image
        MNI brain mask; voxels are taken in ``np.argwhere`` order.
    rng : numpy.random.Generator
        Draws the noise.
    null : bool
        Noise only (the planted voxels are still returned).

    Returns
    -------
    bold : numpy.ndarray
        ``(volumes, in-mask voxels)``.
    planted : dict of str to numpy.ndarray
        Source name -> boolean mask over the in-mask voxels.
    """
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    xyz = nib.affines.apply_affine(mask.affine, ijk)
    noise = rng.normal(size=(len(times_s), len(ijk)))
    for i in range(1, len(times_s)):
        noise[i] += 0.3 * noise[i - 1]
    bold = 100 + 0.5 * noise
    planted = {}
    for src in sources_for_task(task):
        inside = np.linalg.norm(xyz - np.array(src.mni_mm), axis=1) <= src.radius_mm
        planted[src.name] = inside
        if not null:
            reg = _regressor(source_power[src.name], times_s)
            bold[:, inside] += src.bold_sign * 0.5 * reg[:, None]
    return bold, planted


@lru_cache(maxsize=2)
def _tissue_images(resolution: float) -> dict[str, np.ndarray]:
    """Template-space contrast images (cached; never modified by callers)."""
    tpl = load_template(resolution)
    gm, wm, csf = (np.asarray(i.dataobj, dtype=np.float32) for i in (tpl.gm, tpl.wm, tpl.csf))
    brain = np.asarray(tpl.mask.dataobj) > 0
    t1 = np.asarray(tpl.t1.dataobj, dtype=np.float32)
    epi = 1000.0 * (0.62 * wm + 0.82 * gm + 1.0 * csf)
    # Scalp: a dark gap (skull) 3-8 mm outside the brain, a bright fat layer 8-14 mm out.
    dist = ndimage.distance_transform_edt(~brain, sampling=resolution)
    scalp = ((dist > 8) & (dist < 14)).astype(np.float32)
    t1_head = np.where(brain, t1, 0.0) + 0.8 * ndimage.gaussian_filter(scalp, 0.7)
    return {
        "epi_linear": ndimage.gaussian_filter(epi, 1.5 / resolution),
        "t1": ndimage.spline_filter(t1_head.astype(np.float32)),
        "brain": ndimage.gaussian_filter(brain.astype(np.float32), 0.5),
        "affine": tpl.t1.affine,
    }


def _sample(volume: np.ndarray, affine: np.ndarray, points: np.ndarray, order: int) -> np.ndarray:
    inv = np.linalg.inv(affine)
    idx = points @ inv[:3, :3].T + inv[:3, 3]
    return ndimage.map_coordinates(volume, idx.T, order=order, mode="constant", prefilter=False)


def simulate_bold(
    task: str,
    n_volumes: int,
    source_power: Mapping[str, np.ndarray] | None,
    rng: np.random.Generator,
    scale: Scale,
    null: bool = False,
    *,
    voxel_size_mm: tuple[float, float, float] = nv.VOXEL_SIZE_MM,
    tr: float = nv.TR,
    mni_resolution_mm: float = 3.0,
    motion: bool = True,
    anatomy: NativeToMNI | None = None,
    t1w: bool = True,
    realism: str | Realism = "ideal",
) -> BoldSim:
    """Simulate one BOLD run of ``task`` and the subject's T1w.

    Parameters
    ----------
    task : str
        NATVIEW task name (selects the active planted sources).
    n_volumes : int
        Number of volumes.
    source_power : mapping or None
        Source name -> power envelope at 10 Hz (time 0 = first volume onset). Sources
        active in ``task`` but absent here are not coupled.
    rng : numpy.random.Generator
        Random generator (the only source of randomness).
    scale : Scale
        Matrix, slice count and T1w voxel size.
    null : bool
        Plant no coupled voxels.
    voxel_size_mm : tuple of float
        BOLD voxel size (NATVIEW: 3 x 3 x 3.33 mm; coarser for fast tests).
    tr : float
        Repetition time (s).
    mni_resolution_mm : float
        Grid of the returned coupled masks.
    motion : bool
        Plant head motion (False: the head is still).
    anatomy : NativeToMNI | None
        The subject's planted native -> MNI transform (None: drawn from ``rng``); the
        orchestrator passes one per subject so all runs share the anatomy.
    t1w : bool
        Also simulate the T1w (drawn from ``rng`` after the BOLD, so the BOLD does not
        depend on it); False leaves ``BoldSim.t1w`` None (the orchestrator needs one per
        subject, not one per run).
    realism : {"ideal", "hard"} or Realism
        Its ``bold_*`` fields add region-specific HRFs, structured noise, motion spikes and
        non-planted clusters (:mod:`bids_app.simulate.bold_hard`); ideal draws nothing
        extra, so ideal output is unchanged.

    Returns
    -------
    BoldSim
    """
    shape = (int(scale.matrix[0]), int(scale.matrix[1]), int(scale.n_slices))
    last = nv.LAST_SLICE_TIME * tr / nv.TR if shape[2] == nv.N_SLICES else tr * (1 - 1 / shape[2])
    slice_times = np.asarray(nv.slice_timing(shape[2], last_slice_time=last), dtype=float)
    epi_affine = centered_affine(shape, voxel_size_mm)
    anatomy = _planted_anatomy(rng) if anatomy is None else anatomy
    planted_motion = _planted_motion(n_volumes, tr, rng) if motion else np.zeros((n_volumes, 6))
    real = resolve_realism(realism)
    hard_rng = (np.random.default_rng(rng.integers(2**63))
                if real.bold_hrf_variable or bold_effects_on(real) else None)
    center = grid_center(shape, epi_affine)
    tissue = _tissue_images(1.0 if scale.t1w_voxel_mm < 1.5 else 2.0)
    t_aff = tissue["affine"]

    # Coupled sources and their regressors at every slice time.
    active = [] if null else list(sources_for_task(task))
    acq = np.arange(n_volumes)[:, None] * tr + slice_times[None, :]
    regressors: dict[str, np.ndarray] = {}
    hrf_truth: dict[str, list[float]] = {}
    for src in active:
        if source_power is None or src.name not in source_power:
            logger.warning("No power envelope for source %s; it is not coupled.", src.name)
            continue
        shape_ = draw_hrf(hard_rng) if real.bold_hrf_variable else None
        if shape_ is not None:
            hrf_truth[src.name] = [shape_.peak_s, shape_.dispersion, shape_.undershoot]
        reg = _regressor(np.asarray(source_power[src.name]), acq.ravel(), shape_)
        regressors[src.name] = (src.bold_sign * COUPLING_AMPLITUDE * reg).reshape(acq.shape)
    sources = {s.name: s for s in active if s.name in regressors}

    vox = np.indices(shape).reshape(3, -1).T.astype(float)
    points = vox @ epi_affine[:3, :3].T + epi_affine[:3, 3]
    slice_of = vox[:, 2].astype(int)
    bias = _bias(points)
    drift_slope = rng.normal(0.0, 0.01, len(points))
    global_fluct = ndimage.gaussian_filter1d(rng.normal(0, 0.004, n_volumes + 10), 2)[5:-5]
    noise_sigma = 8.0
    # Only voxels within 2 voxels (6 mm > the largest planted motion) of the head get signal.
    head = _sample(tissue["epi_linear"], t_aff, anatomy(points), 1).reshape(shape) > 1.0
    inside_head = ndimage.binary_dilation(head, iterations=2).ravel()
    pts, bias_in, slices_in = points[inside_head], bias[inside_head], slice_of[inside_head]
    drift_in = drift_slope[inside_head]
    extra = None
    if bold_effects_on(real):
        extra = hard_bold(anatomy(pts), slices_in, acq, hard_rng, real,
                          avoid_mm=[s.mni_mm for s in sources_for_task(task)])
        planted_motion = planted_motion + extra.motion
    data = np.empty((len(points), n_volumes), dtype=np.float32)
    clean = np.zeros(len(points), dtype=np.float32)
    sigma = np.float32(noise_sigma)
    for t in range(n_volumes):
        inv_motion = np.linalg.inv(rigid_matrix(planted_motion[t], center))
        m = anatomy(pts @ inv_motion[:3, :3].T + inv_motion[:3, 3])
        base = _sample(tissue["epi_linear"], t_aff, m, 1) * bias_in
        frac_t = (acq[t, slices_in] / max(acq[-1, -1], tr)) - 0.5
        mod = 1.0 + drift_in * frac_t + 0.02 * frac_t + global_fluct[t]
        if extra is not None:
            mod = mod + extra.signal[t]
        if sources:
            brain = _sample(tissue["brain"], t_aff, m, 1)
            for name, src in sources.items():
                d2 = np.einsum("ij,ij->i", m - src.mni_mm, m - src.mni_mm)
                mod += (d2 < src.radius_mm**2) * brain * regressors[name][t, slices_in]
        clean[inside_head] = base * mod
        # Rician magnitude of complex Gaussian thermal noise (float32 draws: half the cost)
        real = clean + sigma * rng.standard_normal(len(points), dtype=np.float32)
        imag = sigma * rng.standard_normal(len(points), dtype=np.float32)
        data[:, t] = np.hypot(real, imag)
    bold = nib.Nifti1Image(data.reshape(*shape, n_volumes), epi_affine)
    bold.header.set_xyzt_units("mm", "sec")
    bold.header["pixdim"][4] = tr
    bold.header.set_dim_info(slice=2)

    t1w_img = _simulate_t1w(scale, tissue, anatomy, rng) if t1w else None
    brain_native = _sample(tissue["brain"], t_aff, anatomy(points), 1).reshape(shape) > 0.5
    brain_mask = nib.Nifti1Image(brain_native.astype(np.uint8), epi_affine)

    tpl = load_template(mni_resolution_mm)
    mni_vox = np.indices(tpl.mask.shape).reshape(3, -1).T
    mni_pts = mni_vox @ tpl.mask.affine[:3, :3].T + tpl.mask.affine[:3, 3]
    in_brain = np.asarray(tpl.mask.dataobj).reshape(-1) > 0
    coupled = {}
    for name, src in sources.items():
        inside = np.linalg.norm(mni_pts - np.asarray(src.mni_mm), axis=1) < src.radius_mm
        mask = (inside & in_brain).reshape(tpl.mask.shape).astype(np.uint8)
        coupled[name] = nib.Nifti1Image(mask, tpl.mask.affine)
    return BoldSim(
        bold=bold,
        t1w=t1w_img,
        motion=planted_motion,
        native_to_mni=anatomy,
        coupled=coupled,
        slice_timing=[round(float(s), 6) for s in slice_times],
        tr=float(tr),
        regressors=regressors,
        brain_mask=brain_mask,
        hard={} if hard_rng is None else {
            "hrf": hrf_truth,
            "spike_volumes": [] if extra is None else extra.spike_volumes.tolist(),
            "clusters": [] if extra is None else extra.clusters},
    )


def _simulate_t1w(scale: Scale, tissue: dict, anatomy: NativeToMNI, rng) -> nib.Nifti1Image:
    """T1w of the same head, no motion, on an isotropic grid covering the head."""
    v = float(scale.t1w_voxel_mm)
    t1_shape = tuple(int(np.ceil(fov / v)) for fov in (176.0, 216.0, 192.0))
    t1_affine = centered_affine(t1_shape, (v, v, v))
    t1_vox = np.indices(t1_shape).reshape(3, -1).T.astype(np.float32)
    t1_pts = t1_vox @ t1_affine[:3, :3].T.astype(np.float32) + t1_affine[:3, 3].astype(np.float32)
    t1_clean = _sample(tissue["t1"], tissue["affine"], anatomy(t1_pts), 3) * _bias(t1_pts) * 1000.0
    t1_data = np.hypot(t1_clean + rng.normal(0, 15, len(t1_pts)), rng.normal(0, 15, len(t1_pts)))
    t1w = nib.Nifti1Image(t1_data.reshape(t1_shape).astype(np.float32), t1_affine)
    t1w.header.set_xyzt_units("mm")
    return t1w
