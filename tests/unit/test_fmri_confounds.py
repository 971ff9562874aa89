"""Confounds: fMRIPrep column names, DVARS, aCompCor and outliers against planted truth."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.fmri.confounds import acompcor, compute_confounds, cosine_basis, dvars
from bids_app.fmri.motion import MOTION_COLUMNS

N = 80


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    shape = (12, 12, 10)
    wm = np.zeros(shape)
    wm[2:6, 2:10, 2:8] = 1.0
    csf = np.zeros(shape)
    csf[7:9, 2:10, 2:8] = 1.0
    mask = np.zeros(shape, bool)
    mask[1:11, 1:11, 1:9] = True
    noise_ts = np.sin(np.linspace(0, 12 * np.pi, N))  # physiological noise in WM + CSF
    data = 1000 + rng.normal(0, 5, (*shape, N))
    data[(wm + csf) > 0] += 20 * noise_ts * rng.uniform(0.5, 1.5, (int((wm + csf).sum()), 1))
    spike = 40
    data[..., spike] += rng.normal(0, 60, shape)  # a corrupted volume
    motion = np.zeros((N, 6))
    motion[:, 0] = np.linspace(0, 0.5, N)
    motion[60:, 1] = 0.8  # a 0.8 mm jump at volume 60
    return data, mask, wm, csf, motion, noise_ts, spike


def test_columns_follow_fmriprep(planted):
    data, mask, wm, csf, motion, _, _ = planted
    df, desc = compute_confounds(data, mask, wm, csf, motion, tr=2.1, n_acompcor=5)
    expected = {"global_signal", "csf", "white_matter", "dvars", "std_dvars",
                "framewise_displacement"}  # fmt: skip
    for m in MOTION_COLUMNS:
        expected |= {m, f"{m}_derivative1", f"{m}_power2", f"{m}_derivative1_power2"}
    expected |= {f"a_comp_cor_{k:02d}" for k in range(5)}
    assert expected <= set(df.columns)
    assert any(c.startswith("cosine") for c in df.columns)
    assert set(desc) == set(df.columns)
    assert all({"LongName", "Description", "Units"} <= set(d) for d in desc.values())
    assert len(df) == N
    for col in ("framewise_displacement", "dvars", "std_dvars", "trans_x_derivative1"):
        assert np.isnan(df[col].iloc[0]) and not df[col].iloc[1:].isna().any()


def test_outliers_flag_planted_events(planted):
    data, mask, wm, csf, motion, _, spike = planted
    df, _ = compute_confounds(data, mask, wm, csf, motion, tr=2.1, fd_threshold_mm=0.5)
    flagged = {int(np.argmax(df[c])) for c in df.columns if c.startswith("motion_outlier")}
    assert 60 in flagged  # FD of the 0.8 mm jump
    assert {spike, spike + 1} <= flagged  # DVARS of the corrupted volume
    assert len(flagged) <= 4


def test_dvars_standardised_near_one_for_white_noise():
    x = np.random.default_rng(1).normal(0, 1, (2000, 100))
    raw, std = dvars(x)
    assert np.nanmean(std) == pytest.approx(1.0, abs=0.05)
    assert np.nanmean(raw) == pytest.approx(np.sqrt(2), rel=0.05)


def test_acompcor_recovers_planted_noise(planted):
    data, mask, wm, csf, motion, noise_ts, _ = planted
    df, _ = compute_confounds(data, mask, wm, csf, motion, tr=2.1)
    basis = cosine_basis(N, 2.1)
    design = np.column_stack([np.ones(N), basis])
    resid = noise_ts - design @ np.linalg.lstsq(design, noise_ts, rcond=None)[0]
    r = max(abs(np.corrcoef(df[f"a_comp_cor_{k:02d}"], resid)[0, 1]) for k in range(2))
    assert r > 0.9, r
    comps = acompcor(np.zeros((0, N)), basis, 3)
    assert comps.shape == (N, 3)
