"""NATVIEW release -> BIDS conversion: validity, repairs, data fidelity, input untouched."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import mne
import mne_bids
import numpy as np
import pandas as pd
import pytest

from bids_app.errors import InputError
from bids_app.io.validate import run_validator
from bids_app.natview import facts as nv
from bids_app.natview.convert import convert_natview, is_junk_marker

EEG = "sub-01/ses-01/eeg"
TP = "sub-01_ses-01_task-tp_run-01"


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_tiny_bids_is_valid(tiny_bids):
    result = run_validator(tiny_bids)
    assert result.errors == [], result.summary("error")


def test_eeg_sidecars(tiny_bids):
    sidecar = json.loads((tiny_bids / EEG / f"{TP}_eeg.json").read_text())
    assert sidecar["EEGReference"] == "FCz" and sidecar["PowerLineFrequency"] == 60
    assert (sidecar["EEGChannelCount"], sidecar["ECGChannelCount"],
            sidecar["EOGChannelCount"]) == (61, 1, 2)  # fmt: skip
    assert sidecar["SamplingFrequency"] == 5000 and sidecar["CapManufacturer"]
    channels = pd.read_csv(tiny_bids / EEG / f"{TP}_channels.tsv", sep="\t")
    assert list(channels["name"]) == list(nv.CHANNEL_NAMES)
    assert set(channels["type"]) == {"EEG", "ECG", "EOG"}
    assert channels.set_index("name").loc[["ECG", "EOGL", "EOGU"], "type"].tolist() == [
        "ECG", "EOG", "EOG"]  # fmt: skip
    coords = json.loads(next((tiny_bids / EEG).glob("*_coordsystem.json")).read_text())
    assert coords["EEGCoordinateSystem"] == "MNIColin27" and coords["EEGCoordinateUnits"] == "m"
    elec = pd.read_csv(next((tiny_bids / EEG).glob("*_electrodes.tsv")), sep="\t")
    pos = elec.set_index("name")
    assert len(elec) == 61 and pos.loc["Fp1", "y"] > 0.05 and pos.loc["Oz", "y"] < -0.08
    radius = np.linalg.norm(elec[["x", "y", "z"]].to_numpy(), axis=1)
    assert 0.06 < radius.min() and radius.max() < 0.13  # metres on a head, not a unit sphere


def test_eeg_data_and_events_match_release(tiny_bids, tiny_release):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        src = mne.io.read_raw_eeglab(tiny_release / EEG / f"{TP}_eeg.set", preload=True,
                                     verbose="error")  # fmt: skip
    out = mne.io.read_raw_brainvision(tiny_bids / EEG / f"{TP}_eeg.vhdr", preload=True,
                                      verbose="error")  # fmt: skip
    assert out.ch_names == src.ch_names and out.info["sfreq"] == src.info["sfreq"]
    path = mne_bids.BIDSPath(subject="01", session="01", task="tp", run="01", datatype="eeg",
                             root=tiny_bids)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        via_bids = mne_bids.read_raw_bids(path, verbose="error")  # types from channels.tsv
    assert via_bids.get_channel_types(["ECG", "EOGL", "Cz"]) == ["ecg", "eog", "eeg"]
    assert (via_bids.annotations.description == "volume").sum() == 20
    a, b = src.get_data(), out.get_data()
    assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(a))
    volumes = out.annotations.onset[out.annotations.description == "Response/R128"]
    truth = np.load(tiny_release / "sourcedata/simulation/sub-01" / f"{TP}_truth.npz")
    np.testing.assert_allclose(volumes, truth["volume_onsets_s"], atol=1e-9)
    events = pd.read_csv(tiny_bids / EEG / f"{TP}_events.tsv", sep="\t")
    assert (events["trial_type"] == "volume").sum() == 20
    assert set(events.loc[events["trial_type"] == "volume", "value"]) == {"R128"}
    assert {"task_start", "task_end", "second"} <= set(events["trial_type"])
    assert not any(is_junk_marker(str(v)) for v in events["value"])
    raw_events = pd.read_csv(tiny_release / EEG / f"{TP}_events.tsv", sep="\t")
    assert (raw_events["trial_type"] == "SyncStatus").sum() > 0  # the release had junk
    checker = pd.read_csv(tiny_bids / EEG / "sub-01_ses-01_task-checker_events.tsv", sep="\t")
    assert {"checker_rest_block", "checker_flicker_block"} <= set(checker["trial_type"])


def test_bold_and_extras_copied(tiny_bids, tiny_release):
    func = tiny_bids / "sub-01/ses-01/func"
    sidecar = json.loads((func / f"{TP}_bold.json").read_text())
    assert not {"participant_id", "session_id", "modality"} & set(sidecar)
    assert sidecar["TaskName"] == "tp" and sidecar["RepetitionTime"] == nv.TR
    assert sidecar["SliceTiming"] == nv.slice_timing()
    assert sidecar["PhaseEncodingDirection"] == "j-"
    bold = f"sub-01/ses-01/func/{TP}_bold.nii.gz"
    assert (tiny_bids / bold).read_bytes() == (tiny_release / bold).read_bytes()
    assert (tiny_bids / "stimuli/The_Present_720x480.mp4").is_file()
    assert (tiny_bids / "sourcedata/simulation/README").is_file()
    assert not list(tiny_bids.rglob(".DS_Store"))
    physio = tiny_bids / EEG / f"{TP}_recording-eyetracking_physio.tsv.gz"
    with gzip.open(physio, "rt") as f:
        text = f.read()
    assert "NaN" not in text and "n/a" in text
    assert not list(tiny_bids.rglob("*.set"))
    for name in ("dataset_description.json", "participants.tsv", "participants.json",
                 "README", "CHANGES", "task-tp_bold.json"):  # fmt: skip
        assert (tiny_bids / name).is_file()


def test_repairs_reported_and_input_untouched(tiny_release, tmp_path):
    release = tmp_path / "release"
    # the truth (sourcedata) is large and tested elsewhere; copy the release without it
    shutil.copytree(tiny_release, release, ignore=shutil.ignore_patterns("*_truth.npz"))
    # two more release defects: NaN in an eye-tracking TSV and an invalid JSON sidecar
    physio = release / EEG / f"{TP}_recording-eyetracking_physio.tsv.gz"
    with gzip.open(physio, "wt") as f:
        f.write("1.0\t2.0\tNaN\nNaN\t3.0\t4.0\n")
    (physio.parent / physio.name.replace(".tsv.gz", ".json")).write_text(
        '{"SamplingFrequency": 1000, "StartTime": 0, "Columns": ["x", "y", "pupil"],'
    )  # truncated JSON as in a few release sidecars
    (release / "sub-01/.DS_Store").write_bytes(b"junk")
    before = _hash_tree(release)
    report = convert_natview(release, tmp_path / "bids")
    assert _hash_tree(release) == before
    text = "\n".join(report.repairs)
    for needle in ("recorder marker", "non-standard key", "Upper-cased", "MNIColin27",
                   "NaN value", "truncated JSON", ".DS_Store"):  # fmt: skip
        assert needle in text, needle
    assert report.eeg_runs == 2 and report.bold_runs == 2 and report.subjects == ["01"]
    with gzip.open(tmp_path / "bids" / EEG / physio.name, "rt") as f:
        fixed = f.read()
    assert "NaN" not in fixed and fixed.count("n/a") == 2
    sidecar = json.loads((tmp_path / "bids" / EEG / physio.name.replace(".tsv.gz", ".json"))
                         .read_text())  # fmt: skip
    assert sidecar["SamplingFrequency"] == 1000 and len(sidecar["Columns"]) == 3
    result = run_validator(tmp_path / "bids")
    assert result.errors == [], result.summary("error")
    changes = (tmp_path / "bids" / "CHANGES").read_text()
    assert "recorder marker" in changes and str(release) not in changes


def test_bad_input_raises(tmp_path, tiny_release):
    with pytest.raises(InputError, match="no sub-"):
        convert_natview(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        convert_natview(tiny_release, tmp_path / "full")
    broken = tmp_path / "broken" / "sub-01" / "ses-01" / "eeg"
    broken.mkdir(parents=True)
    (broken / "sub-01_ses-01_task-rest_eeg.set").write_bytes(b"not a mat file")
    # a readable subject converted before the broken one: its files must not be left behind
    shutil.copytree(tiny_release / "sub-01", tmp_path / "broken" / "sub-00", copy_function=os.link)
    with pytest.raises(InputError, match="cannot be read"):
        convert_natview(tmp_path / "broken", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()  # no partial output


def test_markers_from_vmrk_when_set_has_none(tmp_path):
    """A .set without events: markers come from the .vmrk, spelled as BrainVision does."""
    from bids_app.io.brainvision import Marker, write_vmrk
    from bids_app.io.eeglab import write_set

    eeg = tmp_path / "release" / "sub-05" / "ses-02" / "eeg"
    eeg.mkdir(parents=True)
    stem = "sub-05_ses-02_task-rest"
    sfreq = 500.0
    data = np.random.default_rng(0).standard_normal((64, 3000)).astype(np.float32) * 1e-5
    write_set(eeg / f"{stem}_eeg.set", data, sfreq, [])
    markers = [Marker("New Segment", "", 0), Marker("Stimulus", "S1", 100)]
    markers += [Marker("Response", "R 128", 200 + 1050 * k) for k in range(2)]
    write_vmrk(eeg / f"{stem}_eeg.vmrk", markers)
    report = convert_natview(tmp_path / "release", tmp_path / "bids")
    assert any("from sub-05_ses-02_task-rest_eeg.vmrk" in r for r in report.repairs)
    events = pd.read_csv(tmp_path / "bids" / "sub-05/ses-02/eeg" / f"{stem}_events.tsv", sep="\t")
    assert list(events["value"]) == ["S  1", "R128", "R128"]
    assert list(events["sample"]) == [100, 200, 1250]
    assert list(events["trial_type"]) == ["task_start", "volume", "volume"]
    participants = pd.read_csv(tmp_path / "bids" / "participants.tsv", sep="\t")
    assert list(participants["participant_id"]) == ["sub-05"]
    assert run_validator(tmp_path / "bids").errors == []
