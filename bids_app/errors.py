"""Exceptions that the command line turns into one clear sentence and an exit code."""


class EegfmriError(Exception):
    """Base class of eegfmri's own errors."""


class InputError(EegfmriError):
    """Bad user input (dataset, option, file): exit code 2, no traceback.

    The message is one sentence that names the file (or option) and the problem.
    """


class StageError(EegfmriError):
    """A processing stage failed on one run; other runs go on and the exit code is 1."""


class InstallationError(EegfmriError):
    """A part of eegfmri cannot be imported (a broken installation): exit code 1.

    Raised before any output is written, naming the stage and the import error.
    """
