"""Running stages: import them up front, isolate their failures, keep their tracebacks.

A stage is a function (``(module, function)`` imported here, or a callable). Every stage
is imported before a level writes anything (:func:`import_stages`): a stage that cannot
be imported is a broken installation, so the run stops naming it (exit code 1). A stage
that raises is logged, its traceback saved to ``logs/crash-<label>-<stage>.txt`` and
recorded as a :class:`Failure`; the other runs and stages go on (:func:`call_stage`).
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_app.errors import EegfmriError, InstallationError
from bids_app.io.bids import RunFiles

logger = logging.getLogger(__name__)


@dataclass
class Failure:
    """One failed stage: where, why, and the file holding the traceback."""

    stage: str
    message: str
    crash_file: Path | None = None


@dataclass
class RunOutcome:
    """What happened to one run: results of each stage (None when not run) and failures."""

    run: RunFiles
    eeg: Any = None
    fmri: Any = None
    coupling: Any = None
    failures: list[Failure] = field(default_factory=list)
    stages_run: list[str] = field(default_factory=list)

    @property
    def entities(self) -> dict[str, str]:
        """BIDS entities of the run (sub, ses, task, run)."""
        return self.run.entities

    @property
    def ok(self) -> bool:
        """True when no stage failed."""
        return not self.failures


@dataclass
class LevelResult:
    """Summary of one analysis level, used by the CLI and the demo."""

    outcomes: dict[str, list[RunOutcome]] = field(default_factory=dict)
    reports: list[Path] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    stages_run: set[str] = field(default_factory=set)
    stages_unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when everything that ran succeeded, 1 when something failed."""
        return 1 if self.failures else 0


def load_stage(name: str, stages: dict[str, Any],
               unavailable: dict[str, str]) -> Callable[..., Any] | None:
    """Import a stage function; None (recorded as "disabled") when the stage is None.

    ``stages[name]`` is ``(module, function)``, a callable (used as is) or None.

    Raises
    ------
    InstallationError
        When the stage's module or function cannot be imported: a broken installation
        is never an optional extra, so the run stops naming the stage (exit code 1).
    """
    if name in unavailable or stages.get(name) is None:
        unavailable.setdefault(name, "disabled")
        return None
    if callable(stages[name]):
        return stages[name]
    module_name, func_name = stages[name]
    try:
        return getattr(importlib.import_module(module_name), func_name)
    except Exception as err:
        raise InstallationError(
            f"Stage '{name}' cannot be imported ({module_name}.{func_name}: "
            f"{type(err).__name__}: {err}); the installation is broken, so reinstall "
            "eegfmri or use the container image."
        ) from None


def import_stages(stages: dict[str, Any]) -> None:
    """Import every enabled stage now, so a broken installation stops before any output.

    Raises
    ------
    InstallationError
        Naming the first stage that cannot be imported.
    """
    for name in stages:
        load_stage(name, stages, {})


def crash_file(output_dir: Path, name: str) -> Path:
    """Write the current exception's traceback to ``output_dir/logs/crash-<name>.txt``."""
    path = Path(output_dir) / "logs" / f"crash-{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(traceback.format_exc())
    return path


def call_stage(stage: str, func: Callable[..., Any], args: tuple, *, label: str,
               output_dir: Path, failures: list[Failure]) -> Any:
    """Run one stage; on error log it, save a crash file, append a Failure, return None."""
    tic = time.perf_counter()
    try:
        value = func(*args)
        logger.info("Stage '%s' of %s done in %.1f s.", stage, label, time.perf_counter() - tic)
        return value
    except Exception as err:
        path = crash_file(output_dir, f"{label}-{stage}")
        text = str(err) if isinstance(err, EegfmriError) else f"{type(err).__name__}: {err}"
        message = (text.splitlines() or [type(err).__name__])[0]
        logger.error("Stage '%s' failed on %s (%s); traceback in %s", stage, label,
                     message, path)
        failures.append(Failure(stage, message, path))
        return None
