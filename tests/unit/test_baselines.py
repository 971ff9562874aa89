"""Baselines of the VAEs: band power, voxel-wise ridge, identical scoring, the report table."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bids_app.models.baselines import (
    band_edges,
    band_power_features,
    fit_eeg_to_fmri_ridge,
    fit_ridge,
    fit_stimulus_ridge,
)
from bids_app.models.comparison import baseline_comparison
from bids_app.models.evaluate import evaluate_vae1, evaluate_vae2, score_stimulus
from bids_app.models.train import make_model
from bids_app.models.windows import split_windows
from bids_app.simulate.stimulus import simulate_windows


def test_band_edges_stop_at_nyquist():
    assert band_edges(5.0) == [(0.0, 2.5)]  # simulations: one broadband band
    assert band_edges(25.0) == [(0.0, 4.0), (4.0, 8.0), (8.0, 12.5)]
    assert band_edges(250.0)[-1] == (30.0, 45.0) and len(band_edges(250.0)) == 5
    assert band_edges(None) == [(0.0, np.inf)]


def test_band_power_is_the_periodogram_in_each_band():
    sfreq, n_t = 100.0, 400
    t = np.arange(n_t) / sfreq
    rng = np.random.default_rng(0)
    eeg = np.zeros((3, 2, n_t))
    eeg[0, 0] = 2.0 * np.sin(2 * np.pi * 10 * t)  # alpha, amplitude 2: power 2
    eeg[1, 1, n_t // 2 :] = np.sin(2 * np.pi * 6 * t[n_t // 2 :])  # theta, second half
    eeg[2] = rng.normal(size=(2, n_t)) + 5.0  # white noise and an offset
    feats = band_power_features(eeg, sfreq, n_subwindows=4).reshape(3, 2, 4, 5)
    np.testing.assert_allclose(feats[0, 0, :, 2], 2.0, rtol=1e-9)  # every sub-window
    assert feats[0, 0, :, [0, 1, 3, 4]].max() < 1e-12 and not feats[0, 1].any()
    np.testing.assert_allclose(feats[1, 1, 2:, 1], 0.5, rtol=1e-9)
    assert feats[1, 1, :2].max() < 1e-12
    # bands up to the Nyquist frequency sum to the variance (Parseval), offset removed
    broad = band_power_features(eeg, None, n_subwindows=4).reshape(3, 2, 4)
    sub = np.stack(np.array_split(eeg, 4, axis=-1), axis=2)
    np.testing.assert_allclose(broad, sub.var(-1), rtol=1e-9)
    full = band_power_features(eeg[2:], 8.0, n_subwindows=1)  # one band (0, 4] Hz
    np.testing.assert_allclose(full[0], eeg[2].var(-1), rtol=1e-9)
    odd = rng.normal(size=(1, 1, 11))  # odd length: no Nyquist bin
    np.testing.assert_allclose(band_power_features(odd, None, n_subwindows=1)[0, 0],
                               odd.var(), rtol=1e-9)  # fmt: skip


def test_ridge_equals_closed_form_with_validation_penalty():
    rng = np.random.default_rng(1)
    n, p = 80, 12
    x = rng.normal(size=(2 * n, p)) * rng.uniform(0.5, 3, size=p) + 4.0
    x[:, 5] = 1.0  # constant input
    beta = rng.normal(size=(p, 3)) * np.array([1.0, 0.1, 0.0])  # strong, weak, no signal
    y = x @ beta + rng.normal(size=(2 * n, 3))
    grid = (1e-3, 1e-1, 1.0, 10.0, 1e3)
    fit = fit_ridge(x[:n], y[:n], x[n:], y[n:], lambdas=grid)
    mean, sd = x[:n].mean(0), x[:n].std(0)
    sd[sd == 0] = np.inf
    xs, xv = (x[:n] - mean) / sd, (x[n:] - mean) / sd
    sse = []
    for lam in np.asarray(grid) * n:
        coef = np.linalg.solve(xs.T @ xs + lam * np.eye(p), xs.T @ (y[:n] - y[:n].mean(0)))
        sse.append(((xv @ coef + y[:n].mean(0) - y[n:]) ** 2).sum(0))
    best = np.argmin(sse, axis=0)
    np.testing.assert_allclose(fit.lambdas, np.asarray(grid)[best] * n)
    np.testing.assert_allclose(fit.val_sse, np.min(sse, axis=0), rtol=1e-9)
    for j in range(3):
        lam = fit.lambdas[j]
        coef = np.linalg.solve(xs.T @ xs + lam * np.eye(p), xs.T @ (y[:n, j] - y[:n, j].mean()))
        np.testing.assert_allclose(fit.coef[:, j], coef, atol=1e-10)
    assert np.abs(fit.coef[5]).max() < 1e-12  # the constant input gets no weight
    assert fit.lambdas[0] < fit.lambdas[2]  # no signal: the strongest penalty wins
    np.testing.assert_allclose(fit.predict(x[n:]), xv @ fit.coef + y[:n].mean(0))
    blocked = fit_ridge(x[:n], y[:n], x[n:], y[n:], lambdas=grid, target_block=2)
    np.testing.assert_array_equal(blocked.lambdas, fit.lambdas)
    np.testing.assert_allclose(blocked.coef, fit.coef, atol=1e-12)


def test_stimulus_ridge_chooses_inputs_and_skips_unobserved():
    rng = np.random.default_rng(2)
    n, c, t, v = 300, 4, 20, 30
    eeg = rng.normal(size=(n, c, t))
    power = band_power_features(eeg, None)
    fmri = rng.normal(size=(n, v))
    stim = np.stack([fmri[:, :3].sum(1), power[:, :4].sum(1), np.full(n, np.nan)], axis=1)
    stim[:, :2] += 0.1 * rng.normal(size=(n, 2))
    stim[::7, 0] = np.nan  # partly observed feature
    arrays = {"eeg": eeg, "fmri": fmri, "stimulus": stim}
    predict, inputs = fit_stimulus_ridge(arrays, np.arange(200), np.arange(200, 250), None)
    assert inputs == ["fmri", "eeg_band_power", ""]
    pred = predict(np.arange(250, 300))
    assert np.isnan(pred[:, 2]).all()
    for j in range(2):
        ok = np.isfinite(stim[250:, j])
        assert np.corrcoef(pred[ok, j], stim[250:, j][ok])[0, 1] > 0.9


def test_score_stimulus_same_shifts_for_every_predictor():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(120, 2))
    groups = np.repeat(["a", "b", "c"], 40)
    perfect = score_stimulus(true, true, groups, ["f", "g"], seed=4, n_permutations=99)
    assert all(s["r"] == pytest.approx(1.0) and s["p"] == 0.01 for s in perfect.values())
    noisy = true + rng.normal(size=true.shape)
    a = score_stimulus(noisy, true, groups, ["f", "g"], seed=4, n_permutations=99)
    b = score_stimulus(noisy.copy(), true, groups, ["f", "g"], seed=4, n_permutations=99)
    assert a == b
    nan_pred = noisy.copy()
    nan_pred[:, 1] = np.nan
    assert list(score_stimulus(nan_pred, true, groups, ["f", "g"], seed=4)) == ["f"]


def test_comparison_rows_say_where_a_model_does_not_win():
    metrics = {"ev_eeg": 0.3, "ev_pca_eeg": 0.25, "ev_pca_block_eeg": 0.31,
               "ev_fmri": 0.2, "ev_pca_fmri": 0.1, "ev_pca_block_fmri": float("nan"),
               "r_eeg_to_fmri": 0.5, "r_eeg_to_fmri_shuffled": 0.0}  # fmt: skip
    rows = {r["metric"]: r for r in baseline_comparison("vae1", metrics)}
    eeg = rows["EEG explained variance, both modalities in"]
    assert not eeg["beats_all_baselines"] and eeg["best_baseline"] == "per-modality PCA"
    assert eeg["margin"] == pytest.approx(-0.01)
    fmri = rows["fMRI explained variance, both modalities in"]
    assert fmri["beats_all_baselines"] and list(fmri["baselines"]) == ["PCA of the concatenation"]
    r_row = rows["mean voxel r, fMRI from EEG alone"]
    assert list(r_row["baselines"]) == ["VAE-1 on shuffled EEG"]
    vae2 = {"features": {"lum": {"r": 0.4, "p": 0.01}, "mot": {"r": 0.2, "p": 0.1}},
            "ridge_features": {"lum": {"r": 0.5, "p": 0.01}, "mot": {"r": 0.15, "p": 0.2}},
            "mean_r": 0.3, "ridge_mean_r": 0.325}  # fmt: skip
    rows2 = baseline_comparison("vae2", vae2)
    assert [r["beats_all_baselines"] for r in rows2] == [False, True, False]  # mean 0.3 < 0.325
    # a feature without a ridge leaves the mean over the features both are scored on
    vae2["ridge_features"].pop("mot")
    rows3 = baseline_comparison("vae2", vae2)
    assert [r["metric"] for r in rows3] == ["lum: r"]


@pytest.fixture(scope="module")
def small():
    pw = simulate_windows(n_subjects=2, n_runs=4, n_volumes=60, n_channels=6, window_s=8.4,
                          sfreq=5.0, n_voxels=40, n_planted=5, eeg_noise=0.5, seed=1)  # fmt: skip
    stim = (pw.stimulus - pw.stimulus.mean(0)) / pw.stimulus.std(0)
    arrays = {"eeg": pw.eeg, "fmri": pw.fmri, "stimulus": stim}
    return pw, arrays, split_windows(pw.meta, seed=0)


def test_evaluation_scores_the_ridge_like_the_model(small):
    pw, arrays, split = small
    shape = {"eeg_shape": pw.eeg.shape[1:], "n_voxels": 40, "latent_dim": 3, "hidden_dim": 16}
    vae1 = make_model("vae1", seed=0, **shape).eval()
    planted = np.concatenate(list(pw.planted_voxels.values()))
    ev = evaluate_vae1(vae1, arrays, split["train"], split["test"], planted_voxels=planted,
                       val_idx=split["val"], sfreq=5.0, chunk=17)  # fmt: skip
    ridge = fit_eeg_to_fmri_ridge(arrays, split["train"], split["val"], 5.0)
    test = split["test"]
    pred, truth = ridge(pw.eeg[test]), pw.fmri[test].astype(np.float64)
    sst = ((truth - truth.mean(0)) ** 2).sum()
    assert ev["ev_ridge_eeg_to_fmri"] == pytest.approx(1 - ((truth - pred) ** 2).sum() / sst)
    r = [np.corrcoef(pred[:, k], truth[:, k])[0, 1] for k in planted]
    assert ev["r_ridge_eeg_to_fmri"] == pytest.approx(np.mean(r))
    assert ev["r_ridge_eeg_to_fmri"] > 0.3  # planted power coupling: the ridge finds it
    keys = {r["metric"]: r for r in ev["baseline_comparison"]}
    assert keys["mean voxel r, fMRI from EEG alone"]["baselines"]["band-power ridge"] == \
        ev["r_ridge_eeg_to_fmri"]
    assert "r_ridge_eeg_to_fmri" not in evaluate_vae1(vae1, arrays, split["train"], test)
    vae2 = make_model("vae2", seed=0, n_features=2, feature_names=pw.feature_names, **shape)
    groups = (pw.meta["subject"] + "/" + pw.meta["run"]).to_numpy()[test]
    ev2 = evaluate_vae2(vae2.eval(), arrays, test, groups, n_permutations=50, seed=2,
                        train_idx=split["train"], val_idx=split["val"], sfreq=5.0)  # fmt: skip
    predict, inputs = fit_stimulus_ridge(arrays, split["train"], split["val"], 5.0, seed=2)
    same = score_stimulus(predict(test), arrays["stimulus"][test].astype(float), groups,
                          pw.feature_names, seed=2, n_permutations=50)  # fmt: skip
    for name, chosen in zip(pw.feature_names, inputs):
        assert ev2["ridge_features"][name] == {**same[name], "inputs": chosen}
    assert len(ev2["baseline_comparison"]) == 3


class _TwoWindows(list):
    """The two things the report reads from a window set: its length and run labels."""

    def run_labels(self) -> np.ndarray:
        return np.array(["a", "b"])


def test_group_report_lists_every_baseline(tmp_path):
    from bids_app.config import Config
    from bids_app.io.derivatives import DerivativesWriter
    from bids_app.report.group import write_group_report

    vae1 = {"ev_fmri": 0.1798, "ev_pca_fmri": 0.1775, "ev_pca_block_fmri": 0.1801,
            "r_eeg_to_fmri": 0.57, "r_ridge_eeg_to_fmri": 0.588, "r_pca_eeg_to_fmri": 0.0}
    vae2 = {"features": {"luminance": {"r": 0.8}}, "ridge_features": {"luminance": {"r": 0.7}}}
    metrics = {"vae1": {"baseline_comparison": baseline_comparison("vae1", vae1)},
               "vae2": {"baseline_comparison": baseline_comparison("vae2", vae2),
                        "ridge_missing": ["motion"]}}
    models = SimpleNamespace(windows=_TwoWindows([0, 1]), training={}, metrics=metrics)
    config = Config().replace("execution", output_dir=tmp_path)
    writer = DerivativesWriter(tmp_path, config)
    html = write_group_report(models, None, config, writer).read_text()
    for value in ("0.1798", "0.1775", "0.1801", "0.588", "0.7", "per-modality PCA",
                  "band-power ridge", "PCA of the concatenation"):  # fmt: skip
        assert value in html
    assert html.count("<tr><td>VAE-1</td>") == 4 and html.count("<tr><td>VAE-2</td>") == 1
    assert ("VAE-1 does not beat the per-modality PCA on fMRI explained variance, both "
            "modalities in (0.1798 vs 0.1801).") in html
    assert "VAE-1 does not beat the band-power ridge on mean voxel r" in html
    assert "VAE-2 does not beat" not in html
    assert "VAE-2 has no band-power ridge baseline for motion" in html


def _ar1(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    from scipy import signal

    return signal.lfilter([1.0], [1.0, -rho], rng.normal(size=n))


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    freqs = np.fft.rfftfreq(n)
    amp = np.zeros_like(freqs)
    amp[1:] = freqs[1:] ** -0.5  # 1/f power
    return np.fft.irfft(amp * (rng.normal(size=len(freqs)) + 1j * rng.normal(size=len(freqs))), n)


def test_shift_null_is_calibrated_under_autocorrelated_nulls():
    # The p-values of VAE-2 and its ridge (score_stimulus): 4 held-out runs of 100 windows,
    # prediction and feature independent, both AR(1) rho = 0.9 or both 1/f. Claim
    # (docs/methods.md): P(p < .05) within 0.035-0.065, P(p < .01) <= 0.015, uniform (KS
    # p > 0.01), 600 replications of each null pooled (measured 0.049 and 0.056 at .05 with
    # 1000 replications each; white noise 0.043).
    from scipy import stats

    def ar1(rng):
        return _ar1(rng, 100, 0.9)

    def pink(rng):
        return _pink(rng, 100)

    ps = []
    groups = np.repeat(np.arange(4), 100)
    for draw in (ar1, pink):
        rng = np.random.default_rng(11)
        for rep in range(600):
            true = np.concatenate([draw(rng) for _ in range(4)])[:, None]
            pred = np.concatenate([draw(rng) for _ in range(4)])[:, None]
            ps.append(score_stimulus(pred, true, groups, ["f"], seed=rep,
                                     n_permutations=199)["f"]["p"])  # fmt: skip
    ps = np.asarray(ps)
    assert 0.035 <= np.mean(ps < 0.05) <= 0.065
    assert np.mean(ps < 0.01) <= 0.015
    assert stats.kstest(ps, "uniform").pvalue > 0.01
