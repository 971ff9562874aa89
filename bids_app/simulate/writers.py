"""Writers of the simulated NATVIEW release: root files, BOLD, T1w, eye tracking, JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.timeline import RunTimeline


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def dump_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON (numpy scalars and arrays allowed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


# --- writers ---------------------------------------------------------------------------------
def run_stem(subject: str, spec: scenario.RunSpec) -> str:
    """File-name stem ``sub-XX_ses-YY_task-ZZ[_run-NN]`` of one run."""
    run = f"_run-{spec.run}" if spec.run else ""
    return f"sub-{subject}_ses-{spec.session}_task-{spec.task}{run}"


def truth_dir(out_dir: Path, subject: str) -> Path:
    """``sourcedata/simulation/sub-XX`` (created)."""
    path = out_dir / "sourcedata" / "simulation" / f"sub-{subject}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def video_name(task: str) -> str:
    """File name of a task's simulated stimulus video (the release's name, ``.mp4``)."""
    stimulus = nv.TASKS[task].stimulus or task
    return Path(stimulus).stem + ".mp4"


def write_stimulus_video(out_dir: Path, task: str, frames: np.ndarray, fps: float) -> Path:
    """Encode ``frames`` (n, H, W, 3 uint8) as ``stimuli/<release name>.mp4`` with PyAV."""
    from bids_app.simulate.stimulus import write_video

    return write_video(out_dir / "stimuli" / video_name(task), frames, fps)


def write_release_root(out_dir: Path, scale: scenario.Scale, *, seed: int, null: bool) -> None:
    """Top-level files of the release (with its leftover ``.DS_Store``)."""
    dump_json(
        out_dir / "dataset_description.json",
        {
            "Name": f"Simulated NATVIEW EEG-fMRI ({scale.name}, seed {seed}"
            + (", null" if null else "")
            + ")",
            "BIDSVersion": "1.8.0",
            "DatasetType": "raw",
            "Authors": ["eegfmri simulator"],
        },
    )
    rows = ["participant_id\tage\tsex"] + [
        f"sub-{s}\t{24 + 3 * i}\t{'F' if i % 2 else 'M'}" for i, s in enumerate(scale.subjects)
    ]
    (out_dir / "participants.tsv").write_text("\n".join(rows) + "\n")
    (out_dir / "README").write_text(
        "Simulated data shaped like the NKI NATVIEW EEG-fMRI raw release "
        "(Telesford et al. 2023). Written by eegfmri's simulator; the planted truth is in "
        "sourcedata/simulation/.\n"
    )
    (out_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(26))


def write_run_bold(
    out_dir: Path,
    subject: str,
    spec: scenario.RunSpec,
    tl: RunTimeline,
    bold_sim,
    *,
    checker_blocks=None,
    slice_timing: list | None = None,
) -> None:
    """BOLD image, dcm2niix-style sidecar and task events of one run.

    ``slice_timing`` is the sidecar's SliceTiming (None: no such key).
    """
    import nibabel as nib

    stem = run_stem(subject, spec)
    ses_dir = out_dir / f"sub-{subject}" / f"ses-{spec.session}"
    func = ses_dir / "func"
    func.mkdir(parents=True, exist_ok=True)
    nib.save(as_scanner_int16(bold_sim.bold), func / f"{stem}_bold.nii.gz")
    sidecar = bold_sidecar(spec.task, subject, spec.session)
    if slice_timing is None:
        sidecar.pop("SliceTiming")
    else:
        sidecar["SliceTiming"] = list(slice_timing)
    dump_json(func / f"{stem}_bold.json", sidecar)
    rows = ["onset\tduration\ttrial_type"]
    start = tl.stim_onset_s - tl.first_volume_s
    if checker_blocks:
        for onset, duration, flicker in checker_blocks:
            kind = "flicker" if flicker else "rest"
            rows.append(f"{onset - tl.first_volume_s:.3f}\t{duration:.3f}\t{kind}")
    else:
        kind = "rest" if spec.task == "rest" else "movie"
        rows.append(f"{start:.3f}\t{tl.stim_duration_s:.3f}\t{kind}")
    (func / f"{stem}_events.tsv").write_text("\n".join(rows) + "\n")


def write_eyetracking(
    out_dir: Path, subject: str, spec: scenario.RunSpec, eog: np.ndarray, sfreq: float
) -> Path:
    """Eye-tracker physio at 100 Hz with ``NaN`` during blinks, as the release writes it.

    Gaze (screen pixels) follows the EOG; the pupil is lost (``NaN`` in every
    column) while the vertical EOG exceeds 50 uV, i.e. during blinks.
    """
    import gzip

    step = max(1, int(round(sfreq / 100.0)))
    vertical = 0.5 * (eog[1] - eog[0])[::step]
    horizontal = (eog[1] + eog[0])[::step]
    x = 360.0 + 2e5 * horizontal
    y = 240.0 - 2e5 * vertical
    pupil = np.full(vertical.size, 1200.0)
    table = np.column_stack([x, y, pupil])
    table[vertical > 50e-6] = np.nan
    name = f"{run_stem(subject, spec)}_recording-eyetracking_physio"
    eeg_dir = out_dir / f"sub-{subject}" / f"ses-{spec.session}" / "eeg"
    text = "".join("\t".join("NaN" if np.isnan(v) else f"{v:.1f}" for v in row) + "\n"
                   for row in table)  # fmt: skip
    path = eeg_dir / f"{name}.tsv.gz"
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(text.encode())
    dump_json(
        eeg_dir / f"{name}.json",
        {"SamplingFrequency": sfreq / step, "StartTime": 0.0,
         "Columns": ["x_coordinate", "y_coordinate", "pupil_size"],
         "Manufacturer": "EyeLink"},
    )  # fmt: skip
    return path


def as_scanner_int16(img):
    """The image with rounded int16 data and no scaling, as dcm2niix writes Siemens data."""
    import nibabel as nib

    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.min() < -32768 or data.max() > 32767:
        return img  # out of int16 range: keep floats rather than clip
    out = nib.Nifti1Image(np.rint(data).astype(np.int16), img.affine, img.header)
    out.set_data_dtype(np.int16)
    out.header.set_slope_inter(1.0, 0.0)
    return out


def bold_sidecar(task: str, subject: str, session: str) -> dict:
    """dcm2niix-style BOLD sidecar with the release's non-standard keys."""
    return {
        "Modality": "MR",
        "MagneticFieldStrength": 3,
        "Manufacturer": "Siemens",
        "ManufacturersModelName": "TrioTim",
        "ConversionSoftware": "dcm2niix",
        "ConversionSoftwareVersion": "v1.0.20190902",
        "SeriesDescription": f"cmrr_mbep2d_{task}",
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"],
        "EchoTime": nv.ECHO_TIME,
        "RepetitionTime": nv.TR,
        "FlipAngle": nv.FLIP_ANGLE,
        "SliceThickness": 3.0,
        "SliceTiming": nv.slice_timing(),
        "PhaseEncodingDirection": nv.PHASE_ENCODING_DIRECTION,
        "TotalReadoutTime": nv.TOTAL_READOUT_TIME,
        "EffectiveEchoSpacing": 0.00047,
        "TaskName": task,
        "participant_id": f"sub-{subject}",
        "session_id": f"ses-{session}",
        "modality": "func",
    }


def write_subject_files(out_dir: Path, subject: str, bold_sim, coupled: dict) -> None:
    """T1w of the subject, its coupled-voxel masks and native -> MNI transform (truth)."""
    import nibabel as nib

    anat = out_dir / f"sub-{subject}" / "ses-01" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    nib.save(as_scanner_int16(bold_sim.t1w), anat / f"sub-{subject}_ses-01_T1w.nii.gz")
    dump_json(
        anat / f"sub-{subject}_ses-01_T1w.json",
        {"Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "Siemens",
         "RepetitionTime": 2.5, "EchoTime": 0.0035, "InversionTime": 1.2,
         "ConversionSoftware": "dcm2niix", "modality": "anat"},
    )  # fmt: skip
    truth = truth_dir(out_dir, subject)
    for source, img in coupled.items():
        name = f"sub-{subject}_space-MNI152NLin2009cAsym_source-{source}_mask.nii.gz"
        nib.save(img, truth / name)
    transform = bold_sim.native_to_mni
    if dataclasses.is_dataclass(transform):
        transform = {f.name: getattr(transform, f.name) for f in dataclasses.fields(transform)}
    transform = {
        "description": "MNI mm = affine @ native mm + d(native), d_i(y) = amplitude_mm[i] * "
        "sin(2 pi y[(i+1) % 3] / wavelength_mm + phase[i]) "
        "(bids_app.simulate.bold.NativeToMNI)",
        **(transform if isinstance(transform, dict) else {"affine": transform}),
    }
    dump_json(truth / f"sub-{subject}_from-native_to-MNI152NLin2009cAsym_xfm.json", transform)
