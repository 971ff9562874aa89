"""eegfmri: a BIDS App that turns simultaneous EEG-fMRI into a cognitive basis model."""

__version__ = "0.1.0"

__all__ = ["__version__"]
