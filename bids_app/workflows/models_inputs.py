"""Inputs of the group models: participant derivatives, stimulus videos, group windows."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.errors import InputError
from bids_app.models.windows import WindowSet

logger = logging.getLogger(__name__)


def entities_from_name(name: str) -> dict[str, str]:
    """BIDS entities of a file name (``sub-01_ses-01_task-x_eeg.vhdr`` -> dict)."""
    return dict(re.findall(r"([a-zA-Z]+)-([0-9a-zA-Z]+)_", name))

SPACE = "MNI152NLin2009cAsym"
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg")


@dataclass
class RunDerivatives:
    """Participant derivatives of one run used by the group models."""

    entities: dict[str, str]
    eeg: Path
    bold: Path
    mask: Path

    @property
    def task(self) -> str:
        return self.entities["task"]


def find_runs(output_dir: Path, config: Any) -> list[RunDerivatives]:
    """Runs with a ``desc-preproc`` EEG and an MNI ``desc-preproc`` BOLD + brain mask.

    Honours ``--participant-label``, ``--session-label`` and ``--task-label``.
    """
    ex = config.execution
    runs = []
    found = [p for ext in (".vhdr", ".edf")
             for p in Path(output_dir).glob(f"sub-*/**/eeg/*_desc-preproc_eeg{ext}")]  # fmt: skip
    for vhdr in sorted(found):
        ents = entities_from_name(vhdr.name)
        if (
            (ex.participant_label and ents.get("sub") not in ex.participant_label)
            or (ex.session_label and ents.get("ses") not in ex.session_label)
            or (ex.task_label and ents.get("task") not in ex.task_label)
        ):
            continue
        prefix = vhdr.name.split("_desc-")[0]
        func = vhdr.parent.parent / "func"
        bold = sorted(func.glob(f"{prefix}_space-{SPACE}*_desc-preproc_bold.nii*"))
        mask = sorted(func.glob(f"{prefix}_space-{SPACE}*_desc-brain_mask.nii*"))
        if not bold or not mask:
            logger.warning("%s: no MNI desc-preproc BOLD and brain mask; run skipped.", prefix)
            continue
        runs.append(RunDerivatives(ents, vhdr, bold[0], mask[0]))
    if not runs:
        raise InputError(
            f"Output directory {output_dir} has no run with desc-preproc EEG and MNI BOLD "
            "derivatives; run the participant level (EEG and fMRI stages) first."
        )
    return runs


def find_video(task: str, config: Any) -> Path | None:
    """The stimulus video of ``task`` in ``--stimuli-dir`` or ``bids_dir/stimuli``."""
    from bids_app.natview import facts as nv

    ex = config.execution
    folders = [ex.stimuli_dir] if ex.stimuli_dir else []
    if ex.bids_dir:
        folders.append(Path(ex.bids_dir) / "stimuli")
    info = nv.TASKS.get(task)
    stems = [Path(info.stimulus).stem] if info and info.stimulus else []
    stems += [f"task-{task}", task]
    for folder in folders:
        for stem in stems:
            for ext in VIDEO_EXTENSIONS:
                path = Path(folder) / f"{stem}{ext}"
                if path.is_file():
                    return path
    return None


def stimulus_features(runs: list[RunDerivatives], config: Any) -> dict[str, Any]:
    """Video features per movie task (HandcraftedExtractor + ``--stimulus-model``)."""
    from bids_app.models.stimulus import (
        HandcraftedExtractor,
        TorchExtractor,
        extract_video_features,
    )
    from bids_app.natview.facts import MOVIE_TASKS

    extractors: list[Any] = [HandcraftedExtractor()]
    if config.execution.stimulus_model is not None:
        extractors.append(TorchExtractor(config.execution.stimulus_model))
    out = {}
    for task in sorted({r.task for r in runs if r.task in MOVIE_TASKS}):
        video = find_video(task, config)
        if video is None:
            logger.warning("No stimulus video for task %s; its windows have no features.", task)
            continue
        out[task] = extract_video_features(video, fps=config.model.stimulus_fps,
                                           extractors=extractors)  # fmt: skip
    return out


def _marker_times(raw: Any, marker: str) -> np.ndarray:
    """Onsets (s, raw time) of annotations whose last ``/``-part equals ``marker``."""
    key = marker.replace(" ", "")
    ann = raw.annotations
    hit = [d.split("/")[-1].replace(" ", "") == key for d in ann.description]
    return np.asarray(ann.onset)[np.asarray(hit, bool)] - raw.first_time


def build_group_windows(
    runs: list[RunDerivatives], features: dict[str, Any], config: Any, directory: Path
) -> WindowSet:
    """Windows of all runs in memory-mapped files (see :mod:`bids_app.models.windows`)."""
    import mne
    import nibabel as nib
    import pandas as pd

    from bids_app.models.resample import BlockAverager
    from bids_app.models.stimulus import checker_timecourse, window_features
    from bids_app.models.windows import (
        WindowStore,
        eeg_windows,
        group_mask,
        load_windows,
        zscore,
    )
    from bids_app.natview import facts as nv

    mc = config.model
    mask = group_mask([nib.load(r.mask) for r in runs])
    fine = np.argwhere(np.asarray(mask.dataobj) > 0)
    if len(fine) == 0:
        raise InputError(f"The brain masks of the {len(runs)} runs (e.g. {runs[0].mask}) "
                         "have no voxel in common; check the MNI normalisation.")  # fmt: skip
    headers = [mne.io.read_raw(r.eeg, preload=False, verbose="error") for r in runs]
    common = set.intersection(*(set(mne.pick_info(h.info, mne.pick_types(h.info, eeg=True))
                                    .ch_names) for h in headers))  # fmt: skip
    order = [c for c in nv.EEG_CHANNELS if c in common]
    channels = order + sorted(common - set(order))
    names = list(next(iter(features.values())).names) if features else []
    if any(r.task == "checker" for r in runs):
        names.append("checker")
    coarse = BlockAverager(fine, mask.affine, mask.shape,
                           resolution_mm=float(getattr(mc, "fmri_resolution_mm", 0.0)))
    vox = coarse.voxel_indices
    capacity = sum(nib.load(r.bold).shape[3] for r in runs)
    n_t = int(round(mc.eeg_window_s * mc.eeg_window_sfreq))
    store = WindowStore(directory, capacity=capacity, eeg_shape=(len(channels), n_t),
                        n_voxels=len(vox), n_features=len(names))  # fmt: skip
    i, j, k = fine.T
    for run in runs:
        raw = mne.io.read_raw(run.eeg, preload=True, verbose="error")
        bold = nib.load(run.bold)
        if bold.shape[:3] != mask.shape or not np.allclose(bold.affine, mask.affine, atol=1e-3):
            from nilearn.image import resample_to_img

            bold = resample_to_img(bold, mask, force_resample=True, copy_header=True)
        sidecar = DerivativesJSON(run.bold)
        tr = float(sidecar.get("RepetitionTime", bold.header.get_zooms()[3]))
        r128 = _marker_times(raw, config.eeg.volume_marker)
        n_vol = min(bold.shape[3], len(r128))
        if n_vol == 0:
            logger.warning("%s: no %s markers in the EEG; run skipped.", run.eeg.name,
                           config.eeg.volume_marker)  # fmt: skip
            continue
        if n_vol < bold.shape[3]:
            logger.warning("%s: %d volumes but %d volume markers; using the first %d.",
                           run.eeg.name, bold.shape[3], len(r128), n_vol)  # fmt: skip
        t_vol = r128[:n_vol] + _bold_reference_time(sidecar, tr, config.fmri.slice_time_ref)
        eeg, kept = eeg_windows(raw.get_data(picks=channels), sfreq=raw.info["sfreq"],
                                volume_times=t_vol, window_s=mc.eeg_window_s,
                                out_sfreq=mc.eeg_window_sfreq)  # fmt: skip
        bad = [(o - raw.first_time, o - raw.first_time + d) for o, d, desc in
               zip(raw.annotations.onset, raw.annotations.duration, raw.annotations.description)
               if desc.split("/")[-1].lower().startswith("bad")]  # fmt: skip
        for lo, hi in bad:  # drop windows whose EEG overlaps a BAD annotation
            kept_idx = np.flatnonzero(kept)
            clean = ~((t_vol[kept_idx] - mc.eeg_window_s < hi) & (t_vol[kept_idx] > lo))
            eeg, kept[kept_idx[~clean]] = eeg[clean], False
        data = coarse.transform(np.asarray(bold.dataobj, dtype=np.float32)[i, j, k, :n_vol])
        fmri = zscore(data.T, axis=0)[kept]
        stim = np.full((int(kept.sum()), len(names)), np.nan, np.float32)
        start = _marker_times(raw, nv.TASK_START_MARKER)
        start_s = float(start[0]) if len(start) else float(r128[0])
        if run.task in features:
            f = features[run.task]
            stim[:, : len(f.names)] = window_features(f.times, f.values, start_s=start_s,
                                                      window_end_s=t_vol[kept],
                                                      window_s=mc.eeg_window_s)  # fmt: skip
            if "checker" in names:
                stim[:, -1] = 0.0  # no checkerboard during movies
        elif run.task == "checker":
            grid = np.arange(0, raw.times[-1], 0.1)
            ann = pd.DataFrame({"onset": raw.annotations.onset - raw.first_time,
                                "trial_type": raw.annotations.description})  # fmt: skip
            state = checker_timecourse(ann, grid)
            stim[:, -1] = window_features(grid, state[:, None], start_s=0.0,
                                          window_end_s=t_vol[kept],
                                          window_s=mc.eeg_window_s)[:, 0]  # fmt: skip
        ents = run.entities
        meta = pd.DataFrame({"subject": ents.get("sub"), "session": ents.get("ses", "n/a"),
                             "task": run.task, "run": ents.get("run", "n/a"),
                             "volume": np.flatnonzero(kept), "time_s": t_vol[kept],
                             "has_stimulus": np.isfinite(stim).any(axis=1)})  # fmt: skip
        store.append(eeg, fmri, meta, stim)
        logger.info("%s: %d windows", run.eeg.name, len(meta))
    windows = store.finish(channel_names=channels, sfreq=mc.eeg_window_sfreq,
                           voxel_indices=vox, mask_affine=coarse.affine,
                           mask_shape=coarse.shape, feature_names=names)  # fmt: skip
    if names:
        _zscore_stimulus(directory, len(windows))
        windows = load_windows(directory)
    return windows


def _zscore_stimulus(directory: Path, n: int) -> None:
    """Z-score each stimulus feature over the windows where it is observed (in place)."""
    stim = np.load(directory / "stimulus.npy", mmap_mode="r+")
    stats = {}
    for j in range(stim.shape[1]):
        col = stim[:n, j]
        ok = np.isfinite(col)
        mean = float(col[ok].mean()) if ok.any() else 0.0
        std = float(col[ok].std()) if ok.any() else 0.0
        stim[:n, j] = (col - mean) / (std if std > 0 else 1.0)
        stats[j] = (mean, std)
    stim.flush()
    info = json.loads((directory / "windows.json").read_text())
    info["stimulus_stats"] = {"mean": [s[0] for s in stats.values()],
                              "std": [s[1] for s in stats.values()]}  # fmt: skip
    (directory / "windows.json").write_text(json.dumps(info, indent=2))


def _stimulus_stats(windows: WindowSet) -> dict[str, Any]:
    """Mean and SD used to z-score each stimulus feature (from ``windows.json``)."""
    if windows.directory is None:
        return {}
    info = json.loads((Path(windows.directory) / "windows.json").read_text())
    stats = info.get("stimulus_stats", {})
    return {name: {"mean": m, "sd": s} for name, m, s in
            zip(windows.feature_names, stats.get("mean", []), stats.get("std", []))}  # fmt: skip


def _bold_reference_time(sidecar: dict, tr: float, slice_time_ref: float) -> float:
    """Seconds after the volume marker that a preprocessed BOLD volume represents.

    The fMRI stage writes it as ``StartTime`` in the BOLD derivative's sidecar
    (fMRIPrep's convention: ``min(SliceTiming) + slice_time_ref * (max - min)``). Without
    it, ``SliceTiming`` (when present) gives the same value; else ``slice_time_ref * TR``.
    """
    if sidecar.get("StartTime") is not None:
        return float(sidecar["StartTime"])
    from bids_app.fmri.slicetime import slice_time_reference

    timing = sidecar.get("SliceTiming")
    if timing:
        return slice_time_reference(timing, tr, slice_time_ref)
    logger.warning("BOLD sidecar has no StartTime or SliceTiming; the volume reference "
                   "is taken as %.3g s (slice_time_ref * TR).", slice_time_ref * tr)
    return float(slice_time_ref * tr)


class DerivativesJSON(dict):
    """The JSON sidecar of a derivative file (empty when absent or unreadable)."""

    def __init__(self, path: Path) -> None:
        side = Path(str(path).split(".nii")[0] + ".json")
        try:
            super().__init__(json.loads(side.read_text()) if side.exists() else {})
        except (OSError, json.JSONDecodeError):
            super().__init__()
