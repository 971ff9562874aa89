"""Meaning of the NATVIEW markers per task, and repair of the volume-marker train.

Sync markers of the recorder are never events; the task start/end and volume markers mean
the same in every task; the other stimulus codes mean something only in the tasks whose
stimulus script sends them (movies and rest: one per second; checkerboard: blocks and
seconds; peer: fixation dots). Any other code is kept with its code as ``value`` and the
neutral ``trial_type`` :data:`UNKNOWN_TRIAL_TYPE`, and listed in the conversion report.

The volume markers (``R128``) of a few released recordings hold duplicates a few samples
apart and gaps of several TRs; :func:`repair_volume_markers` removes the duplicates and
fills a gap when it spans a whole number of TRs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from bids_app.natview import facts as nv

#: ``trial_type`` of a stimulus code the task's stimulus script does not send.
UNKNOWN_TRIAL_TYPE = "unknown_code"

#: Markers meaning the same in every task.
COMMON_MEANING: dict[str, str] = {
    nv.VOLUME_MARKER: "volume",
    nv.TASK_START_MARKER: "task_start",
    nv.TASK_END_MARKER: "task_end",
}

_JUNK = {m.lower() for m in nv.RECORDER_MARKERS}


def is_junk_marker(description: str) -> bool:
    """Whether a marker comes from the recorder (sync, segment) rather than the experiment.

    Parameters
    ----------
    description : str
        Marker description (or type when it has no description).

    Returns
    -------
    bool
        True for ``New Segment``, ``boundary`` and every ``SyncStatus``/``Sync On``/
        ``Sync Off`` marker.
    """
    text = description.strip().lower()
    return text in _JUNK or text.startswith(("syncstatus", "new segment", "sync "))


def normalize_marker(marker: str) -> str:
    """BrainVision spelling of a marker: ``S1``/``S 1`` -> ``S  1``, ``R 128`` -> ``R128``."""
    match = re.fullmatch(r"([RS])\s*(\d{1,3})", marker.strip())
    return f"{match.group(1)}{int(match.group(2)):>3}" if match else marker.strip()


def task_meaning(task: str) -> dict[str, str]:
    """Marker -> ``trial_type`` of the codes that the stimulus script of ``task`` sends.

    Parameters
    ----------
    task : str
        NATVIEW task label (``checker``, ``dme``, ``peer``, ...).

    Returns
    -------
    dict
        Known markers of the task and their meaning.
    """
    meaning = dict(COMMON_MEANING)
    if task in nv.CHECKER_TASKS:
        meaning.update(nv.CHECKER_CODES)
    elif task == "peer":
        meaning.update(dict.fromkeys(nv.PEER_FIXATION_CODES, "fixation_dot"))
    elif task in nv.MOVIE_TASKS or task == "rest":
        meaning[nv.SECOND_MARKER] = "second"
    return meaning


def trial_type(marker: str, task: str) -> str:
    """Meaning of one (normalised) marker in ``task``; unknown codes get the neutral type."""
    return task_meaning(task).get(marker, UNKNOWN_TRIAL_TYPE)


@dataclass
class VolumeRepair:
    """What :func:`repair_volume_markers` changed.

    Attributes
    ----------
    duplicates : list of int
        Samples of the volume markers removed as duplicates.
    filled : list of int
        Samples of the volume markers added inside gaps of whole TRs.
    unfilled_gaps : list of tuple of int
        (start, stop) samples of gaps that are not a whole number of TRs (left as is).
    """

    duplicates: list[int] = field(default_factory=list)
    filled: list[int] = field(default_factory=list)
    unfilled_gaps: list[tuple[int, int]] = field(default_factory=list)


def repair_volume_markers(
    samples: list[int], spacing: float, *, tolerance: float = 0.005
) -> tuple[list[int], VolumeRepair]:
    """Remove duplicate volume markers and fill gaps that span a whole number of TRs.

    Parameters
    ----------
    samples : list of int
        Samples of the volume markers, sorted.
    spacing : float
        Nominal samples between two volumes (TR x sampling rate).
    tolerance : float
        Allowed deviation from a whole number of TRs, as a fraction of one TR.

    Returns
    -------
    samples : list of int
        Repaired volume-marker samples.
    repair : VolumeRepair
        Duplicates removed, markers added and gaps left alone.
    """
    repair = VolumeRepair()
    kept: list[int] = []
    for sample in samples:
        if kept and sample - kept[-1] < 0.5 * spacing:
            repair.duplicates.append(sample)
        else:
            kept.append(sample)
    out = kept[:1]
    for prev, sample in zip(kept, kept[1:]):
        steps = (sample - prev) / spacing
        whole = int(np.rint(steps))
        if whole >= 2 and abs(steps - whole) <= tolerance:
            added = [int(np.rint(prev + k * (sample - prev) / whole)) for k in range(1, whole)]
            repair.filled.extend(added)
            out.extend(added)
        elif steps >= 1.5:
            repair.unfilled_gaps.append((prev, sample))
        out.append(sample)
    return out, repair
