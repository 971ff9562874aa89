"""EEG <-> fMRI coupling statistics (pure functions, no file I/O).

Band power per volume window (channels and sources, :mod:`bids_app.eeg.source`) is
convolved with an HRF basis and sampled at the BOLD acquisition times
(:mod:`~bids_app.coupling.design`); per voxel, a global model (mean-channel band power)
and a source-resolved model (the power of the EEG source at the voxel, beside the
mean-channel power without that source's cross-talk neighbourhood) are fitted after
AR(p) prewhitening with autocorrelations shrunk towards their mean over voxels
(:mod:`~bids_app.coupling.noise`) and tested with the largest t over a grid
of HRF shapes (or an F test of the basis), whose p-values come from within-run circular
shifts with a generalised Pareto tail (:mod:`~bids_app.coupling.glm`); the q-values of a
run come from one declared Benjamini-Hochberg family (:mod:`~bids_app.coupling.bands`);
source<->channel tables relate source peaks to channels (:mod:`~bids_app.coupling.tables`).

References
----------
Goldman RI et al. (2002) NeuroReport 13:2487-2492. Laufs H et al. (2003) PNAS 100:11053.
Friston KJ et al. (1998) NeuroImage 7:30-40. Worsley KJ, Friston KJ (1995) NeuroImage
2:173-181. Purdon PL, Weisskoff RM (1998) Hum Brain Mapp 6:239-249. Woolrich MW et al. (2001)
NeuroImage 14:1370-1386. Worsley KJ et al. (2002) NeuroImage 15:1-15. Calhoun VD et al.
(2004) NeuroImage 22:252-257. Lindquist MA et al. (2009) NeuroImage 45:S187-S198.
Benjamini Y, Hochberg Y (1995) J R Stat Soc B 57:289-300. Worsley KJ, Taylor JE (2006)
NeuroImage 29:649-654. Handwerker DA et al. (2004) NeuroImage 21:1639-1651. Efron B,
Morris C (1973) J Am Stat Assoc 68:117-130. Knijnenburg TA et al. (2009) Bioinformatics
25:i161-i168. Winkler AM et al. (2016) NeuroImage 141:502-516.
"""

from bids_app.coupling.bands import (
    FDR_FAMILY,
    BandCoupling,
    couple_bands,
    fdr_bh,
    local_correlation,
    signed_z,
    z_to_q,
)
from bids_app.coupling.design import (
    SHAPE_PEAKS_S,
    acquisition_times,
    hrf_matrix,
    hrf_shapes,
    nuisance_design,
    residualize,
    run_nuisance,
    select_confounds,
    standardize,
)
from bids_app.coupling.glm import BlockTest, CouplingGLM, circular_shifts, fit_coupling_glm
from bids_app.coupling.noise import ARModel, fit_ar
from bids_app.coupling.tables import power_peaks, source_channel_table

__all__ = [
    "FDR_FAMILY", "SHAPE_PEAKS_S", "ARModel", "BandCoupling", "BlockTest", "CouplingGLM",
    "acquisition_times",
    "circular_shifts", "couple_bands", "fdr_bh", "fit_ar", "fit_coupling_glm", "hrf_matrix",
    "hrf_shapes",
    "local_correlation", "nuisance_design", "power_peaks", "residualize", "run_nuisance",
    "select_confounds", "signed_z",
    "source_channel_table", "standardize", "z_to_q",
]
