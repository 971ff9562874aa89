"""Tables of occlusion results: tidy effects, both-VAE annotations, events and voxels.

Pure functions over :class:`~bids_app.masking.statistics.HeadEffects` and pandas; the
workflow writes them through the derivatives writer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_app.masking.statistics import HeadEffects

#: Column descriptions of the tidy effects table (``LongName``, ``Description``, ``Units``).
EFFECT_COLUMNS: dict[str, dict[str, str]] = {
    "unit_kind": {"LongName": "Masked unit kind", "Description":
                  "eeg: an EEG timestamp of a run (all channels); fmri: one voxel.",
                  "Units": "n/a"},
    "unit": {"LongName": "Unit identifier", "Description":
             "EEG timestamp id (see the events files for run times) or voxel index in the "
             "group brain mask.", "Units": "n/a"},
    "model": {"LongName": "Model", "Description": "vae1 (EEG+fMRI autoencoder) or vae2 "
              "(brain -> stimulus features).", "Units": "n/a"},
    "head": {"LongName": "Model output", "Description": "cross: the other modality's whole "
             "prediction (one test per unit); cross_outputs: each of its outputs, for the "
             "units selected by the cross test; latent: the latent (cognitive basis); "
             "stimulus: stimulus features.", "Units": "n/a"},
    "feature": {"LongName": "Output feature", "Description": "The whole fMRI or EEG "
                "prediction (fmri, eeg), a voxel (voxel-i), an EEG timestamp within the "
                "window (eegtime-t, all channels), a latent dimension or a stimulus feature "
                "whose predictive distribution is measured.", "Units": "n/a"},
    "n_windows": {"LongName": "Windows", "Description": "Windows in which the unit was "
                  "masked (effects are means over them).", "Units": "n/a"},
    "effect": {"LongName": "Effect size", "Description": "The configured measure "
               "([masking] measure): smd, kl or likelihood drop.", "Units": "n/a"},
    "ci_low": {"LongName": "Effect lower bound", "Description": "Lower bound of the 95% "
               "percentile bootstrap interval of effect over windows.", "Units": "n/a"},
    "ci_high": {"LongName": "Effect upper bound", "Description": "Upper bound of the 95% "
                "percentile bootstrap interval of effect over windows.", "Units": "n/a"},
    "smd": {"LongName": "Standardised mean shift", "Description": "Mean over windows of "
            "|masked - unmasked predictive mean| / unmasked predictive SD (RMS over the "
            "channels of an EEG timestamp, or over every output of a whole prediction).",
            "Units": "SD"},
    "kl": {"LongName": "Kullback-Leibler divergence", "Description": "Mean over windows of "
           "KL(unmasked || masked predictive Gaussian).", "Units": "nat"},
    "dll": {"LongName": "Log-likelihood change", "Description": "Mean over windows of the "
            "change of the predictive log-likelihood of the observed value caused by "
            "masking (negative: masking lost information).", "Units": "nat"},
    "z": {"LongName": "Null-standardised likelihood drop", "Description": "(-dll - null "
          "mean) / null SD, with the exact mean and SD over circular shifts of the "
          "observed series within each run (keeps its autocorrelation).", "Units": "n/a"},
    "p": {"LongName": "p-value", "Description": "One-sided p-value of the likelihood drop "
          "under the circular-shift null (normal tail of z, or the rank among random run "
          "shifts with pvalue = permutation).", "Units": "n/a"},
    "q": {"LongName": "q-value", "Description": "Benjamini-Hochberg FDR over all units x "
          "features of one unit kind, model and head; cross_outputs: BH within the unit "
          "scaled by units tested / units selected (Benjamini-Bogomolov), so q < level is "
          "a discovery.", "Units": "n/a"},
}


def iter_effects(effects: list[HeadEffects], *, max_rows: int = 1_000_000):
    """Tidy rows of :func:`effects_table` in blocks of at most ``max_rows`` (low memory).

    Yields
    ------
    pandas.DataFrame
        Consecutive units of one head; ``feature`` is categorical.
    """
    for e in effects:
        u, g = e.smd.shape
        outputs = pd.Categorical(np.asarray(e.outputs, dtype=str))
        step = max(1, max_rows // max(g, 1))
        for s in range(0, u, step):
            sl = slice(s, min(u, s + step))
            n = sl.stop - sl.start

            def flat(a: np.ndarray | None, sl: slice = sl, size: int = n * g) -> np.ndarray:
                return (np.full(size, np.nan) if a is None
                        else np.asarray(a[sl], dtype=np.float64).ravel())

            yield pd.DataFrame({
                "unit_kind": pd.Categorical([e.kind]).repeat(n * g),
                "unit": np.repeat(np.asarray(e.units, dtype=np.int64)[sl], g),
                "model": pd.Categorical([e.model]).repeat(n * g),
                "head": pd.Categorical([e.head]).repeat(n * g),
                "feature": pd.Categorical.from_codes(np.tile(outputs.codes, n),
                                                     outputs.categories),
                "n_windows": np.repeat(np.asarray(e.n_windows, dtype=np.int64)[sl], g),
                "effect": flat(e.effect), "ci_low": flat(e.ci_low), "ci_high": flat(e.ci_high),
                "smd": flat(e.smd), "kl": flat(e.kl), "dll": flat(e.dll), "z": flat(e.z),
                "p": flat(e.p), "q": flat(e.q),
            })


def effects_table(effects: list[HeadEffects], *, query: str | None = None) -> pd.DataFrame:
    """Tidy long table: one row per (unit, feature, model, head).

    ``query`` (a :meth:`pandas.DataFrame.query` expression) keeps only matching rows,
    block by block, so a filtered table never holds every row in memory.
    """
    frames = [f if query is None else f.query(query) for f in iter_effects(effects)]
    frames = [f.astype({c: str for c in ("unit_kind", "model", "head", "feature")})
              for f in frames]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=list(EFFECT_COLUMNS))


def annotate_units(cross: HeadEffects, stimulus: HeadEffects,
                   detail: HeadEffects | None = None, *, alpha: float = 0.05) -> pd.DataFrame:
    """Units whose masking changes a stimulus feature in VAE-2 *and* VAE-1's prediction.

    Parameters
    ----------
    cross : HeadEffects
        VAE-1 whole-output cross-modal head (one output) of one unit kind.
    stimulus : HeadEffects
        VAE-2 stimulus head of the same unit kind (same units, same order).
    detail : HeadEffects | None
        VAE-1 per-output head (``cross_outputs``) of the units it tested; names the
        outputs that moved. When it covers every unit (``cross_outputs = "all"``), a unit's
        VAE-1 evidence is its smallest per-output q; otherwise (hierarchical testing) the
        q of the whole-prediction test, which selected the units ``detail`` covers.
    alpha : float
        FDR level applied to the q-values.

    Returns
    -------
    pandas.DataFrame
        One row per annotated unit: ``unit``, ``features`` (``+``-joined stimulus
        features), ``n_cross`` (significant VAE-1 outputs), ``cross_outputs`` (up to 5,
        strongest first), ``effect_vae1`` (whole-prediction effect), ``effect_vae2``
        (largest effect among the significant features), ``q_vae1``/``q_vae2`` (VAE-1
        evidence, smallest stimulus q).
    """
    if not np.array_equal(cross.units, stimulus.units):
        raise ValueError("VAE-1 and VAE-2 effects must cover the same units.")
    q1 = cross.q[:, 0]
    if detail is not None and np.array_equal(detail.units, cross.units):
        q1 = np.min(detail.q, axis=1, initial=np.inf, where=np.isfinite(detail.q))
    sig1 = q1 < alpha
    sig2 = stimulus.q < alpha
    keep = sig1 & sig2.any(axis=1)
    row_of = {} if detail is None else {u: i for i, u in enumerate(detail.units)}
    names2 = np.asarray(stimulus.outputs)
    rows = []
    for i in np.flatnonzero(keep):
        top, n_cross = [], 0
        j = row_of.get(cross.units[i])
        if j is not None:
            sig = detail.q[j] < alpha
            n_cross = int(sig.sum())
            top = [detail.outputs[o] for o in np.argsort(detail.q[j]) if sig[o]][:5]
        rows.append({
            "unit": cross.units[i],
            "features": "+".join(names2[sig2[i]]),
            "n_cross": n_cross,
            "cross_outputs": "+".join(top),
            "effect_vae1": float(cross.effect[i, 0]),
            "effect_vae2": float(np.max(stimulus.effect[i, sig2[i]])),
            "q_vae1": float(q1[i]),
            "q_vae2": float(np.min(stimulus.q[i])),
        })
    cols = ["unit", "features", "n_cross", "cross_outputs", "effect_vae1", "effect_vae2",
            "q_vae1", "q_vae2"]
    return pd.DataFrame(rows, columns=cols)


EVENT_COLUMNS: dict[str, dict[str, str]] = {
    "onset": {"LongName": "Onset", "Description": "Start of the annotated EEG segment in "
              "the run's EEG time.", "Units": "s"},
    "duration": {"LongName": "Duration", "Description": "Length of the segment (annotated "
                 "consecutive timestamps with the same features are merged).", "Units": "s"},
    "trial_type": {"LongName": "Annotation", "Description": "vaemask/<features>: masking "
                   "these timestamps changes the listed stimulus features in VAE-2 and the "
                   "fMRI prediction of VAE-1.", "Units": "n/a"},
    "features": {"LongName": "Stimulus features", "Description": "Features (+-joined) "
                 "significant in both VAEs.", "Units": "n/a"},
    "cross_outputs": {"LongName": "VAE-1 outputs", "Description": "Strongest significant "
                      "voxels of VAE-1's fMRI prediction moved by masking.", "Units": "n/a"},
    "effect_vae1": {"LongName": "VAE-1 effect", "Description": "Largest effect on VAE-1's "
                    "whole other-modality prediction in the segment.", "Units": "n/a"},
    "effect_vae2": {"LongName": "VAE-2 effect", "Description": "Largest effect on a "
                    "significant stimulus feature in the segment.", "Units": "n/a"},
    "q_vae1": {"LongName": "VAE-1 q-value", "Description": "Smallest BH q-value of the "
               "whole-prediction test of VAE-1 in the segment.", "Units": "n/a"},
    "q_vae2": {"LongName": "VAE-2 q-value", "Description": "Smallest BH q-value of the "
               "stimulus features in the segment.", "Units": "n/a"},
}


def events_table(annotations: pd.DataFrame, unit_times: pd.Series, *, step_s: float
                 ) -> pd.DataFrame:
    """BIDS events of one run: annotated timestamps, consecutive ones merged.

    Parameters
    ----------
    annotations : pandas.DataFrame
        Output of :func:`annotate_units` restricted to the run's EEG timestamps.
    unit_times : pandas.Series
        Run time (s) of each unit id (index: unit id).
    step_s : float
        Spacing of the timestamps (1 / window sampling rate).
    """
    cols = list(EVENT_COLUMNS)
    if annotations.empty:
        return pd.DataFrame(columns=cols)
    ann = annotations.assign(onset=unit_times.loc[annotations["unit"]].to_numpy())
    ann = ann.sort_values("onset", kind="stable").reset_index(drop=True)
    new = (ann["features"] != ann["features"].shift()) | (
        ann["onset"].diff() > 1.5 * step_s)
    seg = new.cumsum()
    out = ann.groupby(seg, sort=True).agg(
        onset=("onset", "min"), end=("onset", "max"), features=("features", "first"),
        cross_outputs=("cross_outputs", "first"), effect_vae1=("effect_vae1", "max"),
        effect_vae2=("effect_vae2", "max"), q_vae1=("q_vae1", "min"), q_vae2=("q_vae2", "min"))
    out["duration"] = out["end"] - out["onset"] + step_s
    out["trial_type"] = "vaemask/" + out["features"]
    return out[cols].reset_index(drop=True)


VOXEL_COLUMNS: dict[str, dict[str, str]] = {
    "voxel": {"LongName": "Voxel", "Description": "Index in the group brain mask.",
              "Units": "n/a"},
    "x": {"LongName": "MNI x", "Description": "MNI152NLin2009cAsym coordinate.", "Units": "mm"},
    "y": {"LongName": "MNI y", "Description": "MNI152NLin2009cAsym coordinate.", "Units": "mm"},
    "z": {"LongName": "MNI z", "Description": "MNI152NLin2009cAsym coordinate.", "Units": "mm"},
    **{k: EVENT_COLUMNS[k] for k in ("features", "effect_vae1", "effect_vae2", "q_vae1",
                                     "q_vae2")},
    "cross_outputs": {"LongName": "VAE-1 outputs", "Description": "Strongest significant "
                      "EEG timestamps (eegtime-t: position in the window) of VAE-1's EEG "
                      "prediction moved by masking the voxel.", "Units": "n/a"},
    "atlas_label": {"LongName": "Atlas label", "Description": "Network (region) of the "
                    "nearest Seitzman et al. (2018) ROI centre within 10 mm (the 300 ROIs "
                    "bundled with nilearn), n/a if none.", "Units": "n/a"},
    "atlas_distance": {"LongName": "Distance to atlas ROI", "Description": "Distance from "
                       "the voxel centre to the nearest Seitzman ROI centre.", "Units": "mm"},
}


def voxel_table(annotations: pd.DataFrame, mni: np.ndarray) -> pd.DataFrame:
    """Annotated voxels with MNI coordinates (``mni``: ``(V, 3)`` mm) and atlas labels."""
    from bids_app.masking.atlas import atlas_labels

    vox = annotations["unit"].to_numpy().astype(int)
    out = pd.DataFrame({"voxel": vox, "x": mni[vox, 0], "y": mni[vox, 1], "z": mni[vox, 2]})
    for col in ("features", "cross_outputs", "effect_vae1", "effect_vae2", "q_vae1",
                "q_vae2"):
        out[col] = annotations[col].to_numpy()
    out["atlas_label"], out["atlas_distance"] = atlas_labels(mni[vox])
    return out[list(VOXEL_COLUMNS)]


def voxel_maps(cross: HeadEffects, stimulus: HeadEffects) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel effect and q for the statmaps: VAE-2 max effect, max of both q-values.

    The q map holds, per voxel, ``max(min_f q_vae2, q_vae1)`` (``q_vae1`` of the
    whole-output test): a voxel is below a level in this map exactly when it is annotated
    at that level.
    """
    effect = np.nanmax(stimulus.effect, axis=1)
    q = np.maximum(np.nanmin(stimulus.q, axis=1), cross.q[:, 0])
    return effect, q
