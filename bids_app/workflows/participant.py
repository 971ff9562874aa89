"""Participant level: per subject, per run, EEG -> fMRI -> coupling, then the report.

The order of stages is the data-flow diagram of the design: the EEG workflow and the
fMRI workflow of a run are independent, coupling needs both, and the subject's HTML
report gathers every run. A failure in one stage of one run is logged, its traceback
saved to ``logs/crash-sub-<sub>-<run>-<stage>.txt``, recorded in the run's
:class:`RunOutcome`, and every other run and subject goes on (exit code 1).

Before anything is written, :func:`prepare_participant_level` imports every stage, runs
the BIDS validator and pre-flights every input file of the selection
(:mod:`bids_app.io.preflight`). The EEG, fMRI and coupling stages of each run are
checkpointed in ``WORK_DIR/checkpoints/sub-<sub>/`` (:mod:`bids_app.workflows.checkpoint`),
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.errors import InputError
from bids_app.io.bids import BidsInput, RunFiles, load_filter_file
from bids_app.utils import limit_threads
from bids_app.workflows.stages import (
    Failure,
    LevelResult,
    RunOutcome,
    call_stage,
    crash_file,
    import_stages,
    load_stage,
)

logger = logging.getLogger(__name__)

#: stage name -> (module, function); every stage is imported before the run writes anything.
STAGES: dict[str, tuple[str, str]] = {
    "eeg": ("bids_app.workflows.eeg", "run_eeg_workflow"),
    "fmri": ("bids_app.workflows.fmri", "run_fmri_workflow"),
    "coupling": ("bids_app.workflows.coupling", "run_coupling_workflow"),
    "report": ("bids_app.workflows.reports", "write_participant_reports"),
}


def _replaced(obj: Any, **values: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **values)
    for key, value in values.items():
        setattr(obj, key, value)
    return obj


def release_memory(outcome: RunOutcome, writer: Any) -> None:
    """Swap a finished run's large arrays for file-backed views of its written outputs.

    The report needs every run of a subject at the end; keeping each run's cleaned EEG
    and MNI BOLD in memory would grow with the number of runs (gigabytes for a NATVIEW
    subject). After coupling, ``eeg.raw_clean`` becomes the written ``desc-preproc``
    BrainVision file opened without preloading and ``fmri.bold_mni`` the written NIfTI
    (a proxy), when those files exist and match in size; otherwise nothing changes.
    """
    import nibabel as nib

    prefix = outcome.run.run_id
    folder = writer.output_dir / f"sub-{outcome.entities['sub']}"
    if "ses" in outcome.entities:
        folder = folder / f"ses-{outcome.entities['ses']}"
    raw = getattr(outcome.eeg, "raw_clean", None)
    vhdr = folder / "eeg" / f"{prefix}_desc-preproc_eeg.vhdr"
    if raw is not None and getattr(raw, "preload", False) and vhdr.exists():
        import mne

        try:
            lazy = mne.io.read_raw_brainvision(vhdr, preload=False, verbose="error")
        except Exception:  # keep the in-memory data if the file cannot be opened
            lazy = None
        if lazy is not None and lazy.n_times == raw.n_times and lazy.ch_names == raw.ch_names:
            outcome.eeg = _replaced(outcome.eeg, raw_clean=lazy)
    bold = getattr(outcome.fmri, "bold_mni", None)
    if bold is not None and not nib.is_proxy(bold.dataobj):
        for path in sorted((folder / "func").glob(f"{prefix}_space-*_desc-preproc_bold.nii*")):
            disk = nib.load(path)
            if disk.shape == bold.shape and np.allclose(disk.affine, bold.affine):
                outcome.fmri = _replaced(outcome.fmri, bold_mni=disk)
                break


@dataclass
class Selection:
    """What the pre-flight of the participant level found: runs to process and refused.

    Attributes
    ----------
    layout : BidsInput
        The indexed input dataset.
    runs : dict
        Subject -> runs whose files passed :func:`bids_app.io.preflight.check_run`.
    rejected : list of (RunFiles, str)
        Runs with a broken input file and the sentence saying why.
    """

    layout: BidsInput
    runs: dict[str, list[RunFiles]]
    rejected: list[tuple[RunFiles, str]]


def collect_runs(layout: BidsInput, config: Any) -> tuple[dict[str, list[RunFiles]],
                                                          list[tuple[RunFiles, str]]]:
    """Select the runs of every requested subject and check their files up front.

    Returns
    -------
    runs : dict
        Subject -> runs whose files passed :func:`bids_app.io.preflight.check_run`.
    rejected : list of (RunFiles, str)
        Runs with a broken input file and the sentence saying why.

    Raises
    ------
    InputError
        When a label matches nothing, or nothing is left to process (no EEG, no BOLD,
        or every run broken).
    """
    from bids_app.io.preflight import check_run

    execution = config.execution
    subjects = layout.select_subjects(execution.participant_label)
    if not subjects:
        raise InputError(f"BIDS dataset {layout.root} has no sub-* folders.")
    layout.check_labels(subjects, execution.session_label, execution.task_label)
    filters = load_filter_file(execution.bids_filter_file) if execution.bids_filter_file \
        else None
    selected = {s: layout.runs(s, execution.session_label, execution.task_label, filters)
                for s in subjects}
    every = [r for runs in selected.values() for r in runs]
    where = f"BIDS dataset {layout.root}"
    if not every:
        raise InputError(f"{where} has no EEG or BOLD recordings matching the selection "
                         f"(subjects {', '.join(subjects)}).")
    if not any(r.extra.get("unreadable") for r in every):
        if not any(r.eeg for r in every):
            raise InputError(f"{where} has no EEG recordings (eeg/*_eeg.set|vhdr|edf) in "
                             "the selection; eegfmri needs EEG recorded with fMRI.")
        if not any(r.bold for r in every):
            raise InputError(f"{where} has no BOLD runs (func/*_bold.nii.gz) in the "
                             "selection; eegfmri needs fMRI recorded with the EEG.")
    runs: dict[str, list[RunFiles]] = {}
    rejected: list[tuple[RunFiles, str]] = []
    for subject, subject_runs in selected.items():
        runs[subject] = []
        for run in subject_runs:
            problems = check_run(run, config, layout.root)
            if problems:
                rejected.append((run, problems[0]))
            else:
                runs[subject].append(run)
    if not any(runs.values()):
        for run, problem in rejected[1:]:
            logger.error("Input check failed for %s: %s", run.run_id, problem)
        more = (f" ({len(rejected) - 1} more problems listed above)" if len(rejected) > 1
                else "")
        raise InputError(rejected[0][1].rstrip(".") + more + ".")
    return runs, rejected


def prepare_participant_level(config: Any, *, stages: dict[str, Any] = STAGES
                              ) -> Selection:
    """Pre-flight of the participant level, before any output is written.

    Imports every stage, runs the BIDS validator (unless ``--skip-bids-validation``) and
    checks every input file of the selection (:func:`collect_runs`).

    Raises
    ------
    InstallationError
        A stage cannot be imported (exit code 1).
    InputError
        Invalid dataset or no processable run (exit code 2).
    """
    from bids_app.io.validate import validate_bids_dir

    import_stages(stages)
    layout = BidsInput(config.execution.bids_dir)
    layout.select_subjects(config.execution.participant_label)  # labels before validator
    if config.execution.skip_bids_validation:
        logger.info("BIDS validation skipped (--skip-bids-validation).")
    else:
        validate_bids_dir(layout.root)
    runs, rejected = collect_runs(layout, config)
    return Selection(layout, runs, rejected)


def run_inputs(run: RunFiles) -> list[Path]:
    """Every input file a run's stages read: data files with their companions, sidecars."""
    paths = [run.eeg, run.bold, run.bold_json, run.events, run.t1w, run.eeg_sidecar,
             run.channels, run.electrodes, run.eeg_events, run.bold_events, run.coordsystem,
             *run.extra.get("eeg_sidecars", []), *run.extra.get("bold_sidecars", [])]
    for data in (run.eeg, run.bold):
        if data is not None:  # e.g. the .eeg and .vmrk of a .vhdr, the .fdt of a .set
            paths.extend(data.parent.glob(data.name.split(".", 1)[0] + ".*"))
    return [Path(p) for p in paths if p is not None]


def run_subject(subject: str, runs: list[RunFiles], config: Any, writer: Any,
                result: LevelResult, *, stages: dict[str, Any] = STAGES,
                rejected: list[RunOutcome] | None = None) -> list[RunOutcome]:
    """Run every stage on every run of one subject (failures isolated per run/stage).

    ``rejected`` are outcomes of runs whose inputs failed the up-front checks; they are
    passed to the report so it lists them.
    """
    from bids_app.utils import progress
    from bids_app.workflows.checkpoint import Checkpoints, stage_key

    output_dir = Path(config.execution.output_dir)
    work_root = Path(config.execution.work_dir or output_dir / "work")
    work_dir = work_root / f"sub-{subject}"
    checkpoints = Checkpoints(work_root / "checkpoints" / f"sub-{subject}",
                              output_dir / f"sub-{subject}")
    outcomes = list(rejected or [])
    for run in progress(runs, desc=f"sub-{subject}", unit="run"):
        outcome = RunOutcome(run=run)
        label = run.run_id
        logger.info("Processing %s", label)
        if config.execution.reports_only:
            outcomes.append(outcome)
            continue
        plan = []
        if run.eeg is not None:
            plan.append(("eeg", (run, config, writer)))
        if run.bold is not None:
            plan.append(("fmri", (run, config, writer, work_dir)))
        keys: dict[str, str] = {}
        for stage, args in plan:
            func = load_stage(stage, stages, result.stages_unavailable)
            if func is None:
                continue
            keys[stage] = stage_key(stage, func, label, config, run_inputs(run))
            value = call_stage(stage, checkpoints.run,
                               (f"{label}-{stage}", keys[stage], func, *args), label=label,
                               output_dir=output_dir, failures=outcome.failures)
            setattr(outcome, stage, value)
            if value is not None:
                outcome.stages_run.append(stage)
        if outcome.eeg is not None and outcome.fmri is not None:
            func = load_stage("coupling", stages, result.stages_unavailable)
            if func is not None:
                key = stage_key("coupling", func, label, config, (),
                                upstream=(keys["eeg"], keys["fmri"]))
                outcome.coupling = call_stage(
                    "coupling", checkpoints.run, (f"{label}-coupling", key, func, run,
                                                  outcome.eeg, outcome.fmri, config, writer),
                    label=label, output_dir=output_dir, failures=outcome.failures)
                if outcome.coupling is not None:
                    outcome.stages_run.append("coupling")
        release_memory(outcome, writer)
        result.stages_run.update(outcome.stages_run)
        result.failures.extend(outcome.failures)
        outcomes.append(outcome)
    report = load_stage("report", stages, result.stages_unavailable)
    if report is not None:
        path = call_stage("report", report, (subject, outcomes, config, writer),
                          label=f"sub-{subject}", output_dir=output_dir,
                          failures=result.failures)
        if path is not None:
            result.reports.append(Path(path))
            result.stages_run.add("report")
    return outcomes


def run_participant_level(config: Any, *, stages: dict[str, Any] = STAGES,
                          selection: Selection | None = None) -> LevelResult:
    """Process each subject of a pre-flight :class:`Selection` (made here when None).

    Parameters
    ----------
    config : Config
        Resolved configuration (``execution.bids_dir``/``output_dir`` set).
    stages : dict
        Stage name -> (module, function) or a callable; None disables a stage.
    selection : Selection | None
        Result of :func:`prepare_participant_level`.

    Returns
    -------
    LevelResult
        Outcomes per subject, reports, failures and which stages ran.

    Raises
    ------
    InputError
        Invalid dataset or no processable run (exit code 2).
    """
    from bids_app.io.derivatives import DerivativesWriter
    from bids_app.utils import progress
    from bids_app.workflows.checkpoint import ignore_work_dir

    execution = config.execution
    if selection is None:
        selection = prepare_participant_level(config, stages=stages)
    layout, runs, rejected = selection.layout, selection.runs, selection.rejected
    for run, problem in rejected:
        logger.error("Input check failed for %s: %s", run.run_id, problem)
    writer = DerivativesWriter(execution.output_dir, config, bids_dir=layout.root)
    ignore_work_dir(writer, config)
    result = LevelResult()
    broken = {subject: [RunOutcome(run=run, failures=[Failure("input", problem)])
                        for run, problem in rejected if run.entities["sub"] == subject]
              for subject in runs}
    for outcomes in broken.values():
        for outcome in outcomes:
            result.failures.extend(outcome.failures)
    import multiprocessing

    n_workers = min(int(execution.nprocs), len(runs))
    if n_workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        _run_in_parallel(runs, broken, config, result, stages, n_workers)
    else:
        for subject in progress(list(runs), desc="subjects", unit="subject"):
            result.outcomes[subject] = run_subject(subject, runs[subject], config, writer,
                                                   result, stages=stages,
                                                   rejected=broken[subject])
    n_runs = sum(len(v) for v in runs.values())
    logger.info("Participant level done: %d run(s) of %d subject(s), %d failure(s); "
                "stages run: %s; unavailable: %s.", n_runs, len(runs), len(result.failures),
                ", ".join(sorted(result.stages_run)) or "none",
                ", ".join(sorted(result.stages_unavailable)) or "none")
    return result


_WORKER: dict[str, Any] = {}


def _subject_job(subject: str, runs: list[RunFiles], rejected: list[RunOutcome]
                 ) -> tuple[list[RunOutcome], LevelResult]:
    """One subject in a worker process; stage results are dropped (the report is written)."""
    from bids_app.io.derivatives import DerivativesWriter

    config, stages = _WORKER["config"], _WORKER["stages"]
    limit_threads(_WORKER["threads"])
    writer = DerivativesWriter(config.execution.output_dir, config)
    partial = LevelResult()
    outcomes = run_subject(subject, runs, config, writer, partial, stages=stages,
                           rejected=rejected)
    for outcome in outcomes:
        outcome.eeg = outcome.fmri = outcome.coupling = None  # large; stay in the worker
    return outcomes, partial


def _run_in_parallel(runs: dict[str, list[RunFiles]], broken: dict[str, list[RunOutcome]],
                     config: Any, result: LevelResult, stages: dict[str, Any],
                     n_workers: int) -> None:
    """Process subjects in ``n_workers`` forked processes (``--nprocs``).

    Each worker gets ``cpu_count // n_workers`` BLAS/OpenMP/torch threads (at least one),
    so the processes do not oversubscribe the cores.

    An exception in a stage is isolated inside the worker as in the sequential path. A
    worker process that dies (e.g. killed for memory) breaks the pool: its subject and
    the subjects not finished yet are reported as failed (exit code 1); rerun them with
    ``--participant-label``. Without ``fork`` (Windows) subjects run one after another.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from bids_app.utils import progress

    threads = max(1, (os.cpu_count() or 1) // n_workers)
    _WORKER.update(config=config, stages=stages, threads=threads)  # inherited by the workers
    output_dir = Path(config.execution.output_dir)
    logger.info("Processing %d subjects with %d processes of %d thread(s) each.", len(runs),
                n_workers, threads)
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=context) as pool:
        futures = {pool.submit(_subject_job, subject, runs[subject], broken[subject]): subject
                   for subject in runs}
        for future in progress(as_completed(futures), total=len(futures), desc="subjects",
                               unit="subject"):
            subject = futures[future]
            try:
                outcomes, partial = future.result()
            except Exception as err:
                path = crash_file(output_dir, f"sub-{subject}-worker")
                logger.error("The process of sub-%s stopped (%s); traceback in %s", subject,
                             type(err).__name__, path)
                result.failures.append(Failure("subject", f"{type(err).__name__}: {err}",
                                               path))
                continue
            result.outcomes[subject] = outcomes
            result.failures.extend(partial.failures)
            result.reports.extend(partial.reports)
            result.stages_run.update(partial.stages_run)
            result.stages_unavailable.update(partial.stages_unavailable)
    _WORKER.clear()
