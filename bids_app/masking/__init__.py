"""Masking: occlusion of EEG timestamps and fMRI voxels in the trained VAEs.

Modules: ``data`` (windows, baselines, unit occurrences), ``occlusion`` (the fast exact
path), ``reference`` (the naive per-unit loop it must equal), ``statistics`` (effect sizes,
null, FDR) and ``annotate`` (tidy, events and voxel tables). The public names are below.
"""

from bids_app.masking.data import BASELINES, MaskingData, compute_baseline, occurrences
from bids_app.masking.occlusion import occlusion_effects
from bids_app.masking.reference import naive_occlusion
from bids_app.masking.statistics import HeadEffects, auroc, fdr

__all__ = [
    "BASELINES",
    "HeadEffects",
    "MaskingData",
    "auroc",
    "compute_baseline",
    "fdr",
    "naive_occlusion",
    "occlusion_effects",
    "occurrences",
]
