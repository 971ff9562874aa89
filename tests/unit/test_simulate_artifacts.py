"""The MR artifact simulator: amplitudes, timing truth and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.natview import facts as nv
from bids_app.simulate.artifacts import simulate_artifacts, slice_waveforms

SFREQ = nv.EEG_SFREQ
N_VOL = 6
ONSETS = (5000 + 10500 * np.arange(N_VOL)) / SFREQ
N_TIMES = 10000 + 10500 * N_VOL


@pytest.fixture(scope="module")
def sim():
    return simulate_artifacts(N_TIMES, SFREQ, ONSETS, nv.slice_timing(),
                              np.random.default_rng(7))  # fmt: skip


def test_shapes_and_determinism(sim):
    for name in ("gradient", "bcg", "line", "noise"):
        assert getattr(sim, name).shape == (64, N_TIMES)
    assert sim.ecg.shape == (N_TIMES,) and sim.eog.shape == (2, N_TIMES)
    again = simulate_artifacts(N_TIMES, SFREQ, ONSETS, nv.slice_timing(),
                               np.random.default_rng(7))  # fmt: skip
    np.testing.assert_array_equal(again.gradient, sim.gradient)
    np.testing.assert_array_equal(again.r_peaks_s, sim.r_peaks_s)
    other = simulate_artifacts(N_TIMES, SFREQ, ONSETS, nv.slice_timing(),
                               np.random.default_rng(8))  # fmt: skip
    assert not np.allclose(other.bcg, sim.bcg)


def test_gradient_amplitude_and_slice_timing(sim):
    peak = np.abs(sim.gradient).max(axis=1)
    assert np.all(peak > 0.8e-3) and np.all(peak < 12e-3)  # 1-10 mV, >> EEG
    onsets = sim.slice_onsets_s.reshape(N_VOL, nv.N_SLICES)
    assert np.allclose(np.diff(onsets, axis=1), nv.LAST_SLICE_TIME / 37, atol=1e-6)
    lag = (onsets[:, 0] - ONSETS) * SFREQ  # the volume starts up to a sample before R128
    assert np.all((lag <= 0) & (lag > -1))
    frac = (sim.slice_onsets_s * SFREQ) % 1
    assert frac.std() > 0.2  # slice onsets fall between samples
    # nothing outside the scan, and the waveform is a zero-area dG/dt
    assert np.all(sim.gradient[:, :4000] == 0)
    tau = np.arange(0, 0.05, 1 / (100 * SFREQ))
    assert np.allclose(slice_waveforms(tau).sum(axis=1) / tau.size, 0, atol=1e-3)


def test_cardiac_truth(sim):
    rr = np.diff(sim.r_peaks_s)
    assert 60 <= 60 / np.median(rr) <= 80 and rr.std() > 0.005
    pos = np.round(sim.r_peaks_s * SFREQ).astype(int)
    pos = pos[pos < N_TIMES - 3000]
    ecg = sim.ecg * sim.ecg_polarity
    assert np.all(ecg[pos] > 0.4e-3)  # R-peaks at the planted times
    win = pos[:, None] + np.arange(3000)[None, :]
    beat_peak = np.median(np.abs(sim.bcg[:, win]).max(axis=2), axis=1)
    assert np.all((beat_peak > 45e-6) & (beat_peak < 155e-6))
    # the BCG follows the R-peak by 150-300 ms on average
    gfp = (sim.bcg[:, win] ** 2).sum(axis=(0, 1))
    assert 0.12 <= np.argmax(gfp) / SFREQ <= 0.33


def test_noise_line_and_blinks(sim):
    np.testing.assert_allclose(np.sqrt(np.mean(sim.noise.astype(float) ** 2, axis=1)),
                               sim.noise_rms, rtol=1e-4)  # fmt: skip
    assert np.all((sim.noise_rms > 0.9e-6) & (sim.noise_rms < 2.1e-6))
    spec = np.abs(np.fft.rfft(sim.line[0]))
    freqs = np.fft.rfftfreq(N_TIMES, 1 / SFREQ)
    assert abs(freqs[np.argmax(spec)] - nv.POWER_LINE_FREQUENCY) < 0.2
    assert 100e-6 < np.abs(sim.eog[1]).max() < 400e-6
    assert np.corrcoef(sim.eog[0], sim.eog[1])[0, 1] < -0.99  # opposite sides of the eye
