"""Gradient artifact removal against planted truth and MNE's volume AAS."""

from __future__ import annotations

import mne
import numpy as np
import pytest
from scipy import signal

from bids_app.eeg.gradient import remove_gradient_artifact
from bids_app.natview import facts as nv
from bids_app.simulate.artifacts import simulate_recording as make_recording

SFREQ = nv.EEG_SFREQ
TR_SAMPLES = int(round(nv.TR * SFREQ))
EEG_IDX = [nv.CHANNEL_NAMES.index(c) for c in nv.EEG_CHANNELS]


def band(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Zero-phase band-pass used by every comparison."""
    sos = signal.butter(4, [lo, hi], "bandpass", fs=SFREQ, output="sos")
    return signal.sosfiltfilt(sos, x, axis=-1)


def lowpass(x: np.ndarray, cutoff: float = 70.0) -> np.ndarray:
    """The gradient step's own low-pass, applied to the truth for fair comparisons."""
    sos = signal.butter(4, cutoff, "lowpass", fs=SFREQ, output="sos")
    return signal.sosfiltfilt(sos, x, axis=-1)


PICKS = EEG_IDX[::5]  # 13 EEG channels keep the test fast


@pytest.fixture(scope="module")
def rec():
    return make_recording(20, seed=3, bcg=False)


@pytest.fixture(scope="module")
def ours(rec):
    out, report = remove_gradient_artifact(rec.raw, slice_timing=nv.slice_timing(), tr=nv.TR,
                                           picks=PICKS)  # fmt: skip
    return out.get_data()[PICKS], report


def _scan(rec):
    return slice(int(rec.volume_onsets[0]), int(rec.volume_onsets[-1]) + TR_SAMPLES)


def _error_ratio(rec, corrected, sl):
    """RMS(corrected - noise-free truth) / RMS(noise), both in 1-70 Hz, within the scan."""
    truth = band(lowpass(rec.clean[PICKS]), 1, 70)[:, sl]
    noise = band(rec.art.noise[PICKS], 1, 70)[:, sl]
    err = band(corrected, 1, 70)[:, sl] - truth
    return float(np.sqrt(np.mean(err**2) / np.mean(noise**2)))


def test_residual_near_noise_floor_and_better_than_aas(rec, ours):
    corrected, report = ours
    sl = _scan(rec)
    ratio = _error_ratio(rec, corrected, sl)
    aas = mne.preprocessing.remove_fmri_gradient_artifact(
        rec.raw, rec.volume_onsets, tr_tol=2, picks=PICKS, verbose=False)
    aas_ratio = _error_ratio(rec, lowpass(aas.get_data()[PICKS]), sl)
    # MNE leaves the first and last 4 volumes uncorrected: compare on the middle too
    mid = slice(sl.start + 4 * TR_SAMPLES, sl.stop - 4 * TR_SAMPLES)
    aas_mid = _error_ratio(rec, lowpass(aas.get_data()[PICKS]), mid)
    print(f"error/noise: eegfmri {ratio:.3f}, AAS {aas_ratio:.1f} (middle {aas_mid:.2f})")
    assert ratio <= 1.1
    assert ratio < 0.25 * aas_mid
    assert report.n_volumes == 20 and report.n_slices == 38
    # the scanner clock jitter is found: corrections spread by about a sample
    assert 0.1 < report.shift_std_samples < 1.0


def test_slice_harmonics_suppressed(rec, ours):
    corrected, _ = ours
    sl = _scan(rec)
    before = rec.raw.get_data()[PICKS][:, sl]
    expected = lowpass(rec.clean[PICKS] + rec.art.noise[PICKS])[:, sl]  # artifact-free data
    f_slice = nv.N_SLICES / 2.1075  # slices are 55.47 ms apart
    freqs = np.fft.rfftfreq(before.shape[1], 1 / SFREQ)

    def power(x, near):
        return (np.abs(np.fft.rfft(x, axis=1)) ** 2)[:, near].sum()

    for k in (1, 2, 3):
        near = np.abs(freqs - k * f_slice) < 0.3
        red = 10 * np.log10(power(before, near) / power(corrected[:, sl], near))
        excess = power(corrected[:, sl], near) / power(expected, near)
        print(f"harmonic {k}: {red:.1f} dB reduction, power vs artifact-free {excess:.2f}")
        assert red > 25.0
        assert excess < 1.5


def test_full_band_obs_reduces_high_frequency_residual(rec):
    sl = _scan(rec)
    hf = {}
    for key, comps, anc in ((0, 0, False), ("auto", "auto", False), ("anc", "auto", True)):
        out, report = remove_gradient_artifact(rec.raw, slice_timing=nv.slice_timing(),
                                               tr=nv.TR, picks=PICKS[:4], lowpass=None,
                                               obs_components=comps, anc=anc)  # fmt: skip
        err = out.get_data()[PICKS[:4]][:, sl] - rec.clean[PICKS[:4]][:, sl]
        hf[key] = np.sqrt(np.mean(band(err - rec.art.noise[PICKS[:4]][:, sl], 100, 2000) ** 2))
        if comps == "auto":
            assert all(1 <= n <= 10 for n in report.obs_components.values())
    print("HF residual (uV):", {k: round(v * 1e6, 4) for k, v in hf.items()})
    assert hf["auto"] < 0.9 * hf[0]
    assert hf["anc"] < hf["auto"]  # ANC after the shapes and the OBS removes a little more


def test_ecg_and_eog_channels_corrected(rec):
    picks = [nv.CHANNEL_NAMES.index(c) for c in ("ECG", "EOGU")]
    out, _ = remove_gradient_artifact(rec.raw, slice_timing=nv.slice_timing(), tr=nv.TR,
                                      picks=picks)  # fmt: skip
    sl = _scan(rec)
    err = out.get_data()[picks][:, sl] - lowpass(rec.clean[picks])[:, sl]
    grad = rec.art.gradient[picks][:, sl]
    assert np.sqrt(np.mean(err**2)) < 1e-3 * np.sqrt(np.mean(grad**2)) * 10


# --- volume triggers ---------------------------------------------------------------------
from bids_app.eeg.triggers import find_volume_triggers, regularise_triggers  # noqa: E402
from bids_app.errors import InputError  # noqa: E402

GRID = 15000 + 10500 * np.arange(40)


def test_triggers_clean_grid():
    onsets, rep = regularise_triggers(GRID, int(GRID[-1] + 20000))
    np.testing.assert_allclose(onsets, GRID)
    assert rep.n_volumes == 40 and rep.tr_samples == pytest.approx(10500)
    assert (rep.n_filled, rep.n_duplicates, rep.n_extra, rep.truncated) == (0, 0, 0, False)


def test_triggers_missing_duplicated_and_stray():
    marks = np.delete(GRID, [5, 17, 18])  # three lost markers, two of them in a row
    marks = np.sort(np.concatenate([marks, [GRID[9], GRID[9] + 1, GRID[25] + 6100]]))
    onsets, rep = regularise_triggers(marks, int(GRID[-1] + 20000))
    np.testing.assert_allclose(onsets, GRID, atol=0.5)
    assert rep.n_filled == 3 and rep.n_duplicates == 2 and rep.n_extra == 1
    assert rep.segments == [(0, 39)]


def test_triggers_interrupted_scan_and_truncation():
    second = GRID[-1] + 60000 + 3217 + 10500 * np.arange(10)  # restarted, new phase
    marks = np.concatenate([GRID, second])
    onsets, rep = regularise_triggers(marks, int(second[-1] + 5000))
    np.testing.assert_allclose(onsets, marks)
    assert rep.segments == [(0, 39), (40, 49)]
    assert rep.truncated  # the last volume is cut by the end of the recording


def test_triggers_from_annotations_and_errors():
    info = mne.create_info(["Cz"], SFREQ, "eeg")
    raw = mne.io.RawArray(np.zeros((1, int(GRID[-1] + 20000))), info, verbose=False)
    raw.set_annotations(mne.Annotations(GRID / SFREQ, 0, ["Response/R128"] * GRID.size))
    onsets, rep = find_volume_triggers(raw, marker="R128")
    np.testing.assert_allclose(onsets, GRID)
    assert rep.first_onset_s == pytest.approx(3.0)
    raw.set_annotations(None)
    with pytest.raises(InputError, match="sub-01_eeg.set.*R128"):
        find_volume_triggers(raw, marker="R128", source="sub-01_eeg.set")


def test_truncated_recording_is_corrected():
    """A recording that stops inside a volume: every complete slice is still corrected."""
    rec = make_recording(12, seed=5, bcg=False, extra_s=0.0)
    stop = int(rec.volume_onsets[-1] + 0.6 * TR_SAMPLES)
    raw = rec.raw.copy().crop(tmax=(stop - 1) / SFREQ)
    out, rep = remove_gradient_artifact(raw, slice_timing=nv.slice_timing(), picks=PICKS[:3])
    assert rep.triggers.truncated
    err = out.get_data()[PICKS[:3]] - lowpass(rec.clean[PICKS[:3], :stop])
    grad = rec.art.gradient[PICKS[:3], :stop]
    tail = slice(int(rec.volume_onsets[-1]), stop - 300)  # the cut volume
    assert np.sqrt(np.mean(err[:, tail] ** 2)) < 0.01 * np.sqrt(np.mean(grad[:, tail] ** 2))


# --- speed-related implementation details: exactness, threads, copies, ANC ----------------
from bids_app.eeg.anc import adaptive_noise_cancel  # noqa: E402
from bids_app.eeg.kernels import zero_phase  # noqa: E402


@pytest.mark.parametrize("kernel", ["compiled", "public"])
def test_zero_phase_equals_sosfiltfilt(kernel, monkeypatch):
    if kernel == "public":  # the fallback used when scipy's private kernel moves
        monkeypatch.setattr("bids_app.eeg.kernels._SOSFILT", None)
    x = np.random.default_rng(0).standard_normal((3, 20000)).cumsum(axis=1)
    for sos in (signal.butter(2, 5.0, "highpass", fs=SFREQ, output="sos"),
                signal.butter(4, 70.0, "lowpass", fs=SFREQ, output="sos")):  # fmt: skip
        for padtype, padlen in (("odd", None), ("even", 500)):
            ref = signal.sosfiltfilt(sos, x, padtype=padtype, padlen=padlen)
            exact = zero_phase(sos, x, padtype=padtype, padlen=padlen, dtype=np.float64)
            fast = zero_phase(sos, x, padtype=padtype, padlen=padlen)
            scale = np.abs(ref).max()
            assert np.abs(exact - ref).max() < 1e-10 * scale
            assert fast.dtype == np.float32 and np.abs(fast - ref).max() < 2e-3 * scale


def test_threads_chunks_and_copy_do_not_change_results(rec):
    before = rec.raw.get_data().copy()
    kw = dict(slice_timing=nv.slice_timing(), tr=nv.TR, picks=PICKS[:5])
    a, _ = remove_gradient_artifact(rec.raw, n_jobs=1, chunk_channels=5, **kw)
    b, _ = remove_gradient_artifact(rec.raw, n_jobs=2, chunk_channels=2, **kw)
    np.testing.assert_array_equal(a.get_data(), b.get_data())
    np.testing.assert_array_equal(rec.raw.get_data(), before)  # copy=True leaves the input
    others = np.setdiff1d(np.arange(len(rec.raw.ch_names)), PICKS[:5])
    np.testing.assert_array_equal(a.get_data()[others], before[others])


def test_adaptive_noise_cancel_removes_leak_and_keeps_eeg():
    rng = np.random.default_rng(1)
    n = 100_000
    ref = rng.standard_normal((2, n))
    eeg = lowpass(rng.standard_normal((2, n)), 40.0)
    leak = 0.3 * np.roll(band(ref, 100, 2000), 40, axis=-1)  # delayed, filtered reference
    out = adaptive_noise_cancel(eeg + leak, ref, SFREQ, span=280)
    inner = slice(5000, n - 5000)
    left = band(out - eeg, 100, 2000)[:, inner]
    assert np.sqrt(np.mean(left**2)) < 0.05 * np.sqrt(np.mean(leak[:, inner] ** 2))
    kept = lowpass(out - eeg - leak, 40.0)[:, inner]
    assert np.sqrt(np.mean(kept**2)) < 1e-3 * np.sqrt(np.mean(eeg[:, inner] ** 2))


def test_anc_on_simulated_recording(rec, ours):
    """ANC (off by default) leaves the low-passed output as close to the truth as without.

    On these data the template and OBS leave almost nothing for ANC to remove after the
    70 Hz low-pass; its effect shows on the full-band output (next test).
    """
    sl = _scan(rec)
    out, report = remove_gradient_artifact(rec.raw, slice_timing=nv.slice_timing(), tr=nv.TR,
                                           picks=PICKS, anc=True)  # fmt: skip
    assert report.anc and report.anc_taps > 1 and report.to_dict()["anc"] is True
    corrected = out.get_data()[PICKS]
    ratio, ratio_off = _error_ratio(rec, corrected, sl), _error_ratio(rec, ours[0], sl)
    expected = lowpass(rec.clean[PICKS] + rec.art.noise[PICKS])[:, sl]
    freqs = np.fft.rfftfreq(expected.shape[1], 1 / SFREQ)
    near = np.abs(freqs - 3 * nv.N_SLICES / 2.1075) < 0.3

    def harmonic(x):  # residual power at the 3rd slice harmonic (54 Hz)
        return (np.abs(np.fft.rfft(x[:, sl] - expected, axis=1)) ** 2)[:, near].sum()

    gain = harmonic(ours[0]) / harmonic(corrected)
    # where ANC acts: above the EEG band, in the low-pass's transition band
    res = {k: np.sqrt(np.mean(band(x[:, sl] - expected, 75, 250) ** 2))
           for k, x in (("off", ours[0]), ("on", corrected))}  # fmt: skip
    print(f"ANC: error/noise {ratio_off:.4f} -> {ratio:.4f}; 54 Hz residual power / {gain:.3f}"
          f"; 75-250 Hz residual {1e9 * res['off']:.1f} -> {1e9 * res['on']:.1f} nV")
    assert ratio <= ratio_off + 1e-3
    assert gain >= 0.999 and res["on"] <= 1.001 * res["off"]
