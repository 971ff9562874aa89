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
from bids_app.workflows.stages import (
    LevelResult,
    call_stage,
    import_stages,
    load_stage,
)

logger = logging.getLogger(__name__)

STAGES: dict[str, tuple[str, str]] = {
    "models": ("bids_app.workflows.models", "run_models_workflow"),
    "masking": ("bids_app.workflows.masking_shards", "run_masking_stage"),
    "group_report": ("bids_app.workflows.reports", "write_group_reports"),
}
#: Name part of the files the masking stage writes back into the subjects' folders.
GROUP_WRITEBACK = "_desc-vaemask_"


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


def group_inputs(config: Any, subjects: list[str]) -> list[Path]:
    """Files the group stages read: participant outputs of ``subjects`` and the videos.

    The masking's own annotations written back into the subjects' folders
    (``*_desc-vaemask_*``, :data:`GROUP_WRITEBACK`) are outputs of the group level, not
    inputs, and are left out.
    """
    output_dir = Path(config.execution.output_dir)
    files = [p for s in subjects for p in (output_dir / f"sub-{s}").rglob("*")
             if p.is_file() and GROUP_WRITEBACK not in p.name]
    if config.execution.stimuli_dir is not None:
        files.extend(p for p in Path(config.execution.stimuli_dir).rglob("*") if p.is_file())
    return files


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
    from bids_app.workflows import masking_shards as shards
    from bids_app.workflows.checkpoint import Checkpoints, ignore_work_dir, stage_key

    output_dir = Path(config.execution.output_dir)
    work_dir = Path(config.execution.work_dir or output_dir / "work").absolute()
    if shards.shard_of(config) is not None:  # a masking shard: the part only, no output
        folder = work_dir / "checkpoints" / "group"

        def load_models() -> Any:
            func = load_stage("models", stages, {})
            if func is None:
                return None
            key = stage_key("models", func, "group", config, group_inputs(config, subjects))
            found, models = Checkpoints(folder, output_dir, (work_dir,), clean=False).load(
                "group-models", key)
            return models if found else None

        def train() -> None:  # a torchrun rank joins training unless rank 0 resumes
            func = load_stage("models", stages, {})
            if func is not None and load_models() is None:
                func(output_dir, config, DerivativesWriter(output_dir, config))

        return shards.run_shard_level(config, subjects, load_models, train)
    writer = DerivativesWriter(output_dir, config)
    ignore_work_dir(writer, config)
    result = LevelResult()
    logger.info("Group level on %d subject(s): %s", len(subjects), ", ".join(subjects))
    checkpoints = Checkpoints(work_dir / "checkpoints" / "group", output_dir, (work_dir,))
    keys: dict[str, str] = {}

    def run(name: str, *args: Any, upstream: tuple[str, ...] = ()) -> Any:
        """Run one stage if it is available; record it as run when it returns a result.

        ``upstream`` names the checkpointed stages whose results it consumes; a stage
        without ``upstream`` reads the participant outputs.
        """
        func = load_stage(name, stages, result.stages_unavailable)
        if func is None:
            return None
        inputs = () if upstream else group_inputs(config, subjects)
        keys[name] = stage_key(name, func, "group", config, inputs,
                               upstream=[keys[u] for u in upstream])
        out = call_stage(name, checkpoints.run, (f"group-{name}", keys[name], func, *args),
                         label="group", output_dir=output_dir, failures=result.failures)
        if out is not None:
            result.stages_run.add(name)
        return out

    models = run("models", output_dir, config, writer)
    if config.execution.models_only:
        logger.info("Group level: models done; masking and the report skipped "
                    "(--models-only).")
        return result
    ranks = shards.rank_group(config)
    if ranks is not None:  # torchrun rank 0: its own shard while the others do theirs
        ranks.barrier()  # the models are trained (or failed); the other ranks load them
        try:
            if models is not None:
                call_stage("masking", shards.run_masking_shard, (models, config, ranks.shard),
                           label="group", output_dir=output_dir, failures=result.failures)
        finally:
            ranks.barrier()  # every rank's part is written
            ranks.close()
    masking = (run("masking", models, config, writer, upstream=("models",))
               if models is not None else None)
    func = load_stage("group_report", stages, result.stages_unavailable)
    path = None
    if func is not None:  # always rebuilt: cheap, and it lists what the others did
        path = call_stage("group_report", func, (models, masking, config, writer),
                          label="group", output_dir=output_dir, failures=result.failures)
        if path is not None:
            result.stages_run.add("group_report")
    if path is not None:
        result.reports.append(Path(path))
    logger.info("Group level done: stages run: %s; unavailable: %s; %d failure(s).",
                ", ".join(sorted(result.stages_run)) or "none",
                ", ".join(sorted(result.stages_unavailable)) or "none", len(result.failures))
    return result
