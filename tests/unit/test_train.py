"""Training: determinism, checkpoints and resume, early stopping, torchrun equivalence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from bids_app.models import distributed
from bids_app.models.train import fit, load_model, make_model, model_bytes, predict
from bids_app.models.windows import WindowStore, split_windows
from bids_app.simulate.stimulus import simulate_windows

EPOCHS = 4


@pytest.fixture(scope="module")
def planted():
    pw = simulate_windows(
        n_subjects=1, n_runs=5, n_volumes=60, n_channels=6, n_voxels=60, n_planted=8, seed=2
    )
    split = split_windows(pw.meta, seed=0)
    return pw, {"eeg": pw.eeg, "fmri": pw.fmri}, split


def _model(pw, seed=0):
    return make_model(
        "vae1",
        seed=seed,
        eeg_shape=pw.eeg.shape[1:],
        n_voxels=pw.fmri.shape[1],
        latent_dim=4,
        hidden_dim=32,
    )


def _fit(pw, arrays, split, **kw):
    kw = {"epochs": EPOCHS, "batch_size": 32, "seed": 0, "device": "cpu", **kw}
    return fit(_model(pw), arrays, split["train"], split["val"], **kw)


def test_deterministic_per_seed(planted):
    pw, arrays, split = planted
    a, b = _fit(pw, arrays, split), _fit(pw, arrays, split)
    c = _fit(pw, arrays, split, seed=1)
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert a.history[-1]["train_loss"] != c.history[-1]["train_loss"]
    assert a.history[-1]["val_loss"] < a.history[0]["val_loss"]  # it learns


def test_resume_after_kill_continues_from_checkpoint(planted, tmp_path):
    pw, arrays, split = planted
    ckpt = tmp_path / "vae1.ckpt"
    full = _fit(pw, arrays, split)

    def kill(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt  # the process dies right after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        _fit(pw, arrays, split, checkpoint=ckpt, callback=kill)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
    assert len(json.loads((tmp_path / "metrics.json").read_text())) == 2
    resumed = _fit(pw, arrays, split, checkpoint=ckpt)
    assert resumed.resumed_from == 2 and len(resumed.history) == EPOCHS
    np.testing.assert_allclose(
        [h["val_loss"] for h in resumed.history], [h["val_loss"] for h in full.history], rtol=1e-6
    )
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_early_stopping(planted):
    pw, arrays, split = planted
    rng = np.random.default_rng(0)
    noise = {
        "eeg": rng.normal(size=pw.eeg.shape).astype(np.float32),
        "fmri": rng.normal(size=pw.fmri.shape).astype(np.float32),
    }
    res = _fit(pw, noise, split, epochs=40, patience=2, learning_rate=3e-3)
    assert res.stopped_early and len(res.history) < 40
    assert res.best_epoch == len(res.history) - 3


def test_initial_weights_are_a_candidate(planted):
    pw, arrays, split = planted
    from bids_app.models.initialise import init_from_pca

    def start():
        return init_from_pca(_model(pw), arrays, split["train"], mode="block")

    initial = {k: v.clone() for k, v in start().state_dict().items()}
    kw = {"epochs": 3, "batch_size": 32, "seed": 0, "device": "cpu", "learning_rate": 3e-3}
    kept = fit(start(), arrays, split["train"], split["val"], include_initial=True, **kw)
    best = min([kept.extra["initial_val_loss"]] + [h["val_loss"] for h in kept.history])
    assert kept.best_val_loss == best
    moved = fit(start(), arrays, split["train"], split["val"], include_initial=False, **kw)
    assert moved.best_epoch >= 0 and "initial_val_loss" not in moved.extra
    same = fit(start(), arrays, split["train"], split["val"], include_initial=True,
               **{**kw, "learning_rate": 0.0})  # fmt: skip
    assert same.best_epoch == -1
    for k, v in same.model.state_dict().items():
        torch.testing.assert_close(v, initial[k])


def test_model_file_roundtrip(planted, tmp_path):
    pw, arrays, split = planted
    res = _fit(pw, arrays, split, epochs=1)
    path = tmp_path / "vae1.pt"
    path.write_bytes(model_bytes(res.model, {"seed": 0}))
    loaded = load_model(path)
    idx = split["test"][:10]
    np.testing.assert_array_equal(
        predict(loaded, arrays, idx)["fmri_mean"], predict(res.model, arrays, idx)["fmri_mean"]
    )
    assert loaded.metadata == {"seed": 0}


@pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun missing",
)
def test_torchrun_two_processes_matches_single_process(planted, tmp_path):
    pw, _, _ = planted
    vox = np.argwhere(np.ones((6, 10, 1), bool))
    store = WindowStore(
        tmp_path / "w",
        capacity=len(pw.meta),
        eeg_shape=pw.eeg.shape[1:],
        n_voxels=pw.fmri.shape[1],
    )
    store.append(pw.eeg, pw.fmri, pw.meta, None)
    store.finish(
        channel_names=[f"c{i}" for i in range(6)],
        sfreq=5.0,
        voxel_indices=vox,
        mask_affine=np.eye(4),
        mask_shape=(6, 10, 1),
    )
    args = [
        "--windows",
        str(tmp_path / "w"),
        "--epochs",
        "6",
        "--batch-size",
        "32",
        "--latent-dim",
        "4",
        "--hidden-dim",
        "32",
        "--device",
        "cpu",
        "--seed",
        "0",
    ]
    assert distributed.main(args + ["--out", str(tmp_path / "single")]) == 0
    torchrun = shutil.which("torchrun") or os.path.join(
        os.path.dirname(sys.executable), "torchrun"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "bids_app.models.distributed",
            *args,
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    # Same global batch, different sample order: equal validation loss within 1 %
    # (measured 448.03 single process vs 447.99 with 2 gloo ranks).
    assert abs(ddp["best_val_loss"] - single["best_val_loss"]) < 0.01 * single["best_val_loss"]
    assert (tmp_path / "ddp" / "vae1.pt").exists()
