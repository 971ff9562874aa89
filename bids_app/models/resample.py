"""Block averaging of masked BOLD voxels onto a coarser MNI grid for the group models.

The group models see a few hundred windows at most per subject; at the derivatives'
resolution (2-3 mm, 10^5 voxels) the fMRI input is far wider than the data can constrain.
:class:`BlockAverager` averages the in-mask voxels of each block of a coarser grid (the
same orientation and corner as the input grid, voxel size ``resolution_mm``): no
interpolation, no signal from outside the brain mask, and the averaging is a sparse
``(V_coarse, V_fine)`` matrix applied to ``(V_fine, T)`` data.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)


def resolution_label(resolution_mm: float) -> str:
    """BIDS ``res-`` label of a voxel size (``6.0`` -> ``"6"``, ``4.5`` -> ``"4p5"``)."""
    return f"{float(resolution_mm):g}".replace(".", "p")


class BlockAverager:
    """Average in-mask voxels within the blocks of a coarser grid.

    Parameters
    ----------
    voxel_indices : numpy.ndarray
        ``(V, 3)`` voxel indices of the mask in the fine grid.
    affine : numpy.ndarray
        ``(4, 4)`` affine of the fine grid.
    shape : tuple of int
        Shape of the fine grid.
    resolution_mm : float
        Voxel size of the coarse grid; ``0`` or at most the fine voxel size keeps the
        fine grid (identity).
    min_fraction : float
        A coarse voxel is kept when at least this fraction of its block lies in the mask.

    Attributes
    ----------
    voxel_indices, affine, shape
        The coarse grid's in-mask voxels, affine and shape.
    matrix : scipy.sparse.csr_matrix | None
        ``(V_coarse, V_fine)`` averaging weights (None for the identity).
    """

    def __init__(self, voxel_indices: np.ndarray, affine: np.ndarray,
                 shape: tuple[int, ...], *, resolution_mm: float,
                 min_fraction: float = 0.5) -> None:
        ijk = np.asarray(voxel_indices, dtype=np.int64)
        affine = np.asarray(affine, dtype=float)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        factor = float(resolution_mm) / zooms if resolution_mm else np.ones(3)
        self.matrix: sp.csr_matrix | None = None
        if resolution_mm <= 0 or np.all(factor <= 1.0 + 1e-6):
            self.voxel_indices, self.affine, self.shape = ijk, affine, tuple(shape[:3])
            self.factor = np.ones(3)
            return
        self.factor = factor
        new = affine.copy()
        new[:3, :3] = affine[:3, :3] * factor[None, :]
        # the coarse voxel c covers fine indices [c*f - 1/2, (c+1)*f - 1/2)
        new[:3, 3] = affine[:3, :3] @ ((factor - 1.0) / 2.0) + affine[:3, 3]
        coarse = np.floor((ijk + 0.5) / factor).astype(np.int64)
        cshape = tuple(int(np.ceil(s / f)) for s, f in zip(shape[:3], factor))
        flat = np.ravel_multi_index(coarse.T, cshape)
        uniq, label, count = np.unique(flat, return_inverse=True, return_counts=True)
        keep = count >= min_fraction * float(np.prod(factor))
        if not keep.any():
            keep = count == count.max()
        new_id = np.full(len(uniq), -1, dtype=np.int64)
        new_id[keep] = np.arange(int(keep.sum()))
        rows = new_id[label]
        ok = rows >= 0
        weights = 1.0 / count[label[ok]]
        self.matrix = sp.csr_matrix((weights.astype(np.float32), (rows[ok], np.flatnonzero(ok))),
                                    shape=(int(keep.sum()), len(ijk)))
        self.voxel_indices = np.stack(np.unravel_index(uniq[keep], cshape), axis=1)
        self.affine, self.shape = new, cshape
        logger.info("fMRI block-averaged to %.3g mm: %d -> %d voxels", float(resolution_mm),
                    len(ijk), len(self.voxel_indices))

    @property
    def n_voxels(self) -> int:
        """Number of coarse in-mask voxels."""
        return len(self.voxel_indices)

    def transform(self, data: np.ndarray) -> np.ndarray:
        """Average ``(V_fine, ...)`` data into ``(V_coarse, ...)`` (float32)."""
        data = np.asarray(data, dtype=np.float32)
        if self.matrix is None:
            return data
        flat = data.reshape(data.shape[0], -1)
        return np.asarray(self.matrix @ flat, dtype=np.float32).reshape(
            (self.n_voxels,) + data.shape[1:])
