"""EEG-fMRI windows: timing, z-scoring, splits, memory-mapped storage."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.models.windows import (
    WindowStore,
    eeg_windows,
    group_mask,
    load_windows,
    split_windows,
)


def test_eeg_windows_timestamps_map_to_run_time():
    sfreq, n = 250.0, 250 * 60
    t = np.arange(n) / sfreq
    eeg = np.stack([np.sin(2 * np.pi * 0.13 * t), np.cos(2 * np.pi * 0.31 * t + 1)])
    vol = 3.0 + 2.1 * np.arange(26)  # some volumes start too early for an 8.4 s window
    win, kept = eeg_windows(eeg, sfreq=sfreq, volume_times=vol, window_s=8.4, out_sfreq=25.0)
    assert win.shape == (int(kept.sum()), 2, 210) and win.dtype == np.float32
    np.testing.assert_array_equal(kept, vol - 8.4 >= 0)
    offsets = (np.arange(210) - 210) / 25.0
    abs_t = vol[kept][:, None] + offsets[None, :]  # window index + timestamp -> run time
    # the run-level z-scored signal evaluated at those absolute times
    truth = np.stack(
        [np.sin(2 * np.pi * 0.13 * abs_t), np.cos(2 * np.pi * 0.31 * abs_t + 1)], axis=1
    )
    truth = (truth - eeg.mean(axis=1)[None, :, None]) / eeg.std(axis=1)[None, :, None]
    assert np.max(np.abs(win - truth)) < 0.02


def test_split_by_run_and_subject_never_mixes_runs():
    meta = pd.DataFrame(
        {
            "subject": np.repeat(["01", "02", "03", "04"], 60),
            "session": "01",
            "task": "tp",
            "run": np.tile(np.repeat(["01", "02", "03"], 20), 4),
        }
    )
    for by in ("run", "subject"):
        sp = split_windows(meta, by=by, val_fraction=0.25, test_fraction=0.25, seed=1)
        key = ["subject"] if by == "subject" else ["subject", "run"]
        labels = meta[key].astype(str).agg("/".join, axis=1).to_numpy()
        sets = {k: set(labels[v]) for k, v in sp.items()}
        assert all(len(v) for v in sp.values())
        assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
        assert not (sets["val"] & sets["test"])
        assert sum(len(v) for v in sp.values()) == len(meta)
    a = split_windows(meta, seed=3)
    b = split_windows(meta, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_split_fallback_keeps_contiguous_blocks_with_gap():
    meta = pd.DataFrame(
        {"subject": "01", "session": "01", "task": "tp", "run": "01", "volume": np.arange(100)}
    )
    sp = split_windows(meta, val_fraction=0.2, test_fraction=0.2)
    assert sp["train"].max() + 4 < sp["val"].min() and sp["val"].max() + 4 < sp["test"].min()


def _runs(spec):
    """Windows metadata: ``spec`` maps subject -> list of (task, run); 10 windows per run."""
    rows = [(sub, t, r) for sub, runs in spec.items() for t, r in runs for _ in range(10)]
    return pd.DataFrame(rows, columns=["subject", "task", "run"]).assign(session="01")


def _run_folds(meta, sp):
    labels = meta[["subject", "session", "task", "run"]].agg("/".join, axis=1).to_numpy()
    return {k: set(labels[v]) for k, v in sp.items()}


def test_split_stratified_by_task_holds_out_every_task(caplog):
    # demo-like: 2 subjects x (checker, tp run 01, tp run 02) plus a third task with 5 runs
    spec = {s: [("checker", "01"), ("tp", "01"), ("tp", "02")] for s in ("01", "02")}
    spec["03"] = [("rest", f"{r:02d}") for r in range(1, 6)]
    spec["04"] = [("tp", "01")]
    meta = _runs(spec)
    tasks = dict(zip(meta[["subject", "session", "task", "run"]].agg("/".join, axis=1),
                     meta["task"]))  # fmt: skip
    seen_test_checker = set()
    for seed in range(8):
        with caplog.at_level("WARNING", logger="bids_app.models.windows"):
            sp = split_windows(meta, seed=seed)
        folds = _run_folds(meta, sp)
        task_folds = {k: {tasks[r] for r in v} for k, v in folds.items()}
        # tasks with >= 3 runs (tp: 5, rest: 5) are in all three folds
        for task in ("tp", "rest"):
            assert all(task in task_folds[k] for k in ("train", "val", "test")), (seed, task)
        # a task with 2 runs: one trained on, one tested, none validated (logged)
        assert "checker" in task_folds["train"] and "checker" in task_folds["test"]
        assert "checker" not in task_folds["val"]
        seen_test_checker |= folds["test"] & {"01/01/checker/01", "02/01/checker/01"}
        assert not (folds["train"] & folds["test"]) and not (folds["val"] & folds["test"])
        assert sum(len(v) for v in sp.values()) == len(meta)
        assert split_windows(meta, seed=seed)["test"].tolist() == sp["test"].tolist()
    assert "task 'checker' has 2 run(s)" in caplog.text
    assert len(seen_test_checker) == 2  # the seed decides which checker run is held out
    # without stratification the demo's only test run can be a checker run
    demo = _runs({s: spec[s] for s in ("01", "02")})
    plain = [_run_folds(demo, split_windows(demo, stratify=False, seed=s))["test"]
             for s in range(8)]  # fmt: skip
    assert any(all("checker" in r for r in t) for t in plain)
    for s in range(8):
        t = _run_folds(demo, split_windows(demo, seed=s))["test"]
        assert {r.split("/")[2] for r in t} == {"checker", "tp"}


def test_split_stratified_falls_back_when_tasks_have_few_runs(caplog):
    # three tasks with one run each: no task can give a validation run
    meta = _runs({"01": [("a", "01"), ("b", "01"), ("c", "01")]})
    with caplog.at_level("WARNING", logger="bids_app.models.windows"):
        sp = split_windows(meta, seed=0)
    assert all(len(v) == 10 for v in sp.values())
    assert "regardless of task" in caplog.text


def test_group_mask_is_intersection_on_common_grid():
    a = np.zeros((6, 6, 6), np.uint8)
    a[1:5, 1:5, 1:5] = 1
    b = np.zeros_like(a)
    b[2:6, 2:6, 2:6] = 1
    m = group_mask([nib.Nifti1Image(a, np.eye(4)), nib.Nifti1Image(b, np.eye(4))])
    assert int(np.asarray(m.dataobj).sum()) == 27


def test_window_store_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    vox = np.argwhere(np.ones((3, 3, 2), bool))
    store = WindowStore(
        tmp_path / "w", capacity=50, eeg_shape=(4, 10), n_voxels=len(vox), n_features=2
    )
    parts = []
    for run in ("01", "02"):
        e = rng.normal(size=(20, 4, 10)).astype(np.float32)
        f = rng.normal(size=(20, len(vox))).astype(np.float32)
        meta = pd.DataFrame(
            {
                "subject": "01",
                "session": "01",
                "task": "tp",
                "run": run,
                "volume": np.arange(20),
                "time_s": 10 + 2.1 * np.arange(20),
                "has_stimulus": True,
            }
        )
        store.append(e, f, meta, rng.normal(size=(20, 2)).astype(np.float32))
        parts.append((e, f))
    ws = store.finish(
        channel_names=list("abcd"),
        sfreq=25.0,
        voxel_indices=vox,
        mask_affine=np.diag([3, 3, 3, 1.0]),
        mask_shape=(3, 3, 2),
        feature_names=["lum", "mot"],
    )
    assert isinstance(ws.eeg, np.memmap) and len(ws) == 40
    np.testing.assert_array_equal(ws.eeg[20:], parts[1][0])
    np.testing.assert_array_equal(load_windows(tmp_path / "w").fmri[:20], parts[0][1])
    assert ws.times(1, 9) == pytest.approx(10 + 2.1 - 1 / 25.0)
    img = ws.voxel_image(np.arange(len(vox), dtype=float))
    assert img.shape == (3, 3, 2) and float(np.asarray(img.dataobj)[2, 2, 1]) == len(vox) - 1
    np.testing.assert_allclose(ws.voxel_mni()[-1], [6, 6, 3])
    with pytest.raises(ValueError, match="capacity"):
        store.append(np.zeros((20, 4, 10)), np.zeros((20, len(vox))), meta, None)


def _write_derivatives(out, stimuli, rng):
    """A tiny participant-derivatives tree: 4 runs of preprocessed EEG + MNI BOLD."""
    import mne

    from bids_app.config import Config
    from bids_app.io.derivatives import DerivativesWriter
    from bids_app.simulate.stimulus import simulate_stimulus, write_video

    writer = DerivativesWriter(out, Config())
    n_vol, tr, t0, sfreq = 30, 2.1, 10.0, 100.0
    stim = simulate_stimulus("tp", n_vol * tr + 5, 10.0, (64, 48), rng)
    write_video(stimuli / "The_Present_720x480.mp4", stim.frames, 10.0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for i, (task, run) in enumerate(
        [("tp", "01"), ("tp", "02"), ("checker", None), ("rest", None)]
    ):
        ents = {"sub": "01", "ses": "01", "task": task, "run": run}
        n = int((t0 + n_vol * tr + 3) * sfreq)
        info = mne.create_info(["O1", "Oz", "O2", "Cz"], sfreq, "eeg")
        raw = mne.io.RawArray(rng.normal(size=(4, n)) * 1e-5, info, verbose=False)
        onsets = [t0] + list(t0 + tr * np.arange(n_vol))
        desc = ["Stimulus/S  1"] + ["Response/R128"] * n_vol
        durations = [0.0] * len(onsets)
        if task == "checker":
            onsets += [t0 + 20, t0 + 60]
            desc += ["Stimulus/S 25"] * 2
            durations += [0.0, 0.0]
        if task == "rest":  # a bad segment: the 6 windows whose EEG overlaps it are dropped
            onsets, desc, durations = onsets + [t0 + 30], desc + ["BAD_burst"], durations + [3.0]
        raw.set_annotations(mne.Annotations(onsets, durations, desc))
        writer.write_raw_brainvision(
            writer.build_path({**ents, "desc": "preproc"}, "eeg", ".vhdr", datatype="eeg"), raw
        )
        space = {"space": "MNI152NLin2009cAsym", "res": "3"}
        bold = rng.normal(100, 1, size=(6, 6, 5, n_vol)).astype(np.float32)
        mask = np.zeros((6, 6, 5), np.uint8)
        mask[1:5, 1:5, i % 2 : 4 + i % 2] = 1
        writer.write_nifti(
            writer.build_path(
                {**ents, **space, "desc": "preproc"}, "bold", ".nii.gz", datatype="func"
            ),
            nib.Nifti1Image(bold, affine),
            sidecar={"RepetitionTime": tr, "StartTime": 1.026},  # fMRIPrep's reference
        )
        writer.write_nifti(
            writer.build_path(
                {**ents, **space, "desc": "brain"}, "mask", ".nii.gz", datatype="func"
            ),
            nib.Nifti1Image(mask, affine),
        )
    return writer, stim, t0, tr, n_vol


def test_bold_reference_time_from_sidecar():
    from bids_app.workflows.models_inputs import _bold_reference_time

    assert _bold_reference_time({"StartTime": 1.026}, 2.1, 0.5) == pytest.approx(1.026)
    # NATVIEW-like SliceTiming 0 .. 2.052 s: fMRIPrep's min + 0.5 * (max - min)
    timing = list(np.linspace(0.0, 2.052, 35))
    assert _bold_reference_time({"SliceTiming": timing}, 2.1, 0.5) == pytest.approx(1.026)
    assert _bold_reference_time({}, 2.1, 0.5) == pytest.approx(1.05)


def test_models_workflow_on_derivatives(tmp_path):
    from bids_app.config import Config
    from bids_app.workflows.models import run_models_workflow

    out, stimuli = tmp_path / "out", tmp_path / "stimuli"
    writer, stim, t0, tr, n_vol = _write_derivatives(out, stimuli, np.random.default_rng(0))
    config = Config().replace(
        "execution", output_dir=out, stimuli_dir=stimuli, work_dir=tmp_path / "work", verbosity=-1
    )
    config = config.replace("model", epochs=2, latent_dim=3, hidden_dim=16, eeg_window_sfreq=10.0,
                            fmri_resolution_mm=3.0)  # the derivatives' grid: no averaging
    res = run_models_workflow(out, config, writer)
    ws = res.windows
    assert len(ws) == 4 * n_vol - 6 and ws.eeg.shape[1:] == (4, 84)
    rest = ws.meta[ws.meta["task"] == "rest"]["volume"].to_numpy()
    np.testing.assert_array_equal(rest, np.setdiff1d(np.arange(n_vol), np.arange(14, 20)))
    assert ws.fmri.shape[1] == 4 * 4 * 3  # intersection of the shifted masks
    assert ws.channel_names == ["O1", "O2", "Cz", "Oz"]  # NATVIEW cap order
    meta = ws.meta
    # a window ends at the time its BOLD volume represents: R128 + the sidecar's StartTime
    # (1.026 s, not slice_time_ref * TR = 1.05 s); markers sit on the 100 Hz sample grid
    tp1 = meta[meta["task"] == "tp"].iloc[:n_vol]
    np.testing.assert_allclose(
        tp1["time_s"], t0 + tr * tp1["volume"].to_numpy() + 1.026, atol=0.0101
    )
    np.testing.assert_array_equal(meta["has_stimulus"], meta["task"] != "rest")
    assert ws.feature_names[0] == "luminance" and ws.feature_names[-1] == "checker"
    # stimulus alignment: window luminance = planted luminance over [t - 8.4, t]
    tp = (meta["task"] == "tp").to_numpy()
    t_end = meta["time_s"].to_numpy()[tp] - t0  # movie time (movie starts at S 1)
    planted = [
        stim.features["luminance"][(stim.times >= e - 8.4) & (stim.times <= e)].mean()
        for e in t_end
    ]
    assert np.corrcoef(ws.stimulus[tp, 0], planted)[0, 1] > 0.95
    chk = (meta["task"] == "checker").to_numpy()
    t_mid = meta["time_s"].to_numpy()[chk] - t0
    frac = [
        np.mean(((s >= 20) & (s < 40)) | ((s >= 60) & (s < 80)))
        for s in (t_mid[:, None] - 8.4 + np.linspace(0, 8.4, 85)[None, :])
    ]
    assert np.corrcoef(ws.stimulus[chk, -1], frac)[0, 1] > 0.95
    for name in ("vae1", "vae2"):
        assert res.paths[name].exists()
        side = __import__("json").loads(res.paths[f"{name}_json"].read_text())
        assert side["Architecture"]["kind"] == name and side["RandomSeed"] == 0
        assert "baseline_comparison" not in side["Evaluation"]
    # every held-out claim beside its baselines, the band-power ridge among them; the
    # validation run is a checker run, so the movie features have no VAE-2 ridge
    sides = {n: __import__("json").loads(res.paths[f"{n}_json"].read_text())
             for n in ("vae1", "vae2")}
    assert any("band-power ridge" in row["baselines"] for row in sides["vae1"]["Baselines"])
    assert "luminance" in sides["vae2"]["Evaluation"]["ridge_missing"]
    assert res.metrics["vae2"]["n_test_windows"] > 0
    assert all(p.exists() for p in res.figures.values()) and len(res.figures) >= 3


def test_block_averager_equals_naive_block_means():
    from bids_app.models.resample import BlockAverager, resolution_label

    rng = np.random.default_rng(3)
    shape = (9, 8, 7)
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    mask = rng.random(shape) < 0.7
    fine = np.argwhere(mask)
    data = rng.normal(size=(len(fine), 5)).astype(np.float32)
    avg = BlockAverager(fine, affine, shape, resolution_mm=6.0, min_fraction=0.5)
    assert avg.shape == (3, 3, 3) and resolution_label(6.0) == "6"
    assert resolution_label(4.5) == "4p5"
    np.testing.assert_allclose(np.abs(np.diag(avg.affine)[:3]), 6.0)
    out = avg.transform(data)
    assert out.shape == (avg.n_voxels, 5)
    block = fine // 3
    for c, ijk in enumerate(avg.voxel_indices):
        inside = (block == ijk).all(axis=1)
        assert inside.sum() >= 0.5 * 27
        np.testing.assert_allclose(out[c], data[inside].mean(axis=0), rtol=1e-5, atol=1e-6)
        # the coarse voxel's centre is the centre of its 3x3x3 block of fine voxels
        centre = nib.affines.apply_affine(affine, ijk * 3 + 1.0)
        np.testing.assert_allclose(nib.affines.apply_affine(avg.affine, ijk), centre)
    # blocks less than half inside the mask are dropped
    counts = np.bincount(np.ravel_multi_index(block.T, (3, 3, 3)), minlength=27)
    assert avg.n_voxels == int((counts >= 13.5).sum())
    ident = BlockAverager(fine, affine, shape, resolution_mm=0.0)
    assert ident.n_voxels == len(fine) and ident.transform(data) is not None
    np.testing.assert_array_equal(ident.transform(data), data)
    assert BlockAverager(fine, affine, shape, resolution_mm=2.0).matrix is None
