"""Gradient artifact removal on hard-mode data, with correct, absent and wrong SliceTiming.

Claims (docs/methods.md, "Gradient artifact"): on hard-mode recordings (per-slice
waveforms, volume amplitude changes, a head movement, vibration lines, 40 ppm clock drift)
the error stays <= 1.3 x the sensor-noise floor (1-70 Hz) and the slice harmonics are
>= 30 dB down whatever the BOLD sidecar says about the slice times, because the slice
onsets are measured from the EEG.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import signal

from bids_app.eeg.gradient import remove_gradient_artifact
from bids_app.eeg.slice_timing import choose_slice_offsets, estimate_slice_offsets
from bids_app.errors import InputError
from bids_app.natview import facts as nv
from bids_app.simulate.artifacts import simulate_recording
from bids_app.simulate.realism import REALISM, sidecar_slice_timing

SFREQ = nv.EEG_SFREQ
TR_SAMPLES = int(round(nv.TR * SFREQ))
EEG_IDX = [nv.CHANNEL_NAMES.index(c) for c in nv.EEG_CHANNELS]
PICKS = EEG_IDX[::5]
HARD = REALISM["hard"]


def band(x, lo, hi):
    sos = signal.butter(4, [lo, hi], "bandpass", fs=SFREQ, output="sos")
    return signal.sosfiltfilt(sos, x, axis=-1)


def lowpass(x):
    return signal.sosfiltfilt(signal.butter(4, 70.0, "lowpass", fs=SFREQ, output="sos"), x,
                              axis=-1)  # fmt: skip


@pytest.fixture(scope="module")
def rec():
    return simulate_recording(20, seed=3, bcg=False, realism="hard")


def _scan(rec):
    return slice(int(rec.volume_onsets[0]), int(rec.volume_onsets[-1]) + TR_SAMPLES)


@pytest.mark.parametrize("sidecar", ["correct", "absent", "wrong"])
def test_hard_gradient_near_noise_floor_whatever_the_sidecar(rec, sidecar):
    timing = sidecar_slice_timing(nv.slice_timing(), nv.TR,
                                  dataclasses.replace(HARD, sidecar_slice_timing=sidecar))
    out, report = remove_gradient_artifact(rec.raw, slice_timing=timing, n_slices=38,
                                           tr=nv.TR, picks=PICKS)  # fmt: skip
    sl = _scan(rec)
    corrected = out.get_data()[PICKS][:, sl]
    truth = band(lowpass(rec.clean[PICKS]), 1, 70)[:, sl]
    noise = band(rec.art.noise[PICKS], 1, 70)[:, sl]
    ratio = float(np.sqrt(np.mean((band(out.get_data()[PICKS], 1, 70)[:, sl] - truth) ** 2)
                          / np.mean(noise**2)))  # fmt: skip
    before = rec.raw.get_data()[PICKS][:, sl]
    expected = lowpass(rec.clean[PICKS] + rec.art.noise[PICKS])[:, sl]
    freqs = np.fft.rfftfreq(before.shape[1], 1 / SFREQ)
    f_slice = SFREQ / np.median(np.diff(np.unique(nv.slice_timing()) * SFREQ))
    near = np.zeros(freqs.size, bool)
    for k in (1, 2, 3):
        near |= np.abs(freqs - k * f_slice) < 0.3

    def power(x):
        return (np.abs(np.fft.rfft(x, axis=1)) ** 2)[:, near].sum()

    reduction = 10 * np.log10(power(before) / power(corrected))
    excess = power(corrected) / power(expected)
    st = report.slice_timing
    print(f"SliceTiming {sidecar}: error/noise {ratio:.3f}, harmonics {reduction:.1f} dB down "
          f"(power vs artifact-free {excess:.2f}); onsets from {st.source}: {st.reason}")
    assert ratio <= 1.3
    assert reduction >= 30.0
    assert excess < 1.5
    assert st.source == {"correct": "sidecar", "absent": "eeg", "wrong": "eeg"}[sidecar]
    assert report.to_dict()["slice_timing"]["reason"] == st.reason


def test_slice_onsets_measured_from_the_artifact(rec):
    strong = np.array(PICKS[:4])
    offsets, info = estimate_slice_offsets(rec.raw._data[strong], rec.volume_onsets, SFREQ)
    true = (rec.art.slice_onsets_s.reshape(20, -1) * SFREQ - rec.volume_onsets[:, None])
    assert offsets.size == 38 and info["periodicity"] > 0.5
    # within half a sample of the truth (the markers fall up to one sample after the start)
    assert np.max(np.abs(offsets - true.mean(axis=0))) < 0.5
    wrong = sidecar_slice_timing(nv.slice_timing(), nv.TR, HARD)
    _, report = choose_slice_offsets(rec.raw._data[strong], rec.volume_onsets, SFREQ,
                                     prior=wrong)  # fmt: skip
    assert report.source == "eeg" and 7.0 < report.sidecar_max_deviation_ms < 8.5
    assert "disagrees" in report.reason
    _, report = choose_slice_offsets(rec.raw._data[strong], rec.volume_onsets, SFREQ,
                                     prior=nv.slice_timing()[:30])  # fmt: skip
    assert report.source == "eeg" and "30 slice times" in report.reason


def test_no_artifact_falls_back_or_says_what_is_missing(rec):
    quiet = rec.clean[PICKS[:4]] + rec.art.noise[PICKS[:4]]  # no gradient artifact
    offsets, report = choose_slice_offsets(quiet, rec.volume_onsets, SFREQ,
                                           prior=nv.slice_timing())  # fmt: skip
    assert report.source == "sidecar" and "no gradient artifact" in report.reason
    offsets, report = choose_slice_offsets(quiet, rec.volume_onsets, SFREQ, n_slices=38,
                                           tr=nv.TR)  # fmt: skip
    assert report.source == "even" and offsets.size == 38
    with pytest.raises(InputError, match="run_eeg.set.*no SliceTiming"):
        choose_slice_offsets(quiet, rec.volume_onsets, SFREQ, source="run_eeg.set")
