"""Pulse (BCG) artifact: QRS detection, EEG fallback and OBS against planted truth."""

from __future__ import annotations

import mne
import numpy as np
import pytest
from scipy import signal

from bids_app.eeg.cardiac import detect_qrs, remove_bcg_artifact
from bids_app.errors import InputError
from bids_app.natview import facts as nv
from bids_app.simulate.artifacts import simulate_recording as make_recording

SFREQ = nv.EEG_SFREQ
EEG_IDX = [nv.CHANNEL_NAMES.index(c) for c in nv.EEG_CHANNELS]


def band(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Zero-phase band-pass used by every comparison."""
    sos = signal.butter(4, [lo, hi], "bandpass", fs=SFREQ, output="sos")
    return signal.sosfiltfilt(sos, x, axis=-1)


PICKS = EEG_IDX[::6]


@pytest.fixture(scope="module")
def rec():
    """30 volumes (69 s) without gradient artifact: the BCG step's input."""
    r = make_recording(30, seed=11)
    r.raw._data[:] = r.clean + r.art.noise
    return r


def _locked_ratio(rec, corrected):
    """RMS of the beat-locked average residual / RMS of the beat-locked average BCG."""
    rp = np.round(rec.art.r_peaks_s * SFREQ).astype(int)
    lags = np.arange(int(0.8 * SFREQ))
    ev = rp[rp + lags[-1] < corrected.shape[1]]
    resid = band(corrected - (rec.clean - rec.art.bcg + rec.art.noise)[PICKS], 0.5, 40)
    bcg = band(rec.art.bcg[PICKS], 0.5, 40)
    locked = resid[:, ev[:, None] + lags].mean(axis=1)
    ref = bcg[:, ev[:, None] + lags].mean(axis=1)
    return float(np.sqrt(np.mean(locked**2) / np.mean(ref**2)))


def test_qrs_detection_exact_and_inverted():
    rec = make_recording(4, seed=2)
    ecg = rec.clean[rec.raw.ch_names.index("ECG")] + rec.art.noise[31]
    true = np.round(rec.art.r_peaks_s * SFREQ).astype(int)
    for sign in (1, -1):
        peaks, polarity, problem = detect_qrs(sign * ecg, SFREQ)
        assert problem == "" and polarity == sign * rec.art.ecg_polarity
        inner = true[(true > 0.3 * SFREQ) & (true < ecg.size - 0.3 * SFREQ)]
        dist = np.abs(peaks[:, None] - inner[None, :]).min(axis=0)
        assert np.max(dist) <= 0.004 * SFREQ  # every beat found within 4 ms
        assert peaks.size <= true.size  # and no spurious beats


def test_bcg_obs_beats_mne_pca_obs(rec):
    out, report = remove_bcg_artifact(rec.raw, picks=PICKS)
    ours = _locked_ratio(rec, out.get_data()[PICKS])
    mne_out = mne.preprocessing.apply_pca_obs(
        rec.raw, picks=[rec.raw.ch_names[i] for i in PICKS], qrs_times=rec.art.r_peaks_s,
        verbose=False)
    theirs = _locked_ratio(rec, mne_out.get_data()[PICKS])
    print(f"cardiac-locked residual: eegfmri {ours:.4f}, apply_pca_obs {theirs:.4f}")
    # overall distortion (not only the cardiac-locked part), 1-40 Hz
    truth = (rec.clean - rec.art.bcg + rec.art.noise)[PICKS]
    err = {k: float(np.sqrt(np.mean(band(x - truth, 1, 40) ** 2))) for k, x in
           (("ours", out.get_data()[PICKS]), ("mne", mne_out.get_data()[PICKS]))}
    print(f"RMS error 1-40 Hz (uV): eegfmri {1e6 * err['ours']:.2f}, "
          f"apply_pca_obs {1e6 * err['mne']:.2f}")
    assert err["ours"] <= err["mne"]
    assert report.source == "ecg" and 0.15 <= report.delay_s <= 0.35
    assert abs(report.heart_rate_bpm - 60 / np.median(np.diff(rec.art.r_peaks_s))) < 1.0
    assert ours < 0.10
    assert ours <= theirs


def test_missing_ecg_falls_back_to_eeg(rec):
    raw = rec.raw.copy().drop_channels(["ECG"])
    picks = [raw.ch_names.index(rec.raw.ch_names[i]) for i in PICKS]
    out, report = remove_bcg_artifact(raw, picks=picks)
    assert report.source == "eeg" and "ECG" in report.ecg_problem
    assert abs(report.n_beats - rec.art.r_peaks_s.size) <= 2
    ratio = _locked_ratio(rec, out.get_data()[picks])
    print(f"fallback cardiac-locked residual {ratio:.3f}")
    assert ratio < 0.10


def test_flat_ecg_falls_back_and_no_heartbeat_raises(rec):
    raw = rec.raw.copy()
    raw._data[raw.ch_names.index("ECG")] = 0.0
    _, report = remove_bcg_artifact(raw, picks=PICKS[:3])
    assert report.source == "eeg" and "flat" in report.ecg_problem
    noise = raw.copy()
    noise._data[:] = np.random.default_rng(0).standard_normal(noise._data.shape) * 1e-6
    noise._data[noise.ch_names.index("ECG")] = 0.0
    with pytest.raises(InputError, match="run.set.*heartbeat"):
        remove_bcg_artifact(noise, picks=PICKS[:3], source="run.set")


def test_upsampling_equals_interp_and_threads_do_not_change_results(rec):
    from bids_app.eeg.cardiac import _subtract_upsampled

    rng = np.random.default_rng(4)
    low = rng.standard_normal((2, 103))
    src = rng.standard_normal((3, 103 * 10 + 7))
    dst = np.zeros_like(src)
    _subtract_upsampled(src, dst, [0, 2], low, 10)
    t_low = np.arange(103) * 10 + 4.5
    for i, r in enumerate((0, 2)):
        expected = src[r] - np.interp(np.arange(src.shape[1]), t_low, low[i])
        np.testing.assert_allclose(dst[r], expected, rtol=0, atol=1e-12)
    before = rec.raw.get_data().copy()
    events = np.round(rec.art.r_peaks_s * SFREQ).astype(int)
    a, _ = remove_bcg_artifact(rec.raw, picks=PICKS[:4], events=events, n_jobs=1)
    b, _ = remove_bcg_artifact(rec.raw, picks=PICKS[:4], events=events, n_jobs=2)
    np.testing.assert_array_equal(a.get_data(), b.get_data())
    np.testing.assert_array_equal(rec.raw.get_data(), before)  # copy=True leaves the input
    others = np.setdiff1d(np.arange(len(rec.raw.ch_names)), PICKS[:4])
    np.testing.assert_array_equal(a.get_data()[others], before[others])


@pytest.fixture(scope="module")
def hard_rec():
    """30 volumes of hard-mode data: beat-to-beat latency, width and respiratory changes."""
    r = make_recording(30, seed=11, realism="hard")
    r.raw._data[:] = r.clean + r.art.noise
    return r


def _error_near_beats(rec, corrected):
    """RMS error (1-40 Hz) within +-0.5 s of every R-peak / RMS of the sensor noise there."""
    truth = (rec.clean - rec.art.bcg + rec.art.noise)[PICKS]
    near = np.zeros(corrected.shape[1], bool)
    for r in np.round(rec.art.r_peaks_s * SFREQ).astype(int):
        near[max(r - int(0.5 * SFREQ), 0): r + int(0.5 * SFREQ)] = True
    err = band(corrected - truth, 1, 40)[:, near]
    noise = band(rec.art.noise[PICKS], 1, 40)[:, near]
    return float(np.sqrt(np.mean(err**2) / np.mean(noise**2)))


def test_hard_bcg_beats_apply_pca_obs_near_the_beats(hard_rec):
    """Claim (docs/methods.md): on hard-mode BCG, less total error near the beats than
    apply_pca_obs given the same R-peaks, and a beat-locked residual below 0.05."""
    rec = hard_rec
    out, report = remove_bcg_artifact(rec.raw, picks=PICKS)
    peaks = np.round(report.events_s * SFREQ).astype(int)
    mne_out = mne.preprocessing.apply_pca_obs(
        rec.raw, picks=[rec.raw.ch_names[i] for i in PICKS], qrs_times=peaks / SFREQ,
        verbose=False)  # fmt: skip
    ours, theirs = (_error_near_beats(rec, x.get_data()[PICKS]) for x in (out, mne_out))
    locked = _locked_ratio(rec, out.get_data()[PICKS])
    print(f"hard BCG: error near beats / noise eegfmri {ours:.2f}, apply_pca_obs "
          f"{theirs:.2f}; beat-locked residual {locked:.4f}")
    assert report.source == "ecg"
    assert ours < theirs
    assert locked < 0.05


def test_degenerate_cardiac_input_says_what_is_wrong(rec):
    raw = rec.raw.copy().drop_channels(["ECG"])
    raw.info["bads"] = [c for c in raw.ch_names if c in nv.EEG_CHANNELS]
    with pytest.raises(InputError, match="run.set.*every EEG channel is marked bad"):
        remove_bcg_artifact(raw, picks=PICKS[:2], source="run.set")
    with pytest.raises(InputError, match="run.set: 2 cardiac events"):
        remove_bcg_artifact(rec.raw, picks=PICKS[:2], events=np.array([100, 6000, 10 ** 9]),
                            source="run.set")  # fmt: skip
