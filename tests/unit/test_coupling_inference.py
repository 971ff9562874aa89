"""Coupling inference on planted sources and realistic nulls: recall, false positives, calibration.

The test generator, not the simulator, varies the haemodynamics: the planted voxels of
``planted_mni_bold``'s noise follow their source's power convolved with a canonical
(SPM, peak 5 s), a 2 s delayed, or a late (peak 8.5 s) HRF. Nulls pair null EEG with
BOLD noise of heterogeneous AR(1) (rho 0.2-0.6 per voxel) or 1/f (exponent 0.5-1.5 per
voxel) spectra. The statistics are computed over the posterior 26 521 voxels (MNI y <= -40,
which hold every planted source) of the full-brain source maps, with 10 shifts over
10 000 null voxels, to keep each run to seconds.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from types import SimpleNamespace

import mne
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn import datasets
from scipy import sparse, stats

from bids_app import coupling as cp
from bids_app.config import CouplingConfig, FMRIConfig
from bids_app.coupling import glm as cglm
from bids_app.coupling import noise
from bids_app.eeg import source
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.bold import POWER_SFREQ, planted_mni_bold
from bids_app.simulate.bold_hard import HRF, convolved
from bids_app.simulate.mni_runs import null_noise, simulate_mni_run
from bids_app.simulate.neural import simulate_neural
from bids_app.simulate.realism import REALISM
from bids_app.simulate.stimulus import simulate_stimulus

#: Every test here simulates and couples whole runs (about 4 min for the module; CI runs it).
pytestmark = pytest.mark.slow

SFREQ, TR, N_VOL, LEAD = 250.0, nv.TR, 110, 3.0
BANDS = (("theta", 4.0, 8.0), ("alpha", 8.0, 13.0), ("beta", 13.0, 30.0))
BASIS = "spm + derivative + dispersion"
#: Simulated HRFs: (peak gamma shape, undershoot gamma shape, delay s); canonical peaks at 5 s.
HRFS = {"canonical": (6.0, 16.0, 0.0), "delayed2s": (6.0, 16.0, 2.0),
        "peak8p5s": (9.5, 19.5, 0.0)}


def _hrf_kernel(kind: str, dt: float = 1.0 / POWER_SFREQ, length_s: float = 40.0
                ) -> np.ndarray:
    shape, undershoot, delay = HRFS[kind]
    t = np.arange(0, length_s, dt) - delay
    h = np.where(t > 0, stats.gamma.pdf(t, shape) - stats.gamma.pdf(t, undershoot) / 6, 0)
    return h / h.sum()


def _regressor(power: np.ndarray, times_s: np.ndarray, kind: str) -> np.ndarray:
    power = np.asarray(power, float)
    conv = np.convolve(power - power.mean(), _hrf_kernel(kind))[: len(power)]
    conv = (conv - conv.mean()) / conv.std()
    return np.interp(times_s, np.arange(len(conv)) / POWER_SFREQ, conv)


def _eeg(null: bool, seed: int) -> tuple:
    duration = LEAD + N_VOL * TR + 3.0
    stim = simulate_stimulus("tp", N_VOL * TR + 10, 10.0, (32, 24),
                             np.random.default_rng(seed + 1), null=null, render=False)
    sim = simulate_neural("tp", stim, SFREQ, int(duration * SFREQ), -LEAD,
                          np.random.default_rng(seed), null=null)
    raw = mne.io.RawArray(sim.eeg.astype(float), mne.create_info(
        list(nv.EEG_CHANNELS), SFREQ, "eeg"), verbose="error")
    onsets = LEAD + np.arange(N_VOL) * TR
    return sim, raw, onsets, cp.acquisition_times(onsets, TR / 2)


def _in_pairs(compute, cache: dict, keys: list[tuple], key: tuple) -> SimpleNamespace:
    """``compute(*key)``, cached; on a miss every uncached entry of ``keys`` is computed too,
    two at a time in separate processes (one run keeps about 1.5 of CI's 2 cores busy, so
    pairs finish sooner than one run after the other)."""
    if key not in cache:
        todo = [k for k in dict.fromkeys([key, *keys]) if k not in cache]
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            cache.update(zip(todo, pool.map(compute, *zip(*todo))))
    return cache[key]


#: Ideal runs of the tests below: (HRF or None, noise kind, seed, shuffled source map).
IDEAL_RUNS = ([(hrf, "planted", 0, False) for hrf in HRFS] + [("canonical", "planted", 0, True)]
              + [(None, kind, 7, False) for kind in ("ar1", "1f")])
_IDEAL_CACHE: dict[tuple, SimpleNamespace] = {}


def _run(hrf: str | None, noise_kind: str = "planted", seed: int = 0,
         shuffle_sources: bool = False) -> SimpleNamespace:
    """As :func:`_ideal_run`, cached (every run of :data:`IDEAL_RUNS` on first use)."""
    return _in_pairs(_ideal_run, _IDEAL_CACHE, IDEAL_RUNS,
                     (hrf, noise_kind, seed, shuffle_sources))


def _ideal_run(hrf: str | None, noise_kind: str = "planted", seed: int = 0,
               shuffle_sources: bool = False) -> SimpleNamespace:
    """Planted run (``hrf`` given) or null run (``noise_kind`` 'ar1' or '1f').

    ``shuffle_sources`` gives every voxel the source of a random other voxel (control).
    """
    sim, raw, onsets, times = _eeg(hrf is None, seed)
    mask = datasets.load_mni152_brain_mask(resolution=3)
    bold, planted = planted_mni_bold("tp", sim.source_power, times, mask,
                                     np.random.default_rng(seed + 2), null=True)
    if hrf is None:
        rng = np.random.default_rng(seed + 3)
        bold = 100 + 0.5 * null_noise(noise_kind, *bold.shape, rng)
    else:
        for src in scenario.sources_for_task("tp"):
            bold[:, planted[src.name]] += src.bold_sign * 0.5 * _regressor(
                sim.source_power[src.name], times, hrf)[:, None]
    maps = source.compute_source_maps(raw, onsets, TR, mask, bands=BANDS)
    keep = nib.affines.apply_affine(mask.affine, maps.grid.voxel_ijk)[:, 1] <= -40
    weights = maps.grid.weights
    if shuffle_sources:
        weights = weights[np.random.default_rng(seed + 4).permutation(weights.shape[0])]
    results = cp.couple_bands(
        {b: maps.coupling_power(b) for b, _, _ in BANDS},
        bold=bold[:, keep], hrf=cp.hrf_matrix(onsets, TR, times, hrf_model=BASIS),
        weights=weights[keep], nuisance=cp.nuisance_design(times, None),
        rr_mm=maps.grid.rr_mm, ch_names=maps.ch_names, window_s=TR, n_shifts=10,
        n_null_voxels=10_000, shapes=cp.hrf_shapes(onsets, TR, times))
    return SimpleNamespace(
        results=results, planted={k: v[keep] for k, v in planted.items()},
        leak=_leakage(sim, maps, onsets, weights[keep], maps.grid.weights[keep])
        if shuffle_sources else None)


def _leakage(sim, maps: source.SourceMaps, onsets: np.ndarray, shuffled: sparse.csr_matrix,
             right: sparse.csr_matrix) -> dict[str, SimpleNamespace]:
    """Per planted source, for every voxel: the distance (mm) from the source the shuffled
    map gives it to its own source, and the correlation of that source's estimated band
    power with the planted source's true power (window means)."""
    assigned = np.asarray(shuffled.argmax(axis=1)).ravel()
    own = np.asarray(right.argmax(axis=1)).ravel()
    distance = np.linalg.norm(maps.grid.rr_mm[assigned] - maps.grid.rr_mm[own], axis=1)
    first = np.rint(onsets * POWER_SFREQ).astype(int)
    width = int(round(TR * POWER_SFREQ))
    out = {}
    for src in scenario.sources_for_task("tp"):
        truth = np.array([sim.source_power[src.name][i:i + width].mean() for i in first])
        est = np.nan_to_num(maps.source_power[src.band])
        est, truth = est - est.mean(0), truth - truth.mean()
        corr = est.T @ truth / np.sqrt((est**2).sum(0) * (truth**2).sum() + 1e-300)
        out[src.name] = SimpleNamespace(distance_mm=distance, corr=corr[assigned])
    return out


@pytest.mark.parametrize("hrf, min_recall", [("canonical", 0.8), ("delayed2s", 0.6),
                                              ("peak8p5s", 0.6)])
def test_planted_recall_and_false_positives(hrf, min_recall):
    run = _run(hrf)
    band_of = {s.name: s.band for s in scenario.sources_for_task("tp")}
    any_planted = np.any(list(run.planted.values()), axis=0)
    for name, inside in run.planted.items():
        res = run.results[band_of[name]]
        found = (res.q < 0.05) | (res.local_q < 0.05)  # global or source-resolved map
        assert found[inside].mean() >= min_recall, (hrf, name, found[inside].mean())
    for band, res in run.results.items():
        for q in (res.q, res.local_q):
            assert (q[~any_planted] < 0.05).mean() <= 0.001, (hrf, band)
    # the source-resolved map finds the sources that the global band power misses
    beta = run.results["beta"]
    luminance = run.planted["luminance_lo"]
    assert (beta.local_q[luminance] < 0.05).mean() > (beta.q[luminance] < 0.05).mean()


@pytest.mark.parametrize("name, band", [
    pytest.param("luminance_lo", "beta", marks=pytest.mark.xfail(strict=True, reason=(
        "With the max-t test the shuffled map still finds 0.41 of the beta source's voxels "
        "(0.99 with the right map; docs/methods.md)"))),
    ("motion_mt", "theta")])
def test_source_resolved_map_needs_the_right_source(name, band):
    """With the voxel -> source map shuffled, source-resolved recall falls to at most half
    of the 0.8 claimed with the right map (the local AUROC stays high either way)."""
    run = _run("canonical", shuffle_sources=True)
    assert (run.results[band].local_q[run.planted[name]] < 0.05).mean() <= 0.4, name


def test_shuffled_map_finds_beta_through_leakage():
    """Why the shuffled map still finds beta voxels (docs/methods.md): the voxels it finds
    were given sources far from their own (median > 30 mm, three grid steps) whose estimated
    beta power carries the luminance source's power all the same (median r > 0.2); the
    voxels it misses were given sources without it (median r < 0.1)."""
    run = _run("canonical", shuffle_sources=True)
    inside = run.planted["luminance_lo"]
    found = inside & (run.results["beta"].local_q < 0.05)
    leak = run.leak["luminance_lo"]
    assert np.median(leak.distance_mm[found]) > 30, np.median(leak.distance_mm[found])
    assert np.median(leak.corr[found]) > 0.2, np.median(leak.corr[found])
    assert np.median(leak.corr[inside & ~found]) < 0.1, np.median(leak.corr[inside & ~found])


@pytest.mark.parametrize("noise_kind", ["ar1", "1f"])
def test_null_p_values_are_calibrated(noise_kind):
    run = _run(None, noise_kind, seed=7)
    for band, res in run.results.items():
        for name, p in (("global", res.p), ("local", res.local_p)):
            assert 0.04 <= (p < 0.05).mean() <= 0.06, (noise_kind, band, name)
        for q in (res.q, res.local_q):
            assert (q < 0.05).mean() <= 0.001, (noise_kind, band)


def test_ar_model_recovers_order_and_coefficients():
    rng = np.random.default_rng(0)
    n, n_vox, a1, a2 = 300, 2000, 0.5, 0.3
    e = rng.normal(size=(n + 50, n_vox))
    y = np.zeros_like(e)
    for t in range(2, len(e)):
        y[t] = a1 * y[t - 1] + a2 * y[t - 2] + e[t]
    y = y[50:]
    design = np.column_stack([np.ones(n), np.cos(np.pi * np.outer(np.arange(n) + 0.5,
                                                                   np.arange(1, 6)) / n)])
    resid = cp.residualize(y, design)
    args = (noise.autocovariances(resid, 4), noise.bias_matrix(design, 4), n)
    own = noise.fit_ar(*args, max_order=4, shrink=False)
    shrunk = noise.fit_ar(*args, max_order=4)
    for model in (own, shrunk):
        assert model.order == 2
        np.testing.assert_allclose(np.median(model.coefs, axis=0), [a1, a2], atol=0.03)
    # each voxel's own filter removes its own lag-1 autocorrelation
    white = own.whiten(y)
    lag1 = (white[1:] * white[:-1]).sum(0) / (white**2).sum(0)
    assert abs(np.median(lag1)) < 0.02
    # every voxel has the same true coefficients: shrinkage towards the mean over voxels
    # removes most of the estimation noise
    err = {k: np.sqrt(((m.coefs - [a1, a2]) ** 2).mean()) for k, m in (("own", own),
                                                                       ("shrunk", shrunk))}
    assert err["shrunk"] < 0.5 * err["own"], err


def test_ar_shrinkage_keeps_real_differences():
    """Voxels whose AR(1) coefficients really differ (0.2-0.6, as in the nulls) keep most of
    their own value: the shrinkage weight follows the spread beyond the sampling noise."""
    rng = np.random.default_rng(1)
    n, n_vox = 300, 4000
    rho = rng.uniform(0.2, 0.6, n_vox)
    y = rng.normal(size=(n, n_vox))
    for t in range(1, n):
        y[t] += rho * y[t - 1]
    design = np.ones((n, 1))
    resid = cp.residualize(y, design)
    model = noise.fit_ar(noise.autocovariances(resid, 1), noise.bias_matrix(design, 1), n,
                         max_order=1, order=1)
    slope = np.polyfit(rho, model.coefs[:, 0], 1)[0]
    assert 0.7 < slope < 1.05, slope


def test_block_f_matches_least_squares():
    rng = np.random.default_rng(1)
    n, n_vox = 60, 5
    cov = rng.normal(size=(n, n_vox, 2))
    tested = rng.normal(size=(n, n_vox, 3))
    y = rng.normal(size=(n, n_vox)) + 0.5 * tested[..., 0]
    cols = [cov[..., i] for i in range(2)] + [tested[..., i] for i in range(3)]
    xx = cglm._gram(cols)
    xy = cglm._gram(cols, [y])[..., 0]
    ratio, canonical = cglm.block_f((y**2).sum(0), xy, xx, covariates=2)
    for v in range(n_vox):
        full = np.column_stack([cov[:, v], tested[:, v]])
        beta, rss_full = np.linalg.lstsq(full, y[:, v], rcond=None)[:2]
        rss_cov = np.linalg.lstsq(cov[:, v], y[:, v], rcond=None)[1]
        f = (rss_cov[0] - rss_full[0]) / 3 / (rss_full[0] / (n - 5))
        np.testing.assert_allclose(ratio[v] * (n - 5), f, rtol=1e-8)
        np.testing.assert_allclose(canonical[v], beta[2], rtol=1e-8)


def test_circular_shifts_avoid_the_observed_alignment():
    shifts = cglm.circular_shifts(110, 2.1, n_shifts=10, min_shift_s=30.0)
    assert len(shifts) == 10 and shifts.min() >= 15 and shifts.max() <= 95
    assert list(cglm.circular_shifts(12, 2.1, n_shifts=20, min_shift_s=30.0)) == list(
        range(3, 10))
    p = cglm._pooled_p(np.array([0.0, 5.0, 100.0]), np.arange(10.0))
    np.testing.assert_allclose(p, [11 / 11, 6 / 11, 1 / 11])


def test_short_run_keeps_valid_degrees_of_freedom():
    """A 20-volume run with 8 confounds (the tiny simulator) still yields p-values."""
    rng = np.random.default_rng(2)
    n, n_vox, n_src = 20, 400, 30
    onsets = np.arange(n) * TR
    times = onsets + TR / 2
    confounds = pd.DataFrame(rng.normal(size=(n, 8)))
    weights = sparse.csr_matrix(
        np.eye(n_src)[rng.integers(0, n_src, n_vox)])
    fit = cglm.fit_coupling_glm(
        rng.normal(size=(n, n_vox)), cp.hrf_matrix(onsets, TR, times, hrf_model=BASIS),
        rng.normal(size=n), rng.normal(size=(n, n_src)), weights,
        cp.nuisance_design(times, confounds).to_numpy(), window_s=TR)
    assert fit.local_test.df_den >= 1 and fit.ar_order == 1 and len(fit.shifts) == 11
    for test in (fit.global_test, fit.local_test):
        assert np.all((test.p > 0) & (test.p <= 1)) and np.isfinite(test.f).all()
    # the max-t test over HRF shapes (the pipeline's default) as well
    fit = cglm.fit_coupling_glm(
        rng.normal(size=(n, n_vox)), cp.hrf_matrix(onsets, TR, times, hrf_model=BASIS),
        rng.normal(size=n), rng.normal(size=(n, n_src)), weights,
        cp.nuisance_design(times, confounds).to_numpy(), window_s=TR,
        shapes=cp.hrf_shapes(onsets, TR, times))
    for test in (fit.global_test, fit.local_test):
        assert np.all((test.p > 0) & (test.p <= 1)) and np.isfinite(test.stat).all()
        assert set(np.unique(test.best_shape)) <= set(range(len(cp.SHAPE_PEAKS_S)))


def test_remainder_covariate_equal_to_the_global_power_changes_nothing():
    """The source-resolved test with a per-source covariate that is the global band power
    at every source equals the test beside the global power (same statistics, same null)."""
    rng = np.random.default_rng(6)
    n, n_vox, n_src = 60, 300, 20
    onsets = np.arange(n) * TR
    times = onsets + TR / 2
    # each voxel interpolates two sources (rows sum to 1)
    weights = sparse.csr_matrix((rng.dirichlet(np.ones(2), n_vox).ravel(),
                                 (np.repeat(np.arange(n_vox), 2),
                                  rng.integers(0, n_src, 2 * n_vox))), shape=(n_vox, n_src))
    glob = rng.normal(size=n)
    args = (rng.normal(size=(n, n_vox)), cp.hrf_matrix(onsets, TR, times, hrf_model=BASIS),
            glob, rng.normal(size=(n, n_src)), weights,
            cp.nuisance_design(times, None).to_numpy())
    kw = dict(window_s=TR, n_shifts=5, shapes=cp.hrf_shapes(onsets, TR, times))
    default = cglm.fit_coupling_glm(*args, **kw)
    same = cglm.fit_coupling_glm(*args, covariate_power=np.repeat(glob[:, None], n_src, 1),
                                 **kw)
    np.testing.assert_allclose(same.local_test.stat, default.local_test.stat, rtol=1e-8)
    np.testing.assert_allclose(same.local_test.p, default.local_test.p, rtol=1e-8)
    np.testing.assert_array_equal(same.global_test.stat, default.global_test.stat)


def test_block_max_t_matches_single_regressor_t():
    """t^2 of contrast a = that of the regressor X a after the covariates, with the full
    model's residual variance; the maximum is over the contrasts."""
    rng = np.random.default_rng(4)
    n, n_vox = 80, 4
    cov = rng.normal(size=(n, n_vox, 2))
    tested = rng.normal(size=(n, n_vox, 3))
    y = rng.normal(size=(n, n_vox)) + 0.4 * tested[..., 1]
    contrasts = cglm.np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0.6, 0.8]])
    cols = [cov[..., i] for i in range(2)] + [tested[..., i] for i in range(3)]
    xx, xy = cglm._gram(cols), cglm._gram(cols, [y])[..., 0]
    f_ratio, t2_ratio, sign, best = cglm.block_max_t((y**2).sum(0), xy, xx, contrasts,
                                                     covariates=2)
    for v in range(n_vox):
        full = np.column_stack([cov[:, v], tested[:, v]])
        rss_full = np.linalg.lstsq(full, y[:, v], rcond=None)[1][0]
        s2 = rss_full / (n - 5)
        t2 = []
        for a in contrasts:
            x = cp.residualize((tested[:, v] @ a)[:, None], cov[:, v])[:, 0]
            yr = cp.residualize(y[:, [v]], cov[:, v])[:, 0]
            t2.append((x @ yr) ** 2 / (x @ x) / s2)
        np.testing.assert_allclose(t2_ratio[v] * (n - 5), max(t2), rtol=1e-8)
        assert best[v] == int(np.argmax(t2))
    ratio_f, _ = cglm.block_f((y**2).sum(0), xy, xx, covariates=2)
    np.testing.assert_allclose(f_ratio, ratio_f, rtol=1e-10)


def test_pareto_tail_extends_the_pooled_null():
    """Below the null's 99th percentile the p-value is the empirical one; beyond it the
    fitted generalised Pareto tail, continuous at the threshold and below the empirical
    floor far out; an exponential null's tail is recovered."""
    rng = np.random.default_rng(5)
    null = rng.exponential(size=200_000)
    obs = np.array([0.5, 3.0, np.quantile(null, 0.99) + 1e-9, 10.0, 14.0])
    p = cglm._tail_p(obs, null)
    emp = cglm._pooled_p(obs, null)
    np.testing.assert_allclose(p[:2], emp[:2])
    np.testing.assert_allclose(p[2], 0.01, rtol=0.02)
    # 2 and 4 decades beyond the threshold the extrapolation is right within its sampling
    # error (the shape is estimated from 2000 exceedances)
    np.testing.assert_allclose(p[3], np.exp(-obs[3]), rtol=0.5)
    assert np.exp(-obs[4]) / 5 < p[4] < 1 / (1 + len(null))
    # too few exceedances for a fit: empirical p-values throughout
    small = rng.exponential(size=5000)
    np.testing.assert_allclose(cglm._tail_p(obs, small), cglm._pooled_p(obs, small))


def test_confound_selection_prefix_and_spike_guard(caplog):
    """``motion_outlier*`` picks every spike column; spikes that would leave fewer than 2
    residual degrees of freedom are dropped with a warning, the other confounds kept."""
    rng = np.random.default_rng(3)
    n = 30
    table = pd.DataFrame(rng.normal(size=(n, 3)), columns=["trans_x", "global_signal", "csf"])
    for k in range(4):
        table[f"motion_outlier{k:02d}"] = np.eye(n)[5 + k]
    picked = cp.select_confounds(table, ("global_signal", "motion_outlier*", "absent"))
    assert list(picked.columns) == ["global_signal"] + [f"motion_outlier{k:02d}" for k in range(4)]
    assert cp.select_confounds(None, ("trans_x",)) is None
    times = np.arange(n) * TR + TR / 2
    kept = cp.run_nuisance(times, table, ("trans_x", "motion_outlier*"), high_pass_hz=0.01,
                           n_basis=3, max_ar_order=4)
    assert "motion_outlier03" in kept.columns  # 30 - 9 - 6 - 4 = 11 dof
    with caplog.at_level("WARNING"):
        short = cp.run_nuisance(times[:14], table, ("trans_x", "motion_outlier*"),
                                high_pass_hz=0.01, n_basis=3, max_ar_order=4)
    assert "trans_x" in short.columns
    assert not any(c.startswith("motion_outlier") for c in short.columns)
    assert "Dropping 4 motion-outlier spike columns" in caplog.text


# --- hard BOLD (issue 16) -------------------------------------------------------------------
# Runs of bids_app.simulate.mni_runs with every hard-mode BOLD effect (region HRFs for the
# non-planted clusters, spatially smooth AR(1) + 1/f + aliased physiological noise, drift,
# global signal, motion spikes, non-planted clusters), the pipeline's default confounds
# computed from the unsmoothed data and, as in the pipeline, the BOLD smoothed with
# ``[fmri] fwhm`` before the coupling. A voxel that the smoothed planted signal does not
# reach (MNIRun.planted_reach) is a false positive when detected. Each run is simulated and
# coupled once (cached) and shared by the tests below.
HARD = REALISM["hard"]
#: Three noise realisations per HRF: one run's recall and false-positive rate vary a lot
#: (seed 0 to 2, canonical HRF: beta recall 0.15-0.58, FP 0.02-0.12 %).
HARD_SEEDS = {"canonical": (0, 1, 2), "delayed2s": (0, 1, 2), "peak8p5s": (0, 1, 2)}


#: Null runs: every voxel shares the run's one EEG regressor, so one run's rate at p < .05
#: varies by 0.3-1.0 points between exchangeable alignments; the claim is about the
#: expected rate, estimated over three independent runs (as the planted runs).
NULL_SEEDS = (7, 8, 9)
#: Every hard run the tests below use: (HRF or None for a null, seed, noise kind).
HARD_RUNS = ([(hrf, seed, "planted") for hrf, seeds in HARD_SEEDS.items() for seed in seeds]
             + [(None, seed, kind) for kind in ("ar1", "1f") for seed in NULL_SEEDS])
_HARD_CACHE: dict[tuple, SimpleNamespace] = {}


def _hard(hrf: str | None, seed: int, noise_kind: str = "planted") -> SimpleNamespace:
    """One hard run's coupling results (every run of :data:`HARD_RUNS` on first use)."""
    return _in_pairs(_hard_run, _HARD_CACHE, HARD_RUNS, (hrf, seed, noise_kind))


def _hard_run(hrf: str | None, seed: int, noise_kind: str) -> SimpleNamespace:
    """Simulate and couple one hard run as the pipeline does (see the section comment)."""
    run = simulate_mni_run(hrf, noise=noise_kind, seed=seed, realism=HARD)
    maps = source.compute_source_maps(run.raw, run.onsets, TR, run.mask, bands=BANDS)
    keep = nib.affines.apply_affine(run.mask.affine, maps.grid.voxel_ijk)[:, 1] <= -40
    cfg, fwhm = CouplingConfig(), FMRIConfig().fwhm
    hrf_basis = cp.hrf_matrix(run.onsets, TR, run.times, hrf_model=cfg.hrf_model)
    nuisance = cp.run_nuisance(run.times, run.confounds, cfg.confounds,
                               high_pass_hz=cfg.high_pass_hz, n_basis=hrf_basis.shape[0],
                               max_ar_order=cfg.max_ar_order)
    bold = run.coupling_bold(fwhm)[:, keep]
    results = cp.couple_bands(
        {b: maps.coupling_power(b) for b, _, _ in BANDS},
        bold=bold, hrf=hrf_basis, weights=maps.grid.weights[keep],
        nuisance=nuisance, rr_mm=maps.grid.rr_mm, ch_names=maps.ch_names, window_s=TR,
        n_shifts=10, n_null_voxels=10_000,
        shapes=cp.hrf_shapes(run.onsets, TR, run.times, peaks_s=cfg.hrf_shape_peaks_s))
    return SimpleNamespace(results=results, planted={k: v[keep] for k, v in run.planted.items()},
                           band_of=run.band_of, reach=run.planted_reach(fwhm)[keep],
                           oracle_q=None if hrf is None else _oracle_beta_q(
                               results, _known_regressor_results(run, bold)),
                           confound_share=None if hrf is None else _confound_share(run))


def _true_regressor(run, name: str) -> np.ndarray:
    """The planted regressor of source ``name``: its true power through its true HRF."""
    return convolved(run.truth["source_power"][name], HRF(*run.truth["hrf"][name]), run.times)


def _oracle_nuisance(run) -> pd.DataFrame:
    """The pipeline's nuisance design of the run (default confounds, drifts, constant)."""
    cfg = CouplingConfig()
    return cp.run_nuisance(run.times, run.confounds, cfg.confounds,
                           high_pass_hz=cfg.high_pass_hz, n_basis=1,
                           max_ar_order=cfg.max_ar_order)


def _confound_share(run) -> dict[str, float]:
    """Per band, the fraction of the planted regressor's variance that the pipeline's
    nuisance design explains (what no test of that regressor can use)."""
    design = _oracle_nuisance(run).to_numpy(float)
    share = {}
    for name, band in run.band_of.items():
        reg = _true_regressor(run, name)
        share[band] = 1.0 - cp.residualize(reg[:, None], design).var() / reg.var()
    return share


def _oracle_beta_q(results: dict, oracle: dict) -> np.ndarray:
    """q-values of the oracle's beta test in the pipeline's FDR family, where it takes the
    place of the global beta test (every other test of the family is the pipeline's)."""
    family = [oracle["beta"].p if (band, kind) == ("beta", "p") else getattr(res, kind)
              for band, res in results.items() for kind in ("p", "local_p")]
    q = cp.fdr_bh(np.stack(family))
    return q[2 * list(results).index("beta")]


def _known_regressor_results(run, bold: np.ndarray) -> dict:
    """The beta coupling statistics of an oracle that knows the planted regressor (the
    source's true power through the true HRF): no EEG estimate, no HRF to search; the
    pipeline's confounds, AR model, circular-shift null and Pareto tail (q-values from
    :func:`_oracle_beta_q`)."""
    power = {}
    for name, band in run.band_of.items():
        if band == "beta":
            reg = _true_regressor(run, name)[:, None]
            power[band] = (reg, np.repeat(reg, 2, axis=1))  # the regressor is convolved
    return cp.couple_bands(power, bold=bold, hrf=np.eye(len(run.times))[None],
                           weights=sparse.csr_matrix(np.ones((bold.shape[1], 1))),
                           nuisance=_oracle_nuisance(run), rr_mm=np.zeros((1, 3)),
                           ch_names=["a", "b"],
                           window_s=TR, n_shifts=10, n_null_voxels=10_000)


def _hard_recall(hrf: str, band: str) -> float:
    """Recall at q < .05 (global or source-resolved map) of the band's planted voxels,
    pooled over the seeds of ``hrf``."""
    found, total = 0, 0
    for seed in HARD_SEEDS[hrf]:
        run = _hard(hrf, seed)
        for name, inside in run.planted.items():
            if run.band_of[name] == band:
                res = run.results[band]
                found += int((np.minimum(res.q, res.local_q)[inside] < 0.05).sum())
                total += int(inside.sum())
    return found / total


def _oracle_recall(hrf: str) -> float:
    """As :func:`_hard_recall` for beta, for the known-regressor oracle (its global map)."""
    found, total = 0, 0
    for seed in HARD_SEEDS[hrf]:
        run = _hard(hrf, seed)
        for name, inside in run.planted.items():
            if run.band_of[name] == "beta":
                found += int((run.oracle_q[inside] < 0.05).sum())
                total += int(inside.sum())
    return found / total


def _hard_fp(band: str) -> float:
    """Fraction of the voxels that the smoothed planted signal does not reach with q < .05 in
    either map, over every planted run."""
    hits, total = 0, 0
    for hrf, seeds in HARD_SEEDS.items():
        for seed in seeds:
            run = _hard(hrf, seed)
            outside = ~run.reach
            res = run.results[band]
            hits += int((np.minimum(res.q, res.local_q)[outside] < 0.05).sum())
            total += int(outside.sum())
    return hits / total


#: Recall measured on the hard seeds where issue 15's claim still fails (docs/methods.md):
#: beta, out of reach for any EEG estimate (test_hard_beta_recall_claim_out_of_reach).
_HARD_RECALL_FAILS = {("canonical", "beta"): 0.40, ("delayed2s", "beta"): 0.42,
                      ("peak8p5s", "beta"): 0.34}


def _recall_case(hrf: str, band: str):
    claim = 0.8 if hrf == "canonical" else 0.6
    measured = _HARD_RECALL_FAILS.get((hrf, band))
    marks = () if measured is None else pytest.mark.xfail(strict=True, reason=(
        f"Issue 15's recall claim fails on hard BOLD for {band} with the {hrf} HRF: "
        f"measured {measured:.2f} < {claim} (docs/methods.md)"))
    return pytest.param(hrf, band, claim, marks=marks, id=f"{hrf}-{band}")


@pytest.mark.parametrize("hrf, band, claim", [
    _recall_case(hrf, band) for hrf in HARD_SEEDS for band in ("alpha", "beta", "theta")])
def test_hard_recall_issue_claim(hrf, band, claim):
    """Issue 15: recall >= 0.8 with the canonical HRF, >= 0.6 delayed 2 s or peaking at 8.5 s."""
    assert _hard_recall(hrf, band) >= claim, _hard_recall(hrf, band)


@pytest.mark.parametrize("hrf", list(HARD_SEEDS))
def test_hard_beta_recall_claim_out_of_reach(hrf):
    """An oracle that knows the planted regressor (true source power, true HRF) and uses the
    pipeline's confounds, noise model, null and FDR family stays below the claim: on this
    generator no EEG estimate or HRF model can reach it for the luminance-driven beta source
    (on seed 0 its regressor shares 64 % of its variance with the motion parameters and the
    drifts)."""
    claim = 0.8 if hrf == "canonical" else 0.6
    assert _oracle_recall(hrf) < claim, _oracle_recall(hrf)


def test_hard_beta_regressor_is_mostly_confounds():
    """Why the beta oracle falls short (docs/methods.md): on every hard planted run the
    pipeline's confounds, drift basis and constant explain more than half of the variance of
    the planted beta regressor (driven by the slowly varying film-like luminance), and more
    on average than of the alpha or the theta regressor."""
    shares = [_hard(hrf, seed).confound_share for hrf, seeds in HARD_SEEDS.items()
              for seed in seeds]
    beta = [s["beta"] for s in shares]
    assert min(beta) > 0.5, beta
    for band in ("alpha", "theta"):
        assert np.mean(beta) > np.mean([s[band] for s in shares]), band


@pytest.mark.parametrize("hrf", list(HARD_SEEDS))
def test_hard_alpha_recall_supported_claim(hrf):
    """What hard BOLD supports (docs/methods.md): alpha recall >= 0.25 with every HRF."""
    assert _hard_recall(hrf, "alpha") >= 0.25, _hard_recall(hrf, "alpha")


@pytest.mark.parametrize("band", ["alpha", "beta", "theta"])
def test_hard_false_positives_issue_claim(band):
    """Issue 15: false positives at q < .05 in at most 0.1 % of the voxels (those that the
    smoothed planted signal does not reach), over the seeds (seed 0 alone: 0.10-0.14 %)."""
    assert _hard_fp(band) <= 0.001, _hard_fp(band)


def _null_rates(noise_kind: str, seeds: tuple[int, ...] = NULL_SEEDS) -> dict:
    """Fraction of voxels with p < .05 per (band, map), pooled over the null ``seeds``."""
    rates: dict = {}
    for seed in seeds:
        for b, r in _hard(None, seed, noise_kind).results.items():
            for m in ("p", "local_p"):
                rates[b, m] = rates.get((b, m), 0.0) + float((getattr(r, m) < 0.05).mean())
    return {k: v / len(seeds) for k, v in rates.items()}


@pytest.mark.parametrize("noise_kind", ["ar1", "1f"])
def test_hard_null_issue_claim(noise_kind):
    """Issue 15: uncorrected p < .05 in 4-6 % of the voxels under AR(1) and 1/f nulls, for
    every band and map (pooled over the null seeds; seed 7 alone: 1/f theta global 3.1 %)."""
    rates = _null_rates(noise_kind)
    assert all(0.04 <= v <= 0.06 for v in rates.values()), sorted(rates.values())


@pytest.mark.parametrize("noise_kind", ["ar1", "1f"])
def test_hard_null_supported_claim(noise_kind):
    """What hard BOLD supports: p < .05 in 2.5-6 % of the voxels, never liberal and at
    most 2x conservative, every band and map of every null run; no voxel reaches q < .05."""
    for seed in NULL_SEEDS:
        rates = _null_rates(noise_kind, (seed,))
        assert all(0.025 <= v <= 0.06 for v in rates.values()), (seed, sorted(rates.values()))
        for r in _hard(None, seed, noise_kind).results.values():
            assert not np.any(r.q < 0.05) and not np.any(r.local_q < 0.05)
