"""Offline atlas labels for MNI coordinates: the nearest Seitzman et al. (2018) ROI.

nilearn ships the 300 regions of interest of Seitzman et al. (2018) — MNI centres, sphere
radii, functional network and coarse anatomical region — inside the package, so labels
need no download. A voxel is labelled with the network and region of the nearest ROI
centre within ``max_distance_mm``; farther voxels get ``n/a``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

ATLAS_NAME = "Seitzman2018"
ATLAS_REFERENCE = ("Seitzman, B. A., et al. (2020). A set of functionally-defined brain "
                   "regions with improved representation of the subcortex and cerebellum. "
                   "NeuroImage, 206, 116290 (coordinates bundled with nilearn).")


@lru_cache(maxsize=1)
def _seitzman() -> tuple[np.ndarray, np.ndarray]:
    from nilearn import datasets

    atlas = datasets.fetch_coords_seitzman_2018()
    xyz = atlas.rois[["x", "y", "z"]].to_numpy(dtype=float)
    names = np.array([f"{net} ({region})" for net, region in zip(atlas.networks,
                                                                 atlas.regions)])
    return xyz, names


def atlas_labels(mni: np.ndarray, *, max_distance_mm: float = 10.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-ROI labels of MNI coordinates.

    Parameters
    ----------
    mni : numpy.ndarray
        ``(n, 3)`` coordinates in mm.
    max_distance_mm : float
        Largest distance to an ROI centre that still gives its label.

    Returns
    -------
    labels : numpy.ndarray
        ``(n,)`` ``"<network> (<region>)"`` or ``"n/a"``.
    distance : numpy.ndarray
        ``(n,)`` distance to the nearest ROI centre (mm).
    """
    xyz, names = _seitzman()
    mni = np.asarray(mni, dtype=float).reshape(-1, 3)
    if len(mni) == 0:
        return np.array([], dtype=object), np.array([], dtype=float)
    dist = np.sqrt(((mni[:, None, :] - xyz[None]) ** 2).sum(axis=2))
    nearest = dist.argmin(axis=1)
    best = dist[np.arange(len(mni)), nearest]
    labels = np.where(best <= max_distance_mm, names[nearest], "n/a").astype(object)
    return labels, best
