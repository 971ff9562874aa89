"""Masking p-values are calibrated on autocorrelated data; planted links are recovered.

Generator (issue 15): runs of overlapping windows where the fMRI noise is AR(1) with
rho = 0.9 from window to window, the stimulus features are smooth (a slow AR(1) process
plus the window sum of sparse onsets, so overlapping windows share them), and the EEG is
low-passed noise whose amplitude drifts slowly. In the null variant nothing is linked;
in the planted variant feature onsets drive the EEG at known timestamps and the window
sums drive known voxels, as in ``test_masking.planted_run``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal, stats
from test_masking import _train  # the same few Adam steps as the masking tests

from bids_app.masking import MaskingData, auroc, occlusion_effects
from bids_app.models.vae import MultimodalVAE, StimulusVAE

C, T, S, F = 4, 10, 2, 2
V_COUPLED, V_NOISE = 8, 56
V = V_COUPLED + V_NOISE
LAGS, KERNEL = (1, 2), (1.0, 0.6)
PATTERN = np.array([[1.0, 0.6, 0.0, -0.6], [0.0, -0.6, 1.0, 0.6]])
COUPLED = {0: np.arange(0, 4), 1: np.arange(4, 8)}
RHO = 0.9  # AR(1) coefficient of the fMRI noise and of the slow stimulus component
SEEDS = (11, 12, 13)


def _zscore(x: np.ndarray, axis) -> np.ndarray:
    return (x - x.mean(axis, keepdims=True)) / x.std(axis, keepdims=True)


def _ar1(rng: np.random.Generator, n: int, shape: tuple, rho: float = RHO) -> np.ndarray:
    """``(n, *shape)`` stationary AR(1) series with unit variance along the first axis."""
    out = np.empty((n, *shape))
    out[0] = rng.standard_normal(shape)
    innov = rng.standard_normal((n, *shape)) * np.sqrt(1 - rho**2)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + innov[i]
    return out


def realistic_run(n_windows: int, rng: np.random.Generator, *, linked: bool):
    """One run: ``(x_eeg, x_fmri, stimulus, eeg sample index per window, onset mask)``."""
    a = (n_windows - 1) * S + T
    onsets = (rng.random((F, a)) < 0.05) * (1.0 + rng.random((F, a)))
    drive = np.zeros((F, a))
    for lag, k in zip(LAGS, KERNEL):
        drive[:, lag:] += k * onsets[:, :-lag]
    # low-passed EEG background with a slowly drifting amplitude
    b, a_coef = signal.butter(4, 0.25)
    noise = signal.filtfilt(b, a_coef, rng.standard_normal((C, a + 200)), axis=1)[:, 100:-100]
    envelope = np.exp(0.4 * _ar1(rng, a, (C,), rho=0.99).T)
    eeg = 0.2 * noise / noise.std() * envelope + (PATTERN.T @ drive if linked else 0.0)
    idx = np.arange(n_windows)[:, None] * S + np.arange(T)[None]
    response = drive[:, idx].sum(axis=2).T  # (N, F) window sums of the drive
    stim = response + 0.5 * response.std(0) * _ar1(rng, n_windows, (F,))
    fmri = 0.3 * _ar1(rng, n_windows, (V,))
    if linked:
        for f, vox in COUPLED.items():
            fmri[:, vox] += response[:, [f]]
    x_eeg = _zscore(eeg[:, idx].transpose(1, 0, 2), (0, 2)).astype(np.float32)
    return (x_eeg, _zscore(fmri, 0).astype(np.float32), _zscore(stim, 0).astype(np.float32),
            idx, drive > 0)


def realistic_data(n_windows: int, n_runs: int, rng: np.random.Generator, *, linked: bool):
    """``n_runs`` runs as one :class:`MaskingData` (timestamp ids distinct per run) and the
    ``(F, units)`` mask of planted timestamps (all False without links)."""
    runs = [realistic_run(n_windows, rng, linked=linked) for _ in range(n_runs)]
    offset = runs[0][3].max() + 1
    data = MaskingData(
        np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs]),
        np.concatenate([r[2] for r in runs]),
        np.concatenate([r[3] + k * offset for k, r in enumerate(runs)]),
        window_runs=np.repeat(np.arange(n_runs), n_windows))
    truth = np.concatenate([r[4] for r in runs], axis=1)
    return data, truth & linked


def fit_and_mask(seed: int, *, linked: bool, steps: int = 400):
    """VAE-1 and VAE-2 trained on two runs, masked on two other (held-out) runs."""
    rng = np.random.default_rng(seed)
    train, _ = realistic_data(200, 2, rng, linked=linked)
    test, truth = realistic_data(120, 2, rng, linked=linked)
    torch.manual_seed(seed)
    kw = {"latent_dim": 4, "hidden_dim": 32, "dropout": 0.0, "beta": 0.1}
    vae1 = _train(MultimodalVAE((C, T), V, **kw), train, steps, seed)
    vae2 = _train(StimulusVAE((C, T), V, F, **kw), train, steps, seed)
    effects = {kind: [*occlusion_effects(vae1, test, kind=kind, n_boot=0, seed=seed,
                                         cross_outputs="all"),
                      *occlusion_effects(vae2, test, kind=kind, n_boot=0, seed=seed)]
               for kind in ("eeg", "fmri")}
    return test, truth, effects


#: Issue 15 claims: under the null, for every head and unit kind (seeds pooled)
P05_MAX, P01_MAX, KS_MIN, DISCOVERIES_MAX = 0.065, 0.015, 0.01, 1.0
#: KS assumes independent p-values; units closer in time share the smooth observed series,
#: so the KS test uses EEG timestamps at least this many samples apart (20 windows, about
#: two correlation times of the AR(1) rho = 0.9 series: lag-20 correlation 0.12).
KS_SPACING = 40
#: Claim (docs/methods.md, Checks): planted (timestamp, voxel, feature) triples rank above
#: the rest with AUROC >= 0.75 on this generator (measured 0.801 / 0.807 / 0.818 on seeds
#: 11-13). The issue's target of 0.95 is met only on the white-noise problem of
#: test_masking.py (0.949); here the VAE-2 ranks planted timestamps at 0.72-0.75, and even
#: matched units would rank at 0.88-0.90 (test_matched_units_cannot_reach_the_issue_auroc).
PLANTED_AUROC_MIN = 0.75


@pytest.fixture(scope="module")
def null_effects():
    return [fit_and_mask(seed, linked=False)[2] for seed in SEEDS]


def _tested(effects):
    """Per (unit kind, model, head): the HeadEffects of every seed (the latent head has no
    observed value and no test)."""
    out: dict[tuple, list] = {}
    for eff in effects:
        for kind, heads in eff.items():
            for e in heads:
                if e.head != "latent":
                    out.setdefault((kind, e.model, e.head), []).append(e)
    return out


def test_null_pvalues_calibrated_under_autocorrelation(null_effects):
    """Circular-shift null: nominal false-positive rates with AR(1) fMRI noise, smooth
    features and low-passed amplitude-modulated EEG (before: VAE-2 voxel stimulus
    P(p<.05) = 0.21, 12-22 pairs at q < .05 per seed; VAE-1 timestamp x voxel 33-43)."""
    for key, heads in _tested(null_effects).items():
        p = np.concatenate([e.p.ravel() for e in heads])
        p = p[np.isfinite(p)]
        assert len(p) >= 150, key
        assert np.mean(p < 0.05) <= P05_MAX, (key, np.mean(p < 0.05))
        assert np.mean(p < 0.01) <= P01_MAX, (key, np.mean(p < 0.01))
        assert np.mean([np.sum(e.q < 0.05) for e in heads]) <= DISCOVERIES_MAX, key
        spaced = [e.p[e.units % KS_SPACING == 0] if key[0] == "eeg" else e.p for e in heads]
        p_ks = np.concatenate([x.ravel() for x in spaced])
        p_ks = p_ks[np.isfinite(p_ks)]
        assert stats.kstest(p_ks, "uniform").pvalue > KS_MIN, key


def test_planted_links_recovered_under_autocorrelation():
    """Same generator with planted links: (timestamp, voxel, feature) triples scored by the
    weaker of VAE-1's timestamp -> voxel and VAE-2's timestamp -> feature evidence."""
    _, truth, eff = fit_and_mask(SEEDS[0], linked=True)
    cross, _, detail, stim = eff["eeg"]
    planted = truth[:, cross.units]  # (F, U)
    score = np.minimum(detail.z[:, :, None], stim.z[:, None, :])
    labels = np.zeros_like(score, dtype=bool)
    for f, vox in COUPLED.items():
        labels[np.ix_(planted[f], vox, [f])] = True
    assert auroc(score, labels) >= PLANTED_AUROC_MIN
    _, _, _, vstim = eff["fmri"]
    vlabels = np.zeros((V, F), dtype=bool)
    for f, vox in COUPLED.items():
        vlabels[vox, f] = True
    assert auroc(vstim.z, vlabels) >= 0.95  # (voxel, feature), as in test_masking.py


def test_matched_units_cannot_reach_the_issue_auroc():
    """Why the issue's 0.95 fails here (docs/methods.md, Checks): an EEG timestamp is masked
    in 5 windows, so its evidence is bounded by the matched-unit z on those windows (about
    1.4-2.6 at planted timestamps). Were every planted timestamp a matched unit for its
    feature and every other score standard normal (the calibrated null), VAE-2's
    timestamp x feature AUROC would be 0.88-0.90 (measured on seeds 11-13), below 0.95."""
    from bids_app.masking.data import occurrences
    from bids_app.masking.power import matched_z_at
    from bids_app.masking.shift_null import CircularShiftNull

    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        realistic_data(200, 2, rng, linked=True)  # the training draw of fit_and_mask
        test, truth = realistic_data(120, 2, rng, linked=True)
        null = CircularShiftNull(test.stimulus.astype(np.float64)[:, :, None],
                                 test.window_runs)
        units, starts, occ = occurrences(test, "eeg")
        z = matched_z_at(null, occ[:, 0], starts)
        ceiling = float(np.mean(stats.norm.cdf(z[truth[:, units].T])))
        assert ceiling < 0.95, (seed, ceiling)
