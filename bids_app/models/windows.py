"""Aligned EEG-fMRI windows: one sample per BOLD volume.

A window pairs the brain-masked fMRI volume ``k`` (voxels of the group mask) with the EEG
segment that precedes the volume's reference time ``t_k`` (``volume onset + slice-time
reference``) by ``window_s`` seconds, resampled to ``sfreq``, so that it covers the
haemodynamic lag. Timestamp ``j`` of window ``i`` lies at run time
``t_i + offsets[j]`` with ``offsets = (arange(T) - T) / sfreq`` (:meth:`WindowSet.times`),
which is how masking maps an EEG input unit back to the recording. EEG (per channel) and
fMRI (per voxel) are z-scored per run. Windows whose EEG segment is not fully recorded are
dropped.

Large groups are stored as memory-mapped ``.npy`` files (:class:`WindowStore`), so that
22 subjects x 10 runs x ~290 volumes never have to fit in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mne
import nibabel as nib
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

META_COLUMNS = ("subject", "session", "task", "run", "volume", "time_s", "has_stimulus")


def zscore(x: np.ndarray, axis: int) -> np.ndarray:
    """Z-score along ``axis`` (constant series become 0), float32."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=axis, keepdims=True)
    std = x.std(axis=axis, keepdims=True)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def eeg_windows(
    eeg: np.ndarray,
    *,
    sfreq: float,
    volume_times: np.ndarray,
    window_s: float,
    out_sfreq: float,
    first_time: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the EEG segments preceding each volume, resampled to ``out_sfreq``.

    Parameters
    ----------
    eeg : numpy.ndarray
        ``(C, n)`` continuous EEG of one run (any unit; z-scored per channel here).
    sfreq : float
        Its sampling rate.
    volume_times : numpy.ndarray
        Reference time of each volume, in the same time base as the EEG (s).
    window_s : float
        Window length.
    out_sfreq : float
        Sampling rate of the windows (anti-aliased polyphase resampling of the run).
    first_time : float
        Time of the first EEG sample.

    Returns
    -------
    windows : numpy.ndarray
        ``(n_kept, C, T)`` float32, ``T = round(window_s * out_sfreq)``.
    kept : numpy.ndarray of bool
        Which volumes have a complete EEG segment.
    """
    n_t = int(round(window_s * out_sfreq))
    data = mne.filter.resample(np.asarray(eeg, dtype=np.float64), up=out_sfreq, down=sfreq,
                               npad="auto", verbose=False)  # fmt: skip
    data = zscore(data, axis=1)
    n = data.shape[1]
    # sample positions (in resampled samples) of each window timestamp
    offsets = (np.arange(n_t) - n_t) / out_sfreq
    pos = (np.asarray(volume_times)[:, None] + offsets[None, :] - first_time) * out_sfreq
    kept = (pos[:, 0] >= -1e-6) & (pos[:, -1] <= n - 1 + 1e-6)
    pos = np.clip(pos[kept], 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo).astype(np.float32)
    windows = data[:, lo] * (1 - frac) + data[:, hi] * frac  # (C, n_kept, T)
    return np.ascontiguousarray(windows.transpose(1, 0, 2)), kept


def group_mask(masks: list[nib.Nifti1Image]) -> nib.Nifti1Image:
    """Intersection of brain masks (resampled to the first mask's grid when needed)."""
    from nilearn.image import resample_to_img

    ref = masks[0]
    common = np.asarray(ref.dataobj) > 0
    for img in masks[1:]:
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
            img = resample_to_img(img, ref, interpolation="nearest", force_resample=True,
                                  copy_header=True)  # fmt: skip
        common &= np.asarray(img.dataobj) > 0
    return nib.Nifti1Image(common.astype(np.uint8), ref.affine)


@dataclass
class WindowSet:
    """EEG-fMRI windows of a group and everything needed to map them back.

    Attributes
    ----------
    eeg : numpy.ndarray
        ``(N, C, T)`` float32 (possibly memory-mapped), z-scored per run and channel.
    fmri : numpy.ndarray
        ``(N, V)`` float32, z-scored per run and voxel.
    meta : pandas.DataFrame
        One row per window: subject, session, task, run, volume (index in the run),
        time_s (reference time of the volume in EEG run time), has_stimulus.
    channel_names : list of str
        The C EEG channels.
    sfreq : float
        Sampling rate of the windows.
    voxel_indices : numpy.ndarray
        ``(V, 3)`` voxel indices (i, j, k) of the columns of ``fmri`` in the mask grid.
    mask_affine : numpy.ndarray
        4x4 affine of the mask grid (MNI152NLin2009cAsym).
    mask_shape : tuple of int
        Shape of the mask grid.
    stimulus : numpy.ndarray | None
        ``(N, F)`` stimulus features (NaN where not observed).
    feature_names : list of str
        The F features.
    directory : Path | None
        Where the arrays are stored, if memory-mapped.
    """

    eeg: np.ndarray
    fmri: np.ndarray
    meta: pd.DataFrame
    channel_names: list[str]
    sfreq: float
    voxel_indices: np.ndarray
    mask_affine: np.ndarray
    mask_shape: tuple[int, int, int]
    stimulus: np.ndarray | None = None
    feature_names: list[str] = field(default_factory=list)
    directory: Path | None = None

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def offsets(self) -> np.ndarray:
        """Time of each window timestamp relative to the volume reference time (s)."""
        n_t = self.eeg.shape[2]
        return (np.arange(n_t) - n_t) / self.sfreq

    def times(self, window: int | np.ndarray, timestamp: int | np.ndarray) -> np.ndarray:
        """Run time (s, EEG time base) of ``timestamp`` in ``window``."""
        return self.meta["time_s"].to_numpy()[window] + self.offsets[timestamp]

    def run_labels(self) -> np.ndarray:
        """One label per window identifying its run (``sub/ses/task/run``)."""
        m = self.meta
        return (m["subject"].astype(str) + "/" + m["session"].astype(str) + "/"
                + m["task"].astype(str) + "/" + m["run"].astype(str)).to_numpy()  # fmt: skip

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays for :func:`bids_app.models.train.fit`."""
        out = {"eeg": self.eeg, "fmri": self.fmri}
        if self.stimulus is not None:
            out["stimulus"] = self.stimulus
        return out

    def voxel_image(self, values: np.ndarray) -> nib.Nifti1Image:
        """A 3D (``(V,)`` values) or 4D (``(V, k)``) image of voxel values in MNI space."""
        values = np.asarray(values)
        shape = self.mask_shape + values.shape[1:]
        data = np.zeros(shape, dtype=np.float32)
        i, j, k = self.voxel_indices.T
        data[i, j, k] = values
        return nib.Nifti1Image(data, self.mask_affine)

    def voxel_mni(self) -> np.ndarray:
        """``(V, 3)`` MNI coordinates (mm) of the voxels."""
        return nib.affines.apply_affine(self.mask_affine, self.voxel_indices)


def _n_held_out(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Test and validation groups out of ``n >= 3``: at least one each, one left to train."""
    n_test = min(max(1, int(round(test_fraction * n))), n - 2)
    n_val = min(max(1, int(round(val_fraction * n))), n - 1 - n_test)
    return n_test, n_val


def _stratified_folds(
    groups: np.ndarray, tasks: np.ndarray, val_fraction: float, test_fraction: float,
    rng: np.random.Generator,
) -> dict[str, str]:
    """Fold of each run, drawn within each task (sorted), see :func:`split_windows`."""
    fold: dict[str, str] = {}
    for task in np.unique(tasks).tolist():
        order = rng.permutation(groups[tasks == task])
        n = len(order)
        if n >= 3:
            n_test, n_val = _n_held_out(n, val_fraction, test_fraction)
        else:
            n_test, n_val = n - 1, 0
            logger.warning("task %r has %d run(s): %s", task, n,
                           "one test run, no validation run" if n == 2 else
                           "it is not held out (training only)")  # fmt: skip
        fold.update({g: "test" for g in order[:n_test]})
        fold.update({g: "val" for g in order[n_test : n_test + n_val]})
        fold.update({g: "train" for g in order[n_test + n_val :]})
    return fold


def split_windows(
    meta: pd.DataFrame,
    *,
    by: str = "run",
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    stratify: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split windows into train/val/test by run (stratified by task) or by subject.

    Whole runs (or subjects) go to one fold, so a run never straddles folds. By run with
    ``stratify=True``, the runs of each task are shared out separately, so every task
    with at least three runs has at least one test and one validation run (and one
    training run); a task with two runs gets one test run and no validation run, a task
    with one run is only trained on (both logged). Should the stratified folds leave the
    validation or the test fold empty, the runs are shared out regardless of task. With
    fewer than three runs (subjects) the folds are contiguous blocks in time within each
    run, separated by a gap of the windows that overlap the neighbouring fold, and a
    warning is logged.

    Parameters
    ----------
    meta : pandas.DataFrame
        :attr:`WindowSet.meta`.
    by : {"run", "subject"}
        Grouping unit.
    val_fraction, test_fraction : float
        Fractions of the groups (of each task's runs when stratified) in the validation
        and test folds (at least one each).
    stratify : bool
        Share out the runs of each task separately (``by="run"`` only).
    seed : int
        Seed of the group shuffle.

    Returns
    -------
    dict
        ``{"train", "val", "test"}`` -> sorted window indices.
    """
    if by not in ("run", "subject"):
        raise ValueError(f"split_by must be 'run' or 'subject', got {by!r}.")
    cols = ["subject"] if by == "subject" else ["subject", "session", "task", "run"]
    labels = meta[cols].astype(str).agg("/".join, axis=1).to_numpy()
    groups = np.unique(labels)
    rng = np.random.default_rng(seed)
    if len(groups) >= 3:
        fold: dict[str, str] = {}
        if by == "run" and stratify:
            task_of = dict(zip(labels, meta["task"].astype(str).to_numpy()))
            fold = _stratified_folds(groups, np.array([task_of[g] for g in groups]),
                                     val_fraction, test_fraction, rng)  # fmt: skip
            if not {"val", "test"} <= set(fold.values()):
                logger.warning("too few runs per task for a stratified split; splitting "
                               "runs regardless of task")  # fmt: skip
                fold = {}
        if not fold:
            order = rng.permutation(groups)
            n_test, n_val = _n_held_out(len(groups), val_fraction, test_fraction)
            fold = {g: "test" for g in order[:n_test]}
            fold.update({g: "val" for g in order[n_test : n_test + n_val]})
            fold.update({g: "train" for g in order[n_test + n_val :]})
        names = np.array([fold[g] for g in labels])
        return {k: np.flatnonzero(names == k) for k in ("train", "val", "test")}
    logger.warning("only %d %s(s): splitting each run into contiguous blocks", len(groups), by)
    out: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for g in groups:
        idx = np.flatnonzero(labels == g)
        n = len(idx)
        n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
        gap = 4  # windows overlapping the neighbouring fold (8.4 s EEG / 2.1 s TR)
        out["train"].append(idx[: n - n_test - n_val - 2 * gap])
        out["val"].append(idx[n - n_test - n_val - gap : n - n_test - gap])
        out["test"].append(idx[n - n_test :])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in out.items()}


class WindowStore:
    """Append runs of windows to memory-mapped ``.npy`` files, then open a WindowSet.

    Parameters
    ----------
    directory : Path
        Folder for ``eeg.npy``, ``fmri.npy``, ``stimulus.npy``, ``meta.parquet`` and
        ``windows.json`` (e.g. ``work_dir/windows``).
    capacity : int
        Upper bound of the number of windows (e.g. the total number of volumes).
    eeg_shape : tuple of int
        ``(C, T)``.
    n_voxels : int
        ``V``.
    n_features : int
        ``F`` (0 for no stimulus array).
    """

    def __init__(
        self,
        directory: Path,
        *,
        capacity: int,
        eeg_shape: tuple[int, int],
        n_voxels: int,
        n_features: int = 0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        open_mm = np.lib.format.open_memmap
        self._eeg = open_mm(self.directory / "eeg.npy", mode="w+", dtype=np.float32,
                            shape=(capacity, *eeg_shape))  # fmt: skip
        self._fmri = open_mm(self.directory / "fmri.npy", mode="w+", dtype=np.float32,
                             shape=(capacity, n_voxels))  # fmt: skip
        self._stim = None
        if n_features:
            self._stim = open_mm(self.directory / "stimulus.npy", mode="w+", dtype=np.float32,
                                 shape=(capacity, n_features))  # fmt: skip
        self._meta: list[pd.DataFrame] = []
        self.n = 0

    def append(
        self, eeg: np.ndarray, fmri: np.ndarray, meta: pd.DataFrame, stimulus: np.ndarray | None
    ) -> None:
        """Add the windows of one run (``eeg`` (n, C, T), ``fmri`` (n, V), ``meta``)."""
        n = len(meta)
        if self.n + n > len(self._eeg):
            raise ValueError(f"WindowStore capacity {len(self._eeg)} exceeded.")
        self._eeg[self.n : self.n + n] = eeg
        self._fmri[self.n : self.n + n] = fmri
        if self._stim is not None:
            self._stim[self.n : self.n + n] = np.nan if stimulus is None else stimulus
        self._meta.append(meta)
        self.n += n

    def finish(self, **attrs: Any) -> WindowSet:
        """Flush, write the metadata and return the memory-mapped :class:`WindowSet`.

        ``attrs`` are the WindowSet fields other than the arrays and ``meta``
        (channel_names, sfreq, voxel_indices, mask_affine, mask_shape, feature_names).
        """
        for arr in (self._eeg, self._fmri, self._stim):
            if arr is not None:
                arr.flush()
        meta = pd.concat(self._meta, ignore_index=True) if self._meta else pd.DataFrame(
            columns=list(META_COLUMNS))  # fmt: skip
        meta.to_parquet(self.directory / "meta.parquet")
        np.save(self.directory / "voxel_indices.npy", np.asarray(attrs["voxel_indices"]))
        info = {
            "n": self.n,
            "channel_names": list(attrs["channel_names"]),
            "sfreq": float(attrs["sfreq"]),
            "mask_affine": np.asarray(attrs["mask_affine"]).tolist(),
            "mask_shape": list(attrs["mask_shape"]),
            "feature_names": list(attrs.get("feature_names", [])),
        }
        (self.directory / "windows.json").write_text(json.dumps(info, indent=2))
        return load_windows(self.directory)


def load_windows(directory: Path) -> WindowSet:
    """Open a :class:`WindowSet` written by :class:`WindowStore` (arrays memory-mapped)."""
    directory = Path(directory)
    info = json.loads((directory / "windows.json").read_text())
    n = info["n"]
    stim_path = directory / "stimulus.npy"
    stimulus = np.load(stim_path, mmap_mode="r")[:n] if stim_path.exists() else None
    return WindowSet(
        eeg=np.load(directory / "eeg.npy", mmap_mode="r")[:n],
        fmri=np.load(directory / "fmri.npy", mmap_mode="r")[:n],
        meta=pd.read_parquet(directory / "meta.parquet"),
        channel_names=info["channel_names"],
        sfreq=info["sfreq"],
        voxel_indices=np.load(directory / "voxel_indices.npy"),
        mask_affine=np.asarray(info["mask_affine"]),
        mask_shape=tuple(info["mask_shape"]),
        stimulus=stimulus,
        feature_names=info["feature_names"],
        directory=directory,
    )
