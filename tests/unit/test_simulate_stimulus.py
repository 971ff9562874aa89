"""Planted stimulus features and the frames that carry them."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.natview import facts as nv
from bids_app.simulate.stimulus import (
    LUMA,
    checker_design,
    simulate_stimulus,
    simulate_windows,
    write_video,
)


@pytest.fixture(scope="module")
def movie():
    return simulate_stimulus("tp", 30.0, 10.0, (64, 48), np.random.default_rng(1))


def test_frames_carry_luminance(movie):
    assert movie.frames.shape == (300, 48, 64, 3) and movie.frames.dtype == np.uint8
    measured = (movie.frames.astype(float) / 255.0 @ LUMA).mean(axis=(1, 2))
    assert np.max(np.abs(measured - movie.features["luminance"])) < 0.01
    # scene changes (luminance onsets) every 4-10 s
    gaps = np.diff(np.concatenate([[0.0], movie.onsets["luminance"]]))
    assert len(gaps) >= 2 and gaps.min() >= 4.0 and gaps.max() <= 10.0


def test_frames_move_only_during_motion(movie):
    luma = movie.frames.astype(float) @ LUMA
    luma -= luma.mean(axis=(1, 2), keepdims=True)
    diff = np.abs(np.diff(luma, axis=0)).mean(axis=(1, 2))
    on = movie.features["motion"][1:] > 0
    assert on.any() and (~on).any()
    assert diff[on].min() > 10 * diff[~on].max() + 1e-9
    assert np.all(
        np.isin(
            np.ceil(movie.onsets["motion"] * 10 - 1e-9),
            np.flatnonzero(np.diff(np.concatenate([[0], movie.features["motion"]])) > 0),
        )
    )


def test_checker_design_and_rest():
    stim = simulate_stimulus("checker", 200.0, 10.0, (64, 48), np.random.default_rng(0))
    assert stim.frames is None
    np.testing.assert_allclose(stim.onsets["checker"], [20, 60, 100, 140, 180])
    on, _ = checker_design(200.0, 10.0)
    assert on.mean() == pytest.approx(0.5) and not on[:200].any() and on[200:400].all()
    assert nv.CHECKER_BLOCK_S == 20.0
    rest = simulate_stimulus("rest", 20.0, 10.0, (64, 48), np.random.default_rng(0))
    assert rest.features == {} and rest.frames is None and not rest.checker_on.any()


def test_deterministic_and_null_renders():
    a = simulate_stimulus("dme", 20.0, 5.0, (32, 24), np.random.default_rng(3))
    b = simulate_stimulus("dme", 20.0, 5.0, (32, 24), np.random.default_rng(3), null=True)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert b.null and b.frames is not None


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_write_video_roundtrip(tmp_path, movie, suffix):
    import av

    path = write_video(tmp_path / f"v{suffix}", movie.frames[:50], 10.0)
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape == (50, 48, 64, 3)
    assert np.abs(frames.astype(float) - movie.frames[:50]).mean() < 4.0


def test_simulate_windows_shapes_and_zscore():
    pw = simulate_windows(n_subjects=1, n_runs=2, n_volumes=30, n_channels=4, n_voxels=70)
    assert pw.eeg.shape == (60, 4, 42) and pw.fmri.shape == (60, 70)
    assert pw.stimulus.shape == (60, 2)
    np.testing.assert_allclose(pw.fmri[:30].mean(0), 0, atol=1e-5)
    assert set(pw.planted_voxels) == {"luminance", "motion", "alpha"}
