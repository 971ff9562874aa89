"""The built-in BOLD preprocessing path (no fMRIPrep, no binaries).

Order, as fMRIPrep: head motion is estimated on the raw series, slice timing is corrected
to ``slice_time_ref``, the BOLD reference (mean of realigned volumes) is brain-extracted and
registered rigidly to the T1w, the T1w is registered to the MNI template (affine + SyN),
and every volume is resampled **once** onto the MNI output grid through the composed point
map ``MNI -> T1w -> BOLD reference -> volume t`` (cubic B-spline). Confounds are computed
on that unsmoothed series (confounds.py); smoothing with ``fwhm`` comes last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_app.config import FMRIConfig
from bids_app.fmri.motion import grid_center, motion_matrices, realign
from bids_app.fmri.registration import (
    T1wToMNI,
    apply_affine_points,
    epi_brain_mask,
    grid_points,
    register_bold_to_t1w,
    register_t1w_to_mni,
)
from bids_app.fmri.slicetime import slice_time_correct
from bids_app.fmri.template import TEMPLATE_SOURCE, load_template, template_grid

logger = logging.getLogger(__name__)


@dataclass
class BuiltinResult:
    """Outputs of :func:`preprocess_bold`.

    Attributes
    ----------
    bold_mni : nib.Nifti1Image
        Preprocessed (smoothed) 4D series on the MNI output grid.
    bold_mni_unsmoothed : nib.Nifti1Image
        Same before smoothing (confounds are computed on it).
    mask_mni : nib.Nifti1Image
        Brain mask on the output grid.
    motion : ndarray, shape (n_volumes, 6)
        Rigid motion parameters (mm, radians) relative to volume ``ref_index``.
    ref_index : int
        Motion reference volume.
    slice_time_ref_s : float
        Seconds within the TR that each output volume represents.
    bold_ref : nib.Nifti1Image
        Native BOLD reference (mean of realigned volumes).
    mask_native : nib.Nifti1Image
        Native intensity-based brain mask.
    bold_to_t1w : ndarray (4, 4)
        BOLD mm -> T1w mm point map.
    t1w_to_mni : T1wToMNI
        MNI mm -> T1w mm point map.
    slice_timing_corrected : bool
        Whether SliceTiming was available and applied.
    t1w_brain : nib.Nifti1Image | None
        Brain-extracted T1w (with ``t1w_to_mni``, reusable for the subject's other runs).
    steps : list of dict
        Each step with its parameters and duration, for sidecars and the report.
    """

    bold_mni: nib.Nifti1Image
    bold_mni_unsmoothed: nib.Nifti1Image
    mask_mni: nib.Nifti1Image
    motion: np.ndarray
    ref_index: int
    slice_time_ref_s: float
    bold_ref: nib.Nifti1Image
    mask_native: nib.Nifti1Image
    bold_to_t1w: np.ndarray
    t1w_to_mni: T1wToMNI
    slice_timing_corrected: bool = False
    t1w_brain: nib.Nifti1Image | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)


def mni_to_native_points(
    mni_points: np.ndarray, t1w_to_mni: T1wToMNI, bold_to_t1w: np.ndarray
) -> np.ndarray:
    """Compose MNI mm -> T1w mm -> BOLD-reference mm."""
    t1_pts = t1w_to_mni.points(mni_points)
    return apply_affine_points(np.linalg.inv(bold_to_t1w), t1_pts)


def resample_series(
    data: np.ndarray,
    affine: np.ndarray,
    ref_points: np.ndarray,
    matrices: np.ndarray,
    *,
    order: int = 3,
) -> np.ndarray:
    """Sample every volume at reference-space points moved by that volume's motion.

    Parameters
    ----------
    data : array (X, Y, Z, T)
        Native series.
    affine : array (4, 4)
        Its voxel-to-world affine.
    ref_points : array (n, 3)
        World points in the motion reference (the BOLD reference).
    matrices : array (T, 4, 4)
        Reference-to-volume rigid matrices.
    order : int
        Spline order (3: cubic B-spline, 1: trilinear).

    Returns
    -------
    ndarray (n, T) float32; points outside the field of view are 0.
    """
    inv = np.linalg.inv(affine)
    out = np.zeros((len(ref_points), data.shape[3]), dtype=np.float32)
    pts = np.asarray(ref_points, dtype=np.float64)
    for t in range(data.shape[3]):
        to_vox = inv @ matrices[t]
        idx = apply_affine_points(to_vox, pts)
        vol = np.asarray(data[..., t], dtype=np.float32)
        coef = ndimage.spline_filter(vol, order=order) if order > 1 else vol
        out[:, t] = ndimage.map_coordinates(
            coef, idx.T, order=order, mode="constant", cval=0.0, prefilter=False
        )
    return out


def _mean_realigned(data: np.ndarray, affine: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Temporal mean of up to 40 evenly spaced realigned volumes (the BOLD reference)."""
    n = data.shape[3]
    pick = np.unique(np.linspace(0, n - 1, min(n, 40)).round().astype(int))
    pts = grid_points(data.shape, affine)
    vals = resample_series(data[..., pick], affine, pts, matrices[pick], order=1)
    return vals.mean(axis=1).reshape(data.shape[:3])


def preprocess_bold(
    bold: nib.Nifti1Image,
    t1w: nib.Nifti1Image,
    *,
    tr: float,
    slice_timing: Sequence[float] | None,
    config: FMRIConfig,
    slice_axis: int = 2,
    anatomy: tuple[T1wToMNI, nib.Nifti1Image] | None = None,
) -> BuiltinResult:
    """Run the built-in preprocessing on one BOLD run.

    Parameters
    ----------
    bold : nib.Nifti1Image
        Native 4D BOLD.
    t1w : nib.Nifti1Image
        The subject's T1w (scalp allowed).
    tr : float
        Repetition time (s).
    slice_timing : sequence of float | None
        BIDS SliceTiming (None: no slice-timing correction).
    config : FMRIConfig
        ``resolution_mm``, ``fwhm``, ``slice_time_ref``, ``nonlinear``,
        ``registration_resolution_mm``.
    slice_axis : int
        Slice axis (BIDS SliceEncodingDirection).
    anatomy : tuple | None
        Result of :func:`register_anatomy` for this T1w, to reuse across the runs of a
        subject (None: computed here).

    Returns
    -------
    BuiltinResult
    """
    steps: list[dict[str, Any]] = []
    precomputed = anatomy is not None
    data = np.nan_to_num(np.asarray(bold.dataobj, dtype=np.float32), nan=0.0, posinf=0.0,
                         neginf=0.0)  # fmt: skip
    affine = bold.affine
    n_vol = data.shape[3]

    tic = time.perf_counter()
    params, ref_index = realign(data, affine)
    matrices = motion_matrices(params, grid_center(data.shape, affine))
    steps.append(_step("head_motion", tic, method="Gauss-Newton rigid realignment (6 dof)",
                       reference_volume=ref_index, smooth_fwhm_mm=5.0))  # fmt: skip

    tic = time.perf_counter()
    if slice_timing is not None and len(slice_timing) > 1:
        data, ref_time = slice_time_correct(
            data, slice_timing, tr, ref=config.slice_time_ref, slice_axis=slice_axis
        )
        steps.append(_step("slice_timing", tic, method="Fourier phase shift",
                           slice_time_ref=config.slice_time_ref,
                           reference_time_s=ref_time))  # fmt: skip
        stc = True
    else:
        ref_time, stc = tr / 2.0, False
        logger.warning("No SliceTiming: slice-timing correction skipped.")

    tic = time.perf_counter()
    ref_img = nib.Nifti1Image(_mean_realigned(data, affine, matrices), affine)
    mask_native = epi_brain_mask(ref_img)
    steps.append(_step("bold_reference", tic, method="mean of realigned volumes; Otsu mask"))

    tic = time.perf_counter()
    if anatomy is None:
        anatomy = register_anatomy(t1w, config=config)
    t1w_to_mni, t1w_brain = anatomy
    steps.append(_step("t1w_to_template", tic, method="dipy MI affine + SyN (CC)",
                       nonlinear=config.nonlinear, template=TEMPLATE_SOURCE,
                       registration_resolution_mm=config.registration_resolution_mm))
    if precomputed:
        logger.info("T1w-to-template registration reused from an earlier run of the subject.")
    tic = time.perf_counter()
    bold_to_t1w = register_bold_to_t1w(ref_img, t1w_brain)
    steps.append(_step("bold_to_t1w", tic, method="dipy rigid mutual information"))

    tic = time.perf_counter()
    shape, out_affine = template_grid(config.resolution_mm)
    ref_pts = mni_to_native_points(grid_points(shape, out_affine), t1w_to_mni, bold_to_t1w)
    inv = np.linalg.inv(affine)
    ref_idx = apply_affine_points(inv, ref_pts)
    inside = np.all((ref_idx > -0.5) & (ref_idx < np.asarray(data.shape[:3]) - 0.5), axis=1)
    values = np.zeros((len(ref_pts), n_vol), dtype=np.float32)
    values[inside] = resample_series(data, affine, ref_pts[inside], matrices)
    unsmoothed = values.reshape(*shape, n_vol)
    del values, data
    mask_vals = ndimage.map_coordinates(
        mask_native.get_fdata(dtype=np.float32), ref_idx.T, order=1, cval=0.0
    ).reshape(shape)
    template_mask = np.asarray(load_template(config.resolution_mm).mask.dataobj) > 0
    mask = (mask_vals > 0.5) & ndimage.binary_dilation(template_mask, iterations=1)
    steps.append(_step("resample_to_template", tic, interpolation="cubic B-spline, one step",
                       resolution_mm=config.resolution_mm))  # fmt: skip

    tic = time.perf_counter()
    smoothed = smooth_series(unsmoothed, out_affine, fwhm=config.fwhm)
    steps.append(_step("smoothing", tic, fwhm_mm=config.fwhm))

    def _img4d(arr: np.ndarray) -> nib.Nifti1Image:
        img = nib.Nifti1Image(arr, out_affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = tr
        return img

    return BuiltinResult(
        bold_mni=_img4d(smoothed),
        bold_mni_unsmoothed=_img4d(unsmoothed),
        mask_mni=nib.Nifti1Image(mask.astype(np.uint8), out_affine),
        motion=params,
        ref_index=ref_index,
        slice_time_ref_s=float(ref_time),
        slice_timing_corrected=stc,
        t1w_brain=t1w_brain,
        bold_ref=ref_img,
        mask_native=mask_native,
        bold_to_t1w=bold_to_t1w,
        t1w_to_mni=t1w_to_mni,
        steps=steps,
    )


def register_anatomy(
    t1w: nib.Nifti1Image, *, config: FMRIConfig
) -> tuple[T1wToMNI, nib.Nifti1Image]:
    """T1w -> template registration and T1w brain extraction (shared by a subject's runs).

    Parameters
    ----------
    t1w : nib.Nifti1Image
        The subject's T1w.
    config : FMRIConfig
        ``registration_resolution_mm`` and ``nonlinear``.

    Returns
    -------
    t1w_to_mni : T1wToMNI
    t1w_brain : nib.Nifti1Image
    """
    template = load_template(config.registration_resolution_mm)
    return register_t1w_to_mni(t1w, template, nonlinear=config.nonlinear)


def smooth_series(data: np.ndarray, affine: np.ndarray, *, fwhm: float) -> np.ndarray:
    """Isotropic Gaussian smoothing of each volume (FWHM in mm; 0 returns a copy)."""
    if not fwhm:
        return np.array(data, dtype=np.float32, copy=True)
    voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma = fwhm / np.sqrt(8 * np.log(2)) / voxel
    out = np.empty(data.shape, dtype=np.float32)
    for t in range(data.shape[3]):
        out[..., t] = ndimage.gaussian_filter(data[..., t], sigma, mode="constant")
    return out


def _step(name: str, tic: float, **params: Any) -> dict[str, Any]:
    duration = time.perf_counter() - tic
    logger.info("fMRI step %s done in %.1f s.", name, duration)
    return {"name": name, **params}  # the duration is logged, not written to the sidecar
