"""Validation against planted truth: each check on synthetic inputs with known answers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import mne
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.workflows import validation as val
from bids_app.workflows import validation_group as vg

SFREQ, OUT_SFREQ, CHANNELS = 1000.0, 250.0, ["Fp1", "Fz", "Cz", "Pz", "Oz", "O1", "O2", "T7"]


def test_make_check_compares_with_its_mark_and_nan_fails():
    assert val.make_check("c", "i", 19.9, "<=", 20.0, "mm").passed
    assert val.make_check("c", "i", 20.0, "<=", 20.0, "mm").mark == "<= 20 mm"
    assert not val.make_check("c", "i", 20.1, "<=", 20.0).passed
    assert not val.make_check("c", "i", 0.05, "<", 0.05).passed
    assert not val.make_check("c", "i", float("nan"), ">=", 0.8).passed
    assert val.make_check("c", "i", 1, ">=", 1).passed


def test_truth_folder_only_for_simulated_datasets(tmp_path):
    assert val.truth_folder(None) is None and val.truth_folder(tmp_path) is None
    folder = tmp_path / "sourcedata" / "simulation"
    folder.mkdir(parents=True)
    assert val.truth_folder(tmp_path) is None  # no simulation.json: not the simulator's
    (folder / "simulation.json").write_text("{}")
    assert val.truth_folder(tmp_path) == folder


def _eeg_truth(seed: int = 0) -> dict:
    """40 s at 1 kHz: neural EEG, a gradient at slice harmonics and a beat-locked BCG."""
    rng = np.random.default_rng(seed)
    n = int(40 * SFREQ)
    t = np.arange(n) / SFREQ
    slice_freq = 38 / 2.1
    gradient = np.zeros((len(CHANNELS), n))
    for k in (1, 2):
        gradient += 2e-4 * np.sin(2 * np.pi * k * slice_freq * t + rng.uniform(0, 6, (8, 1)))
    r_peaks = np.arange(1.0, 39.0, 0.9)
    bcg = np.zeros((len(CHANNELS), n))
    shape = np.hanning(300) * rng.normal(1, 0.3, (8, 1)) * 5e-5
    for r in r_peaks:
        i = int((r + 0.1) * SFREQ)
        bcg[:, i:i + 300] += shape
    return {"neural": rng.normal(0, 1e-5, (len(CHANNELS), n)), "gradient": gradient,
            "bcg": bcg, "sfreq": np.array(SFREQ), "eeg_channels": np.array(CHANNELS),
            "ch_names": np.array(CHANNELS), "r_peaks_s": r_peaks,
            "slice_onsets_s": np.arange(0, 40, 1 / slice_freq)}


@pytest.mark.parametrize("left, passes", [(0.0, True), (0.1, False)])
def test_eeg_checks_score_the_residual_gradient_and_bcg(left, passes):
    """Cleaning that leaves nothing passes both marks; leaving 10 % of each fails both."""
    truth = _eeg_truth()
    keys = ("neural", "gradient", "bcg")
    planted = val._planted_eeg(truth, keys, CHANNELS, OUT_SFREQ, 0.3, 50.0, 10_000)
    rng = np.random.default_rng(1)
    clean = (planted["neural"] + left * (planted["gradient"] + planted["bcg"])
             + rng.normal(0, 1e-7, planted["neural"].shape))
    raw = mne.io.RawArray(clean, mne.create_info(CHANNELS, OUT_SFREQ, "eeg"), verbose="error")
    rows = val.eeg_checks(raw, truth, 0.3, 50.0, "task-x")
    assert [r.check.split(":")[0] for r in rows] == ["gradient", "BCG"]
    down, locked = rows[0].value, rows[1].value
    print(f"left {left}: harmonics down {down:.1f} dB, beat-locked residual {locked:.4f}")
    assert [r.passed for r in rows] == [passes, passes]
    if left:  # 10 % of the gradient left: 20 dB down; at least 10 % of the BCG locked
        assert down == pytest.approx(20.0, abs=0.5) and locked >= 0.09


def _grid():
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    affine[:3, 3] = -50
    ijk = np.argwhere(np.ones((11, 11, 11), bool))
    mask = nib.Nifti1Image(np.ones((11, 11, 11), np.uint8), affine)
    grid = SimpleNamespace(voxel_ijk=ijk, mask_img=mask,
                           voxel_mm=nib.affines.apply_affine(affine, ijk))
    grid.rr_mm = grid.voxel_mm
    return grid


def test_localisation_error_per_source_and_shared_bands():
    grid = _grid()
    rng = np.random.default_rng(0)
    near = lambda xyz: np.exp(-((grid.rr_mm - xyz) ** 2).sum(1) / 200.0)  # noqa: E731
    a, b = np.array([0.0, -50, 10]), np.array([30.0, 20, -20])
    course_a, course_b = rng.uniform(1, 2, 30), rng.uniform(1, 2, 30)
    power = 2.0 * course_a[:, None] * near(a) + course_b[:, None] * near(b)
    maps = SimpleNamespace(grid=grid, source_power={"alpha": power, "beta": near(b)[None]},
                           window_onsets_s=np.arange(30) * 2.0, window_length_s=2.0)
    # planted power sampled at 10 Hz over the 60 s run, constant within each window
    truth = {"neural": np.zeros((1, 600)), "sfreq": np.array(10.0),
             "source_power_a": np.repeat(course_a, 20), "source_power_b": np.repeat(course_b, 20)}
    dipoles = [{"name": "a", "band": "alpha", "position_mm": a.tolist()},
               {"name": "b", "band": "alpha", "position_mm": b.tolist()},
               {"name": "c", "band": "beta", "position_mm": [0.0, 0.0, 0.0]}]
    rows = val.localisation_checks(maps, dipoles, truth, "run")
    errors = [r.value for r in rows]
    print("localisation errors (mm):", errors)
    # a and b share alpha: each is found by its own time course, not the stronger peak
    assert errors[0] == pytest.approx(0.0) and errors[1] == pytest.approx(0.0)
    assert errors[2] == pytest.approx(np.linalg.norm(b)) and not rows[2].passed


def test_coupling_recall_and_false_positive_rate():
    grid = _grid()
    n = len(grid.voxel_ijk)
    region = np.zeros((11, 11, 11), np.uint8)
    region[2:4, 2:4, 2:4] = 1  # 8 planted voxels
    masks = {"src": nib.Nifti1Image(region, grid.mask_img.affine)}
    inside = region[tuple(grid.voxel_ijk.T)] > 0
    q_glob, q_local = np.ones(n), np.ones(n)
    q_glob[np.flatnonzero(inside)[:3]] = 0.01  # 3 found by the global test
    q_local[np.flatnonzero(inside)[3:7]] = 0.01  # 4 more by the source-resolved test
    q_local[np.flatnonzero(~inside)[:2]] = 0.01  # 2 false positives
    res = SimpleNamespace(q=q_glob, local_q=q_local)
    coupling = SimpleNamespace(bands={"alpha": res}, source_maps=SimpleNamespace(grid=grid))
    rows = val.coupling_checks(coupling, masks, [{"name": "src", "band": "alpha"}], 0.05, "r")
    assert rows[0].value == pytest.approx(7 / 8) and rows[0].passed
    assert rows[1].value == pytest.approx(2 / (n - 8)) and not rows[1].passed


def _planted(tmp_path, null: bool = False) -> vg.PlantedTruth:
    folder = tmp_path / "sourcedata" / "simulation"
    (folder / "sub-01").mkdir(parents=True)
    (folder / "simulation.json").write_text(json.dumps({"null": null}))
    pd.DataFrame({"onset_s": [10.0, 30.0], "duration_s": [0.4, 0.4],
                  "feature": ["luminance", "luminance"], "source": ["lum", "lum"],
                  "onset_bold_s": [7.0, 27.0]}).to_csv(
        folder / "sub-01" / "sub-01_ses-01_task-tp_run-01_dependencies.tsv", sep="\t",
        index=False)
    region = np.zeros((11, 11, 11), np.uint8)
    region[5:7, 2:4, 5:7] = 1
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    affine[:3, 3] = -50
    nib.save(nib.Nifti1Image(region, affine), folder / "sub-01" /
             "sub-01_space-MNI152NLin2009cAsym_source-lum_mask.nii.gz")
    return vg.load_planted_truth(folder)


def test_score_annotations_per_planted_link(tmp_path):
    truth = _planted(tmp_path)
    assert truth.links["run"].tolist() == ["01/01/tp/01"] * 2 and not truth.null
    eeg = pd.DataFrame({"unit": [1, 2, 3], "features": ["luminance", "luminance+motion",
                                                        "motion"],
                        "run": ["01/01/tp/01", "01/01/tp/01", "01/01/tp/01"],
                        "time_s": [10.2, 30.6, 10.1]})  # planted, within 0.5 s, wrong feature
    vox = pd.DataFrame({"voxel": [0, 1], "features": ["luminance", "luminance"],
                        "x": [0.0, 40.0], "y": [-30.0, -30.0], "z": [0.0, 0.0]})
    table = vg.stack_annotations({"eeg": eeg, "fmri": vox})
    links = vg.score_annotations(table, truth)
    assert links[["feature", "source", "eeg_units", "voxels", "found"]].values.tolist() == [
        ["luminance", "lum", 2, 1, True]]
    assert links["precision"].tolist() == [pytest.approx(3 / 4)]  # 4 units name luminance
    score = vg.annotation_precision(table, truth)
    assert score == {"units": 5, "planted": 3, "precision": pytest.approx(0.6)}
    empty = vg.stack_annotations({"eeg": eeg.iloc[:0], "fmri": None})
    assert not vg.score_annotations(empty, truth)["found"].any()
    assert np.isnan(vg.annotation_precision(empty, truth)["precision"])


def test_validate_group_rows_and_null(tmp_path):
    _planted(tmp_path)
    claims = [{"metric": "m", "value": 0.3, "baselines": {"ridge": 0.2, "pca": 0.1},
               "best_baseline": "ridge"}]
    models = SimpleNamespace(metrics={"vae1": {"baseline_comparison": claims}})
    eeg = pd.DataFrame({"unit": [1], "features": ["luminance"], "run": ["01/01/tp/01"],
                        "time_s": [10.2]})
    masking = SimpleNamespace(annotations={"eeg": eeg, "fmri": None})
    rows = vg.validate_group(models, masking, tmp_path)
    assert [(r.check, r.passed) for r in rows] == [
        ("model skill minus best baseline", True), ("annotation recall", True),
        ("annotation precision", True)]
    assert rows[0].value == pytest.approx(0.1)
    null_dir = tmp_path / "null"
    _planted(null_dir, null=True)
    rows = vg.validate_group(None, masking, null_dir)
    assert [(r.check, r.value, r.passed) for r in rows] == [
        ("annotated units (null: nothing planted)", 1.0, False)]
    assert vg.validate_group(models, masking, tmp_path / "real") == []
