"""Held-out evaluation of the VAEs beside their baselines, and circular-shift nulls.

Every number a VAE is judged by is computed, on the same held-out windows and with the
same scoring code, for the baselines a reviewer asks for: the PCA of the concatenated
windows and the per-modality PCA with the same latent size (reconstruction), the
band-power ridge of :mod:`bids_app.models.baselines` (fMRI from EEG; stimulus features
from VAE-2's inputs). :func:`~bids_app.models.comparison.baseline_comparison` lays them
side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from bids_app.models.baselines import fit_eeg_to_fmri_ridge, fit_stimulus_ridge
from bids_app.models.comparison import baseline_comparison
from bids_app.models.inference import predict
from bids_app.models.vae import MultimodalVAE, StimulusVAE


class _EV:
    """Streaming explained variance ``1 - SSE / SST`` over chunks of windows."""

    def __init__(self) -> None:
        self.sse = self.sx = self.sxx = None
        self.n = 0

    def add(self, x: np.ndarray, x_hat: np.ndarray) -> None:
        x = x.reshape(len(x), -1).astype(np.float64)
        x_hat = x_hat.reshape(len(x), -1).astype(np.float64)
        sse, sx, sxx = ((x - x_hat) ** 2).sum(0), x.sum(0), (x**2).sum(0)
        if self.sse is None:
            self.sse, self.sx, self.sxx = sse, sx, sxx
        else:
            self.sse, self.sx, self.sxx = self.sse + sse, self.sx + sx, self.sxx + sxx
        self.n += len(x)

    def value(self) -> float:
        sst = (self.sxx - self.sx**2 / max(self.n, 1)).sum()
        return float(1.0 - self.sse.sum() / sst) if sst > 0 else float("nan")


def fit_pca_baseline(
    arrays: Mapping[str, np.ndarray],
    train_idx: np.ndarray,
    n_components: int,
    *,
    seed: int = 0,
    max_windows: int = 2000,
) -> dict[str, np.ndarray]:
    """Modality-balanced PCA of concatenated EEG and fMRI windows (the VAE-1 baseline).

    Each modality is scaled by ``1 / sqrt(D_m)`` before the PCA, the same balance as the
    VAE-1 likelihood weights. At most ``max_windows`` training windows are used.

    Returns
    -------
    dict
        ``mean``, ``components`` ``(k, D)``, ``scale`` ``(D,)`` and ``d_eeg``.
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(np.asarray(train_idx))[:max_windows])
    d_eeg = int(np.prod(arrays["eeg"].shape[1:]))
    d_fmri = int(arrays["fmri"].shape[1])
    scale = np.concatenate([np.full(d_eeg, d_eeg**-0.5), np.full(d_fmri, d_fmri**-0.5)])
    x = np.hstack([arrays["eeg"][idx].reshape(len(idx), -1), arrays["fmri"][idx]])
    x = (x * scale).astype(np.float64)
    mean = x.mean(0)
    x -= mean
    # principal axes from the (windows x windows) Gram matrix: cheap when D >> windows
    evals, evecs = np.linalg.eigh(x @ x.T)
    top = np.argsort(evals)[::-1][:n_components]
    components = (evecs[:, top].T @ x) / np.sqrt(np.maximum(evals[top], 1e-12))[:, None]
    return {"mean": mean, "components": components, "scale": scale, "d_eeg": d_eeg}


def fit_block_pca(
    arrays: Mapping[str, np.ndarray],
    train_idx: np.ndarray,
    n_components: int,
    *,
    seed: int = 0,
    max_windows: int = 2000,
    n_leading: int = 0,
) -> dict[str, Any]:
    """Per-modality PCA with the components shared out by balanced eigenvalue.

    Each modality is scaled by ``1 / sqrt(D_m)`` (as in :func:`fit_pca_baseline`) and
    analysed on its own; the ``n_components`` largest eigenvalues over both modalities
    decide how many components each modality gets. Unlike the PCA of the concatenation,
    no component mixes EEG and fMRI, so one modality's noise never enters the other's
    reconstruction.

    ``n_leading`` > 0 also returns each modality's ``n_leading`` leading components
    (``"leading"``, ``(n_leading, D_m)``) and the standard deviations of their scores
    over the windows (``"leading_sd"``), whatever the share-out.

    Returns
    -------
    dict
        ``owner`` (``(k,)`` array of ``"eeg"``/``"fmri"``, by decreasing eigenvalue) and,
        per modality, ``{"mean", "components" (k_m, D_m), "scale", "rows"}`` where
        ``rows`` are the latent indices the modality owns.
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(np.asarray(train_idx))[:max_windows])
    parts: dict[str, Any] = {}
    ranked = []
    for name in ("eeg", "fmri"):
        x = np.asarray(arrays[name][idx], dtype=np.float64).reshape(len(idx), -1)
        scale = x.shape[1] ** -0.5
        x = x * scale
        mean = x.mean(0)
        x -= mean
        evals, evecs = np.linalg.eigh(x @ x.T)
        top = np.argsort(evals)[::-1][: max(n_components, n_leading)]
        comps = (evecs[:, top].T @ x) / np.sqrt(np.maximum(evals[top], 1e-12))[:, None]
        parts[name] = {"mean": mean, "all": comps[:n_components], "scale": scale}
        if n_leading:
            parts[name]["leading"] = comps[:n_leading]
            parts[name]["leading_sd"] = np.sqrt(np.maximum(evals[top[:n_leading]], 0) / len(x))
        ranked += [(float(ev), name, i) for i, ev in enumerate(evals[top[:n_components]])]
    ranked.sort(key=lambda r: -r[0])
    owner = np.array([name for _, name, _ in ranked[:n_components]])
    for name, part in parts.items():
        k = int(np.sum(owner == name))
        part["components"] = part.pop("all")[:k]
        part["rows"] = np.flatnonzero(owner == name)
    return {"owner": owner, **parts}


def evaluate_vae1(
    model: MultimodalVAE,
    arrays: Mapping[str, np.ndarray],
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    seed: int = 0,
    chunk: int = 256,
    planted_voxels: np.ndarray | None = None,
    val_idx: np.ndarray | None = None,
    sfreq: float | None = None,
) -> dict[str, Any]:
    """Held-out evaluation of VAE-1 beside PCA and band-power ridge baselines.

    Returns explained variance of EEG and fMRI reconstructed from both modalities (VAE
    and PCA), fMRI predicted from EEG alone (explained variance; mean voxel correlation,
    also with the EEG of shuffled windows, the PCA latent inferred from EEG alone and the
    band-power ridge as baselines) and EEG predicted from fMRI alone. ``ev_pca_*`` is the
    PCA of the concatenated windows, ``ev_pca_block_*`` the per-modality PCA of
    :func:`fit_block_pca` with the same total size, ``*_ridge_eeg_to_fmri`` the
    voxel-wise ridge of :func:`~bids_app.models.baselines.fit_eeg_to_fmri_ridge` (fitted
    on ``train_idx``, penalties from ``val_idx``; only when ``val_idx`` is given).
    ``baseline_comparison`` holds the rows of
    :func:`~bids_app.models.comparison.baseline_comparison`.

    Parameters
    ----------
    model : MultimodalVAE
        Trained VAE-1.
    arrays : mapping
        ``{"eeg", "fmri"}`` window arrays.
    train_idx, test_idx : numpy.ndarray
        Windows the baselines are fitted on, and the held-out windows scored.
    seed : int
        Seed of the shuffled-EEG baseline and of the baselines' training subsamples.
    chunk : int
        Held-out windows per forward pass.
    planted_voxels : numpy.ndarray | None
        Voxels the correlations are restricted to (simulations); all when None.
    val_idx : numpy.ndarray | None
        Validation windows (ridge penalties); None leaves the ridge out.
    sfreq : float | None
        EEG window rate (band-power bands); None: one broadband band.

    Returns
    -------
    dict
        Metrics (floats), ``n_test_windows`` and ``baseline_comparison``.
    """
    rng = np.random.default_rng(seed)
    pca = fit_pca_baseline(arrays, train_idx, model.latent_dim, seed=seed)
    block = fit_block_pca(arrays, train_idx, model.latent_dim, seed=seed)
    test_idx = np.asarray(test_idx)
    shuffled = test_idx[rng.permutation(len(test_idx))]
    ev = {k: _EV() for k in ("eeg", "fmri", "pca_eeg", "pca_fmri", "eeg_to_fmri", "fmri_to_eeg",
                              "pca_eeg_to_fmri", "pca_block_eeg", "pca_block_fmri")}  # fmt: skip
    preds, shuf, truth, pca_preds = [], [], [], []
    vox = slice(None) if planted_voxels is None else np.asarray(planted_voxels)
    d = pca["d_eeg"]
    comp = pca["components"]
    # PCA latent from EEG alone: least-squares scores of the EEG part of the components
    eeg_pinv = np.linalg.pinv(comp[:, :d].T)
    ridge = None
    if val_idx is not None and len(val_idx):
        ridge = fit_eeg_to_fmri_ridge(arrays, train_idx, val_idx, sfreq, seed=seed)
        ev["ridge_eeg_to_fmri"] = _EV()
    ridge_preds = []
    for s in range(0, len(test_idx), chunk):
        b, bs = test_idx[s : s + chunk], shuffled[s : s + chunk]
        e, f = arrays["eeg"][b], arrays["fmri"][b]
        joint = predict(model, arrays, b)
        ev["eeg"].add(e, joint["eeg_mean"])
        ev["fmri"].add(f, joint["fmri_mean"])
        x = np.hstack([e.reshape(len(b), -1), f]) * pca["scale"] - pca["mean"]
        x_hat = (x @ pca["components"].T @ pca["components"] + pca["mean"]) / pca["scale"]
        ev["pca_eeg"].add(e, x_hat[:, :d])
        ev["pca_fmri"].add(f, x_hat[:, d:])
        for name, x_m in (("eeg", e), ("fmri", f)):
            bp = block[name]
            xs = x_m.reshape(len(b), -1) * bp["scale"] - bp["mean"]
            rec = (xs @ bp["components"].T @ bp["components"] + bp["mean"]) / bp["scale"]
            ev[f"pca_block_{name}"].add(x_m, rec)
        scores = x[:, :d] @ eeg_pinv.T
        pca_f = (scores @ comp[:, d:] + pca["mean"][d:]) / pca["scale"][d:]
        ev["pca_eeg_to_fmri"].add(f, pca_f)
        pca_preds.append(pca_f[:, vox])
        if ridge is not None:
            ridge_f = ridge(e)
            ev["ridge_eeg_to_fmri"].add(f, ridge_f)
            ridge_preds.append(ridge_f[:, vox])
        from_eeg = predict(model, arrays, b, inputs=("eeg",))["fmri_mean"]
        ev["eeg_to_fmri"].add(f, from_eeg)
        ev["fmri_to_eeg"].add(e, predict(model, arrays, b, inputs=("fmri",))["eeg_mean"])
        preds.append(from_eeg[:, vox])
        truth.append(f[:, vox])
        # EEG of other windows, in shuffled order (read sorted, then reordered)
        order = np.argsort(bs)
        e_sh = np.empty((len(bs), *arrays["eeg"].shape[1:]), dtype=np.float32)
        e_sh[order] = arrays["eeg"][bs[order]]
        shuf.append(predict(model, {"eeg": e_sh}, np.arange(len(bs)),
                            inputs=("eeg",))["fmri_mean"][:, vox])  # fmt: skip
    out: dict[str, Any] = {f"ev_{k}": v.value() for k, v in ev.items()}
    p, t, sh, pp = (np.concatenate(a) for a in (preds, truth, shuf, pca_preds))
    out["r_eeg_to_fmri"] = float(np.nanmean(_columnwise_r(p, t)))
    out["r_pca_eeg_to_fmri"] = float(np.nanmean(_columnwise_r(pp, t)))
    out["r_eeg_to_fmri_shuffled"] = float(np.nanmean(_columnwise_r(sh, t)))
    if ridge is not None:
        ridge_r = _columnwise_r(np.concatenate(ridge_preds), t)
        out["r_ridge_eeg_to_fmri"] = float(np.nanmean(ridge_r))
    out["n_test_windows"] = int(len(test_idx))
    out["baseline_comparison"] = baseline_comparison("vae1", out)
    return out


def _columnwise_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / den


def evaluate_vae2(
    model: StimulusVAE,
    arrays: Mapping[str, np.ndarray],
    test_idx: np.ndarray,
    groups: np.ndarray,
    *,
    seed: int = 0,
    n_permutations: int = 1000,
    train_idx: np.ndarray | None = None,
    val_idx: np.ndarray | None = None,
    sfreq: float | None = None,
) -> dict[str, Any]:
    """Held-out stimulus prediction of VAE-2 and its ridge baseline, with a shift null.

    The null shifts the predictions circularly within each run (``groups``) by a random
    offset, which keeps their autocorrelation; ``p = (1 + #{r_null >= r}) / (1 + n)``.
    The ridge of :func:`~bids_app.models.baselines.fit_stimulus_ridge` (fitted on
    ``train_idx``, inputs and penalties from ``val_idx``; only when both are given) is
    scored by the same function with the same shifts.

    Parameters
    ----------
    model : StimulusVAE
        Trained VAE-2.
    arrays : mapping
        ``{"eeg", "fmri", "stimulus"}`` window arrays.
    test_idx : numpy.ndarray
        Held-out windows.
    groups : numpy.ndarray
        Run label of each held-out window.
    seed, n_permutations : int
        Seed and number of the circular shifts.
    train_idx, val_idx : numpy.ndarray | None
        Training and validation windows of the ridge baseline.
    sfreq : float | None
        EEG window rate (band-power bands).

    Returns
    -------
    dict
        ``features`` -> ``{"r", "p"}`` per feature (observed windows only), ``mean_r``;
        with the ridge also ``ridge_features`` (``{"r", "p", "inputs"}``),
        ``ridge_mean_r`` and ``ridge_missing`` (features VAE-2 is scored on that have no
        ridge: not observed in at least 5 training and 2 validation windows); and
        ``baseline_comparison``.
    """
    test_idx = np.asarray(test_idx)
    pred = predict(model, arrays, test_idx)["stimulus_mean"]
    true = np.asarray(arrays["stimulus"][test_idx], dtype=np.float64)
    names = list(model.feature_names)
    out: dict[str, Any] = {"features": score_stimulus(pred, true, groups, names, seed=seed,
                                                      n_permutations=n_permutations)}
    out["mean_r"] = _mean_r(out["features"])
    if train_idx is not None and val_idx is not None and len(train_idx) and len(val_idx):
        ridge, inputs = fit_stimulus_ridge(arrays, train_idx, val_idx, sfreq, seed=seed)
        scores = score_stimulus(ridge(test_idx), true, groups, names, seed=seed,
                                n_permutations=n_permutations)  # fmt: skip
        for name, chosen in zip(names, inputs):
            if name in scores:
                scores[name]["inputs"] = chosen
        out["ridge_features"], out["ridge_mean_r"] = scores, _mean_r(scores)
        out["ridge_missing"] = sorted(set(out["features"]) - set(scores))
    out["n_test_windows"] = int(len(test_idx))
    out["baseline_comparison"] = baseline_comparison("vae2", out)
    return out


def _mean_r(features: Mapping[str, Mapping[str, float]]) -> float:
    rs = [v["r"] for v in features.values()]
    return float(np.mean(rs)) if rs else float("nan")


def score_stimulus(
    pred: np.ndarray,
    true: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    *,
    seed: int = 0,
    n_permutations: int = 1000,
) -> dict[str, dict[str, float]]:
    """Correlation of predicted and observed features, with a within-run shift null.

    Parameters
    ----------
    pred, true : numpy.ndarray
        ``(n, F)`` predicted and observed features (NaN = not observed).
    groups : numpy.ndarray
        ``(n,)`` run labels; shifts stay within a run.
    names : list of str
        Feature names.
    seed, n_permutations : int
        The shifts (the same for every predictor scored with the same seed).

    Returns
    -------
    dict
        ``name -> {"r", "p"}`` for each feature with at least 5 observed, varying values
        and a finite prediction.
    """
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        ok = np.isfinite(true[:, j]) & np.isfinite(pred[:, j])
        if ok.sum() < 5 or np.std(true[ok, j]) == 0:
            continue
        y, yh, g = true[ok, j], pred[ok, j], groups[ok]
        r = float(_columnwise_r(yh[:, None], y[:, None])[0])
        members = [np.flatnonzero(g == label) for label in np.unique(g)]
        null = np.empty(n_permutations)
        for k in range(n_permutations):
            shifted = yh.copy()
            for sel in members:
                shifted[sel] = np.roll(yh[sel], rng.integers(1, max(len(sel), 2)))
            null[k] = _columnwise_r(shifted[:, None], y[:, None])[0]
        out[name] = {"r": r, "p": float((1 + np.sum(null >= r)) / (1 + n_permutations))}
    return out

