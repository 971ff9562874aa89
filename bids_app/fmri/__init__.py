"""fmri subpackage."""
