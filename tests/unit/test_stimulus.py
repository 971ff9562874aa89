"""Stimulus features measured back from simulated videos, alignment and extractors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bids_app.errors import InputError
from bids_app.models.stimulus import (
    HandcraftedExtractor,
    TinyConvNet,
    TorchExtractor,
    checker_timecourse,
    extract_video_features,
    window_features,
)
from bids_app.simulate.stimulus import simulate_stimulus, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    stim = simulate_stimulus("tp", 40.0, 10.0, (160, 120), np.random.default_rng(7))
    path = write_video(tmp_path_factory.mktemp("v") / "tp.mp4", stim.frames, 10.0)
    return stim, path


@pytest.fixture(scope="module")
def measured(video):
    return extract_video_features(video[1], fps=10.0)


def _r(a, b):
    n = min(len(a), len(b))
    return np.corrcoef(a[:n], b[:n])[0, 1]


def test_features_match_planted(video, measured):
    stim, _ = video
    f = dict(zip(measured.names, measured.values.T))
    assert len(measured.times) == 400
    np.testing.assert_allclose(measured.times[:3], [0.0, 0.1, 0.2], atol=1e-6)
    assert _r(f["luminance"], stim.features["luminance"]) > 0.99
    assert _r(f["motion"], stim.features["motion"]) > 0.95
    assert _r(f["flow"], stim.features["motion"]) > 0.9
    # colour tint keeps luminance but shows in the channels
    assert np.std(f["red"] - f["luminance"]) > 0.005


def test_scene_cuts_at_luminance_onsets(video, measured):
    stim, _ = video
    cuts = np.flatnonzero(measured.values[:, measured.names.index("scene_cut")] > 0) / 10.0
    lum = stim.features["luminance"]
    big = [
        t
        for t in stim.onsets["luminance"]
        if abs(lum[int(t * 10) + 1] - lum[int(t * 10) - 1]) > 0.05
    ]
    hits = [np.any(np.abs(cuts - t) <= 0.15) for t in big]
    assert len(big) >= 2 and np.mean(hits) >= 0.8
    # every detected cut is a planted scene change (no false positives from motion)
    planted = stim.onsets["luminance"]
    assert all(np.min(np.abs(planted - c)) <= 0.15 for c in cuts)


def test_resampled_grid(video):
    f = extract_video_features(video[1], fps=2.0, extractors=[HandcraftedExtractor(faces=False)])
    assert len(f.times) == 80 and np.allclose(np.diff(f.times), 0.5, atol=1e-6)


def test_window_features_average():
    times = np.arange(100) / 10.0
    values = np.stack([times, np.ones(100)], axis=1)
    out = window_features(
        times, values, start_s=5.0, window_end_s=np.array([4.0, 9.0, 20.0]), window_s=2.0
    )
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all()
    assert out[1, 0] == pytest.approx(3.0, abs=0.06) and out[1, 1] == 1.0


def test_checker_from_events():
    events = pd.DataFrame(
        {
            "onset": [3.0, 23.0, 43.0, 63.0],
            "duration": ["n/a"] * 4,
            "trial_type": ["S 10", "S 25", "S 10", "S 25"],
        }
    )
    t = np.arange(0, 100, 0.5)
    state = checker_timecourse(events, t)
    expected = ((t >= 23) & (t < 43)) | ((t >= 63) & (t < 83))
    np.testing.assert_array_equal(state.astype(bool), expected)


def test_torch_extractor_state_dict_and_torchscript(tmp_path):
    torch.manual_seed(0)
    net = TinyConvNet(n_outputs=5, width=4, input_size=32).eval()
    torch.save(
        {
            "arch": "tinyconv",
            "kwargs": {"n_outputs": 5, "width": 4, "input_size": 32},
            "state_dict": net.state_dict(),
        },
        tmp_path / "tiny.pt",
    )
    with pytest.warns(DeprecationWarning):  # TorchScript files are still read
        torch.jit.save(torch.jit.script(net), tmp_path / "tiny_ts.pt")
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "tiny.pt2")
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = net(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255).numpy()
    for name in ("tiny.pt", "tiny_ts.pt", "tiny.pt2"):
        ext = TorchExtractor(tmp_path / name, input_size=32)
        assert ext.names == [f"emb_{i:03d}" for i in range(5)]
        np.testing.assert_allclose(ext(frames, frames), ref, rtol=1e-5, atol=1e-6)
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.pt"):
        TorchExtractor(tmp_path / "bad.pt")


def test_learned_extractor_in_video_pipeline(tmp_path, video):
    net = TinyConvNet(n_outputs=3, width=4, input_size=16)
    torch.save(
        {
            "arch": "tinyconv",
            "kwargs": {"n_outputs": 3, "width": 4, "input_size": 16},
            "state_dict": net.state_dict(),
        },
        tmp_path / "m.pt",
    )
    f = extract_video_features(
        video[1],
        fps=1.0,
        extractors=[HandcraftedExtractor(faces=False), TorchExtractor(tmp_path / "m.pt")],
    )
    assert f.values.shape == (40, 11 + 3) and f.names[-1] == "emb_002"


def test_undecodable_video(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"garbage")
    with pytest.raises(InputError, match="x.mp4"):
        extract_video_features(tmp_path / "x.mp4")
