"""EEG processing steps: in-scanner artifact removal, cleaning, QC, sources and features.

Public names of the artifact-removal and cleaning steps (each a function: objects in,
objects out, no file I/O)::

    find_volume_triggers, slice_onsets          # triggers.py
    remove_gradient_artifact, correct_gradient  # gradient.py (FASTR-class)
    detect_qrs, cardiac_from_eeg, remove_bcg_artifact  # cardiac.py (pulse / BCG)
    clean_eeg                                   # clean.py (post-MR chain)
"""

from bids_app.eeg.cardiac import BCGReport, cardiac_from_eeg, detect_qrs, remove_bcg_artifact
from bids_app.eeg.clean import CleanReport, clean_eeg
from bids_app.eeg.gradient import GradientReport, correct_gradient, remove_gradient_artifact
from bids_app.eeg.triggers import TriggerReport, find_volume_triggers, slice_onsets

__all__ = [
    "BCGReport",
    "CleanReport",
    "GradientReport",
    "TriggerReport",
    "cardiac_from_eeg",
    "clean_eeg",
    "correct_gradient",
    "detect_qrs",
    "find_volume_triggers",
    "remove_bcg_artifact",
    "remove_gradient_artifact",
    "slice_onsets",
]
