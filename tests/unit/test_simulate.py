"""Simulator orchestration: timeline, markers, release files and self-consistent truth."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import mne
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.io.brainvision import read_vmrk
from bids_app.io.validate import run_validator
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.dataset import (
    assemble_eeg,
    checker_blocks,
    load_run_truth,
    ocular_weights,
    run_timeline,
    simulate_dataset,
    sum_components,
)
from bids_app.simulate.release_eeg import run_markers, write_release_eeg

TINY = scenario.SCALES["tiny"]
#: A scale small enough to simulate twice in a test (determinism).
MINI = scenario.Scale(
    "mini",
    subjects=("01",),
    runs=(scenario.RunSpec("tp", 3, run="01"), scenario.RunSpec("tp", 3, run="02")),
    sfreq=500.0,
    matrix=(32, 32),
    n_slices=12,
    t1w_voxel_mm=4.0,
    video_size=(32, 24),
    extra_eeg_s=1.0,
)


def _read_set(path: Path) -> mne.io.BaseRaw:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 'boundary' events
        return mne.io.read_raw_eeglab(path, preload=True, verbose="error")


def test_run_timeline_is_sample_exact():
    tl = run_timeline(scenario.RunSpec("tp", 20, run="01"), TINY)
    samples = np.round(tl.volume_onsets_s * tl.sfreq).astype(int)
    assert np.all(np.diff(samples) == 10_500)  # NATVIEW: R128 exactly 10 500 samples apart
    assert samples[0] == int(TINY.extra_eeg_s * TINY.sfreq)
    assert tl.n_times == samples[-1] + 10_500 + samples[0]
    assert tl.stim_onset_s == tl.first_volume_s and tl.stim_duration_s == pytest.approx(42.0)
    checker = run_timeline(scenario.RunSpec("checker", 20), TINY)
    assert checker.stim_onset_s == pytest.approx(checker.first_volume_s + nv.TR)
    assert len(tl.slice_times) == 38 and max(tl.slice_times) == pytest.approx(2.0525)


def test_markers_follow_natview():
    sfreq, onsets = 5000.0, 3.0 + 2.1 * np.arange(10)
    n = int(round((onsets[-1] + 2.1 + 3.0) * sfreq))
    markers = run_markers(n_times=n, sfreq=sfreq, volume_onsets_s=onsets, stim_onset_s=3.0,
                          stim_end_s=24.0, task="tp")  # fmt: skip
    desc = [m.description for m in markers]
    assert desc.count("R128") == 10 and desc.count("S  1") == 1 and desc.count("S 99") == 1
    assert desc.count("S  5") == 20  # every second strictly inside the 21 s movie
    assert all(m.kind == "Response" for m in markers if m.description == "R128")
    sync = [m.sample for m in markers if m.kind == "SyncStatus"]
    assert np.all(np.diff(sync) == 10_000) and markers[0].kind == "New Segment"
    blocks = checker_blocks(np.r_[np.zeros(200), np.ones(200)].astype(bool), 10.0, 5.0, 40.0)
    assert blocks == [(5.0, 20.0, False), (25.0, 20.0, True)]
    checker = run_markers(n_times=n, sfreq=sfreq, volume_onsets_s=onsets, stim_onset_s=5.1,
                          stim_end_s=24.0, task="checker", checker_blocks=blocks[:1])  # fmt: skip
    cdesc = [m.description for m in checker]
    assert cdesc.count("S 10") == 1 and cdesc.count("S 11") == 19 and "S  5" not in cdesc


def test_release_eeg_round_trip(tmp_path):
    """Placeholder arrays through the release writer: .set data and markers come back."""
    sfreq, rng = 1000.0, np.random.default_rng(3)
    data = (rng.standard_normal((64, 8000)) * 2e-5).astype(np.float32)
    onsets = 1.0 + 2.1 * np.arange(3)
    markers = run_markers(n_times=8000, sfreq=sfreq, volume_onsets_s=onsets, stim_onset_s=1.0,
                          stim_end_s=7.0, task="rest")  # fmt: skip
    write_release_eeg(tmp_path, "sub-01_ses-01_task-rest", data, sfreq, markers, task="rest",
                      electrodes_stem="sub-01_ses-01")  # fmt: skip
    assert not list(tmp_path.glob("*.eeg")) and not list(tmp_path.glob("*coordsystem*"))
    raw = _read_set(tmp_path / "sub-01_ses-01_task-rest_eeg.set")
    assert raw.ch_names == list(nv.CHANNEL_NAMES) and raw.info["sfreq"] == sfreq
    assert np.max(np.abs(raw.get_data() - data)) < 1e-6 * np.max(np.abs(data))
    r128 = raw.annotations.onset[raw.annotations.description == "R128"]
    np.testing.assert_allclose(r128, onsets, atol=0.5 / sfreq)
    assert {"S  1", "S 99", "S  5"} <= set(raw.annotations.description)
    vmrk = read_vmrk(tmp_path / "sub-01_ses-01_task-rest_eeg.vmrk")
    assert [m.sample for m in vmrk if m.description == "R128"] == [1000, 3100, 5200]
    vhdr = (tmp_path / "sub-01_ses-01_task-rest_eeg.vhdr").read_text()
    assert "DataFile=sub-01_ses-01_task-rest_eeg.eeg" in vhdr  # points at a missing file
    electrodes = pd.read_csv(tmp_path / "sub-01_ses-01_electrodes.tsv", sep="\t")
    radius = np.linalg.norm(electrodes[["x", "y", "z"]].to_numpy(), axis=1)
    np.testing.assert_allclose(radius, 1.0, atol=1e-3)  # the release's unit sphere
    assert electrodes.set_index("name").loc["Fp1", "x"] > 0.8  # x points to the nose


def test_assemble_eeg_adds_up():
    rng = np.random.default_rng(1)
    n = 500
    art = SimpleNamespace(**{k: rng.standard_normal((64, n)) for k in
                             ("gradient", "bcg", "line", "noise")},
                          ecg=rng.standard_normal(n), eog=rng.standard_normal((2, n)))  # fmt: skip
    data, comps = assemble_eeg(rng.standard_normal((61, n)), art)
    assert data.dtype == np.float32 and data.shape == (64, n)
    np.testing.assert_array_equal(sum_components(comps), data)
    ecg = nv.CHANNEL_NAMES.index("ECG")
    np.testing.assert_allclose(
        data[ecg], comps["ecg"] + comps["gradient"][ecg] + comps["noise"][ecg], rtol=1e-5
    )
    assert not comps["bcg"][ecg].any() and not comps["line"][ecg].any()
    w = dict(zip(nv.EEG_CHANNELS, ocular_weights()))
    assert w["Fp1"] > 0.3 and w["Oz"] < 0.03 and w["Fp1"] > 5 * w["Cz"]


def test_tiny_release_layout(tiny_release):
    ses = tiny_release / "sub-01" / "ses-01"
    for stem in ("sub-01_ses-01_task-checker", "sub-01_ses-01_task-tp_run-01"):
        for suffix in ("_eeg.set", "_eeg.vhdr", "_eeg.vmrk", "_eeg.json", "_channels.tsv",
                       "_events.tsv"):  # fmt: skip
            assert (ses / "eeg" / f"{stem}{suffix}").is_file()
        assert not (ses / "eeg" / f"{stem}_eeg.eeg").exists()
        bold = nib.load(ses / "func" / f"{stem}_bold.nii.gz")
        assert bold.shape == (64, 64, 38, 20)
        sidecar = json.loads((ses / "func" / f"{stem}_bold.json").read_text())
        assert sidecar["RepetitionTime"] == nv.TR and len(sidecar["SliceTiming"]) == 38
        assert {"participant_id", "session_id", "modality"} <= set(sidecar)  # release defect
    assert (ses / "anat" / "sub-01_ses-01_T1w.nii.gz").is_file()
    assert (tiny_release / ".DS_Store").is_file()
    physio = ses / "eeg" / "sub-01_ses-01_task-tp_run-01_recording-eyetracking_physio.tsv.gz"
    table = pd.read_csv(physio, sep="\t", header=None, na_values=[], keep_default_na=False)
    blinks = (table[2] == "NaN").mean()
    assert len(table) == 4800 and 0.001 < blinks < 0.2  # 100 Hz, pupil lost during blinks
    assert not list(ses.glob("eeg/*coordsystem.json"))
    types = pd.read_csv(ses / "eeg" / "sub-01_ses-01_task-tp_run-01_channels.tsv", sep="\t")
    assert {"EEG", "eeg", "ECG", "EOG"} <= set(types["type"])  # inconsistent casing


def test_tiny_stimulus_video(tiny_release):
    import av

    video = tiny_release / "stimuli" / "The_Present_720x480.mp4"
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    stim_s = run_timeline(scenario.RunSpec("tp", 20, run="01"), TINY).stim_duration_s
    assert len(frames) == int(round(stim_s * TINY.video_fps))
    assert frames[0].shape == (TINY.video_size[1], TINY.video_size[0], 3)
    truth = np.load(tiny_release / "sourcedata/simulation/stimuli/task-tp_features.npz")
    luma = np.array([(f @ [0.299, 0.587, 0.114]).mean() / 255 for f in frames])  # Rec.601
    assert np.corrcoef(luma, truth["luminance"][: len(luma)])[0, 1] > 0.95


def test_tiny_truth_adds_up_to_recording(tiny_release):
    """The written .set equals the sum of the truth components to float32 precision."""
    eeg = tiny_release / "sub-01" / "ses-01" / "eeg"
    truth_dir = tiny_release / "sourcedata" / "simulation" / "sub-01"
    for stem in ("sub-01_ses-01_task-checker", "sub-01_ses-01_task-tp_run-01"):
        raw = _read_set(eeg / f"{stem}_eeg.set")
        truth = load_run_truth(truth_dir / f"{stem}_truth.npz")
        rebuilt = sum_components(truth)
        data = raw.get_data()
        scale = np.abs(rebuilt).max(axis=1, keepdims=True)
        assert np.all(np.abs(data - rebuilt) <= 2**-22 * scale + 1e-12)
        assert raw.info["sfreq"] == float(truth["sfreq"])
        r128 = raw.annotations.onset[raw.annotations.description == "R128"]
        np.testing.assert_allclose(r128, truth["volume_onsets_s"], atol=1e-9)
        assert len(r128) == 20
        # gradient dominates during the scan, neural EEG is in the tens of microvolts
        assert 2e-6 < np.std(truth["neural"]) < 1e-4
        assert np.std(truth["gradient"]) > 10 * np.std(truth["neural"])
        r_peaks = truth["r_peaks_s"]
        assert 0.5 < np.median(np.diff(r_peaks)) < 1.5  # physiological heart rate
        assert truth["source_waveforms"].shape[0] == len(truth["source_names"])


def test_tiny_truth_files(tiny_release):
    sim = tiny_release / "sourcedata" / "simulation"
    readme = (sim / "README").read_text()
    for word in ("_truth.npz", "_dipoles.json", "_motion.tsv", "_dependencies.tsv", "_mask"):
        assert word in readme
    deps = pd.read_csv(sim / "sub-01/sub-01_ses-01_task-tp_run-01_dependencies.tsv", sep="\t")
    assert len(deps) > 0 and set(deps["feature"]) <= set(scenario.PLANTED_FEATURES)
    truth = load_run_truth(sim / "sub-01/sub-01_ses-01_task-tp_run-01_truth.npz")
    n_s = truth["neural"].shape[1] / float(truth["sfreq"])
    assert deps["onset_s"].min() >= float(truth["stim_onset_s"]) and deps["onset_s"].max() < n_s
    feats = np.load(sim / "stimuli/task-tp_features.npz")
    lo = scenario.RESPONSE_WINDOW_S[0]
    for feature, group in deps.groupby("feature"):
        expected = feats[f"onsets_{feature}"] + float(truth["stim_onset_s"]) + lo
        dist = np.abs(group["onset_s"].to_numpy()[:, None] - expected[None, :]).min(axis=1)
        assert dist.max() < 1e-3  # windows start at the planted onsets (EEG time)
    np.testing.assert_allclose(deps["onset_bold_s"], deps["onset_s"] - truth["volume_onsets_s"][0],
                               atol=1e-3)  # fmt: skip
    dip = json.loads((sim / "sub-01/sub-01_ses-01_task-tp_run-01_dipoles.json").read_text())
    assert {d["name"] for d in dip["dipoles"]} == set(truth["source_names"])
    motion = pd.read_csv(sim / "sub-01/sub-01_ses-01_task-tp_run-01_motion.tsv", sep="\t")
    assert motion.shape == (20, 6)
    masks = sorted((sim / "sub-01").glob("*_mask.nii.gz"))
    assert len(masks) == 4 and all(nib.load(m).get_fdata().sum() > 5 for m in masks)


def test_simulation_is_deterministic(tmp_path):
    a = simulate_dataset(tmp_path / "a", scale=MINI, seed=7)
    b = simulate_dataset(tmp_path / "b", scale=MINI, seed=7)
    c = simulate_dataset(tmp_path / "c", scale=MINI, seed=8)
    rel = "sourcedata/simulation/sub-01/sub-01_ses-01_task-tp_run-01_truth.npz"
    ta, tb, tc = (load_run_truth(d / rel) for d in (a, b, c))
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key])
    assert not np.array_equal(ta["noise"], tc["noise"])
    bold = "sub-01/ses-01/func/sub-01_ses-01_task-tp_run-01_bold.nii.gz"
    np.testing.assert_array_equal(nib.load(a / bold).get_fdata(), nib.load(b / bold).get_fdata())
    with pytest.raises(FileExistsError):
        simulate_dataset(a, scale=MINI)
    # every run of a subject has the same planted anatomy: first volumes (no motion yet)
    # agree (r = 0.99; 0.49 when each run draws its own native -> MNI transform)
    first = [
        nib.load(a / bold.replace("run-01", f"run-{r}")).get_fdata()[..., 0].ravel()
        for r in ("01", "02")
    ]
    assert np.corrcoef(*first)[0, 1] > 0.97


def test_null_variant_plants_nothing(tiny_null_bids):
    sim = tiny_null_bids / "sourcedata" / "simulation" / "sub-01"
    assert not list(sim.glob("*_mask.nii.gz"))
    deps = pd.read_csv(sim / "sub-01_ses-01_task-tp_run-01_dependencies.tsv", sep="\t")
    assert len(deps) == 0
    assert json.loads((sim.parent / "simulation.json").read_text())["null"] is True
    result = run_validator(tiny_null_bids)  # layout="bids" writes a valid dataset
    assert result.errors == [], result.summary("error")


def test_truth_artifacts_regenerated_and_checked(tiny_release, tmp_path):
    """Artifacts are not stored at full rate but come back exactly; a mismatch is refused."""
    from bids_app.errors import InputError

    path = tiny_release / "sourcedata/simulation/sub-01/sub-01_ses-01_task-checker_truth.npz"
    with np.load(path) as npz:
        stored = dict(npz)
    assert not {"gradient", "bcg", "line", "noise"} & set(stored)
    assert stored["neural"].dtype == np.float32
    # release on disk: .set files + neural truth dominate (was 716 MB with every component)
    size = sum(f.stat().st_size for f in tiny_release.rglob("*") if f.is_file())
    assert size < 300e6, size
    stored["checksum_noise"] = stored["checksum_noise"] + 1
    np.savez(tmp_path / "bad_truth.npz", **stored)
    with pytest.raises(InputError, match="bad_truth.npz"):
        load_run_truth(tmp_path / "bad_truth.npz")
