"""Hard-mode simulator: every effect present, switchable, recorded; ideal output unchanged."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.artifacts import simulate_artifacts
from bids_app.simulate.dataset import load_run_truth, simulate_dataset
from bids_app.simulate.realism import REALISM, sidecar_slice_timing, volume_marker_samples

SFREQ = nv.EEG_SFREQ
N_VOL = 6
ONSETS = (5000 + 10500 * np.arange(N_VOL)) / SFREQ
N_TIMES = 10000 + 10500 * N_VOL
IDEAL = REALISM["ideal"]


def _sim(realism, seed=7):
    return simulate_artifacts(N_TIMES, SFREQ, ONSETS, nv.slice_timing(),
                              np.random.default_rng(seed), realism=realism)  # fmt: skip


@pytest.fixture(scope="module")
def ideal():
    return _sim("ideal")


def test_hard_effects_leave_the_ideal_streams_alone(ideal):
    hard = _sim("hard")
    assert REALISM["hard"].hard and not IDEAL.hard
    np.testing.assert_array_equal(hard.noise, ideal.noise)  # extra draws on their own stream
    np.testing.assert_array_equal(hard.r_peaks_s, ideal.r_peaks_s)
    assert not np.allclose(hard.gradient, ideal.gradient)
    assert not np.allclose(hard.bcg, ideal.bcg)
    again = _sim("hard")
    np.testing.assert_array_equal(again.gradient, hard.gradient)


def test_slice_waveforms_differ_per_slice_and_repeat_per_volume(ideal):
    one = _sim(dataclasses.replace(IDEAL, name="slices", slice_waveform_sd=0.05))
    diff = one.gradient[0].astype(float) - ideal.gradient[0]
    rel = np.sqrt(np.mean(diff**2) / np.mean(ideal.gradient[0].astype(float) ** 2))
    assert 0.01 < rel < 0.1
    start = np.round(one.slice_onsets_s.reshape(N_VOL, -1) * SFREQ).astype(int)
    seg = np.arange(-5, 230)
    for k in (0, 17):  # the same slice position changes alike in every volume
        ep = diff[start[:, k, None] + seg]
        assert np.corrcoef(ep[1], ep[4])[0, 1] > 0.9


def test_jump_amplitude_and_vibration(ideal):
    jump = _sim(dataclasses.replace(IDEAL, name="jump", head_jump=0.15))
    diff = np.abs(jump.gradient - ideal.gradient).max(axis=0)
    at = int(np.argmax(diff > 0))
    assert 0.2 * N_TIMES < at < 0.8 * N_TIMES and not diff[:at].any()
    vib = _sim(dataclasses.replace(IDEAL, name="vib", vibration_uv=2.0))
    extra = vib.line - ideal.line
    assert 0.1e-6 < np.abs(extra).max() < 3e-6
    spec = np.abs(np.fft.rfft(extra[5]))
    peak = np.fft.rfftfreq(N_TIMES, 1 / SFREQ)[np.argmax(spec)]
    assert 19.5 < peak < 50.5


def test_bcg_varies_beat_to_beat(ideal):
    hard = _sim(dataclasses.replace(IDEAL, name="bcg", bcg_latency_jitter_s=0.01,
                                    bcg_shape_sd=0.15, bcg_resp_depth=0.3))  # fmt: skip
    rp = np.round(hard.r_peaks_s * SFREQ).astype(int)
    rp = rp[rp + 3000 < N_TIMES]
    lags = np.arange(3000)

    def outside_rank_3(bcg):  # variance of the beats beyond their 3 largest components
        ep = bcg[7][rp[:, None] + lags].astype(float)
        s = np.linalg.svd(ep, compute_uv=False) ** 2
        return s[3:].sum() / s.sum()

    ideal_out, hard_out = outside_rank_3(ideal.bcg), outside_rank_3(hard.bcg)
    print(f"BCG variance beyond rank 3: ideal {ideal_out:.2e}, hard {hard_out:.2e}")
    assert ideal_out < 1e-4  # the ideal BCG lies in a 3-dim space (up to overlapping beats)
    assert hard_out > 1e-3


def test_clock_drift_and_sidecar():
    hard = REALISM["hard"]
    marks = volume_marker_samples(15000, 289, 10500, hard)
    assert set(np.diff(marks)) == {10500, 10501}  # 40 ppm: markers drift off the grid
    assert np.all(np.diff(volume_marker_samples(0, 5, 10500, IDEAL)) == 10500)
    played = nv.slice_timing()
    assert sidecar_slice_timing(played, nv.TR, IDEAL) == played
    assert sidecar_slice_timing(played, nv.TR, dataclasses.replace(
        IDEAL, sidecar_slice_timing="absent")) is None  # fmt: skip
    wrong = sidecar_slice_timing(played, nv.TR, hard)
    assert np.argsort(wrong).tolist() == np.argsort(played).tolist()
    assert 0.005 < np.max(np.abs(np.array(wrong) - played)) < 0.01
    with pytest.raises(ValueError, match="sidecar_slice_timing"):
        dataclasses.replace(IDEAL, sidecar_slice_timing="maybe")


def test_hard_dataset_records_realism(tmp_path):
    mini = scenario.Scale("mini", subjects=("01",), runs=(scenario.RunSpec("tp", 3, run="01"),),
                          sfreq=500.0, matrix=(32, 32), n_slices=12, t1w_voxel_mm=4.0,
                          video_size=(32, 24), extra_eeg_s=1.0)  # fmt: skip
    out = simulate_dataset(tmp_path / "hard", scale=mini, realism="hard", seed=1)
    sim = out / "sourcedata" / "simulation"
    assert json.loads((sim / "realism.json").read_text()) == REALISM["hard"].to_dict()
    sidecar = json.loads((out / "sub-01/ses-01/func/sub-01_ses-01_task-tp_run-01_bold.json")
                         .read_text())  # fmt: skip
    assert sidecar["SliceTiming"] != nv.slice_timing()  # "wrong" in the hard preset
    truth = load_run_truth(sim / "sub-01/sub-01_ses-01_task-tp_run-01_truth.npz")  # checksums
    assert json.loads(str(truth["realism_json"]))["name"] == "hard"
    assert np.diff(np.round(truth["volume_onsets_s"] * 500)).tolist() == [1051, 1050]
