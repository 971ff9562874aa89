"""Rigid head-motion estimation (realignment) and framewise displacement.

Parameters follow fMRIPrep's confounds convention: ``trans_x, trans_y, trans_z`` in mm and
``rot_x, rot_y, rot_z`` in radians. The rigid transform of parameters ``p`` maps a point
``x`` (world mm) of the reference volume to the point of volume ``t`` that holds the same
tissue::

    x_t = Rz(rz) Ry(ry) Rx(rx) (x - c) + c + (tx, ty, tz)

with ``c`` the centre of the image grid in world mm, so rotations are about the centre of
the field of view (as MCFLIRT reports them) and translations are not confounded with
rotations about a distant origin.

The estimator is an inverse-compositional Gauss-Newton least-squares realignment (Baker &
Matthews 2004; the cost of SPM's realign, Friston et al. 1995): the Jacobian is computed once
on the smoothed reference, each iteration costs one cubic-spline resampling of ~20 000
sample points, and each volume starts from the previous estimate. A 290-volume NATVIEW run
is realigned in seconds on one core.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

MOTION_COLUMNS: tuple[str, ...] = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Target number of sample points of the realignment cost (the smoothed reference is
#: oversampled, so more points add time, not accuracy: planted-motion errors stay < 0.1 mm
#: and < 0.1 degree at this density).
SAMPLE_POINTS = 20_000


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` for angles ``(rx, ry, rz)`` in radians."""
    rx, ry, rz = (float(a) for a in angles)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def rigid_matrix(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """4x4 world-mm matrix of the rigid parameters ``params`` about ``center``.

    Parameters
    ----------
    params : array, shape (6,)
        ``(tx, ty, tz, rx, ry, rz)`` in mm and radians.
    center : array, shape (3,)
        Centre of rotation in world mm.

    Returns
    -------
    ndarray, shape (4, 4)
    """
    params = np.asarray(params, dtype=float)
    center = np.asarray(center, dtype=float)
    rot = rotation_matrix(params[3:])
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = center - rot @ center + params[:3]
    return out


def matrix_to_params(matrix: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rigid_matrix` (rotation part must be a proper rotation)."""
    rot = matrix[:3, :3]
    ry = np.arcsin(np.clip(-rot[2, 0], -1.0, 1.0))
    rx = np.arctan2(rot[2, 1], rot[2, 2])
    rz = np.arctan2(rot[1, 0], rot[0, 0])
    center = np.asarray(center, dtype=float)
    trans = matrix[:3, 3] - center + rot @ center
    return np.concatenate([trans, [rx, ry, rz]])


def grid_center(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the centre of a voxel grid."""
    return affine[:3, :3] @ ((np.asarray(shape[:3], dtype=float) - 1) / 2) + affine[:3, 3]


def framewise_displacement(params: np.ndarray, *, radius_mm: float = 50.0) -> np.ndarray:
    """Framewise displacement (Power et al. 2012).

    Parameters
    ----------
    params : array, shape (n_volumes, 6)
        Translations (mm) and rotations (radians).
    radius_mm : float
        Radius of the sphere that converts rotations to arc length.

    Returns
    -------
    ndarray, shape (n_volumes,)
        Sum of absolute backward differences; the first value is ``nan`` (fMRIPrep writes
        ``n/a`` there).
    """
    params = np.asarray(params, dtype=float)
    diff = np.abs(np.diff(params, axis=0))
    fd = diff[:, :3].sum(axis=1) + radius_mm * diff[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def _warp_jacobian(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """d(warped point)/d(params) at params = 0; shape (n, 3, 6)."""
    v = points - center
    jac = np.zeros((len(points), 3, 6))
    jac[:, 0, 0] = jac[:, 1, 1] = jac[:, 2, 2] = 1.0
    jac[:, 1, 3], jac[:, 2, 3] = -v[:, 2], v[:, 1]  # rx
    jac[:, 0, 4], jac[:, 2, 4] = v[:, 2], -v[:, 0]  # ry
    jac[:, 0, 5], jac[:, 1, 5] = -v[:, 1], v[:, 0]  # rz
    return jac


def _smooth(volume: np.ndarray, sigma_vox: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(np.asarray(volume, dtype=np.float64), sigma_vox, mode="nearest")


def realign(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    ref_index: int | None = None,
    smooth_fwhm_mm: float = 5.0,
    stride: int | None = None,
    max_iter: int = 30,
    tol: float = 1e-4,
) -> tuple[np.ndarray, int]:
    """Estimate rigid head motion of every volume relative to a reference volume.

    Parameters
    ----------
    data : array, shape (X, Y, Z, T)
        BOLD series in voxel order of ``affine``.
    affine : array, shape (4, 4)
        Voxel-to-world (mm) affine.
    ref_index : int | None
        Reference volume (None: the middle volume, as MCFLIRT).
    smooth_fwhm_mm : float
        Gaussian smoothing applied to both images before matching (SPM default 5 mm).
    stride : int | None
        Subsampling of the reference grid for the sample points (None: the stride that
        leaves about ``SAMPLE_POINTS`` points with signal, at least 1; a 64 x 64 x 38
        NATVIEW volume gets 2).
    max_iter : int
        Gauss-Newton iterations per volume.
    tol : float
        Stop when the update is below ``tol`` (mm; radians scaled by 50 mm).

    Returns
    -------
    params : ndarray, shape (T, 6)
        Motion parameters (see module docstring); ``params[ref_index] == 0``.
    ref_index : int
        The reference volume used.
    """
    data = np.asarray(data)
    if data.ndim != 4:
        raise ValueError(f"realign expects a 4D array, got shape {data.shape}.")
    n_vol = data.shape[3]
    ref_index = n_vol // 2 if ref_index is None else int(ref_index)
    voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma_vox = smooth_fwhm_mm / 2.3548 / voxel
    center = grid_center(data.shape, affine)
    inv_affine = np.linalg.inv(affine)

    ref = _smooth(data[..., ref_index], sigma_vox)
    # Sample points: strided voxels with signal (dilated to include the brain edge).
    thr = 0.1 * np.percentile(ref, 99)
    support = ndimage.binary_dilation(ref > thr, iterations=2)
    if stride is None:
        stride = max(1, int(round((support.sum() / SAMPLE_POINTS) ** (1 / 3))))
    grid = np.zeros(ref.shape, dtype=bool)
    grid[::stride, ::stride, ::stride] = True
    vox = np.argwhere(support & grid).astype(float)
    points = vox @ affine[:3, :3].T + affine[:3, 3]
    grad_vox = np.stack(np.gradient(ref), axis=-1)[tuple(vox.astype(int).T)]
    grad_world = grad_vox @ inv_affine[:3, :3]  # dR/dx = (A^-1)^T dR/dvox, row form
    steepest = np.einsum("ni,nij->nj", grad_world, _warp_jacobian(points, center))
    hessian_inv = np.linalg.inv(steepest.T @ steepest)
    target = ref[tuple(vox.astype(int).T)]
    target_mean = float(target.mean())
    scale = np.array([1, 1, 1, 50, 50, 50], dtype=float)

    params = np.zeros((n_vol, 6))
    order = list(range(ref_index + 1, n_vol)) + list(range(ref_index - 1, -1, -1))
    n_iters: list[int] = []
    for t in order:
        prev = t - 1 if t > ref_index else t + 1
        matrix = rigid_matrix(params[prev], center)
        coef = ndimage.spline_filter(_smooth(data[..., t], sigma_vox), order=3)
        for it in range(max_iter):  # noqa: B007
            moved = points @ matrix[:3, :3].T + matrix[:3, 3]
            idx = moved @ inv_affine[:3, :3].T + inv_affine[:3, 3]
            values = ndimage.map_coordinates(
                coef, idx.T, order=3, mode="nearest", prefilter=False
            )
            # Global intensity changes (drift) must not be explained as motion.
            values *= target_mean / max(float(values.mean()), 1e-12)
            delta = hessian_inv @ (steepest.T @ (values - target))
            matrix = matrix @ np.linalg.inv(rigid_matrix(delta, center))
            if np.max(np.abs(delta) * scale) < tol:
                break
        n_iters.append(it + 1)
        params[t] = matrix_to_params(matrix, center)
    logger.debug(
        "Realigned %d volumes to volume %d on %d points (stride %d; %.1f iterations on "
        "average).",
        n_vol,
        ref_index,
        len(points),
        stride,
        float(np.mean(n_iters)) if n_iters else 0.0,
    )
    return params, ref_index


def motion_matrices(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Stack of 4x4 reference-to-volume matrices, shape (T, 4, 4)."""
    return np.stack([rigid_matrix(p, center) for p in np.asarray(params)])
