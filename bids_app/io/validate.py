"""Validation at the edge: the official BIDS validator and cheap per-file integrity checks.

:func:`run_validator` calls ``bids-validator-deno`` (the official validator, shipped on
PyPI) with JSON output and condenses its issues into plain sentences;
:func:`validate_bids_dir` turns validator errors into an :class:`InputError` at the
participant level, :func:`validate_derivatives` checks eegfmri's own outputs.
:func:`check_stimulus_video` checks that a stimulus video decodes. The per-file checks of
the input runs live in :mod:`bids_app.io.preflight`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_app.errors import InputError

logger = logging.getLogger(__name__)

VALIDATOR = "bids-validator-deno"


@dataclass
class ValidationResult:
    """Issues reported by the BIDS validator for one dataset."""

    dataset: Path
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the validator reported no error."""
        return not self.errors

    def summary(self, severity: str = "error", limit: int = 5) -> list[str]:
        """One sentence per issue code: code, how many files, first locations."""
        issues = self.errors if severity == "error" else self.warnings
        by_code: dict[str, list[str]] = {}
        for issue in issues:
            by_code.setdefault(issue.get("code", "UNKNOWN"), []).append(
                str(issue.get("location", "")) + (f" ({issue['subCode']})"
                                                  if issue.get("subCode") else "")
            )
        lines = []
        for code, where in by_code.items():
            first = self.messages.get(code, "").strip().split("\n")[0].rstrip(".")
            shown = ", ".join(where[:limit]) + (f" and {len(where) - limit} more"
                                                if len(where) > limit else "")
            lines.append(f"{code}{': ' + first if first else ''} — {shown}.")
        return lines


def find_validator() -> Path:
    """Path of the ``bids-validator-deno`` executable (beside Python, else on PATH)."""
    beside = Path(sys.executable).parent / VALIDATOR
    if beside.exists():
        return beside
    found = shutil.which(VALIDATOR)
    if found is None:
        raise InputError(
            f"The BIDS validator ({VALIDATOR}) is not installed; install it with "
            f"'pip install bids-validator-deno' or use --skip-bids-validation."
        )
    return Path(found)


def run_validator(dataset: Path | str, *, timeout: float = 600.0) -> ValidationResult:
    """Run the official validator on ``dataset`` and parse its JSON report.

    Parameters
    ----------
    dataset : Path | str
        Dataset root.
    timeout : float
        Seconds before giving up.

    Returns
    -------
    ValidationResult
        Errors and warnings with the validator's code messages.
    """
    dataset = Path(dataset).absolute()
    cmd = [str(find_validator()), "--format", "json", str(dataset)]
    env = dict(os.environ, NO_COLOR="1", DENO_NO_UPDATE_CHECK="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise InputError(f"The BIDS validator did not finish on {dataset} within "
                         f"{timeout:.0f} s; use --skip-bids-validation.") from None
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(f"The BIDS validator failed on {dataset} ({tail[0]}); "
                         "use --skip-bids-validation to go on.") from None
    issues = report.get("issues", {})
    result = ValidationResult(dataset=dataset, messages=issues.get("codeMessages", {}))
    for issue in issues.get("issues", []):
        if issue.get("severity") == "error":
            result.errors.append(issue)
        elif issue.get("severity") == "warning":
            result.warnings.append(issue)
    return result


def validate_bids_dir(bids_dir: Path | str) -> ValidationResult:
    """Validate the input dataset; raise InputError (one sentence) when it has errors."""
    result = run_validator(bids_dir)
    if result.warnings:
        logger.info("BIDS validator: %d warning(s) on %s (details in the log file).",
                    len(result.warnings), result.dataset)
    for line in result.summary("warning"):
        logger.debug("BIDS validator warning: %s", line)
    if not result.ok:
        for line in result.summary("error"):
            logger.error("BIDS validator error: %s", line)
        first = result.summary("error", limit=2)[0]
        raise InputError(
            f"BIDS dataset {result.dataset} has {len(result.errors)} validator error(s), "
            f"first {first[:-1]}; fix them (see the log) or use --skip-bids-validation."
        )
    return result


def validate_derivatives(output_dir: Path | str) -> ValidationResult:
    """Run the validator on an eegfmri output (derivatives) dataset."""
    return run_validator(output_dir)


def check_stimulus_video(path: Path) -> None:
    """A stimulus video must decode at least one frame (PyAV)."""
    import av

    try:
        with av.open(str(path)) as container:
            next(container.decode(video=0))
    except Exception as err:  # PyAV raises its own error types
        raise InputError(f"Stimulus video {path} cannot be decoded ({type(err).__name__}); "
                         "replace it with a working copy.") from None
