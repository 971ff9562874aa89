"""Plain-language coupling findings that open the participant report.

For each run and band: how many voxels couple with the EEG at q < level (global or
source-resolved test), in which clusters (face-connected voxels of the fMRI grid), where
(the region of each cluster's peak, named by the ``regions`` function the workflow
passes, e.g. :func:`bids_app.masking.atlas.atlas_labels`) and how strongly (peak z,
signed: negative for BOLD falling with EEG power, as occipital alpha does). The findings
link the run's source-resolved z maps. Computes nothing the coupling stage did not: it
reads the stage's z and q arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

#: Names the regions of ``(n, 3)`` MNI coordinates (labels first, as ``atlas_labels``).
Regions = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def band_clusters(res: Any, grid: Any, q: float, top: int = 3,
                  regions: Regions | None = None) -> tuple[int, list[dict]]:
    """Clusters of the voxels of one band significant in the global or local test.

    Parameters
    ----------
    res : bids_app.coupling.BandCoupling
        One band's coupling (``z``, ``q``, ``local_z``, ``local_q`` in mask order).
    grid : bids_app.eeg.forward.SourceGrid
        The fMRI grid (``voxel_ijk``, ``mask_img``).
    q : float
        FDR level.
    top : int
        Largest clusters returned.
    regions : callable | None
        Region names of MNI coordinates; None names none (``"n/a"``).

    Returns
    -------
    n_voxels : int
        Significant voxels of the band.
    clusters : list of dict
        ``size``, ``peak_z`` (signed), ``map`` (``global``/``source-resolved``),
        ``peak_mm`` (MNI) and ``region`` of the ``top`` largest clusters.
    """
    z, local_z = np.asarray(res.z, float), np.asarray(res.local_z, float)
    glob, local = np.asarray(res.q) < q, np.asarray(res.local_q) < q
    found = glob | local
    if not found.any():
        return 0, []
    ijk = grid.voxel_ijk
    volume = np.zeros(grid.mask_img.shape[:3], bool)
    volume[tuple(ijk[found].T)] = True
    labels, _ = ndimage.label(volume)
    of_voxel = labels[tuple(ijk.T)]
    strength = np.where(local, np.abs(local_z), 0.0)
    strength = np.maximum(strength, np.where(glob, np.abs(z), 0.0))
    sizes = np.bincount(of_voxel[found])
    order = [c for c in np.argsort(-sizes, kind="stable") if c > 0 and sizes[c] > 0][:top]
    mm = grid.voxel_mm
    clusters = []
    for c in order:
        members = np.flatnonzero(of_voxel == c)
        peak = members[int(np.argmax(strength[members]))]
        is_local = bool(local[peak] and abs(local_z[peak]) >= (abs(z[peak]) if glob[peak]
                                                                else 0.0))
        clusters.append({"size": int(sizes[c]), "peak_z": float(local_z[peak] if is_local
                                                                  else z[peak]),
                         "map": "source-resolved" if is_local else "global",
                         "peak_mm": mm[peak],
                         "region": str(regions(mm[peak][None])[0][0]) if regions else "n/a"})
    return int(found.sum()), clusters


def _cluster_text(cluster: dict) -> str:
    where = ("unlabelled region" if cluster["region"] == "n/a"
             else f"near {cluster['region']}")
    x, y, z = (f"{v:.0f}" for v in cluster["peak_mm"])
    return (f"{cluster['size']} voxels {where} (peak z {cluster['peak_z']:+.1f}, "
            f"{cluster['map']}, at {x}, {y}, {z} mm)")


def run_findings(label: str, coupling: Any, q: float, regions: Regions | None = None
                 ) -> tuple[list[str], bool]:
    """Sentences for one run: one per coupled band, or one saying nothing couples.

    Parameters
    ----------
    label : str
        Run label.
    coupling : CouplingResult | None
        The run's coupling result (None when the stage did not finish).
    q : float
        FDR level.
    regions : callable | None
        See :func:`band_clusters`.

    Returns
    -------
    sentences : list of str
    coupled : bool
        True when some band couples in some voxel.
    """
    if coupling is None:
        return [f"{label}: coupling was not computed (see the failures below)."], False
    out = []
    for band, res in coupling.bands.items():
        n, clusters = band_clusters(res, coupling.source_maps.grid, q, regions=regions)
        if n:
            listed = "; ".join(_cluster_text(c) for c in clusters)
            out.append(f"{label}, {band} band power: {n} voxels couple with the BOLD at "
                       f"q < {q:g} (global or source-resolved test); largest clusters: "
                       f"{listed}.")
    if not out:
        return [f"{label}: no band's EEG power couples with the BOLD at q < {q:g} in any "
                "voxel (global or source-resolved test)."], False
    return out, True
