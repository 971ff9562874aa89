"""Running one analysis level: path rules, the output lock, logs and the saved config.

:func:`execute` is what ``eegfmri bids_dir output_dir participant|group`` and
``eegfmri demo`` both call once a :class:`~bids_app.config.Config` is built; the command
line (:mod:`bids_app.cli`) only parses arguments into that Config.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

from bids_app import __version__
from bids_app.config import Config, ConfigError
from bids_app.errors import InputError
from bids_app.io.atomic import leftover_temporaries
from bids_app.io.derivatives import output_lock
from bids_app.utils import logging_to, timestamp, unique_stamp
from bids_app.workflows.stages import Failure, LevelResult

logger = logging.getLogger(__name__)


#: Characters kept free below an output or work folder for the names eegfmri writes there
#: (``sub-*/ses-*/eeg/`` plus the longest derivative file name and a temporary suffix).
PATH_ROOM = 300


def _existing_ancestor(path: Path) -> Path:
    while not os.path.exists(path) and path != path.parent:  # False on ENAMETOOLONG too
        path = path.parent
    return path


def _short(path: Path, limit: int = 60) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit]}…"


def check_path_length(path: Path, what: str) -> None:
    """Refuse a folder whose name, or the names eegfmri writes below it, are too long.

    Parameters
    ----------
    path : Path
        Absolute folder (need not exist).
    what : str
        How the message names it, e.g. ``"Output directory"``.

    Raises
    ------
    InputError
        A path component longer than the file system's NAME_MAX, or a path longer than
        PATH_MAX minus :data:`PATH_ROOM`.
    """
    anchor = _existing_ancestor(path)
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
        path_max = os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    longest = max((len(part.encode()) for part in path.parts), default=0)
    if longest > name_max:
        raise InputError(f"{what} {_short(path)} has a folder name of {longest} bytes, more "
                         f"than the file system allows ({name_max}); choose a shorter path.")
    length = len(str(path).encode())
    if length > path_max - PATH_ROOM:
        raise InputError(f"{what} {_short(path)} is {length} bytes long; eegfmri needs at "
                         f"most {path_max - PATH_ROOM} (the system limit {path_max} minus "
                         f"{PATH_ROOM} for the names it writes below it), so choose a "
                         "shorter path.")


def _check_outside(path: Path, what: str, inputs: list[tuple[Path, str, bool]]) -> None:
    """``path`` must not be an input folder nor inside one (except ``derivatives/``)."""
    for folder, name, derivatives_ok in inputs:
        if path == folder:
            raise InputError(f"{what} {path} is the {name}; choose another folder, e.g. "
                             f"{folder / 'derivatives' / 'eegfmri'}.")
        allowed = derivatives_ok and path.is_relative_to(folder / "derivatives")
        if path.is_relative_to(folder) and not allowed:
            where = f" or under {folder / 'derivatives'}" if derivatives_ok else ""
            raise InputError(f"{what} {path} is inside the {name} {folder}; eegfmri never "
                             f"writes into its inputs, so use a folder outside it{where}.")


def _check_writable(folder: Path) -> None:
    """Probe that ``folder`` (or, when absent, its nearest existing parent) is writable.

    Nothing is left behind: the probe is removed and ``folder`` is not created here.
    """
    anchor = _existing_ancestor(folder)
    try:
        if not anchor.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", str(anchor))
        probe = Path(tempfile.mkdtemp(prefix=".eegfmri-write-test-", dir=anchor))
        probe.rmdir()
    except OSError as err:
        raise InputError(f"Output directory {folder} is not writable "
                         f"({err.strerror or err}).") from None


def check_paths(config: Config) -> None:
    """Refuse output and work folders that would damage or mix with the inputs.

    The output and work folders must not be the input dataset nor lie inside it (except
    ``BIDS_DIR/derivatives/``, the BIDS place for derivatives), nor inside
    ``--fmriprep-dir``; their paths must leave room for the names written below them;
    the output folder must be writable. Nothing is created.

    Raises
    ------
    InputError
        Naming the option and the folder.
    """
    execution = config.execution
    bids_dir = Path(execution.bids_dir).resolve()
    output_dir = Path(execution.output_dir).absolute()
    work_dir = Path(execution.work_dir or output_dir / "work").absolute()
    if not bids_dir.is_dir():
        raise InputError(f"BIDS directory {bids_dir} does not exist.")
    for folder, what in ((output_dir, "Output directory"), (work_dir, "Work directory (-w)")):
        check_path_length(folder, what)
    inputs = [(bids_dir, "input BIDS directory", True)]
    if config.fmri.fmriprep_dir is not None:
        inputs.append((Path(config.fmri.fmriprep_dir).resolve(), "--fmriprep-dir folder",
                       False))
    for folder, what in ((output_dir, "Output directory"), (work_dir, "Work directory (-w)")):
        _check_outside(folder.resolve(), what, inputs)
    _check_writable(output_dir)
    backend, fmriprep_dir = config.fmri.backend, config.fmri.fmriprep_dir
    if backend == "derivatives" and fmriprep_dir is None:
        raise InputError("Option --fmri-backend derivatives needs --fmriprep-dir pointing "
                         "at fMRIPrep outputs.")
    if config.execution.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("Option --device cuda was given but no CUDA GPU is available; "
                             "use --device auto or cpu.")


def preflight(config: Config) -> Any:
    """Everything checked before the first output: stages, inputs, selection.

    Returns
    -------
    Selection | list of str
        The participant level's :class:`~bids_app.workflows.participant.Selection`, or
        the group level's subjects.
    """
    if config.execution.analysis_level == "participant":
        from bids_app.workflows.participant import prepare_participant_level

        return prepare_participant_level(config)
    from bids_app.workflows.group import prepare_group_level

    return prepare_group_level(config)


def lock_names(config: Config, plan: Any) -> list[str]:
    """Parts of the output a level writes: its subjects (participant) or all (group).

    A masking shard (``--masking-shard``, or a torchrun rank other than 0) writes no
    output, only its part in the work directory: it locks that part alone, so shards run
    beside each other.
    """
    if config.execution.analysis_level == "participant":
        return [f"sub-{s}" for s in plan.runs] or ["dataset"]
    from bids_app.workflows.masking_shards import shard_of

    shard = shard_of(config)
    if shard is not None:
        return [f"masking-{shard.name}"]
    output_dir = Path(config.execution.output_dir)
    return ["group", *(p.name for p in output_dir.glob("sub-*") if p.is_dir())]


def execute(config: Config) -> LevelResult:
    """Check everything, then run one level under the output lock, with logs and config.

    The pre-flight (:func:`preflight`) runs first and writes nothing: an input error
    leaves no file behind, not even a log. Then the log goes to
    ``output_dir/logs/eegfmri-<timestamp>-<level>.log`` and the resolved configuration to
    ``output_dir/logs/config-<timestamp>-<level>.toml`` (reload it with ``--config-file``
    to reproduce the run); the level in the name keeps the two levels of one minute (and
    concurrent array jobs) from overwriting each other.
    """
    output_dir = Path(config.execution.output_dir)
    level = config.execution.analysis_level
    with logging_to(None, config.execution.verbosity):
        plan = preflight(config)
        names = lock_names(config, plan)
        with output_lock(output_dir, names):
            stale = [t for name in names for t in leftover_temporaries(output_dir / name)]
            for tmp in stale:  # left by a killed run (SIGKILL); nobody else writes there
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            stamp = unique_stamp(output_dir / "logs", f"{timestamp()}-{level}")
            log_file = output_dir / "logs" / f"eegfmri-{stamp}.log"
            with logging_to(log_file, config.execution.verbosity):
                config_file = output_dir / "logs" / f"config-{stamp}.toml"
                config.to_toml(config_file)
                logger.info("eegfmri %s, %s level; configuration saved to %s", __version__,
                            level, config_file)
                if stale:
                    logger.info("Removed %d partial file(s) left by an interrupted run.",
                                len(stale))
                result = _run_level(config, plan, output_dir / "logs" / f"crash-{stamp}.txt")
                logger.info("Log written to %s", log_file)
                return result


def _run_level(config: Config, plan: Any, crash: Path) -> LevelResult:
    """Run the level on its pre-flight plan; an unexpected error becomes a Failure."""
    level = config.execution.analysis_level
    try:
        if level == "participant":
            from bids_app.workflows.participant import run_participant_level

            return run_participant_level(config, selection=plan)
        from bids_app.workflows.group import run_group_level

        return run_group_level(config, subjects=plan)
    except (InputError, ConfigError) as err:
        logger.debug("Stopped on an input error: %s", err)  # stderr gets it once
        raise
    except Exception as err:
        crash.write_text(traceback.format_exc())
        logger.error("eegfmri stopped on an unexpected error (%s); traceback in %s",
                     type(err).__name__, crash)
        return LevelResult(failures=[Failure(level, str(err), crash)])
