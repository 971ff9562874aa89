"""Running one analysis level: path rules, the output lock, logs and the saved config.

:func:`execute` is what ``eegfmri bids_dir output_dir participant|group`` and
``eegfmri demo`` both call once a :class:`~bids_app.config.Config` is built; the command
line (:mod:`bids_app.cli`) only parses arguments into that Config.
"""

from __future__ import annotations

import logging
import os
import shutil
import traceback
from pathlib import Path

from bids_app import __version__
from bids_app.config import Config, ConfigError
from bids_app.errors import InputError
from bids_app.io.atomic import leftover_temporaries
from bids_app.io.derivatives import output_lock
from bids_app.utils import logging_to, timestamp, unique_stamp
from bids_app.workflows.participant import Failure, LevelResult

logger = logging.getLogger(__name__)


def check_paths(config: Config) -> None:
    """Refuse output folders that would damage or mix with the input dataset."""
    execution = config.execution
    bids_dir = Path(execution.bids_dir).resolve()
    output_dir = Path(execution.output_dir).resolve()
    if not bids_dir.is_dir():
        raise InputError(f"BIDS directory {bids_dir} does not exist.")
    if output_dir == bids_dir:
        raise InputError(
            f"Output directory {output_dir} is the input BIDS directory; choose another "
            f"folder, e.g. {bids_dir / 'derivatives' / 'eegfmri'}."
        )
    if output_dir.is_relative_to(bids_dir) and not output_dir.is_relative_to(
        bids_dir / "derivatives"
    ):
        raise InputError(
            f"Output directory {output_dir} is inside the input BIDS directory {bids_dir}; "
            f"use a folder outside it or under {bids_dir / 'derivatives'}."
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".eegfmri-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"Output directory {output_dir} is not writable "
                         f"({err.strerror or err}).") from None
    backend, fmriprep_dir = config.fmri.backend, config.fmri.fmriprep_dir
    if backend == "derivatives" and fmriprep_dir is None:
        raise InputError("Option --fmri-backend derivatives needs --fmriprep-dir pointing "
                         "at fMRIPrep outputs.")
    if config.execution.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("Option --device cuda was given but no CUDA GPU is available; "
                             "use --device auto or cpu.")


def lock_names(config: Config) -> list[str]:
    """Parts of the output a level writes: its subjects (participant) or all (group)."""
    execution = config.execution
    if execution.analysis_level == "participant":
        from bids_app.io.bids import BidsInput

        layout = BidsInput(execution.bids_dir)
        subjects = (layout.check_subjects(execution.participant_label)
                    if execution.participant_label else layout.subjects())
        return [f"sub-{s}" for s in subjects] or ["dataset"]
    output_dir = Path(execution.output_dir)
    return ["group", *(p.name for p in output_dir.glob("sub-*") if p.is_dir())]


def execute(config: Config) -> LevelResult:
    """Run one analysis level under the output lock, with logs and the saved config.

    The log goes to ``output_dir/logs/eegfmri-<timestamp>-<level>.log`` and the resolved
    configuration to ``output_dir/logs/config-<timestamp>-<level>.toml`` (reload it with
    ``--config-file`` to reproduce the run); the level in the name keeps the two levels
    of one minute (and concurrent array jobs) from overwriting each other.
    """
    output_dir = Path(config.execution.output_dir)
    level = config.execution.analysis_level
    names = lock_names(config)
    with output_lock(output_dir, names):
        stale = [t for name in names for t in leftover_temporaries(output_dir / name)]
        for tmp in stale:  # left by a killed run (SIGKILL); nobody else writes there now
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
            try:
                if level == "participant":
                    from bids_app.workflows.participant import run_participant_level

                    result = run_participant_level(config)
                else:
                    from bids_app.workflows.group import run_group_level

                    result = run_group_level(config)
            except (InputError, ConfigError) as err:
                logger.debug("Stopped on an input error: %s", err)  # stderr gets it once
                raise
            except Exception as err:
                crash = output_dir / "logs" / f"crash-{stamp}.txt"
                crash.write_text(traceback.format_exc())
                logger.error("eegfmri stopped on an unexpected error (%s); traceback in %s",
                             type(err).__name__, crash)
                result = LevelResult(failures=[Failure(level, str(err), crash)])
            logger.info("Log written to %s", log_file)
            return result
