"""Planted EEG truth of the simulator: components, their sum, and the truth files.

The recorded 64-channel EEG is the float32 sum of its components (:func:`sum_components`).
The run's ``_truth.npz`` stores the neural EEG, ECG, EOG and every timing at full rate; the
MR artifacts (gradient, BCG, line noise, sensor noise) are a deterministic function of the
run's artifact seed, which the file stores with an Adler-32 checksum of each component:
:func:`load_run_truth` regenerates them bit-identically (and refuses if the simulator code
changed so that they differ). This keeps the demo release under 1.5 GB on disk.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np

from bids_app.eeg.forward import montage_positions
from bids_app.errors import InputError
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.timeline import RunTimeline, run_timeline
from bids_app.simulate.writers import dump_json, run_stem, truth_dir

logger = logging.getLogger(__name__)

ARTIFACT_KEYS = ("gradient", "bcg", "line", "noise")


def assemble_eeg(neural_eeg: np.ndarray, art) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Add the simulated components into the 64-channel recording (float32, volts).

    Parameters
    ----------
    neural_eeg : ndarray, shape (61, n_times)
        Scalp EEG of the neural sources (``natview_facts.EEG_CHANNELS`` order).
    art : ArtifactSim
        Output of ``simulate_artifacts`` (64-row arrays in ``CHANNEL_NAMES`` order).

    Returns
    -------
    data : ndarray, shape (64, n_times), float32
        EEG: neural + ocular leakage + gradient + BCG + line + noise; ECG channel:
        ECG + gradient + noise; EOG channels: EOG + gradient + BCG + line + noise.
    components : dict of str to ndarray (float32)
        Each component exactly as added (``neural``: 61 rows; ``gradient``, ``bcg``,
        ``line``, ``noise``: 64 rows with zero rows where not applied; ``ecg``: 1-D;
        ``eog``: 2 rows; ``ocular_weights``: 61 weights of the vertical EOG in the EEG, see
        :func:`ocular_component`), so that :func:`sum_components` reproduces ``data``. The
        artifact arrays are ``art``'s own (modified in place, not copied).
    """
    comps: dict[str, np.ndarray] = {"neural": np.asarray(neural_eeg, dtype=np.float32)}
    comps.update(artifact_components(art))
    comps["ocular_weights"] = ocular_weights().astype(np.float32)
    return sum_components(comps), comps


def artifact_components(art) -> dict[str, np.ndarray]:
    """The recorded artifact components of ``art`` (float32; ``art``'s arrays, no copies).

    The ECG channel carries ECG + gradient + noise: its BCG and line rows are zeroed in place.
    """
    ecg = nv.CHANNEL_NAMES.index(nv.ECG_CHANNEL)
    comps = {key: np.asarray(getattr(art, key), dtype=np.float32) for key in ARTIFACT_KEYS}
    for key in ("bcg", "line"):
        if np.any(comps[key][ecg]):
            if not comps[key].flags.writeable:
                comps[key] = comps[key].copy()
            comps[key][ecg] = 0.0
    comps["ecg"] = np.asarray(art.ecg, dtype=np.float32)
    comps["eog"] = np.asarray(art.eog, dtype=np.float32)
    return comps


def checksum(array: np.ndarray) -> int:
    """Adler-32 of an array's C-order bytes (fast; detects any changed sample)."""
    return zlib.adler32(memoryview(np.ascontiguousarray(array)).cast("B"))


def ocular_component(comps: dict[str, np.ndarray]) -> np.ndarray:
    """Vertical EOG leaking into the 61 EEG channels: ``ocular_weights x (EOGU - EOGL) / 2``."""
    vertical = np.float32(0.5) * (comps["eog"][1] - comps["eog"][0])
    return comps["ocular_weights"].astype(np.float32)[:, None] * vertical[None, :]


def sum_components(comps: dict[str, np.ndarray]) -> np.ndarray:
    """Recreate the recorded 64-channel data from its components (float32, volts).

    Parameters
    ----------
    comps : dict
        ``neural``, ``gradient``, ``bcg``, ``line``, ``noise``, ``ecg``, ``eog`` and
        ``ocular_weights`` as returned by :func:`assemble_eeg` or :func:`load_run_truth`.

    Returns
    -------
    ndarray, shape (64, n_times), float32
        Bit-identical to the recording the simulator wrote.
    """
    names = nv.CHANNEL_NAMES
    data = np.zeros(comps["gradient"].shape, dtype=np.float32)
    for key in ("gradient", "bcg", "line", "noise"):
        data += comps[key]
    vertical = np.float32(0.5) * (comps["eog"][1] - comps["eog"][0])
    weights = comps["ocular_weights"].astype(np.float32)
    for row, ch in enumerate(nv.EEG_CHANNELS):  # row by row: no (61, n) temporaries
        data[names.index(ch)] += comps["neural"][row] + weights[row] * vertical
    data[names.index(nv.ECG_CHANNEL)] += comps["ecg"]
    for row, ch in zip(comps["eog"], nv.EOG_CHANNELS):
        data[names.index(ch)] += row
    return data


def ocular_weights() -> np.ndarray:
    """Propagation of the vertical EOG into each EEG channel (falls off from the eyes).

    Returns
    -------
    ndarray, shape (61,)
        Weight ``min(1, 1.25 exp(-d / 52 mm))``, d the distance of the electrode from the
        eyes' midpoint (colin27 positions): about 0.5 at Fp1, 0.05 at Cz, < 0.02 at Oz.
    """
    pos = montage_positions(nv.EEG_CHANNELS)
    eyes = np.array([0.0, 0.085, -0.045])
    dist = np.linalg.norm(pos - eyes, axis=1)
    return np.minimum(1.0, 1.25 * np.exp(-dist / 0.052))


def load_run_truth(npz_path: str | Path) -> dict[str, np.ndarray]:
    """Load a run's truth ``.npz`` written by the simulator (see sourcedata README).

    The MR artifact components are regenerated from the stored artifact seed and checked
    against the stored checksums, so every component is bit-identical to the one recorded.

    Parameters
    ----------
    npz_path : str | Path
        ``sourcedata/simulation/sub-XX/..._truth.npz``.

    Returns
    -------
    dict of str to ndarray
        Components (volts: ``neural``, ``gradient``, ``bcg``, ``line``, ``noise``, ``ecg``,
        ``eog``, ``ocular`` (61 rows, recomputed)), ``ocular_weights``, ``sfreq``,
        ``volume_onsets_s``, ``slice_onsets_s``, ``r_peaks_s``, ``ch_names``,
        ``source_waveforms`` ...

    Raises
    ------
    InputError
        If the regenerated artifacts do not match the stored checksums (the file was written
        by a different version of ``simulate_artifacts``).
    """
    with np.load(npz_path, allow_pickle=False) as npz:
        truth = {key: npz[key] for key in npz.files}
    if "artifact_seed_entropy" in truth:
        truth.update(_regenerate_artifacts(truth, npz_path))
    truth["ocular"] = ocular_component(truth)
    return truth


def _artifact_seed(truth: dict) -> np.random.SeedSequence:
    return np.random.SeedSequence(
        int(str(truth["artifact_seed_entropy"])),
        spawn_key=tuple(int(k) for k in truth["artifact_seed_spawn_key"]),
    )


def _regenerate_artifacts(truth: dict, npz_path) -> dict[str, np.ndarray]:
    from bids_app.simulate.artifacts import simulate_artifacts

    art = simulate_artifacts(
        int(truth["neural"].shape[1]),
        float(truth["sfreq"]),
        truth["volume_onsets_s"],
        list(truth["slice_times"]),
        np.random.default_rng(_artifact_seed(truth)),
        realism=json.loads(str(truth["realism_json"])) if "realism_json" in truth else "ideal",
    )
    comps = artifact_components(art)
    for key in ARTIFACT_KEYS:
        if checksum(comps[key]) != int(truth[f"checksum_{key}"]):
            raise InputError(
                f"Truth file {npz_path} cannot be regenerated: the '{key}' artifact of this "
                "simulator version differs from the one recorded (re-simulate the dataset)."
            )
    return {key: comps[key] for key in ARTIFACT_KEYS}


def write_eeg_truth(
    out_dir: Path,
    subject: str,
    spec: scenario.RunSpec,
    tl: RunTimeline,
    comps: dict,
    art,
    neural,
    *,
    artifact_seed: np.random.SeedSequence,
    realism=None,
) -> Path:
    """Per-run EEG truth ``.npz``: components, timings and source time courses.

    ``neural``, ``ecg``, ``eog`` and ``ocular_weights`` are stored; the artifacts
    (:data:`ARTIFACT_KEYS`) are stored as ``artifact_seed`` (the ``SeedSequence`` of the
    run's ``simulate_artifacts`` generator) plus one checksum each, and the ``realism``
    (:class:`~bids_app.simulate.realism.Realism`, default ideal) as JSON; see
    :func:`load_run_truth`.
    """
    arrays = {key: comps[key] for key in ("neural", "ecg", "eog", "ocular_weights")}
    arrays.update({f"checksum_{key}": np.int64(checksum(comps[key])) for key in ARTIFACT_KEYS})
    arrays.update(
        artifact_seed_entropy=np.array(str(artifact_seed.entropy)),
        artifact_seed_spawn_key=np.array(artifact_seed.spawn_key, dtype=np.int64),
        slice_times=np.asarray(tl.slice_times, dtype=float),
        realism_json=np.array(json.dumps(realism.to_dict() if realism is not None else {})),
        sfreq=np.float64(tl.sfreq),
        ch_names=np.array(nv.CHANNEL_NAMES),
        eeg_channels=np.array(nv.EEG_CHANNELS),
        volume_onsets_s=np.asarray(tl.volume_onsets_s),
        slice_onsets_s=np.asarray(art.slice_onsets_s, dtype=float),
        r_peaks_s=np.asarray(art.r_peaks_s, dtype=float),
        noise_rms=np.asarray(art.noise_rms, dtype=float),
        stim_onset_s=np.float64(tl.stim_onset_s),
        source_waveforms=np.asarray(neural.source_waveforms, dtype=np.float32),
        source_names=np.array(neural.source_names),
    )
    for name, env in neural.source_power.items():
        arrays[f"source_power_{name}"] = np.asarray(env, dtype=np.float32)
    path = truth_dir(out_dir, subject) / f"{run_stem(subject, spec)}_truth.npz"
    np.savez(path, **arrays)
    return path


def write_run_truth(
    out_dir: Path,
    subject: str,
    spec: scenario.RunSpec,
    tl: RunTimeline,
    neural,
    bold_sim,
    *,
    null: bool,
) -> None:
    """Per-run truth besides the npz: dipoles, motion and planted dependencies."""
    truth = truth_dir(out_dir, subject)
    stem = run_stem(subject, spec)
    by_name = {s.name: s for s in scenario.PLANTED_SOURCES}
    sources = [by_name[name] for name in neural.source_names]
    dump_json(
        truth / f"{stem}_dipoles.json",
        {
            "coordinate_system": "MNI152NLin2009cAsym (mm)",
            "forward_model": "4-shell spherical head (not the inverse's 3-shell model)",
            "time_courses": f"{stem}_truth.npz: source_waveforms (rows = dipoles, A*m)",
            "null": null,
            "dipoles": [
                {"name": s.name, "position_mm": s.mni_mm, "orientation": s.orientation,
                 "freq_hz": s.freq_hz, "band": s.band,
                 "feature": None if null else s.feature,
                 "bold_sign": 0 if null else s.bold_sign, "radius_mm": s.radius_mm,
                 "amplitude_nam": s.amplitude_nam}
                for s in sources
            ],
        },
    )  # fmt: skip
    motion = np.asarray(bold_sim.motion, dtype=float)
    header = "trans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z"
    np.savetxt(
        truth / f"{stem}_motion.tsv",
        motion,
        delimiter="\t",
        header=header,
        comments="",
        fmt="%.6f",
    )
    if getattr(bold_sim, "hard", None):
        dump_json(truth / f"{stem}_boldhard.json", bold_sim.hard)
    deps = neural.dependency_windows.copy()
    # simulate_neural reports windows in stimulus time; the truth is in EEG-recording time.
    deps["onset_s"] = deps["onset_s"].astype(float) + tl.stim_onset_s
    deps["onset_bold_s"] = deps["onset_s"] - tl.first_volume_s
    cols = ["onset_s", "duration_s", "feature", "source", "onset_bold_s"]
    deps[cols].to_csv(
        truth / f"{stem}_dependencies.tsv", sep="\t", index=False, float_format="%.4f"
    )


_TRUTH_README = """\
Planted truth of the eegfmri simulator
======================================

Scale: {scale}; seed: {seed}; null variant: {null}. Times are seconds from the first EEG
sample ("EEG time") unless a name says otherwise. Channels follow natview_facts.CHANNEL_NAMES
(64 rows) or natview_facts.EEG_CHANNELS (61 rows). Amplitudes are volts.

simulation.json
    Scale, seed, null flag, runs and the timeline of each run.
realism.json
    The artifact realism (bids_app.simulate.realism.Realism): "ideal" follows the cleaning
    methods' model; "hard" adds per-slice gradient waveforms, volume-to-volume amplitude,
    a sudden head movement, vibration lines (in "line"), drifting clocks, a BOLD sidecar
    SliceTiming that is absent or wrong (the slices played are in slice_times), and
    beat-to-beat BCG latency, shape and respiratory changes, and (bold_* fields) the BOLD
    effects of bids_app.simulate.bold_hard. Each effect is one field.
sub-XX/<run>_boldhard.json
    Hard mode only: each planted source's HRF (peak s, dispersion, undershoot ratio), the
    volumes with a motion spike (also in <run>_motion.tsv) and the non-planted clusters
    (centre, radius, driver, HRF).
stimuli/task-<task>_features.npz
    Stimulus features of the task's video at <fps> frames/s (one key per feature, time 0 =
    stimulus start = 'S  1' marker), feature onsets (onsets_<feature>, s), checker_on.
    The videos themselves are in the dataset's top-level stimuli/ folder.
sub-XX/<run>_truth.npz
    The recorded EEG is exactly the sum of these components (float32); load the file
    with bids_app.simulate.dataset.load_run_truth(), which regenerates the MR artifacts
    (gradient, bcg, line, noise) from the stored artifact seed and checks them against
    the stored checksums (np.load alone gives neural, ecg, eog and the timings):
      neural (61 rows)  scalp EEG of the dipoles (4-shell spherical forward model)
      ocular_weights    61 weights: EEG gets ocular_weights x (EOGU - EOGL) / 2 (vertical
                        EOG leaking into EEG, falls off from the eyes); load_run_truth()
                        adds the resulting (61, n) "ocular" component
      gradient, bcg, line, noise (64 rows; zero rows where a component is not applied: the
                        ECG channel carries no BCG and no line noise)
      ecg (1-D)         cardiac signal on the ECG channel
      eog (2 rows)      EOGL, EOGU signals (blinks, saccades)
    bids_app.simulate.dataset.sum_components(dict) rebuilds the recording.
    Also: sfreq, ch_names, eeg_channels, volume_onsets_s (R128), slice_onsets_s,
    slice_times (played in each volume, s), r_peaks_s (true heartbeats), noise_rms (per
    channel), stim_onset_s,
    source_waveforms (dipole moments, A*m, rows = source_names),
    source_power_<source> (power envelope, (nA*m)^2, at 10 Hz from the first EEG sample).
sub-XX/<run>_dipoles.json
    Dipole names, MNI positions (mm), orientations, frequencies, driving feature, BOLD sign.
sub-XX/<run>_motion.tsv
    True head motion per volume (trans_* mm, rot_* rad).
sub-XX/<run>_dependencies.tsv
    Planted (timestamp window, feature, source) dependencies the masking must recover:
    onset_s (EEG time), duration_s, feature, source, onset_bold_s (seconds from the first
    volume). Coupled voxels of a source are in its mask below. Empty in the null variant.
sub-XX/sub-XX_space-MNI152NLin2009cAsym_source-<source>_mask.nii.gz
    Voxels whose BOLD follows the source's power through the canonical HRF.
sub-XX/sub-XX_from-native_to-MNI152NLin2009cAsym_xfm.json
    The true native -> MNI transform of the simulated BOLD/T1w.
"""


def write_truth_readme(
    out_dir: Path, scale: scenario.Scale, *, seed: int, null: bool, stimuli: dict
) -> None:
    """README, simulation.json and stimulus features under ``sourcedata/simulation``."""
    sim = out_dir / "sourcedata" / "simulation"
    sim.mkdir(parents=True, exist_ok=True)
    (sim / "README").write_text(_TRUTH_README.format(scale=scale.name, seed=seed, null=null))
    runs = []
    for spec in scale.runs:
        tl = run_timeline(spec, scale)
        runs.append(
            {"task": spec.task, "run": spec.run, "session": spec.session,
             "n_volumes": spec.n_volumes, "n_times": tl.n_times, "sfreq": tl.sfreq,
             "first_volume_s": tl.first_volume_s, "stim_onset_s": tl.stim_onset_s,
             "stim_duration_s": tl.stim_duration_s}
        )  # fmt: skip
    dump_json(
        sim / "simulation.json",
        {"scale": scale.name, "seed": seed, "null": null, "subjects": list(scale.subjects),
         "tr": nv.TR, "video_fps": scale.video_fps, "runs": runs},
    )  # fmt: skip
    stim_dir = sim / "stimuli"
    stim_dir.mkdir(exist_ok=True)
    for task, stim in stimuli.items():
        arrays = {k: np.asarray(v, dtype=float) for k, v in stim.features.items()}
        arrays.update({f"onsets_{k}": np.asarray(v, dtype=float) for k, v in stim.onsets.items()})
        if stim.checker_on is not None:
            arrays["checker_on"] = np.asarray(stim.checker_on, dtype=bool)
        arrays["fps"] = np.float64(scale.video_fps)
        np.savez(stim_dir / f"task-{task}_features.npz", **arrays)
