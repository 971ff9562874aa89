"""Facts of the NKI NATVIEW EEG-fMRI release that the simulator, converter and pipeline share.

Everything here comes from Telesford et al. 2023 (Sci Data 10:554), the authors' code and
the public release's sidecars (see docs/methods.md). Values marked *unconfirmed* in the
release documentation are defaults that the configuration can override.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --- EEG (BrainCap MR 64 + 2 x BrainAmp MR), order of the authors' BC-MR-64-X52.bvef ----------
CHANNEL_NAMES: tuple[str, ...] = (
    "Fp1", "Fp2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2", "F7", "F8", "T7", "T8",
    "P7", "P8", "Fz", "Cz", "Pz", "Oz", "FC1", "FC2", "CP1", "CP2", "FC5", "FC6", "CP5",
    "CP6", "TP9", "TP10", "POz", "ECG", "F1", "F2", "C1", "C2", "P1", "P2", "AF3", "AF4",
    "FC3", "FC4", "CP3", "CP4", "PO3", "PO4", "F5", "F6", "C5", "C6", "P5", "P6", "AF7",
    "AF8", "FT7", "FT8", "TP7", "TP8", "PO7", "PO8", "Fpz", "CPz", "EOGL", "EOGU",
)  # fmt: skip
ECG_CHANNEL = "ECG"
EOG_CHANNELS: tuple[str, ...] = ("EOGL", "EOGU")
EEG_CHANNELS: tuple[str, ...] = tuple(
    c for c in CHANNEL_NAMES if c != ECG_CHANNEL and c not in EOG_CHANNELS
)
CHANNEL_TYPES: dict[str, str] = {
    c: ("ecg" if c == ECG_CHANNEL else "eog" if c in EOG_CHANNELS else "eeg")
    for c in CHANNEL_NAMES
}
EEG_REFERENCE = "FCz"
EEG_GROUND = "AFz"
EEG_SFREQ = 5000.0
POWER_LINE_FREQUENCY = 60.0
CAP_MANUFACTURER = "Brain Products"
CAP_MODEL = "BrainCap MR 64 (BC-MR-64-X52)"
AMPLIFIER = "2 x BrainAmp MR plus"

# --- Markers ------------------------------------------------------------------------------
VOLUME_MARKER = "R128"  # type "Response", one per volume
TASK_START_MARKER = "S  1"
TASK_END_MARKER = "S 99"
SECOND_MARKER = "S  5"  # every second during movies and rest
CHECKER_REST_BLOCK = "S 10"
CHECKER_FLICKER_BLOCK = "S 25"
RECORDER_MARKERS: tuple[str, ...] = (
    "New Segment", "SyncStatus", "Sync On", "Sync Off", "boundary",
)  # fmt: skip
VOLUME_MARKER_SPACING_SAMPLES = 10_500  # one R128 per TR (2.1 s at 5000 Hz)
#: Stimulus codes and their meaning (events.tsv ``trial_type``) per group of tasks, from
#: the authors' stimulus scripts; codes outside a run's table are kept as unknown codes.
CHECKER_CODES: dict[str, str] = {
    CHECKER_REST_BLOCK: "checker_rest_block",
    CHECKER_FLICKER_BLOCK: "checker_flicker_block",
    "S 11": "checker_rest_second",
    "S 26": "checker_flicker_second",
    "S 12": "checker_rest_2s",
    "S 27": "checker_flicker_2s",
}
#: Fixation dots of the ``peer`` calibration as found in the 37 released peer runs.
PEER_FIXATION_CODES: tuple[str, ...] = tuple(f"S{k:>3}" for k in range(2, 25))

# --- fMRI -----------------------------------------------------------------------------------
TR = 2.1
N_SLICES = 38
MATRIX = (64, 64)
VOXEL_SIZE_MM = (3.0, 3.0, 3.33)
ECHO_TIME = 0.0246
FLIP_ANGLE = 60
PHASE_ENCODING_DIRECTION = "j-"
TOTAL_READOUT_TIME = 0.0296
LAST_SLICE_TIME = 2.0525


def slice_timing(
    n_slices: int = N_SLICES, last_slice_time: float = LAST_SLICE_TIME
) -> list[float]:
    """Siemens interleaved SliceTiming (seconds) for an even slice count.

    With an even number of slices Siemens acquires the even slices first (1-based numbers
    2, 4, ...; 0-based indices 1, 3, ...), then the odd ones, as dcm2niix reports it.

    Parameters
    ----------
    n_slices : int
        Number of slices.
    last_slice_time : float
        Onset of the last acquired slice in seconds.

    Returns
    -------
    list of float
        Onset of each slice (index = slice position in the volume).
    """
    step = last_slice_time / (n_slices - 1)
    first = list(range(1, n_slices, 2)) if n_slices % 2 == 0 else list(range(0, n_slices, 2))
    second = [i for i in range(n_slices) if i not in first]
    times = np.empty(n_slices)
    for rank, index in enumerate(first + second):
        times[index] = round(rank * step, 6)
    return times.tolist()


@dataclass(frozen=True)
class TaskInfo:
    """One NATVIEW task: stimulus, nominal length and number of volumes."""

    name: str
    stimulus: str | None
    duration_s: float
    n_volumes: int
    runs: tuple[str, ...] = ()
    simultaneous: bool = True


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("checker", "checkerboard", 200.0, 98),
        TaskInfo("checkeroff", "checkerboard", 200.0, 0, simultaneous=False),
        TaskInfo("checkerout", "checkerboard", 200.0, 0, simultaneous=False),
        TaskInfo("dme", "Despicable_Me_720x480_English.avi", 600.0, 289, ("01", "02")),
        TaskInfo("dmh", "Despicable_Me_720x480_Hungarian.avi", 600.0, 289, ("01", "02")),
        TaskInfo("inscapes", "Inscapes_02.avi", 600.0, 293),
        TaskInfo("monkey1", "Movie1.avi", 300.0, 146, ("01", "02")),
        TaskInfo("monkey2", "Movie2.avi", 300.0, 146, ("01", "02")),
        TaskInfo("monkey5", "Movie5.avi", 300.0, 146, ("01", "02")),
        TaskInfo("tp", "The_Present_720x480.avi", 258.0, 127, ("01", "02")),
        TaskInfo("rest", None, 600.0, 288),
        TaskInfo("peer", "peer_calibration", 108.0, 55),
    )
}
#: Tasks whose stimulus is a movie file (``.avi``) and those showing the checkerboard.
MOVIE_TASKS: tuple[str, ...] = tuple(
    name for name, info in TASKS.items() if info.stimulus and info.stimulus.endswith(".avi")
)
CHECKER_TASKS: tuple[str, ...] = ("checker", "checkeroff", "checkerout")
CHECKER_FLICKER_HZ = 12.0  # stimulus script default (unconfirmed for the recording)
CHECKER_BLOCK_S = 20.0

# --- Public locations -----------------------------------------------------------------------
S3_BUCKET_URL = "https://fcp-indi.s3.amazonaws.com"
S3_PREFIX = "data/Projects/NATVIEW_EEGFMRI/"
STIMULI_URL = "https://fcon_1000.projects.nitrc.org/indi/retro/NAT_VIEW/video.tar.gz"
N_SUBJECTS = 22
