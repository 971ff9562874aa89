"""Each held-out claim of a VAE beside every baseline's number: the rows of the reports.

The rows go to the group model sidecars (``Baselines``) and to ``group.html``; a model
"beats" a baseline only with a strictly higher held-out number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: VAE-1 metrics and their baselines: key -> (label, {baseline key: baseline label}).
VAE1_BASELINES = {
    "ev_eeg": ("EEG explained variance, both modalities in",
               {"ev_pca_eeg": "PCA of the concatenation", "ev_pca_block_eeg": "per-modality PCA"}),
    "ev_fmri": ("fMRI explained variance, both modalities in",
                {"ev_pca_fmri": "PCA of the concatenation",
                 "ev_pca_block_fmri": "per-modality PCA"}),
    "ev_eeg_to_fmri": ("fMRI explained variance from EEG alone",
                       {"ev_pca_eeg_to_fmri": "PCA latent from EEG",
                        "ev_ridge_eeg_to_fmri": "band-power ridge"}),
    "r_eeg_to_fmri": ("mean voxel r, fMRI from EEG alone",
                      {"r_pca_eeg_to_fmri": "PCA latent from EEG",
                       "r_ridge_eeg_to_fmri": "band-power ridge",
                       "r_eeg_to_fmri_shuffled": "VAE-1 on shuffled EEG"}),
}  # fmt: skip


def baseline_comparison(model: str, metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model claim: the model's held-out number beside every baseline's.

    Parameters
    ----------
    model : {"vae1", "vae2"}
        Which metrics ``metrics`` holds (:func:`evaluate_vae1` or :func:`evaluate_vae2`).
    metrics : mapping
        Its held-out metrics.

    Returns
    -------
    list of dict
        ``{"model", "metric", "value", "baselines" {label: value}, "best_baseline",
        "margin" (value minus the best baseline), "beats_all_baselines"}``; baselines not
        computed are left out, a row without any baseline is not listed.
    """
    claims: list[tuple[str, float, dict[str, float]]] = []
    if model == "vae1":
        for key, (label, base) in VAE1_BASELINES.items():
            if key in metrics:
                claims.append((label, metrics[key],
                               {name: metrics[k] for k, name in base.items() if k in metrics}))
    else:
        ridge = metrics.get("ridge_features", {})
        both = [name for name in metrics.get("features", {}) if name in ridge]
        for name in both:
            claims.append((f"{name}: r", metrics["features"][name]["r"],
                           {"band-power ridge": ridge[name]["r"]}))
        if len(both) > 1:  # the mean over the features both are scored on
            claims.append(("mean r over features",
                           float(np.mean([metrics["features"][n]["r"] for n in both])),
                           {"band-power ridge": float(np.mean([ridge[n]["r"] for n in both]))}))
    rows = []
    for label, value, base in claims:
        finite = {k: float(v) for k, v in base.items() if v is not None and np.isfinite(v)}
        if not finite:
            continue
        best = max(finite, key=finite.__getitem__)
        margin = float(value) - finite[best]
        rows.append({"model": model, "metric": label, "value": float(value),
                     "baselines": finite, "best_baseline": best, "margin": margin,
                     "beats_all_baselines": bool(margin > 0)})  # fmt: skip
    return rows
