"""A NATVIEW release with the quirks of the real released metadata, on simulated samples.

:func:`make_quirky_release` copies the simulated tiny release (``simulate_dataset(...,
layout="natview")``) and injects, from the facts in shared/NATVIEW.md and issue 18:

- sync markers (``Sync On``/``Sync Off``) in every recording, a ``checkerout`` run with
  EEG only; a ``peer`` run with fixation dots ``S 2``-``S 24`` and no ``S  1``/``S 99``;
  undocumented codes ``S255``, ``S 85``, ``S  4`` in ``rest``;
- volume markers: one fewer than the volumes plus a duplicate 12 samples apart and a gap of
  105,000 samples (tp); none at all with BOLD (rest); 6 for 20 volumes (inscapes);
- release sidecars that describe files the converter rewrites: EEG ``events.json`` with
  ``value`` levels ``S1``/``S10``, ``channels.json`` with ``"Units": "Microvolts"`` and
  absent columns, a non-standard ``electrodes.json`` claiming RAS/mm; a session without an
  electrodes file; ``channels.tsv`` with an extra ``sampling_frequency`` column;
- physio: respiratory/trigger with a ``time`` column and lower-case column keys, a sparse
  trigger file, the same files in ``eeg/`` and ``func/``; eye tracking with ``StartTime``
  18.456 s, a ``Time`` column, ``NaN`` and rates of 250 and 1000 Hz (one declared at 1000 Hz
  but sampled at 500 Hz);
- root: ``participants.tsv`` with ``Female``/``Male`` and race, ethnicity, handedness,
  height, weight but ``participants.json`` levels ``M``/``F``; questionnaires ``nycq``,
  ``psqi`` (one short row), ``last_night_sleep``; ``README.md``; ``code/``; BIDSVersion
  1.2.0 with ``DatasetDOI``, ``Funding``, ``HowToAcknowledge`` and no licence.

The added recordings are short (500 Hz) so that the fixture builds in seconds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import warnings
from pathlib import Path

import mne
import nibabel as nib
import numpy as np

from bids_app.io.brainvision import Marker, read_vmrk, write_vhdr, write_vmrk
from bids_app.io.eeglab import write_set
from bids_app.natview import facts as nv

SFREQ = 500.0
SPACING = int(round(nv.TR * SFREQ))
TP = "sub-01_ses-01_task-tp_run-01"


def _link_or_copy(src: str, dst: str) -> None:
    if src.endswith((".set", ".nii.gz", ".npz", ".mp4")):
        os.link(src, dst)  # never written in place below: rewritten files are unlinked first
    else:
        shutil.copy2(src, dst)


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _gz(path: Path, rows: list[list[str]]) -> None:
    with gzip.open(path, "wt") as f:
        f.write("".join("\t".join(r) + "\n" for r in rows))


def _volume_markers(n: int, start: int = 2 * SPACING) -> list[Marker]:
    return [Marker("Response", "R128", start + k * SPACING) for k in range(n)]


def _sync(n_times: int, off: bool) -> list[Marker]:
    kind = "Sync Off" if off else "Sync On"
    return [Marker("SyncStatus", kind, s) for s in range(0, n_times, 10_000)]


def _add_run(release: Path, stem: str, markers: list[Marker], n_times: int,
             bold_volumes: int | None, rng: np.random.Generator) -> None:
    """A short recording (EEG markers in the .vmrk only), with a small BOLD if asked."""
    sub, ses = stem.split("_")[:2]
    task = stem.split("task-")[1].split("_")[0]
    eeg = release / sub / ses / "eeg"
    eeg.mkdir(parents=True, exist_ok=True)
    data = (rng.standard_normal((len(nv.CHANNEL_NAMES), n_times)) * 1e-5).astype(np.float32)
    write_set(eeg / f"{stem}_eeg.set", data, SFREQ, [])
    write_vhdr(eeg / f"{stem}_eeg.vhdr", n_channels_names=nv.CHANNEL_NAMES, sfreq=SFREQ)
    every = [Marker("New Segment", "", 0)] + markers
    write_vmrk(eeg / f"{stem}_eeg.vmrk", sorted(every, key=lambda m: m.sample))
    _json(eeg / f"{stem}_eeg.json", {"TaskName": task, "SamplingFrequency": SFREQ})
    rows = ["name\ttype\tunits\tsampling_frequency"]
    rows += [f"{c}\t{nv.CHANNEL_TYPES[c]}\tuV\t{SFREQ:g}" for c in nv.CHANNEL_NAMES]
    (eeg / f"{stem}_channels.tsv").write_text("\n".join(rows) + "\n")
    rows = ["onset\tduration\tvalue"] + [f"{m.sample / SFREQ:.3f}\t0\t{m.description}"
                                         for m in markers if m.kind == "Stimulus"]
    (eeg / f"{stem}_events.tsv").write_text("\n".join(rows) + "\n")
    if bold_volumes is None:
        return
    func = release / sub / ses / "func"
    func.mkdir(parents=True, exist_ok=True)
    img = np.full((4, 4, nv.N_SLICES, bold_volumes), 1000, np.int16)
    img += rng.integers(0, 20, img.shape, dtype=np.int16)
    bold = nib.Nifti1Image(img, np.diag([3.0, 3.0, 3.33, 1.0]))
    bold.header.set_zooms((3.0, 3.0, 3.33, nv.TR))
    bold.header.set_xyzt_units("mm", "sec")
    nib.save(bold, func / f"{stem}_bold.nii.gz")
    sidecar = json.loads((release / "sub-01/ses-01/func" / f"{TP}_bold.json").read_text())
    _json(func / f"{stem}_bold.json", {**sidecar, "TaskName": task})
    (func / f"{stem}_events.tsv").write_text("onset\tduration\ttrial_type\n4.2\t20\tmovie\n")


def _mutate_tp(release: Path) -> None:
    """tp: one R128 fewer, a duplicate 12 samples apart, a 105,000-sample gap, odd codes."""
    eeg = release / "sub-01/ses-01/eeg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        raw = mne.io.read_raw_eeglab(eeg / f"{TP}_eeg.set", preload=True, verbose="error")
    markers = read_vmrk(eeg / f"{TP}_eeg.vmrk")
    volumes = [m for m in markers if m.description == "R128"]
    dropped = {volumes[-1].sample} | {m.sample for m in volumes[5:14]}
    kept = [m for m in markers if not (m.description == "R128" and m.sample in dropped)]
    kept.append(Marker("Response", "R128", volumes[2].sample + 12))
    kept += [Marker("Comment", "Sync Off", s) for s in range(5_000, raw.n_times, 10_000)]
    kept += [Marker("Stimulus", "S255", volumes[3].sample + 7),
             Marker("Stimulus", "S 85", volumes[4].sample + 9)]
    kept.sort(key=lambda m: m.sample)
    (eeg / f"{TP}_eeg.set").unlink()  # a hard link to the shared fixture: never write into it
    write_set(eeg / f"{TP}_eeg.set", raw.get_data().astype(np.float32), raw.info["sfreq"], kept)
    write_vmrk(eeg / f"{TP}_eeg.vmrk", kept)


def _physio(release: Path) -> None:
    # tp eye tracking: StartTime 18.456 s, a Time column (s), NaN, 250 Hz
    eeg = release / "sub-01/ses-01/eeg"
    name = f"{TP}_recording-eyetracking_physio"
    t = 18.456 + np.arange(2000) / 250.0
    rows = [[f"{v:.3f}", "360.0", "NaN" if i % 97 == 0 else "240.0", "1200"]
            for i, v in enumerate(t)]
    _gz(eeg / f"{name}.tsv.gz", rows)
    _json(eeg / f"{name}.json", {"SamplingFrequency": 250, "StartTime": 18.456,
                                  "Columns": ["Time", "x_coordinate", "y_coordinate",
                                              "pupil_size"]})
    # sub-02 dme: eye tracking declared 1000 Hz, sampled at 500 Hz; respiratory and a sparse
    # trigger (lower-case keys, time column) in func/ and, identical, in eeg/
    stem = "sub-02_ses-01_task-dme_run-01"
    eeg2 = release / "sub-02/ses-01/eeg"
    _gz(eeg2 / f"{stem}_recording-eyetracking_physio.tsv.gz",
        [[f"{k * 2}", "360.0", "240.0"] for k in range(5000)])
    _json(eeg2 / f"{stem}_recording-eyetracking_physio.json",
          {"SamplingFrequency": 1000, "StartTime": 18.456, "Columns": ["Time", "x", "y"],
           "Time": {"description": "eye tracker clock", "units": "ms"}})
    for folder in ("func", "eeg"):
        out = release / "sub-02/ses-01" / folder
        resp_t = np.arange(0, 25, 1 / 62.5)
        _gz(out / f"{stem}_recording-respiratory_physio.tsv.gz",
            [[f"{v:.3f}", f"{np.sin(v):.3f}"] for v in resp_t])
        _json(out / f"{stem}_recording-respiratory_physio.json",
              {"SamplingFrequency": 62.5, "StartTime": 0, "Columns": ["time", "respiratory"],
               "time": {"description": "time", "units": "s"},
               "respiratory": {"description": "belt", "units": "a.u."}})
        _gz(out / f"{stem}_recording-trigger_physio.tsv.gz",
            [[f"{v:.3f}", "1"] for v in np.linspace(0.0, 241.0, 153)])
        _json(out / f"{stem}_recording-trigger_physio.json",
              {"SamplingFrequency": 62.5, "StartTime": 0, "Columns": ["time", "trigger"],
               "time": {"description": "time", "units": "s"},
               "trigger": {"description": "scanner trigger", "units": "n/a"}})


def _root(release: Path) -> None:
    (release / "README").unlink()
    (release / "README.md").write_text("# NATVIEW EEG-fMRI\n\nNaturalistic viewing, NKI.\n")
    _json(release / "dataset_description.json", {
        "Name": "NATVIEW_EEGFMRI", "BIDSVersion": "1.2.0", "DatasetDOI": "10.15387/fcp_indi",
        "Authors": ["Telesford QK", "Milham MP"], "Funding": ["NIMH R01MH111439"],
        "HowToAcknowledge": "Cite Telesford et al. 2023, Sci Data 10:554."})
    rows = ["participant_id\tage\tsex\trace\tethnicity\thandedness\theight\tweight",
            "sub-01\t24\tFemale\tWhite\tNot Hispanic or Latino\tRight\t165.1\t60.3",
            "sub-02\t31\tMale\tAsian\tNot Hispanic or Latino\tLeft\t180.3\t79.0",
            "sub-03\t28\tMale\tWhite\tHispanic or Latino\tRight\t175.0\t70.0"]
    (release / "participants.tsv").write_text("\n".join(rows) + "\n")
    _json(release / "participants.json", {
        "age": {"Description": "age of the participant", "Units": "years"},
        "sex": {"Description": "sex of the participant", "Levels": {"M": "male", "F": "female"}},
        "height": {"description": "height", "units": "cm"}})
    for name, columns, values in (
        ("nycq", ["nycq_01", "nycq_02"], ["3", "5"]),
        ("psqi", ["psqi_total", "psqi_quality"], ["7", "fairly good"]),
        ("last_night_sleep", ["hours_slept"], ["6.5"]),
    ):
        rows = ["participant_id\t" + "\t".join(columns)]
        rows += [f"sub-0{k}\t" + "\t".join(values) for k in (1, 2, 3)]
        if name == "psqi":
            rows[2] = "sub-02\t9"  # a row shorter than the header
        (release / f"{name}.tsv").write_text("\n".join(rows) + "\n")
        _json(release / f"{name}.json", {c: {"description": f"item {c}"} for c in columns})
    (release / "code").mkdir()
    (release / "code" / "eeg_preproc.m").write_text("% authors' preprocessing\n")


def _sidecars(release: Path) -> None:
    eeg = release / "sub-01/ses-01/eeg"
    _json(eeg / f"{TP}_events.json", {
        "onset": {"Description": "onset relative to the task start (S1)"},
        "value": {"Levels": {"S1": "task start", "S10": "rest block", "S99": "task end"}}})
    _json(eeg / f"{TP}_channels.json", {
        "Units": "Microvolts", "type": {"Description": "Type", "Levels": {"EEG": "EEG"}},
        "impedance": {"Description": "kOhm"}, "low_cutoff": {"Description": "Hz"}})
    _json(eeg / "sub-01_ses-01_electrodes.json", {
        "EEGCoordinateSystem": "RAS", "EEGCoordinateUnits": "mm"})
    lines = (eeg / "sub-01_ses-01_electrodes.tsv").read_text().splitlines()
    (eeg / "sub-01_ses-01_electrodes.tsv").write_text(
        "\n".join([lines[0] + "\ttype"] + [ln + "\tEEG" for ln in lines[1:]]) + "\n")


def make_quirky_release(tiny_release: Path, release: Path) -> Path:
    """Copy ``tiny_release`` to ``release`` and inject the released metadata's quirks."""
    shutil.copytree(tiny_release, release, copy_function=_link_or_copy)
    rng = np.random.default_rng(18)
    _mutate_tp(release)
    n = 16 * SPACING
    stim = [Marker("Stimulus", f"S{k:>3}", SPACING + 200 * k) for k in range(2, 25)]
    _add_run(release, "sub-01_ses-01_task-peer", _volume_markers(12) + stim
             + _sync(n, off=False), n, 12, rng)  # fmt: skip
    codes = [Marker("Stimulus", c, SPACING + 300 * k)
             for k, c in enumerate(["S  1", "S255", "S 85", "S  4", "S  5", "S  5", "S 99"])]
    _add_run(release, "sub-01_ses-01_task-rest", codes + _sync(n, off=True), n, 12, rng)
    m = 24 * SPACING
    _add_run(release, "sub-01_ses-01_task-inscapes", _volume_markers(6) + _sync(m, off=False),
             m, 20, rng)  # fmt: skip
    blocks = [Marker("Stimulus", c, SPACING * (k + 1)) for k, c in
              enumerate(["S 10", "S 11", "S 25", "S 26"])]  # fmt: skip
    _add_run(release, "sub-01_ses-01_task-checkerout", blocks + _sync(n, off=True), n, None, rng)
    dme = [Marker("Stimulus", "S  1", SPACING), Marker("Stimulus", "S  5", SPACING + 500),
           Marker("Stimulus", "S 99", 14 * SPACING)]
    _add_run(release, "sub-02_ses-01_task-dme_run-01", _volume_markers(12) + dme
             + _sync(n, off=True), n, 12, rng)  # fmt: skip
    anat = release / "sub-02/ses-01/anat"
    anat.mkdir(parents=True)
    for src in (release / "sub-01/ses-01/anat").iterdir():
        os.link(src, anat / src.name.replace("sub-01", "sub-02"))
    _physio(release)
    _root(release)
    _sidecars(release)
    return release
