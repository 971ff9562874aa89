"""Figures and latent summaries of the group models (``group/figures/*.svg``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bids_app.models.windows import WindowSet
    from bids_app.workflows.models_result import ModelsResult


def latent_summary(model: Any, windows: WindowSet, idx: np.ndarray, *, top: int = 5) -> list:
    """Per latent dimension: top voxels (MNI mm, r with the posterior mean) and the
    correlation with each stimulus feature, over (at most 2000 of) windows ``idx``."""
    from bids_app.models.train import predict

    idx = np.sort(np.asarray(idx))[:2000]
    mu = predict(model, windows.arrays(), idx)["mu"].astype(np.float64)
    mu_z = (mu - mu.mean(0)) / np.where(mu.std(0) > 0, mu.std(0), 1.0)
    r = np.empty((mu.shape[1], windows.fmri.shape[1]))
    for s in range(0, windows.fmri.shape[1], 8192):  # voxel chunks: bounded memory
        f = np.asarray(windows.fmri[idx, s : s + 8192], dtype=np.float64)
        f = (f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1.0)
        r[:, s : s + 8192] = mu_z.T @ f / len(idx)
    mni = windows.voxel_mni()
    stim = None if windows.stimulus is None else np.asarray(windows.stimulus[idx], float)
    out = []
    for d in range(mu.shape[1]):
        best = np.argsort(-np.abs(r[d]))[:top]
        entry: dict[str, Any] = {"dim": d, "top_voxels": [
            {"mni_mm": mni[v].round(1).tolist(), "r": float(r[d, v])} for v in best]}  # fmt: skip
        if stim is not None:
            entry["stimulus_r"] = {}
            for j, name in enumerate(windows.feature_names):
                ok = np.isfinite(stim[:, j])
                if ok.sum() > 3 and stim[ok, j].std() > 0 and mu[ok, d].std() > 0:
                    entry["stimulus_r"][name] = float(np.corrcoef(mu[ok, d], stim[ok, j])[0, 1])
        out.append(entry)
    return out


def write_figures(result: ModelsResult, writer: Any) -> dict[str, Path]:
    """Learning curves, held-out reconstructions and latent dimensions (SVG, group/)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bids_app.models.train import predict

    figures: dict[str, Path] = {}
    folder = writer.output_dir / "group" / "figures"

    def save(fig: Any, name: str) -> None:
        writer.save_figure(fig, folder / f"{name}.svg")
        plt.close(fig)
        figures[name] = folder / f"{name}.svg"

    fig, axes = plt.subplots(1, len(result.training), figsize=(4.5 * len(result.training), 3),
                             squeeze=False)  # fmt: skip
    for ax, (name, tr) in zip(axes[0], result.training.items()):
        ep = [h["epoch"] for h in tr.history]
        ax.plot(ep, [h["train_loss"] for h in tr.history], label="train")
        ax.plot(ep, [h["val_loss"] for h in tr.history], label="validation")
        ax.axvline(tr.best_epoch, color="k", ls=":", lw=1)
        ax.set(title=name.upper(), xlabel="epoch", ylabel="negative ELBO")
        ax.legend()
    save(fig, "desc-learningcurves_models")

    test = result.splits["test"] if len(result.splits["test"]) else result.splits["val"]
    b = np.sort(test)[:512]
    arrays = result.windows.arrays()
    joint = predict(result.vae1, arrays, b)
    from_eeg = predict(result.vae1, arrays, b, inputs=("eeg",))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    f = np.asarray(arrays["fmri"][b]).ravel()
    pick = np.random.default_rng(0).permutation(f.size)[:200_000]  # bounded plotting cost
    axes[0].hexbin(f[pick], joint["fmri_mean"].ravel()[pick], gridsize=40, bins="log")
    axes[0].set(title="fMRI: EEG+fMRI -> fMRI (held out)", xlabel="true (z)", ylabel="predicted")
    axes[1].hexbin(f[pick], from_eeg["fmri_mean"].ravel()[pick], gridsize=40, bins="log")
    axes[1].set(title="fMRI predicted from EEG alone", xlabel="true (z)")
    e = np.asarray(arrays["eeg"][b[0]])
    t = result.windows.offsets
    axes[2].plot(t, e[0], label=f"true {result.windows.channel_names[0]}")
    axes[2].plot(t, joint["eeg_mean"][0, 0], label="reconstructed")
    axes[2].set(title="EEG window (held out)", xlabel="s before volume")
    axes[2].legend(fontsize=7)
    save(fig, "desc-reconstruction_vae1")

    if result.vae2 is not None and len(result.stimulus_splits.get("test", [])):
        s = np.sort(result.stimulus_splits["test"])[:512]
        pred = predict(result.vae2, arrays, s)["stimulus_mean"]
        true = np.asarray(arrays["stimulus"][s])
        n_f = min(len(result.windows.feature_names), 6)
        fig, axes = plt.subplots(n_f, 1, figsize=(9, 1.4 * n_f), sharex=True, squeeze=False)
        for j in range(n_f):
            axes[j, 0].plot(true[:, j], lw=1, label="true")
            axes[j, 0].plot(pred[:, j], lw=1, label="VAE-2")
            axes[j, 0].set_ylabel(result.windows.feature_names[j], fontsize=7)
        axes[0, 0].legend(fontsize=7)
        axes[-1, 0].set_xlabel("held-out window")
        save(fig, "desc-stimulus_vae2")

    dims = result.metrics.get("vae1", {}).get("latent_dims")
    if dims and dims[0].get("stimulus_r"):
        feats = list(dims[0]["stimulus_r"])
        mat = np.array([[d["stimulus_r"].get(k, np.nan) for k in feats] for d in dims])
        fig, ax = plt.subplots(figsize=(1 + 0.5 * len(feats), 1 + 0.3 * len(dims)))
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set(xticks=range(len(feats)), yticks=range(len(dims)), ylabel="latent dimension",
               title="Latent dimensions vs stimulus features")  # fmt: skip
        ax.set_xticklabels(feats, rotation=60, ha="right", fontsize=7)
        fig.colorbar(im, ax=ax, label="r")
        save(fig, "desc-latentstimulus_vae1")
    return figures
