"""Matched-unit bound of the circular-shift null (bids_app.masking.power)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bids_app.masking.power import matched_unit_p, matched_unit_z, power_summary
from bids_app.masking.shift_null import CircularShiftNull


def _ar1(rng: np.random.Generator, n: int, shape: tuple, rho: float) -> np.ndarray:
    out = np.zeros((n, *shape))
    innov = rng.standard_normal((n, *shape))
    for t in range(n):
        out[t] = (rho * out[t - 1] if t else innov[t] / np.sqrt(1 - rho**2)) + innov[t]
    return out


def _two_runs(rho: float = 0.8, lengths=(40, 33), seed: int = 0):
    rng = np.random.default_rng(seed)
    runs = [_ar1(rng, n, (3, 2), rho) for n in lengths]
    return runs, CircularShiftNull(np.concatenate(runs), np.repeat([0, 1], lengths))


def _shift_z(coef: list[np.ndarray], runs: list[np.ndarray], first: list[int]) -> np.ndarray:
    """z of ``sum coef . yc`` against every joint shift of the runs (brute force)."""
    per_run = []
    for c, y, f in zip(coef, runs, first):
        yc = y - y.mean(axis=0)
        per_run.append(np.array([(c * np.roll(yc, -s, axis=0)[f : f + len(c)]).sum(axis=(0, 2))
                                 for s in range(len(y))]))
    joint = per_run[0]
    for t in per_run[1:]:  # every combination of one shift per run
        joint = (joint[:, None, :] + t[None, :, :]).reshape(-1, t.shape[1])
    observed = sum(t[0] for t in per_run)
    return observed / np.sqrt((joint**2).mean(axis=0))


def test_dense_matched_z_equals_every_joint_shift():
    """Voxel-like units (every window, two runs): exact against all 40 x 33 joint shifts."""
    runs, null = _two_runs()
    coef = [y - y.mean(axis=0) for y in runs]
    np.testing.assert_allclose(matched_unit_z(null), _shift_z(coef, runs, [0, 0]), rtol=1e-10)


def test_sparse_matched_z_is_the_best_placement():
    """Timestamp-like units (4 consecutive windows of one run): the best placement of a
    matched unit, exact against every shift of its run."""
    runs, null = _two_runs()
    best = np.full(3, -np.inf)
    for y in runs:
        yc = y - y.mean(axis=0)
        for first in range(len(y) - 3):
            z = _shift_z([yc[first : first + 4]], [y], [first])
            best = np.maximum(best, z)
    np.testing.assert_allclose(matched_unit_z(null, 4), best, rtol=1e-10)


def test_matched_z_squared_is_half_bartlett_effective_windows():
    """The matched z^2 is about n_eff / 2 with Bartlett's n_eff = L (1 - rho^2) / (1 + rho^2)
    (the other shifts' sample cross-products are of order sqrt(L), not zero): within 25 %
    over 24 series of 600 windows, for white noise (300) and AR(1) rho = 0.9 (31.5)."""
    rng = np.random.default_rng(3)
    for rho in (0.0, 0.9):
        z = np.concatenate([matched_unit_z(CircularShiftNull(_ar1(rng, 600, (8, 1), rho), None))
                            for _ in range(3)])
        half_n_eff = 600 * (1 - rho**2) / (1 + rho**2) / 2
        assert abs(np.mean(z**2) / half_n_eff - 1) < 0.25, (rho, np.mean(z**2), half_n_eff)


def test_a_unit_tracking_the_series_gets_the_matched_z():
    """The statistic the masking computes (``-mean dll`` with ``dll = b y + c``) for a
    unit whose changes are the centred observed values scores exactly the matched z."""
    runs, null = _two_runs(seed=5)
    values = np.concatenate(runs)
    b = -(values - np.concatenate([np.broadcast_to(y.mean(axis=0), y.shape) for y in runs]))
    win = np.arange(len(values))
    starts = np.array([0, len(values)])
    mean, sd = null.moments(None, b, np.zeros_like(b), win, starts)
    observed = -(b * values).sum(axis=-1).sum(axis=0) / len(values)
    np.testing.assert_allclose((observed - mean[0]) / sd[0], matched_unit_z(null), rtol=1e-10)


def test_constant_output_has_no_matched_unit():
    y = np.zeros((30, 2, 1))
    y[:, 1, 0] = np.sin(np.arange(30))
    p = matched_unit_p(CircularShiftNull(y, None))
    assert np.isnan(p[0]) and 0 < p[1] < 1


def test_power_summary_counts_the_pairs_bh_needs():
    out = power_summary(np.array([0.069, 0.006, 5.8e-6, np.nan]), ["checker", "luminance",
                        "motion", "unseen"], n_tests=100_000, alpha=0.05)
    assert out["pairs_needed"] == {"checker": 138_000, "luminance": 12_000, "motion": 12}
    assert out["out_of_reach"] == ["checker"]
    assert out["smallest_matched_p"] == pytest.approx(5.8e-6)
    assert out["matched_p"]["motion"] == pytest.approx(stats.norm.sf(stats.norm.isf(5.8e-6)))


def test_occlusion_heads_carry_their_matched_p():
    """occlusion_effects attaches to every tested head the matched-unit p of its own null:
    VAE-2's stimulus head for voxels (every window) and EEG timestamps (their windows)."""
    import torch

    from bids_app.masking import MaskingData, occlusion_effects
    from bids_app.models.vae import StimulusVAE

    rng = np.random.default_rng(1)
    n, c, t, v, f, step = 48, 3, 8, 12, 2, 2
    runs = np.repeat([0, 1], n // 2)
    units = (np.arange(n) % (n // 2))[:, None] * step + np.arange(t)[None] + runs[:, None] * 1000
    stim = np.concatenate([_ar1(rng, n // 2, (f,), 0.7) for _ in range(2)])
    data = MaskingData(rng.standard_normal((n, c, t)).astype(np.float32),
                       rng.standard_normal((n, v)).astype(np.float32),
                       stim.astype(np.float32), units, window_runs=runs)
    torch.manual_seed(0)
    vae2 = StimulusVAE((c, t), v, f, latent_dim=2, hidden_dim=8)
    null = CircularShiftNull(data.stimulus.astype(np.float64)[:, :, None], runs)
    for kind, occurrences in (("fmri", None), ("eeg", t // step)):
        (head,) = occlusion_effects(vae2, data, kind=kind, n_boot=0)
        assert head.head == "stimulus" and head.matched_p.shape == (f,)
        np.testing.assert_allclose(head.matched_p, matched_unit_p(null, occurrences),
                                   rtol=1e-12)
