"""Feeding windows to the device: host, resident (float16) and prefetch give the same batches.

The resident and prefetch modes exist for GPUs; they run on CPU here (prefetch without
pinned memory) so their data path is tested on every machine. On a machine with CUDA the
last test runs the same checks on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_app.models.feed import WindowFeed, choose_feed, host_batch, resident_bytes
from bids_app.models.train import fit, make_model
from bids_app.models.windows import split_windows
from bids_app.simulate.stimulus import simulate_windows

KEYS = ("eeg", "fmri")


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    pw = simulate_windows(n_subjects=1, n_runs=4, n_volumes=40, n_channels=5, n_voxels=30,
                          n_planted=4, seed=3)
    root = tmp_path_factory.mktemp("feed")
    arrays = {}
    for k, a in (("eeg", pw.eeg), ("fmri", pw.fmri)):  # memory-mapped, as in training
        np.save(root / f"{k}.npy", a.astype(np.float32))
        arrays[k] = np.load(root / f"{k}.npy", mmap_mode="r")
    return pw, arrays


def _epoch(feed: WindowFeed, order: np.ndarray, batch: int) -> list[tuple[int, dict]]:
    return list(feed.batches(order, batch))


def test_host_batches_are_the_sorted_reads(windows):
    _, arrays = windows
    idx = np.array([17, 3, 40, 9])
    batch = host_batch(arrays, idx, KEYS, torch.device("cpu"))
    assert batch["eeg"].dtype == torch.float32
    np.testing.assert_array_equal(batch["eeg"].numpy(), arrays["eeg"][np.sort(idx)])
    np.testing.assert_array_equal(batch["fmri"].numpy(), arrays["fmri"][np.sort(idx)])


def test_prefetch_equals_host_exactly(windows):
    _, arrays = windows
    order = np.random.default_rng(0).permutation(len(arrays["eeg"]))
    cpu = torch.device("cpu")
    host = _epoch(WindowFeed(arrays, KEYS, cpu, "host"), order, 23)
    pre = _epoch(WindowFeed(arrays, KEYS, cpu, "prefetch", prefetch_depth=2), order, 23)
    assert [n for n, _ in pre] == [n for n, _ in host] == [23] * 6 + [len(order) - 138]
    for (_, a), (_, b) in zip(host, pre):
        for k in KEYS:
            assert torch.equal(a[k], b[k])


def test_prefetch_stops_cleanly_when_the_consumer_breaks(windows):
    _, arrays = windows
    feed = WindowFeed(arrays, KEYS, torch.device("cpu"), "prefetch", prefetch_depth=1)
    for i, _ in enumerate(feed.batches(np.arange(len(arrays["eeg"])), 4)):
        if i == 2:
            break
    import threading

    assert not any(t.name == "eegfmri-window-reader" and t.is_alive()
                   for t in threading.enumerate())


def test_resident_float16_is_within_half_precision(windows):
    _, arrays = windows
    feed = WindowFeed(arrays, KEYS, torch.device("cpu"), "resident")
    assert feed.resident_bytes_ == resident_bytes(arrays, KEYS)
    assert {t.dtype for t in feed._resident.values()} == {torch.float16}
    idx = np.array([5, 1, 33])
    got = feed.batch(idx)
    for k in KEYS:
        want = arrays[k][np.sort(idx)]
        assert got[k].dtype == torch.float32
        # float16 has a 10-bit mantissa: relative error <= 2^-11
        np.testing.assert_allclose(got[k].numpy(), want, rtol=2.0 ** -11, atol=1e-7)


def test_choose_feed(windows):
    _, arrays = windows
    cpu = torch.device("cpu")
    assert choose_feed(arrays, KEYS, cpu) == "host"
    assert choose_feed(arrays, KEYS, cpu, "prefetch") == "prefetch"
    with pytest.raises(ValueError, match="feed must be one of"):
        choose_feed(arrays, KEYS, cpu, "gpu")
    with pytest.raises(ValueError, match="mode must be one of"):
        WindowFeed(arrays, KEYS, cpu, "auto")


def _train(pw, arrays, feed, device="cpu"):
    split = split_windows(pw.meta, seed=0)
    model = make_model("vae1", seed=0, eeg_shape=pw.eeg.shape[1:], n_voxels=pw.fmri.shape[1],
                       latent_dim=3, hidden_dim=16)
    return fit(model, arrays, split["train"], split["val"], epochs=2, batch_size=16, seed=0,
               device=device, feed=feed)


def test_training_is_identical_with_host_and_prefetch_feeds(windows):
    pw, arrays = windows
    host, pre = _train(pw, arrays, "auto"), _train(pw, arrays, "prefetch")
    assert host.extra["feed"] == "host" and pre.extra["feed"] == "prefetch"
    assert [h["val_loss"] for h in host.history] == [h["val_loss"] for h in pre.history]
    assert host.extra["batch_size"] == 16  # no GPU scaling on CPU
    assert "gpu_peak_allocated_gb" not in host.history[0]


def test_training_with_resident_windows_stays_close(windows):
    pw, arrays = windows
    host, res = _train(pw, arrays, "host"), _train(pw, arrays, "resident")
    a = np.array([h["val_loss"] for h in host.history])
    b = np.array([h["val_loss"] for h in res.history])
    np.testing.assert_allclose(b, a, rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_feeds_match_host_and_log_memory(windows):  # pragma: no cover - GPU only
    pw, arrays = windows
    dev = torch.device("cuda")
    order = np.arange(len(arrays["eeg"]))
    host = _epoch(WindowFeed(arrays, KEYS, dev, "host"), order, 16)
    pre = _epoch(WindowFeed(arrays, KEYS, dev, "prefetch"), order, 16)
    res = _epoch(WindowFeed(arrays, KEYS, dev, "resident"), order, 16)
    for (_, a), (_, b), (_, c) in zip(host, pre, res):
        for k in KEYS:
            assert torch.equal(a[k], b[k])
            torch.testing.assert_close(c[k], a[k], rtol=2.0 ** -11, atol=1e-7)
    result = _train(pw, arrays, "auto", device="cuda")
    assert result.extra["feed"] == "resident"
    assert result.history[0]["gpu_peak_allocated_gb"] > 0
