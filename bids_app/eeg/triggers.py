"""Volume and slice triggers of simultaneous EEG-fMRI, robust to imperfect R128 markers.

Scanner markers in real recordings are imperfect: a marker can be lost, recorded twice, or a
stray marker of the same name can appear; a scan can stop and restart; the recording can end
in the middle of a volume. :func:`find_volume_triggers` reconstructs the regular volume grid
from the markers and says what it repaired (the slice onsets within each volume come from
:mod:`bids_app.eeg.slice_timing`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import mne
import numpy as np

from bids_app.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class TriggerReport:
    """What :func:`find_volume_triggers` found and repaired (all counts are volumes).

    Attributes
    ----------
    marker : str
        Annotation description that was searched.
    n_markers : int
        Markers found in the recording.
    n_duplicates : int
        Markers dropped because they repeat another marker (within 1% of a TR).
    n_extra : int
        Markers dropped because they lie off the volume grid.
    n_filled : int
        Missing volume markers inserted on the grid.
    n_volumes : int
        Volumes in the result.
    tr_samples : float
        Repetition time in samples.
    segments : list of tuple of int
        (first, last) volume index of each uninterrupted scan.
    truncated : bool
        Whether the recording ends before the last volume is complete.
    first_onset_s, last_onset_s : float
        Time of the first and last volume (s from the first sample).
    """

    marker: str
    n_markers: int = 0
    n_duplicates: int = 0
    n_extra: int = 0
    n_filled: int = 0
    n_volumes: int = 0
    tr_samples: float = float("nan")
    segments: list[tuple[int, int]] = field(default_factory=list)
    truncated: bool = False
    first_onset_s: float = float("nan")
    last_onset_s: float = float("nan")

    def to_dict(self) -> dict:
        """Plain-python view for sidecars."""
        return {k: (list(map(list, v)) if k == "segments" else v) for k, v in asdict(self).items()}


def marker_samples(raw: mne.io.BaseRaw, marker: str) -> np.ndarray:
    """Sample positions (from the first sample of ``raw``) of annotations named ``marker``.

    Descriptions match exactly or after the BrainVision type prefix (``Response/R128``,
    ``Response/R 128``), ignoring spaces.
    """
    want = marker.replace(" ", "")
    desc = np.array([d.split("/")[-1].replace(" ", "") for d in raw.annotations.description])
    onsets = raw.annotations.onset[desc == want] if desc.size else np.array([])
    samples = np.round((onsets - raw.first_time) * raw.info["sfreq"]).astype(np.int64)
    return np.sort(samples[(samples >= 0) & (samples < raw.n_times)])


def regularise_triggers(
    samples: np.ndarray,
    n_times: int,
    *,
    tr_samples: float | None = None,
    tolerance: float = 0.01,
    max_fill: int = 3,
    min_volumes: int = 3,
    marker: str = "R128",
) -> tuple[np.ndarray, TriggerReport]:
    """Reconstruct the regular volume grid from noisy marker positions.

    Parameters
    ----------
    samples : ndarray of int
        Marker positions (samples).
    n_times : int
        Length of the recording (samples).
    tr_samples : float | None
        Known repetition time in samples; None estimates it as the median marker interval.
    tolerance : float
        Largest deviation from the grid, as a fraction of the TR, of an accepted marker.
    max_fill : int
        Largest number of consecutive missing markers that is filled; a longer pause starts a
        new scan segment.
    min_volumes : int
        Segments with fewer volumes are treated as stray markers and dropped.
    marker : str
        Marker name (for the report).

    Returns
    -------
    onsets : ndarray of float
        Volume onsets (samples; filled volumes are interpolated to a fraction of a sample).
    report : TriggerReport
        Counts of duplicates, stray and filled markers, segments and truncation.
    """
    report = TriggerReport(marker=marker, n_markers=int(samples.size))
    samples = np.unique(np.asarray(samples, dtype=np.int64))
    report.n_duplicates = report.n_markers - samples.size
    if samples.size < 2:
        return samples.astype(float), report
    if tr_samples is None:
        diffs = np.diff(samples)
        tr_samples = float(np.median(diffs))
        near = diffs[np.abs(diffs - tr_samples) < tolerance * tr_samples]
        tr_samples = float(near.mean()) if near.size else tr_samples
    tol = max(2.0, tolerance * tr_samples)
    # anchor: the marker that agrees with the most others on its grid
    rel = (samples[None, :] - samples[:, None]) / tr_samples
    on_grid = np.abs(rel - np.round(rel)) * tr_samples < tol
    anchor = int(np.argmax(on_grid.sum(axis=1)))
    onsets, extra, dups = _walk(samples, anchor, tr_samples, tol, max_fill)
    report.n_extra += extra
    report.n_duplicates += dups
    # split into segments at pauses, drop tiny segments (stray markers)
    onsets = np.asarray(sorted(onsets))
    breaks = np.flatnonzero(np.diff(onsets) > (max_fill + 1.5) * tr_samples) + 1
    segments = [seg for seg in np.split(onsets, breaks)]
    kept = [seg for seg in segments if seg.size >= min_volumes]
    report.n_extra += int(sum(seg.size for seg in segments if seg.size < min_volumes))
    onsets = np.concatenate(kept) if kept else np.array([], dtype=float)
    report.n_filled = int(onsets.size - np.isin(onsets, samples).sum())
    report.tr_samples = float(tr_samples)
    report.n_volumes = int(onsets.size)
    bounds = np.cumsum([0] + [seg.size for seg in kept])
    report.segments = [(int(a), int(b) - 1) for a, b in zip(bounds[:-1], bounds[1:])]
    report.truncated = bool(onsets.size and onsets[-1] + tr_samples > n_times)
    return onsets, report


def _walk(samples, anchor, tr, tol, max_fill):
    """Accept markers on the grid through ``samples[anchor]``, filling short gaps.

    A marker within ``tol`` of the last accepted one is a duplicate; one off the grid is a
    stray marker, unless it follows a pause longer than ``max_fill`` volumes (a new scan).
    """
    accepted = [float(samples[anchor])]
    extra = dups = 0
    for direction in (1, -1):
        last = float(samples[anchor])
        idx = range(anchor + 1, samples.size) if direction == 1 else range(anchor - 1, -1, -1)
        for i in idx:
            steps = (samples[i] - last) / tr * direction
            k = round(steps)
            if abs(steps) * tr < tol:
                dups += 1
                continue
            if k < 1 or abs(steps - k) * tr >= tol:
                if steps > max_fill + 0.5:
                    last = float(samples[i])
                    accepted.append(last)
                else:
                    extra += 1
                continue
            if k > max_fill:  # a pause: new segment, no filling
                accepted.append(float(samples[i]))
            else:
                accepted.extend(last + (samples[i] - last) * np.arange(1, k + 1) / k)
            last = float(samples[i])
    return accepted, extra, dups


def find_volume_triggers(
    raw: mne.io.BaseRaw,
    *,
    marker: str = "R128",
    tr: float | None = None,
    source: str | None = None,
) -> tuple[np.ndarray, TriggerReport]:
    """Volume onsets (samples) of ``raw`` from its scanner markers.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        Recording with scanner markers as annotations.
    marker : str
        Volume marker name (``R128`` in NATVIEW).
    tr : float | None
        Repetition time in seconds if known (e.g. from the BOLD sidecar).
    source : str | None
        File name for error messages.

    Returns
    -------
    onsets : ndarray of float
        Volume onsets in samples from the first sample of ``raw``.
    report : TriggerReport
        What was found and repaired.

    Raises
    ------
    InputError
        If fewer than three volume markers are found.
    """
    sfreq = raw.info["sfreq"]
    samples = marker_samples(raw, marker)
    if samples.size < 3:
        raise InputError(
            f"{source or 'The EEG recording'} has {samples.size} '{marker}' volume markers; "
            "at least 3 are needed to remove the gradient artifact (set eeg.volume_marker "
            "or eeg.gradient = false)."
        )
    onsets, report = regularise_triggers(
        samples, raw.n_times, tr_samples=None if tr is None else tr * sfreq, marker=marker
    )
    if onsets.size:
        report.first_onset_s = float(onsets[0] / sfreq)
        report.last_onset_s = float(onsets[-1] / sfreq)
    logger.info(
        "Volume markers: %d found, %d duplicate, %d stray, %d filled -> %d volumes in %d "
        "segment(s), TR %.1f samples%s", report.n_markers, report.n_duplicates, report.n_extra,
        report.n_filled, report.n_volumes, len(report.segments), report.tr_samples,
        ", recording truncated" if report.truncated else "",
    )  # fmt: skip
    return onsets, report
