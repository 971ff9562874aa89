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
    "head": {"LongName": "Model output", "Description": "cross: the other modality's "
             "prediction; latent: the latent (cognitive basis); stimulus: stimulus features.",
             "Units": "n/a"},
    "feature": {"LongName": "Output feature", "Description": "Voxel (voxel-i), EEG "
                "timestamp within the window (eegtime-t, all channels), latent dimension or "
                "stimulus feature whose predictive distribution is measured.", "Units": "n/a"},
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
            "channels of an EEG timestamp).", "Units": "SD"},
    "kl": {"LongName": "Kullback-Leibler divergence", "Description": "Mean over windows of "
           "KL(unmasked || masked predictive Gaussian).", "Units": "nat"},
    "dll": {"LongName": "Log-likelihood change", "Description": "Mean over windows of the "
            "change of the predictive log-likelihood of the observed value caused by "
            "masking (negative: masking lost information).", "Units": "nat"},
    "z": {"LongName": "Null-standardised likelihood drop", "Description": "(-dll - null "
          "mean) / null SD under the permuted-windows null.", "Units": "n/a"},
    "p": {"LongName": "p-value", "Description": "One-sided permutation p-value of the "
          "likelihood drop against targets of randomly drawn windows.", "Units": "n/a"},
    "q": {"LongName": "q-value", "Description": "Benjamini-Hochberg FDR over all units x "
          "features of one unit kind, model and head.", "Units": "n/a"},
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


def annotate_units(cross: HeadEffects, stimulus: HeadEffects, *, alpha: float = 0.05
                   ) -> pd.DataFrame:
    """Units whose masking changes a stimulus feature in VAE-2 *and* VAE-1's cross output.

    Parameters
    ----------
    cross : HeadEffects
        VAE-1 cross-modal head of one unit kind.
    stimulus : HeadEffects
        VAE-2 stimulus head of the same unit kind (same units, same order).
    alpha : float
        FDR level applied to both q-values.

    Returns
    -------
    pandas.DataFrame
        One row per annotated unit: ``unit``, ``features`` (``+``-joined stimulus
        features), ``n_cross`` (significant VAE-1 outputs), ``cross_outputs`` (up to 5,
        strongest first), ``effect_vae1``/``effect_vae2`` (largest effect among the
        significant outputs), ``q_vae1``/``q_vae2`` (smallest q).
    """
    if not np.array_equal(cross.units, stimulus.units):
        raise ValueError("VAE-1 and VAE-2 effects must cover the same units.")
    sig1 = cross.q < alpha
    sig2 = stimulus.q < alpha
    keep = sig1.any(axis=1) & sig2.any(axis=1)
    rows = []
    names1, names2 = np.asarray(cross.outputs), np.asarray(stimulus.outputs)
    for i in np.flatnonzero(keep):
        order = np.argsort(cross.q[i])
        top = [o for o in order if sig1[i, o]][:5]
        rows.append({
            "unit": cross.units[i],
            "features": "+".join(names2[sig2[i]]),
            "n_cross": int(sig1[i].sum()),
            "cross_outputs": "+".join(names1[top]),
            "effect_vae1": float(np.max(cross.effect[i, sig1[i]])),
            "effect_vae2": float(np.max(stimulus.effect[i, sig2[i]])),
            "q_vae1": float(np.min(cross.q[i])),
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
    "effect_vae1": {"LongName": "VAE-1 effect", "Description": "Largest effect on a "
                    "significant VAE-1 output in the segment.", "Units": "n/a"},
    "effect_vae2": {"LongName": "VAE-2 effect", "Description": "Largest effect on a "
                    "significant stimulus feature in the segment.", "Units": "n/a"},
    "q_vae1": {"LongName": "VAE-1 q-value", "Description": "Smallest BH q-value of VAE-1 "
               "outputs in the segment.", "Units": "n/a"},
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
}


def voxel_table(annotations: pd.DataFrame, mni: np.ndarray) -> pd.DataFrame:
    """Annotated voxels with MNI coordinates (``mni``: ``(V, 3)`` mm)."""
    vox = annotations["unit"].to_numpy().astype(int)
    out = pd.DataFrame({"voxel": vox, "x": mni[vox, 0], "y": mni[vox, 1], "z": mni[vox, 2]})
    for col in ("features", "cross_outputs", "effect_vae1", "effect_vae2", "q_vae1",
                "q_vae2"):
        out[col] = annotations[col].to_numpy()
    return out[list(VOXEL_COLUMNS)]


def voxel_maps(cross: HeadEffects, stimulus: HeadEffects) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel effect and q for the statmaps: VAE-2 max effect, max of both q-values.

    The q map holds, per voxel, ``max(min_f q_vae2, min_o q_vae1)``: a voxel is below a
    level in this map exactly when it is annotated at that level.
    """
    effect = np.nanmax(stimulus.effect, axis=1)
    q = np.maximum(np.nanmin(stimulus.q, axis=1), np.nanmin(cross.q, axis=1))
    return effect, q
