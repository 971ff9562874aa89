"""One NATVIEW recording's EEG files, with the layout and defects of the release.

The release keeps its EEG as single-precision EEGLAB ``.set`` files with BrainVision
``.vhdr``/``.vmrk`` headers beside them whose ``.eeg`` data file is missing, recorder
markers mixed into the events, inconsistent channel-type casing and unit-sphere electrode
positions. The simulator writes exactly that, so the converter meets the release's defects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bids_app.eeg.forward import montage_positions
from bids_app.io.brainvision import Marker, write_vhdr, write_vmrk
from bids_app.io.eeglab import write_set
from bids_app.natview import facts as nv

#: Samples between two ``SyncStatus``/``Sync On`` recorder markers in the release.
SYNC_INTERVAL_SAMPLES = 10_000


def run_markers(
    *,
    n_times: int,
    sfreq: float,
    volume_onsets_s: np.ndarray,
    stim_onset_s: float,
    stim_end_s: float,
    task: str,
    checker_blocks: list[tuple[float, float, bool]] | None = None,
) -> list[Marker]:
    """Markers of one NATVIEW recording (experiment and recorder markers).

    Parameters
    ----------
    n_times : int
        Number of samples of the recording.
    sfreq : float
        Sampling frequency in Hz.
    volume_onsets_s : ndarray
        Volume onsets in seconds from the first sample (one ``R128`` each).
    stim_onset_s, stim_end_s : float
        Task start (``S  1``) and end (``S 99``) in seconds from the first sample.
    task : str
        Task name; movies and rest get ``S  5`` every second.
    checker_blocks : list of (onset_s, duration_s, flicker) | None
        Checkerboard blocks: ``S 25`` (flicker) or ``S 10`` (rest) at each block start,
        then ``S 26``/``S 11`` every second within the block.

    Returns
    -------
    list of Marker
        Sorted by sample.
    """

    def at(t: float) -> int:
        return int(round(t * sfreq))

    markers = [Marker("New Segment", "", 0)]
    markers += [
        Marker("SyncStatus", "Sync On", s) for s in range(0, n_times, SYNC_INTERVAL_SAMPLES)
    ]
    markers += [Marker("Response", nv.VOLUME_MARKER, at(t)) for t in volume_onsets_s]
    markers.append(Marker("Stimulus", nv.TASK_START_MARKER, at(stim_onset_s)))
    markers.append(Marker("Stimulus", nv.TASK_END_MARKER, at(stim_end_s)))
    if checker_blocks:
        for onset, duration, flicker in checker_blocks:
            block = nv.CHECKER_FLICKER_BLOCK if flicker else nv.CHECKER_REST_BLOCK
            each = "S 26" if flicker else "S 11"
            markers.append(Marker("Stimulus", block, at(onset)))
            markers += [
                Marker("Stimulus", each, at(onset + k))
                for k in range(1, int(np.floor(duration - 1e-9)) + 1)
            ]
    elif task not in ("checker", "checkeroff", "checkerout", "peer"):
        seconds = np.arange(stim_onset_s + 1.0, stim_end_s - 1e-9, 1.0)
        markers += [Marker("Stimulus", nv.SECOND_MARKER, at(t)) for t in seconds]
    markers = [m for m in markers if 0 <= m.sample < n_times]
    return sorted(markers, key=lambda m: m.sample)


def write_release_eeg(
    eeg_dir: Path,
    stem: str,
    data_v: np.ndarray,
    sfreq: float,
    markers: list[Marker],
    *,
    task: str,
    electrodes_stem: str,
) -> list[Path]:
    """Write one recording's EEG files with the layout and defects of the NATVIEW release.

    Writes ``<stem>_eeg.set`` (the data), ``_eeg.vhdr``/``_eeg.vmrk`` (no ``.eeg``),
    ``_eeg.json``, ``_channels.tsv`` (inconsistent type casing), ``_events.tsv`` (recorder
    markers mixed in) and, once per session, ``<electrodes_stem>_electrodes.tsv`` with
    unit-sphere positions and no ``_coordsystem.json``.

    Parameters
    ----------
    eeg_dir : Path
        ``sub-XX/ses-YY/eeg`` folder.
    stem : str
        File stem without suffix (``sub-01_ses-01_task-tp_run-01``).
    data_v : ndarray, shape (64, n_times)
        Recording in volts, ``CHANNEL_NAMES`` order.
    sfreq : float
        Sampling frequency (Hz).
    markers : list of Marker
        Markers of the recording.
    task : str
        Task label.
    electrodes_stem : str
        Stem of the session's electrodes file (``sub-01_ses-01``).

    Returns
    -------
    list of Path
        Files written.
    """
    eeg_dir.mkdir(parents=True, exist_ok=True)
    files = [write_set(eeg_dir / f"{stem}_eeg.set", data_v, sfreq, markers)]
    files.append(
        write_vhdr(eeg_dir / f"{stem}_eeg.vhdr", n_channels_names=nv.CHANNEL_NAMES, sfreq=sfreq)
    )
    files.append(write_vmrk(eeg_dir / f"{stem}_eeg.vmrk", markers))
    sidecar = {
        "TaskName": task,
        "SamplingFrequency": sfreq,
        "PowerLineFrequency": nv.POWER_LINE_FREQUENCY,
        "EEGReference": nv.EEG_REFERENCE,
        "SoftwareFilters": "n/a",
        "Manufacturer": "Brain Products",
        "RecordingDuration": data_v.shape[1] / sfreq,
    }
    files.append(eeg_dir / f"{stem}_eeg.json")
    files[-1].write_text(json.dumps(sidecar, indent=4) + "\n")
    rows = ["name\ttype\tunits"]
    for i, name in enumerate(nv.CHANNEL_NAMES):
        kind = nv.CHANNEL_TYPES[name].upper()
        if kind == "EEG" and i % 3 == 1:  # the release mixes "EEG" and "eeg"
            kind = "eeg"
        rows.append(f"{name}\t{kind}\tuV")
    files.append(eeg_dir / f"{stem}_channels.tsv")
    files[-1].write_text("\n".join(rows) + "\n")
    rows = ["onset\tduration\tsample\ttrial_type\tvalue"]
    for m in markers:
        value = m.description if m.description else "n/a"
        rows.append(f"{m.sample / sfreq:.4f}\t0\t{m.sample}\t{m.kind}\t{value}")
    files.append(eeg_dir / f"{stem}_events.tsv")
    files[-1].write_text("\n".join(rows) + "\n")
    electrodes = eeg_dir / f"{electrodes_stem}_electrodes.tsv"
    if not electrodes.exists():
        files.append(write_unit_sphere_electrodes(electrodes))
    return files


def write_unit_sphere_electrodes(fname: Path) -> Path:
    """Electrode positions on a unit sphere (no units, no coordinate system), as released."""
    pos = montage_positions(nv.EEG_CHANNELS)
    pos = pos - np.array([0.0, -0.017, 0.0])  # roughly centre the head
    pos = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    rows = ["name\tx\ty\tz"]
    for name, (x, y, z) in zip(nv.EEG_CHANNELS, pos):
        # the release's x axis points to the nose (EEGLAB convention): x ~ 0.87 at Fp1
        rows.append(f"{name}\t{y:.4f}\t{-x:.4f}\t{z:.4f}")
    Path(fname).write_text("\n".join(rows) + "\n")
    return Path(fname)
