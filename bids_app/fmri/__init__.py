"""fMRI preprocessing steps (pure functions; no file I/O).

- :mod:`~bids_app.fmri.slicetime`: slice-timing correction (Fourier shift).
- :mod:`~bids_app.fmri.motion`: rigid realignment, framewise displacement.
- :mod:`~bids_app.fmri.registration`: brain extraction, BOLD->T1w, T1w->MNI (dipy).
- :mod:`~bids_app.fmri.builtin`: the built-in path composing the steps (one resampling).
- :mod:`~bids_app.fmri.confounds`: fMRIPrep-named nuisance regressors.
- :mod:`~bids_app.fmri.fmriprep`: fMRIPrep command line and ingestion of its outputs.
- :mod:`~bids_app.fmri.template`: the bundled MNI template and output grid.
"""

from bids_app.fmri.builtin import BuiltinResult, preprocess_bold
from bids_app.fmri.confounds import compute_confounds
from bids_app.fmri.motion import framewise_displacement, realign
from bids_app.fmri.slicetime import slice_time_correct
from bids_app.fmri.template import TEMPLATE_NAME, load_template, template_grid

__all__ = [
    "TEMPLATE_NAME",
    "BuiltinResult",
    "compute_confounds",
    "framewise_displacement",
    "load_template",
    "preprocess_bold",
    "realign",
    "slice_time_correct",
    "template_grid",
]
