"""EEG processing steps: in-scanner artifact removal, cleaning, QC, sources and features.

Public names of the artifact-removal and cleaning steps (each a function: objects in,
objects out, no file I/O)::

    find_volume_triggers                        # triggers.py
    choose_slice_offsets                        # slice_timing.py (onsets from the EEG)
    remove_gradient_artifact, correct_gradient  # gradient.py (FASTR-class)
    detect_qrs, cardiac_from_eeg, remove_bcg_artifact  # cardiac.py (pulse / BCG)
    clean_eeg                                   # clean.py (post-MR chain)
"""

from bids_app.eeg.cardiac import BCGReport, cardiac_from_eeg, detect_qrs, remove_bcg_artifact
from bids_app.eeg.clean import CleanReport, clean_eeg
from bids_app.eeg.gradient import GradientReport, correct_gradient, remove_gradient_artifact
from bids_app.eeg.slice_timing import SliceTimingReport, choose_slice_offsets
from bids_app.eeg.triggers import TriggerReport, find_volume_triggers

__all__ = [
    "BCGReport",
    "CleanReport",
    "GradientReport",
    "SliceTimingReport",
    "TriggerReport",
    "cardiac_from_eeg",
    "choose_slice_offsets",
    "clean_eeg",
    "correct_gradient",
    "detect_qrs",
    "find_volume_triggers",
    "remove_bcg_artifact",
    "remove_gradient_artifact",
]
