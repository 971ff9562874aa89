"""Hard-mode BOLD (issue 16): each effect present when switched on, absent when off."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bids_app.fmri.motion import framewise_displacement
from bids_app.natview import facts as nv
from bids_app.simulate.bold import simulate_bold, spm_hrf
from bids_app.simulate.bold_hard import (
    HRF,
    bold_effects_on,
    draw_hrf,
    hard_bold,
    spatially_smooth,
)
from bids_app.simulate.realism import REALISM
from bids_app.simulate.scenario import Scale

HARD, IDEAL = REALISM["hard"], REALISM["ideal"]
N_VOL, N_SLICES = 150, 10
ACQ = np.arange(N_VOL)[:, None] * nv.TR + np.linspace(0, nv.TR, N_SLICES, endpoint=False)
EFFECTS = {"ar1": "bold_ar1_sd", "pink": "bold_pink_sd", "physio": "bold_physio_sd",
           "drift": "bold_drift_sd", "global": "bold_global_sd", "spin_history": "bold_spikes",
           "clusters": "bold_clusters"}
OFF = {field: 0 for field in EFFECTS.values()}


def _grid(n_side: int = 14, step: float = 4.0) -> np.ndarray:
    axis = (np.arange(n_side) - n_side / 2) * step
    return np.stack(np.meshgrid(axis, axis, axis[:4], indexing="ij"), -1).reshape(-1, 3)


def _effects(realism, seed=0, xyz=None, avoid=()):
    xyz = _grid() if xyz is None else xyz
    slices = np.arange(len(xyz)) % N_SLICES
    return hard_bold(xyz, slices, ACQ, np.random.default_rng(seed), realism, avoid_mm=avoid,
                     keep_components=True)


def test_ideal_draws_nothing_and_hard_draws_every_effect():
    assert not bold_effects_on(IDEAL) and bold_effects_on(HARD)
    assert HARD.bold_hrf_variable and not IDEAL.bold_hrf_variable
    ideal = _effects(IDEAL)
    assert not ideal.signal.any() and not ideal.motion.any() and ideal.components == {}
    hard = _effects(HARD)
    assert set(hard.components) == set(EFFECTS)
    np.testing.assert_allclose(sum(hard.components.values()), hard.signal, atol=1e-6)


@pytest.mark.parametrize("effect", sorted(EFFECTS))
def test_each_effect_switches_alone(effect):
    field = EFFECTS[effect]
    only = dataclasses.replace(HARD, **{**OFF, field: getattr(HARD, field)})
    out = _effects(only)
    assert set(out.components) == {effect}
    assert np.abs(out.signal).max() > 0
    without = dataclasses.replace(HARD, **{field: 0})
    assert effect not in _effects(without).components


def test_noise_spectra():
    out = _effects(dataclasses.replace(HARD, **{**OFF, "bold_ar1_sd": 0.003,
                                                "bold_pink_sd": 0.003}))
    ar1, pink = out.components["ar1"], out.components["pink"]
    lag1 = (ar1[1:] * ar1[:-1]).sum(0) / (ar1**2).sum(0)
    assert abs(np.median(lag1) - HARD.bold_ar1) < 0.06  # rho ~ U(0.35, 0.65)
    assert lag1.min() > 0.1
    spec = (np.abs(np.fft.rfft(pink, axis=0)) ** 2).mean(1)[1:]
    freqs = np.fft.rfftfreq(N_VOL, nv.TR)[1:]
    slope = np.polyfit(np.log(freqs), np.log(spec), 1)[0]
    assert -1.5 < slope < -0.5  # 1/f^b, b ~ U(0.5, 1.5)
    assert abs(ar1.std() - 0.003) < 0.0005 and abs(pink.std() - 0.003) < 0.0005


def test_physiological_noise_is_aliased_per_slice():
    """Sampled at 2.1 s, the ~1 Hz cardiac rhythm shows up below Nyquist (0.24 Hz), and
    voxels of different slices see different phases of the same rhythm."""
    only = dataclasses.replace(HARD, **{**OFF, "bold_physio_sd": 0.002})
    physio = _effects(only).components["physio"]
    spec = (np.abs(np.fft.rfft(physio - physio.mean(0), axis=0)) ** 2).mean(1)
    assert spec[1:].std() > 0 and spec.argmax() > 0  # not a flat or DC series
    assert abs(physio.std() - 0.002) < 1e-4
    same_amp = physio[:, 0] / physio[:, 0].std(), physio[:, 1] / physio[:, 1].std()
    assert not np.allclose(*same_amp, atol=0.1)


def test_spikes_are_in_the_motion_and_the_signal():
    out = _effects(dataclasses.replace(HARD, **{**OFF, "bold_spikes": 3, "bold_spike_mm": 1.0}))
    assert len(out.spike_volumes) == 3 and out.spike_volumes.min() >= 5
    moved = np.flatnonzero(np.abs(out.motion).sum(1))
    assert list(moved) == list(out.spike_volumes)
    np.testing.assert_allclose(np.linalg.norm(out.motion[moved, :3], axis=1), 1.0)
    fd = framewise_displacement(out.motion)
    assert np.all(fd[out.spike_volumes] > 0.5)  # the pipeline's motion_outlier threshold
    drop = out.components["spin_history"].mean(1)
    assert np.all(drop[out.spike_volumes] < -0.005)
    quiet = np.setdiff1d(np.arange(N_VOL), np.r_[out.spike_volumes, out.spike_volumes + 1])
    assert not drop[quiet].any()


def test_clusters_avoid_the_planted_sources():
    avoid = [(0.0, 0.0, 0.0)]
    out = _effects(dataclasses.replace(HARD, **{**OFF, "bold_clusters": 4}), avoid=avoid)
    assert len(out.clusters) == 4
    assert {c["driver"] for c in out.clusters} == {"eeg_band", "stimulus"}
    xyz = _grid()
    active = np.abs(out.components["clusters"]).max(0) > 0
    assert active.any()
    near = np.linalg.norm(xyz - avoid[0], axis=1) < 30.0 - 10.0  # radius 10 mm
    assert not active[near].any()
    for c in out.clusters:
        assert np.linalg.norm(np.array(c["centre_mm"]) - avoid[0]) >= 30.0
        assert 4.0 <= c["hrf"][0] <= 8.0


def test_hrf_shapes():
    np.testing.assert_allclose(HRF().kernel(0.1, 32.0)[:-1], spm_hrf(0.1)[:-1], atol=2e-3)
    rng = np.random.default_rng(3)
    for _ in range(20):
        hrf = draw_hrf(rng)
        assert 4.0 <= hrf.peak_s <= 8.0 and 0.1 <= hrf.undershoot <= 0.35
        kernel = hrf.kernel(0.05)
        assert abs(kernel.argmax() * 0.05 - hrf.peak_s) < 0.1
        assert kernel.min() < 0  # undershoot


def test_simulate_bold_hard_differs_and_records_truth():
    scale = Scale("t", ("01",), (), matrix=(18, 22), n_slices=14, t1w_voxel_mm=6.0)
    power = {"alpha_occipital": 1.0 + np.abs(np.random.default_rng(1).normal(size=400))}
    kw = dict(voxel_size_mm=(10.0, 10.0, 11.0), t1w=False)
    ideal = simulate_bold("rest", 16, power, np.random.default_rng(2), scale, **kw)
    same = simulate_bold("rest", 16, power, np.random.default_rng(2), scale, realism="ideal",
                         **kw)
    assert np.array_equal(np.asarray(ideal.bold.dataobj), np.asarray(same.bold.dataobj))
    assert ideal.hard == {}
    hard = simulate_bold("rest", 16, power, np.random.default_rng(2), scale, realism="hard",
                         **kw)
    assert not np.allclose(np.asarray(ideal.bold.dataobj), np.asarray(hard.bold.dataobj))
    assert set(hard.hard) == {"hrf", "spike_volumes", "clusters"}
    assert 4.0 <= hard.hard["hrf"]["alpha_occipital"][0] <= 8.0
    spikes = hard.hard["spike_volumes"]
    assert len(spikes) == 3
    np.testing.assert_allclose(np.linalg.norm(hard.motion[spikes, :3] - ideal.motion[spikes, :3],
                                              axis=1), 1.0)


def test_voxel_noise_has_the_configured_smoothness():
    """Smoothed independent noise keeps each voxel's variance, and the FWHM estimated from
    the neighbour correlation (Forman et al. 1995: FWHM = d sqrt(-2 ln 2 / ln r(d))) is the
    configured one within 10 %."""
    step = 3.0
    axis = np.arange(24) * step
    xyz = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    noise = np.random.default_rng(0).normal(size=(400, len(xyz)))
    smooth = spatially_smooth(noise, xyz, HARD.bold_noise_fwhm_mm)
    inner = np.all((xyz > 4 * step) & (xyz < axis[-1] - 4 * step), axis=1)
    np.testing.assert_allclose(smooth[:, inner].std(0).mean(), 1.0, rtol=0.02)
    neighbour = np.flatnonzero(inner) + 1  # next voxel along z, 3 mm away
    r = np.mean([np.corrcoef(smooth[:, i], smooth[:, j])[0, 1]
                 for i, j in zip(np.flatnonzero(inner), neighbour)])
    fwhm = step * np.sqrt(-2 * np.log(2) / np.log(r))
    assert abs(fwhm / HARD.bold_noise_fwhm_mm - 1) < 0.1, fwhm
    assert spatially_smooth(noise, xyz, 0.0) is noise
    # hard BOLD's AR(1) noise is that smooth; switched off, neighbours are independent
    rough = dataclasses.replace(HARD, bold_noise_fwhm_mm=0.0)
    for real, low, high in ((HARD, 0.5, 0.9), (rough, -0.1, 0.1)):
        ar1 = _effects(dataclasses.replace(real, **{**OFF, "bold_ar1_sd": 0.003}),
                       xyz=xyz[:2000]).components["ar1"]
        assert low < np.corrcoef(ar1[:, 100], ar1[:, 101])[0, 1] < high
