"""The MNI template, its brain mask and tissue priors, from the copy nilearn ships.

eegfmri labels its standard space ``MNI152NLin2009cAsym`` (the name fMRIPrep uses, so
fMRIPrep derivatives drop in). The built-in path cannot download TemplateFlow, so it uses
the template bundled with nilearn, which is the ICBM 2009a *nonlinear symmetric* MNI152
T1 (``mni_icbm152_t1_tal_nlin_sym_09a``) with its brain mask and GM/WM priors. The 2009a
symmetric and 2009c asymmetric templates share the MNI152 space and differ by about a
millimetre in cortical boundaries, far below the 3 mm output resolution (stated in the
output sidecars as ``TemplateImplementation`` and in docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from nilearn import datasets
from scipy import ndimage

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "MNI152NLin2009cAsym"
TEMPLATE_SOURCE = "nilearn-bundled ICBM152 2009a nonlinear symmetric (mni_icbm152_*_09a)"


@dataclass(frozen=True)
class Template:
    """The template at one resolution (all images share one grid).

    Attributes
    ----------
    t1 : nib.Nifti1Image
        Skull-stripped T1 template, intensities in [0, 1].
    mask : nib.Nifti1Image
        Binary brain mask (uint8).
    gm, wm, csf : nib.Nifti1Image
        Tissue probability maps; ``csf`` is the brain mask minus GM and WM.
    resolution_mm : float
        Isotropic voxel size.
    """

    t1: nib.Nifti1Image
    mask: nib.Nifti1Image
    gm: nib.Nifti1Image
    wm: nib.Nifti1Image
    csf: nib.Nifti1Image
    resolution_mm: float


def template_grid(resolution_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the MNI output grid at ``resolution_mm``.

    The grids are those of ``nilearn.datasets.load_mni152_template(resolution=r)`` (3 mm:
    67 x 79 x 64, 2 mm: 99 x 117 x 95, origin (-98, -134, -72)) for any ``r``.

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size in millimetres.

    Returns
    -------
    shape : tuple of int
    affine : ndarray, shape (4, 4)
    """
    return _grid(float(resolution_mm))


@lru_cache(maxsize=8)
def _grid(resolution_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    # Same rule as nilearn's bounding-box resampling of the 1 mm template (197 x 233 x 189,
    # origin (-98, -134, -72)): the voxel centres span the 1 mm field of view.
    if resolution_mm <= 0:
        raise ValueError(f"resolution_mm must be positive, got {resolution_mm}.")
    shape = tuple(int(np.ceil((n - 1) / resolution_mm - 1e-9)) + 1 for n in _SHAPE_1MM)
    affine = np.diag([resolution_mm] * 3 + [1.0])
    affine[:3, 3] = _ORIGIN_1MM
    return shape, affine


_SHAPE_1MM = (197, 233, 189)
_ORIGIN_1MM = (-98.0, -134.0, -72.0)


@lru_cache(maxsize=1)
def _templates_1mm() -> dict[str, nib.Nifti1Image]:
    images = {
        "t1": datasets.load_mni152_template(resolution=1),
        "mask": datasets.load_mni152_brain_mask(resolution=1),
        "gm": datasets.load_mni152_gm_template(resolution=1),
        "wm": datasets.load_mni152_wm_template(resolution=1),
    }
    ref = images["t1"]
    if ref.shape[:3] != _SHAPE_1MM or not np.allclose(ref.affine[:3, 3], _ORIGIN_1MM):
        raise RuntimeError("nilearn's bundled MNI152 template has an unexpected grid.")
    return images


def _resample_1mm(img: nib.Nifti1Image, shape: tuple[int, ...], affine: np.ndarray,
                  ) -> np.ndarray:  # fmt: skip
    """Anti-aliased (Gaussian) trilinear resampling of a 1 mm template image."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    res = float(affine[0, 0])
    if res > 1.0:
        data = ndimage.gaussian_filter(data, np.sqrt(res**2 - 1.0) / 2.3548)
    vox = np.linalg.inv(img.affine) @ affine
    return ndimage.affine_transform(data, vox[:3, :3], offset=vox[:3, 3], output_shape=shape,
                                    order=1, mode="constant", cval=0.0)  # fmt: skip


@lru_cache(maxsize=4)
def load_template(resolution_mm: float) -> Template:
    """Load the bundled template, mask and tissue priors resampled to ``resolution_mm``.

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size in millimetres.

    Returns
    -------
    Template
        Images on :func:`template_grid` ``(resolution_mm)``.
    """
    shape, affine = template_grid(resolution_mm)
    src = _templates_1mm()
    t1 = np.clip(_resample_1mm(src["t1"], shape, affine), 0, None)
    brain = _resample_1mm(src["mask"], shape, affine) > 0.5
    gm = np.clip(_resample_1mm(src["gm"], shape, affine), 0, 1) * brain
    wm = np.clip(_resample_1mm(src["wm"], shape, affine), 0, 1) * brain
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32)

    def _img(data: np.ndarray, dtype: type) -> nib.Nifti1Image:
        out = nib.Nifti1Image(data.astype(dtype), affine)
        out.header.set_xyzt_units("mm")
        return out

    return Template(
        t1=_img(t1 / max(float(t1.max()), 1e-6), np.float32),
        mask=_img(brain, np.uint8),
        gm=_img(gm, np.float32),
        wm=_img(wm, np.float32),
        csf=_img(csf, np.float32),
        resolution_mm=float(resolution_mm),
    )
