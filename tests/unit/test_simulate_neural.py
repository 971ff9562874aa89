"""Simulated neural activity: units, spectra, stimulus links, null, forward model choice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from bids_app.eeg import forward
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.neural import planted_gain, simulate_neural
from bids_app.simulate.stimulus import simulate_stimulus

SFREQ = 250.0
CH = list(nv.EEG_CHANNELS)


def _run(task: str, *, null: bool = False, seed: int = 0, duration: float = 120.0):
    stim = simulate_stimulus(task, duration, 10.0, (32, 24), np.random.default_rng(seed + 1),
                             null=null, render=False)
    sim = simulate_neural(task, stim, SFREQ, int((duration + 4) * SFREQ), -2.0,
                          np.random.default_rng(seed), null=null)
    return stim, sim


@pytest.fixture(scope="module")
def movie():
    return _run("tp")


def test_shapes_units_and_determinism(movie):
    _, sim = movie
    assert sim.eeg.shape == (61, int(124 * SFREQ))
    rms = np.sqrt(np.mean(sim.eeg.astype(float) ** 2, axis=1)) * 1e6
    assert 5 < np.median(rms) < 40  # microvolts (measured ~10)
    assert sim.source_names == tuple(s.name for s in scenario.sources_for_task("tp"))
    n_pow = int(np.ceil(sim.eeg.shape[1] / SFREQ * 10))
    assert all(len(p) == n_pow for p in sim.source_power.values())
    _, again = _run("tp")
    np.testing.assert_array_equal(sim.eeg, again.eeg)


def test_alpha_peak_occipital(movie):
    _, sim = movie
    freqs, psd = signal.welch(sim.eeg[CH.index("Oz")], SFREQ, nperseg=1024)
    band = (freqs > 3) & (freqs < 30)
    # occipital alpha is the largest spectral peak above the 1/f background
    resid = np.log(psd[band]) - np.polyval(np.polyfit(np.log(freqs[band]), np.log(psd[band]),
                                                      1), np.log(freqs[band]))
    assert abs(freqs[band][np.argmax(resid)] - 10.0) <= 1.0


def test_feature_sources_follow_stimulus(movie):
    stim, sim = movie
    for name, feature in (("luminance_lo", "luminance"), ("motion_mt", "motion")):
        power = sim.source_power[name]
        t = sim.t0_s + np.arange(len(power)) / 10.0
        feat = np.interp(t, np.arange(len(stim.features[feature])) / stim.fps,
                         stim.features[feature], left=0, right=0)
        ok = (t > 1) & (t < stim.duration_s - 1)
        assert np.corrcoef(power[ok], feat[ok])[0, 1] > 0.8, name
    windows = sim.dependency_windows
    assert len(windows) > 0
    assert set(windows["source"]) <= {"luminance_lo", "motion_mt"}
    lo, hi = scenario.RESPONSE_WINDOW_S
    np.testing.assert_allclose(windows["duration_s"], hi - lo)
    onsets = stim.onsets["luminance"]
    first = windows[windows["feature"] == "luminance"]["onset_s"].to_numpy()
    assert np.all(np.min(np.abs(first[:, None] - (onsets[None] + lo)), axis=1) < 1e-9)


def test_null_breaks_stimulus_link():
    stim, sim = _run("tp", null=True, seed=3)
    assert len(sim.dependency_windows) == 0
    power = sim.source_power["luminance_lo"]
    t = sim.t0_s + np.arange(len(power)) / 10.0
    feat = np.interp(t, np.arange(len(stim.features["luminance"])) / stim.fps,
                     stim.features["luminance"])
    assert abs(np.corrcoef(power, feat)[0, 1]) < 0.3


def test_ssvep_during_flicker():
    stim, sim = _run("checker", duration=100.0)
    x = sim.eeg[CH.index("Oz")].astype(float)
    t = sim.t0_s + np.arange(len(x)) / SFREQ
    on = np.interp(t, np.arange(len(stim.checker_on)) / stim.fps, stim.checker_on) > 0.5

    def power_12(seg):
        f, p = signal.welch(seg, SFREQ, nperseg=500)
        return p[np.argmin(np.abs(f - 12.0))]

    assert power_12(x[on]) > 3 * power_12(x[~on])


def test_simulation_forward_differs_from_inverse_model():
    """No inverse crime: the 4-shell simulation model is not the 3-shell inverse model."""
    rr = np.array([s.mni_mm for s in scenario.PLANTED_SOURCES])
    nn = np.array([s.orientation for s in scenario.PLANTED_SOURCES])
    sim_gain = planted_gain(rr, nn)
    info = forward.make_eeg_info(CH + [nv.EEG_REFERENCE])
    bem = forward.make_head_model(info)
    assert len(bem["layers"]) == 3
    g = forward.make_volume_forward(info, rr, bem)["sol"]["data"].reshape(62, -1, 3)
    g = np.einsum("cnk,nk->cn", g, nn / np.linalg.norm(nn, axis=1, keepdims=True))
    inv_gain = g[:-1] - g[-1:]
    for k in range(len(rr)):
        a, b = sim_gain[:, k], inv_gain[:, k]
        assert np.corrcoef(a, b)[0, 1] > 0.8  # same physics
        assert np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)) > 0.02
