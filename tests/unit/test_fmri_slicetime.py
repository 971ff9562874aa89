"""Slice-timing correction removes planted per-slice phase offsets."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.fmri.slicetime import shift_series, slice_time_correct, slice_time_reference
from bids_app.natview import facts as nv


def _phase(series: np.ndarray, freq: float, times: np.ndarray) -> np.ndarray:
    """Least-squares phase of a sinusoid at ``freq`` (rows of ``series``)."""
    design = np.column_stack([np.cos(2 * np.pi * freq * times),
                              np.sin(2 * np.pi * freq * times), np.ones_like(times)])  # fmt: skip
    coef, *_ = np.linalg.lstsq(design, series.T, rcond=None)
    return np.arctan2(-coef[1], coef[0])


def test_reference_time_follows_fmriprep_convention():
    st = nv.slice_timing()
    assert slice_time_reference(st, nv.TR, 0.0) == pytest.approx(0.0)
    assert slice_time_reference(st, nv.TR, 1.0) == pytest.approx(nv.LAST_SLICE_TIME)
    assert slice_time_reference(st, nv.TR, 0.5) == pytest.approx(nv.LAST_SLICE_TIME / 2)
    with pytest.raises(ValueError):
        slice_time_reference(st, nv.TR, 1.5)


def test_planted_phase_offsets_removed():
    st = np.asarray(nv.slice_timing())
    n_vol, freq = 120, 0.03
    t = np.arange(n_vol) * nv.TR
    rng = np.random.default_rng(0)
    # each slice samples the same sinusoid (plus a trend) at its own acquisition time
    clean = np.sin(2 * np.pi * freq * (t[None, :] + st[:, None])) + 0.002 * t[None, :]
    shape = (3, 2, 38, n_vol)
    data = np.broadcast_to(clean, shape).copy() + rng.normal(0, 0.01, shape)
    before = _phase(data[0, 0], freq, t)
    corrected, ref_time = slice_time_correct(data, st, nv.TR, ref=0.5)
    after = _phase(corrected[0, 0], freq, t)
    spread_before = np.ptp(np.unwrap(before))
    spread_after = np.ptp(np.unwrap(after))
    # planted offsets span 2 pi f * 2.05 s = 0.39 rad; measured after correction: 0.007 rad
    assert spread_before > 0.35
    assert spread_after < 0.02, spread_after
    expected = np.sin(2 * np.pi * freq * (t + ref_time)) + 0.002 * t
    err = np.abs(corrected[..., 5:-5] - expected[5:-5]).max()
    assert err < 0.05, err
    assert ref_time == pytest.approx(nv.LAST_SLICE_TIME / 2)


def test_shift_is_exact_for_band_limited_signal_and_zero_shift_identity():
    n = 64
    t = np.arange(n)
    x = np.cos(2 * np.pi * 4 * t / n)[None, :]  # periodic, no padding artefact
    y = shift_series(x, np.array([0.3]))
    assert np.abs(y - np.cos(2 * np.pi * 4 * (t + 0.3) / n)).max() < 0.05
    z = np.random.default_rng(1).normal(size=(5, 30))
    assert np.allclose(shift_series(z, np.zeros(5)), z, atol=1e-5)


def test_slice_count_mismatch_raises():
    with pytest.raises(ValueError, match="SliceTiming"):
        slice_time_correct(np.zeros((2, 2, 5, 10)), [0.0, 1.0], 2.0)
