"""Sample-exact timeline of a simulated EEG-fMRI run.

Timeline of one run (seconds from the first EEG sample)::

    0 ── extra_eeg_s ── first R128 ── ... every TR ... ── last volume end ── + extra_eeg_s

The stimulus starts at the first volume (checkerboard: one TR later, as in NATVIEW) and
stops at the end of the last volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.realism import REALISM, Realism, volume_marker_samples


@dataclass(frozen=True)
class RunTimeline:
    """Sample-exact timing of one simulated recording.

    Attributes
    ----------
    sfreq : float
        EEG sampling rate (Hz).
    n_times : int
        EEG samples.
    volume_onsets_s : ndarray
        Onset of each BOLD volume (R128), seconds from the first EEG sample.
    slice_times : list of float
        Onset of each slice within a volume (seconds, index = slice position).
    stim_onset_s : float
        Stimulus start (``S  1``), seconds from the first EEG sample.
    stim_duration_s : float
        Stimulus length in seconds.
    """

    sfreq: float
    n_times: int
    volume_onsets_s: np.ndarray
    slice_times: list[float]
    stim_onset_s: float
    stim_duration_s: float

    @property
    def first_volume_s(self) -> float:
        """Onset of the first volume in EEG time."""
        return float(self.volume_onsets_s[0])


def run_timeline(spec: scenario.RunSpec, scale: scenario.Scale,
                 realism: Realism = REALISM["ideal"]) -> RunTimeline:  # fmt: skip
    """Timeline of one run of ``scale`` (see the module docstring).

    Parameters
    ----------
    spec : RunSpec
        Task, run and number of volumes.
    scale : Scale
        Scale preset (sampling rate, extra EEG, slices).
    realism : Realism
        With unsynchronised clocks the volume markers drift off the EEG's TR grid.

    Returns
    -------
    RunTimeline
        Sample-exact onsets and lengths.
    """
    sfreq = float(scale.sfreq)
    tr_samples = int(round(nv.TR * sfreq))
    extra = int(round(scale.extra_eeg_s * sfreq))
    onsets = volume_marker_samples(extra, spec.n_volumes, tr_samples, realism) / sfreq
    n_times = 2 * extra + tr_samples * spec.n_volumes
    delay = nv.TR if spec.task.startswith("checker") else 0.0
    return RunTimeline(
        sfreq=sfreq,
        n_times=n_times,
        volume_onsets_s=onsets,
        slice_times=nv.slice_timing(scale.n_slices, nv.LAST_SLICE_TIME),
        stim_onset_s=float(onsets[0]) + delay,
        stim_duration_s=spec.n_volumes * nv.TR - delay,
    )


def checker_blocks(checker_on: np.ndarray, fps: float, offset_s: float, duration_s: float):
    """Blocks (onset_s, duration_s, flicker) from a boolean flicker trace at ``fps``."""
    n = min(len(checker_on), int(round(duration_s * fps)))
    on = np.asarray(checker_on[:n], dtype=bool)
    if n == 0:
        return []
    edges = np.flatnonzero(np.diff(on.astype(int))) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [n]])
    return [(offset_s + a / fps, (b - a) / fps, bool(on[a])) for a, b in zip(starts, stops)]
