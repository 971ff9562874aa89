"""Group level: models (VAE-1, VAE-2) -> masking -> group report.

The group level reads participant derivatives only (never the raw dataset's EEG/BOLD),
so it needs a finished participant level in ``output_dir``. Each stage is imported
before anything is written (a stage that cannot be imported stops the run, exit code 1);
a failed stage is logged with a crash file and the stages that do not depend on it still
run (the report is written even when models or masking failed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bids_app.errors import InputError
from bids_app.workflows.participant import (
    LevelResult,
    call_stage,
    import_stages,
    load_stage,
)

logger = logging.getLogger(__name__)

STAGES: dict[str, tuple[str, str]] = {
    "models": ("bids_app.workflows.models", "run_models_workflow"),
    "masking": ("bids_app.workflows.masking", "run_masking_workflow"),
    "group_report": ("bids_app.report.group", "write_group_report"),
}


def check_group_inputs(config: Any) -> list[str]:
    """Subjects with participant outputs; raise InputError when there are none.

    Also checks that stimulus videos in ``--stimuli-dir`` decode.
    """
    from bids_app.io.validate import check_stimulus_video

    output_dir = Path(config.execution.output_dir)
    subjects = sorted(p.name[4:] for p in output_dir.glob("sub-*") if p.is_dir())
    wanted = config.execution.participant_label
    if wanted:
        missing = [s for s in wanted if s not in subjects]
        if missing:
            raise InputError(
                f"Output directory {output_dir} has no participant outputs for "
                f"{', '.join('sub-' + s for s in missing)}; run the participant level first."
            )
        subjects = list(wanted)
    if not subjects:
        raise InputError(f"Output directory {output_dir} has no participant outputs "
                         "(sub-* folders); run the participant level first.")
    stimuli_dir = config.execution.stimuli_dir
    if stimuli_dir is not None:
        for video in sorted(Path(stimuli_dir).glob("*")):
            if video.suffix.lower() in (".avi", ".mp4", ".mkv", ".mov", ".webm"):
                check_stimulus_video(video)
    return subjects


def prepare_group_level(config: Any, *, stages: dict[str, Any] = STAGES) -> list[str]:
    """Pre-flight of the group level: import every stage, check participant outputs.

    Returns
    -------
    list of str
        Subjects with participant outputs (:func:`check_group_inputs`).

    Raises
    ------
    InstallationError
        A stage cannot be imported (exit code 1).
    InputError
        No participant outputs, or a stimulus video that does not decode (exit code 2).
    """
    import_stages(stages)
    return check_group_inputs(config)


def run_group_level(config: Any, *, stages: dict[str, Any] = STAGES,
                    subjects: list[str] | None = None) -> LevelResult:
    """Train the models, run the masking analysis and write the group report.

    Parameters
    ----------
    config : Config
        Resolved configuration; ``execution.output_dir`` holds participant outputs.
    stages : dict
        Stage name -> (module, function) or a callable; None disables a stage.
    subjects : list of str | None
        Result of :func:`prepare_group_level` (made here when None).

    Returns
    -------
    LevelResult
        Failures, report path and which stages ran.
    """
    from bids_app.io.derivatives import DerivativesWriter

    if subjects is None:
        subjects = prepare_group_level(config, stages=stages)
    output_dir = Path(config.execution.output_dir)
    writer = DerivativesWriter(output_dir, config)
    result = LevelResult()
    logger.info("Group level on %d subject(s): %s", len(subjects), ", ".join(subjects))
    def run(name: str, *args: Any) -> Any:
        """Run one stage if it is available; record it as run when it returns a result."""
        func = load_stage(name, stages, result.stages_unavailable)
        if func is None:
            return None
        out = call_stage(name, func, args, label="group", output_dir=output_dir,
                         failures=result.failures)
        if out is not None:
            result.stages_run.add(name)
        return out

    models = run("models", output_dir, config, writer)
    masking = run("masking", models, config, writer) if models is not None else None
    path = run("group_report", models, masking, config, writer)
    if path is not None:
        result.reports.append(Path(path))
    logger.info("Group level done: stages run: %s; unavailable: %s; %d failure(s).",
                ", ".join(sorted(result.stages_run)) or "none",
                ", ".join(sorted(result.stages_unavailable)) or "none", len(result.failures))
    return result
