"""Simulate a NATVIEW-shaped EEG-fMRI release (or a BIDS dataset) with known truth.

The orchestrator calls the four generator modules (stimulus, neural, artifacts, BOLD) with
one shared timeline per run (:mod:`bids_app.simulate.timeline`), adds the EEG
components up (:mod:`bids_app.simulate.truth`), and writes the files as the NKI
NATVIEW release stores them (:mod:`bids_app.simulate.writers`), with the planted truth
under ``sourcedata/simulation/``.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from pathlib import Path

import numpy as np

from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.realism import Realism, resolve_realism, sidecar_slice_timing
from bids_app.simulate.release_eeg import run_markers, write_release_eeg
from bids_app.simulate.timeline import RunTimeline, checker_blocks, run_timeline
from bids_app.simulate.truth import (
    assemble_eeg,
    load_run_truth,
    ocular_component,
    ocular_weights,
    sum_components,
    write_eeg_truth,
    write_run_truth,
    write_truth_readme,
)
from bids_app.simulate.writers import (
    as_scanner_int16,
    bold_sidecar,
    dump_json,
    truth_dir,
    video_name,
    write_eyetracking,
    write_release_root,
    write_run_bold,
    write_stimulus_video,
    write_subject_files,
)
from bids_app.simulate.writers import run_stem as _stem

__all__ = [
    "RunTimeline", "as_scanner_int16", "assemble_eeg", "bold_sidecar", "checker_blocks",
    "dump_json", "load_run_truth", "ocular_component",
    "ocular_weights", "run_timeline", "simulate_dataset", "sum_components", "video_name",
    "write_eyetracking", "write_release_root", "write_run_bold", "write_stimulus_video",
    "write_subject_files", "write_eeg_truth", "write_run_truth", "write_truth_readme",
]  # fmt: skip

logger = logging.getLogger(__name__)

_ENVELOPE_SFREQ = 10.0  # source_power sampling rate of simulate_neural (contract)
_SPILL_BYTES = 256 * 1024**2  # neural EEG larger than this is kept on disk meanwhile


def simulate_dataset(
    out_dir: str | Path,
    *,
    scale: str | scenario.Scale = "tiny",
    layout: str = "natview",
    null: bool = False,
    seed: int = 0,
    realism: str | Realism = "ideal",
) -> Path:
    """Simulate a NATVIEW-like EEG-fMRI dataset with its planted truth.

    Parameters
    ----------
    out_dir : str | Path
        Directory to create (must be empty or absent).
    scale : {"tiny", "demo", "natview"} | Scale
        Size preset of :data:`bids_app.simulate.scenario.SCALES`, or a custom ``Scale``.
    layout : {"natview", "bids"}
        ``"natview"`` writes the release as NKI distributes it (EEGLAB ``.set`` with orphan
        BrainVision headers and the release's defects); ``"bids"`` converts it to a valid
        BIDS dataset with :func:`bids_app.natview.convert.convert_natview`.
    null : bool
        Remove every planted stimulus -> source -> BOLD link (false-discovery control).
    seed : int
        Seed of :func:`numpy.random.default_rng`; the output is identical for a seed.
    realism : {"ideal", "hard"} | Realism
        Realism of the MR artifacts, of the BOLD sidecar's SliceTiming and of the BOLD
        itself (:mod:`bids_app.simulate.realism`); recorded in ``sourcedata/simulation``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if not isinstance(scale, scenario.Scale):
        if scale not in scenario.SCALES:
            raise ValueError(f"scale must be one of {sorted(scenario.SCALES)}, got {scale!r}.")
        scale = scenario.SCALES[scale]
    if layout not in ("natview", "bids"):
        raise ValueError(f"layout must be 'natview' or 'bids', got {layout!r}.")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"Output directory {out_dir} is not empty.")
    if layout == "bids":
        from bids_app.natview.convert import convert_natview

        with tempfile.TemporaryDirectory(prefix="eegfmri-sim-") as tmp:
            raw_dir = simulate_dataset(Path(tmp) / "raw", scale=scale, null=null, seed=seed,
                                       realism=realism)  # fmt: skip
            convert_natview(raw_dir, out_dir)
        return out_dir
    _simulate_release(out_dir, scale, null=null, seed=seed, real=resolve_realism(realism))
    return out_dir


def _simulate_release(out_dir: Path, scale: scenario.Scale, *, null: bool, seed: int,
                      real: Realism) -> None:  # fmt: skip
    from bids_app.simulate.bold import simulate_bold

    out_dir.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    stim_seq, *subject_seqs = root.spawn(1 + len(scale.subjects))
    stimuli = _simulate_stimuli(scale, stim_seq, null=null, out_dir=out_dir, real=real)
    write_release_root(out_dir, scale, seed=seed, null=null)
    for subject, sub_seq in zip(scale.subjects, subject_seqs):
        anatomy_seq, *run_seqs = sub_seq.spawn(1 + len(scale.runs))
        coupled_all = {}
        bold_sim = None
        anatomy = _same_anatomy(simulate_bold, anatomy_seq)
        for i, (spec, run_seq) in enumerate(zip(scale.runs, run_seqs)):
            last = i == len(scale.runs) - 1  # one T1w per subject: simulated with the last run
            bold_sim = _simulate_run(
                out_dir,
                subject,
                spec,
                scale,
                stimuli[spec.task],
                run_seq,
                anatomy,
                null=null,
                t1w=last,
                real=real,
            )
            coupled_all.update(bold_sim.coupled)
        write_subject_files(out_dir, subject, bold_sim, coupled_all)
    write_truth_readme(out_dir, scale, seed=seed, null=null, stimuli=stimuli)
    dump_json(out_dir / "sourcedata" / "simulation" / "realism.json", real.to_dict())


def _simulate_run(
    out_dir, subject, spec, scale, stim, run_seq, anatomy: dict, *, null: bool, t1w: bool,
    real: Realism,
):
    """Simulate and write one run; big arrays are written and freed as early as possible."""
    from bids_app.simulate.artifacts import simulate_artifacts
    from bids_app.simulate.bold import simulate_bold
    from bids_app.simulate.neural import simulate_neural

    logger.info("Simulating sub-%s %s run %s", subject, spec.task, spec.run)
    seq_neural, seq_art, seq_bold = run_seq.spawn(3)
    rng_neural, rng_art, rng_bold = (
        np.random.default_rng(s) for s in (seq_neural, seq_art, seq_bold)
    )
    tl = run_timeline(spec, scale, real)
    neural = simulate_neural(
        spec.task, stim, tl.sfreq, tl.n_times, -tl.stim_onset_s, rng_neural, null=null,
        realism=real,
    )
    # At NATVIEW size the neural EEG waits on disk while the artifacts are simulated.
    spill = truth_dir(out_dir, subject) / f".{_stem(subject, spec)}_neural.npy"
    if neural.eeg.nbytes > _SPILL_BYTES:
        np.save(spill, neural.eeg)
        neural.eeg = np.load(spill, mmap_mode="r")
    art = simulate_artifacts(tl.n_times, tl.sfreq, tl.volume_onsets_s, tl.slice_times, rng_art,
                             realism=real)  # fmt: skip
    data, comps = assemble_eeg(neural.eeg, art)
    write_eeg_truth(out_dir, subject, spec, tl, comps, art, neural, artifact_seed=seq_art,
                    realism=real)  # fmt: skip
    spill.unlink(missing_ok=True)
    eog = comps["eog"]
    del comps
    neural.eeg = art.gradient = art.bcg = art.line = art.noise = None
    blocks = None
    if spec.task.startswith("checker") and stim.checker_on is not None:
        blocks = checker_blocks(
            stim.checker_on, scale.video_fps, tl.stim_onset_s, tl.stim_duration_s
        )
    markers = run_markers(
        n_times=tl.n_times,
        sfreq=tl.sfreq,
        volume_onsets_s=tl.volume_onsets_s,
        stim_onset_s=tl.stim_onset_s,
        stim_end_s=tl.stim_onset_s + tl.stim_duration_s,
        task=spec.task,
        checker_blocks=blocks,
    )
    write_release_eeg(
        out_dir / f"sub-{subject}" / f"ses-{spec.session}" / "eeg",
        _stem(subject, spec),
        data,
        tl.sfreq,
        markers,
        task=spec.task,
        electrodes_stem=f"sub-{subject}_ses-{spec.session}",
    )
    del data
    write_eyetracking(out_dir, subject, spec, eog, tl.sfreq)
    power = _power_from_first_volume(neural.source_power, tl)
    bold_sim = simulate_bold(
        spec.task, spec.n_volumes, power, rng_bold, scale, null=null, t1w=t1w, realism=real,
        **anatomy,
    )
    write_run_bold(out_dir, subject, spec, tl, bold_sim, checker_blocks=blocks,
                   slice_timing=sidecar_slice_timing(tl.slice_times, nv.TR, real))
    write_run_truth(out_dir, subject, spec, tl, neural, bold_sim, null=null)
    return bold_sim


def _same_anatomy(simulate_bold, anatomy_seq: np.random.SeedSequence) -> dict:
    """Keyword that gives every run of a subject the same planted anatomy (and T1w).

    ``simulate_bold`` draws the subject's native -> MNI transform from its ``rng``; when it
    accepts ``anatomy=``, the orchestrator draws it once per subject instead.
    """
    if "anatomy" not in inspect.signature(simulate_bold).parameters:
        logger.warning("simulate_bold has no 'anatomy' argument: runs differ in anatomy.")
        return {}
    from bids_app.simulate.bold import _planted_anatomy

    return {"anatomy": _planted_anatomy(np.random.default_rng(anatomy_seq))}


def _simulate_stimuli(scale, seq, *, null: bool, out_dir: Path, real: Realism) -> dict:
    """One stimulus per task (every run and subject watches the same video)."""
    from bids_app.simulate.stimulus import simulate_stimulus

    tasks = sorted({spec.task for spec in scale.runs})
    stimuli = {}
    for task, task_seq in zip(tasks, seq.spawn(len(tasks))):
        duration = max(
            run_timeline(s, scale).stim_duration_s for s in scale.runs if s.task == task
        )
        stim = simulate_stimulus(
            task,
            duration,
            scale.video_fps,
            scale.video_size,
            np.random.default_rng(task_seq),
            null=null,
            realism=real,
        )
        stimuli[task] = stim
        if stim.frames is not None:
            write_stimulus_video(out_dir, task, stim.frames, scale.video_fps)
            stim.frames = None  # written; features and onsets are all the rest needs
    return stimuli


def _power_from_first_volume(source_power: dict, tl: RunTimeline) -> dict:
    """Crop the 10 Hz source-power envelopes so that index 0 is the first volume onset."""
    start = int(round(tl.first_volume_s * _ENVELOPE_SFREQ))
    return {name: np.asarray(env)[start:] for name, env in source_power.items()}
