"""The NKI NATVIEW EEG-fMRI release: facts, S3 listing, download and conversion to BIDS.

``facts`` holds the constants of the release (channels, markers, timing) and imports
nothing from the rest of the package, so every layer may use it.
"""
