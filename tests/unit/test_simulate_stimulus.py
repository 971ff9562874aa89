"""Planted stimulus features and the frames that carry them."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from scipy import signal, stats

from bids_app.natview import facts as nv
from bids_app.simulate import film
from bids_app.simulate.realism import REALISM
from bids_app.simulate.stimulus import (
    LUMA,
    checker_design,
    rgb_to_yuv420p,
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


def test_rgb_to_yuv420p_matches_ffmpeg(movie):
    """On the simulated frames the numpy conversion agrees with FFmpeg's scaler to one
    level in every plane (a flat colour exactly; on pixel noise FFmpeg's chroma filter,
    not a 2 x 2 mean, differs more)."""
    import av

    def ffmpeg(rgb):
        return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p").to_ndarray().astype(int)

    for rgb in movie.frames[::10]:
        ours = rgb_to_yuv420p(rgb)
        assert ours.shape == (72, 64)
        assert np.abs(ours - ffmpeg(rgb)).max() <= 1
    flat = np.full((48, 64, 3), (200, 50, 100), np.uint8)
    np.testing.assert_array_equal(rgb_to_yuv420p(flat), ffmpeg(flat))


_ENCODE = """
import os, sys
import numpy as np
from bids_app.simulate.stimulus import write_video
os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(",")})
frames = (np.random.default_rng(0).random((20, 480, 720, 3)) * 255).astype(np.uint8)
write_video(sys.argv[2], frames, 10.0)
"""


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_write_video_bytes_do_not_depend_on_the_cpus(tmp_path, suffix):
    """The same frames give the same file on one CPU and on all of them (a multi-threaded
    x264 picks its thread count from the CPUs it sees and its output changes with it)."""
    import subprocess
    import sys

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs at least two CPUs to compare")
    out = []
    for k, allowed in enumerate(([cpus[0]], cpus)):
        path = tmp_path / f"v{k}{suffix}"
        subprocess.run([sys.executable, "-c", _ENCODE, ",".join(map(str, allowed)), str(path)],
                       check=True)
        out.append(path.read_bytes())
    assert out[0] == out[1]


def test_simulate_windows_shapes_and_zscore():
    pw = simulate_windows(n_subjects=1, n_runs=2, n_volumes=30, n_channels=4, n_voxels=70)
    assert pw.eeg.shape == (60, 4, 42) and pw.fmri.shape == (60, 70)
    assert pw.stimulus.shape == (60, 2)
    np.testing.assert_allclose(pw.fmri[:30].mean(0), 0, atol=1e-5)
    assert set(pw.planted_voxels) == {"luminance", "motion", "alpha"}


def test_ideal_features_unchanged():
    """Ideal movie features, onsets and frames are those of the simulator before hard mode."""
    for realism in ("ideal", REALISM["ideal"]):
        s = simulate_stimulus("tp", 240.0, 10.0, (32, 24), np.random.default_rng(11),
                              realism=realism)  # fmt: skip
        lum, cuts = s.features["luminance"], s.onsets["luminance"]
        assert len(cuts) == 34 and cuts.sum() == float.fromhex("0x1.f65a09762df70p+11")
        np.testing.assert_allclose(cuts[:2], [4.771421216615198, 11.767088391255887], rtol=0)
        assert len(s.onsets["motion"]) == 46
        assert s.onsets["motion"].sum() == float.fromhex("0x1.505c6bdf04a6dp+12")
        np.testing.assert_allclose(lum.sum(), float.fromhex("0x1.e7be0341a1f78p+9"), rtol=1e-13)
        np.testing.assert_allclose(lum[::600], [0.27145288034413184, 0.5863063828045773,
                                                0.3083615495175172, 0.586820822678277],
                                   rtol=1e-13)  # fmt: skip
        assert s.features["motion"].sum() == 951.0
        assert np.flatnonzero(s.features["motion"])[:5].tolist() == [32, 33, 34, 35, 36]
        assert int(s.frames.astype(np.int64).sum()) == 570803360


def _movies(realism, seeds=range(4), duration=600.0):
    return [simulate_stimulus("tp", duration, 10.0, (32, 24), np.random.default_rng(seed),
                              render=False, realism=realism) for seed in seeds]  # fmt: skip


@pytest.fixture(scope="module")
def hard_movies():
    return _movies("hard")


@pytest.fixture(scope="module")
def ideal_movies():
    return _movies("ideal")


def _shot_lengths(movies):
    return np.concatenate([np.diff(np.concatenate([[0.0], m.onsets["luminance"]]))
                           for m in movies])  # fmt: skip


def test_hard_preset_switch():
    assert REALISM["hard"].stimulus_movie and not REALISM["ideal"].stimulus_movie
    assert REALISM["hard"].to_dict()["stimulus_movie"] is True
    assert not replace(REALISM["ideal"], stimulus_movie=True).eeg_hard
    assert replace(REALISM["ideal"], stimulus_movie=True).hard


def test_hard_shot_lengths_log_normal(hard_movies, ideal_movies):
    """Shot lengths log-normal with the documented median 3.5 s and log-SD 0.8.

    The 1/f-correlated shot sequence lets a run's mean log-length wander (SD ~0.1 over
    these four 10 min runs): the median may be off by a factor exp(+-0.3), the log-SD by
    0.15; the shape must pass Lilliefors' test at the 1 % level (D < 1.031 / sqrt(n)).
    """
    log_len = np.log(_shot_lengths(hard_movies))
    mu, sd = log_len.mean(), log_len.std(ddof=1)
    assert abs(mu - np.log(film.SHOT_MEDIAN_S)) < 0.3
    assert abs(sd - film.SHOT_SIGMA) < 0.15
    d = stats.kstest(log_len, "norm", args=(mu, sd)).statistic
    assert d < 1.031 / np.sqrt(log_len.size)
    # the ideal scenes (uniform 4-10 s) are far narrower than film shots
    assert np.log(_shot_lengths(ideal_movies)).std() < 0.5


def _slope(x, fps, lo=0.02, hi=1.0):
    f, p = signal.welch(x - x.mean(), fs=fps, nperseg=2048)
    sel = (f >= lo) & (f <= hi)
    return -np.polyfit(np.log(f[sel]), np.log(p[sel]), 1)[0]


def _autocorr(x, lag):
    x = x - x.mean()
    return float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))


def test_hard_luminance_spectrum_and_autocorrelation(hard_movies, ideal_movies):
    """Luminance falls as 1/f^alpha with alpha in 1-2 (Dong & Atick 1995), the model's 2.

    The bound is the claim's range widened by the Welch estimate's spread over a 10 min run
    (+-0.25); both features are more correlated at 1 s lag than the ideal ones.
    """
    for m in hard_movies:
        assert 1.0 <= _slope(m.features["luminance"], m.fps) <= 2.0 + 0.25
    for name in ("luminance", "motion"):
        hard = np.mean([_autocorr(m.features[name], 10) for m in hard_movies])
        ideal = np.mean([_autocorr(m.features[name], 10) for m in ideal_movies])
        assert hard > ideal, name


def test_hard_features_in_range_and_onsets(hard_movies):
    lo, hi = film.LUMINANCE_RANGE
    for m in hard_movies:
        lum, mot = m.features["luminance"], m.features["motion"]
        assert lum.min() > lo and lum.max() < hi
        assert mot.min() >= 0.0 and mot.max() <= 1.0
        assert np.mean(mot > 0.01) > 0.9  # continuous motion, not on/off
        for onsets in m.onsets.values():
            assert np.all(np.diff(onsets) > 0) and onsets[0] > 0 and onsets[-1] < m.duration_s
        # every burst start is followed by faster motion within the burst's ramp
        i = np.ceil(m.onsets["motion"] * m.fps).astype(int)
        j = np.minimum(i + int(film.BURST_RAMP_S * m.fps) + 2, len(mot) - 1)
        assert np.mean(mot[j] > mot[np.maximum(i - 1, 0)]) > 0.95


def test_hard_frames_render():
    m = simulate_stimulus("tp", 30.0, 10.0, (64, 48), np.random.default_rng(1), realism="hard")
    assert m.frames.shape == (300, 48, 64, 3) and m.frames.dtype == np.uint8
    measured = (m.frames.astype(float) / 255.0 @ LUMA).mean(axis=(1, 2))
    assert np.max(np.abs(measured - m.features["luminance"])) < 0.01
    luma = m.frames.astype(float) @ LUMA
    luma -= luma.mean(axis=(1, 2), keepdims=True)
    diff = np.abs(np.diff(luma, axis=0)).mean(axis=(1, 2))
    # the grating moves at the planted speed: frame-to-frame change follows it
    assert np.corrcoef(diff, m.features["motion"][1:])[0, 1] > 0.9
