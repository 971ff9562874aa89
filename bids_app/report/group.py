"""Group HTML report: models, masking counts against the null, annotations and maps.

``output_dir/group.html`` extends the participant report's ``base.html``; figures go to
``output_dir/group/figures/`` and are linked relatively. Works with whatever finished:
models and masking may each be None (their sections then say so).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bids_app.report.participant import render  # noqa: E402

logger = logging.getLogger(__name__)

METHODS = (
    "Each EEG timestamp of a run (all channels) and each voxel was masked by its baseline "
    "in every window that contains it, and the change of the predictive Gaussians of "
    "VAE-1 (the other modality, from the masked modality alone) and VAE-2 (the stimulus "
    "features) was measured as standardised mean shift, KL divergence and change of the "
    "log-likelihood of the observed values. Significance compares the likelihood drop "
    "with draws in which the observed values come from randomly drawn windows; p-values "
    "are Benjamini-Hochberg corrected over units x outputs. VAE-1 is tested on its whole "
    "cross-modal prediction (calibrated to its error on the masked windows) and output "
    "by output, either for every unit or, at large sizes, hierarchically for the units "
    "the whole-prediction test selects (Benjamini & Bogomolov 2014). A unit is annotated "
    "with the stimulus features that change in VAE-2 when it also changes VAE-1's "
    "cross-modal prediction (q below the level in both). The fast occlusion uses rank-C "
    "(timestamp) and rank-1 (voxel) updates of the encoders' linear input layers, scores "
    "the whole prediction in the decoder's feature space, and equals per-unit occlusion "
    "(Zintgraf et al. 2017; Benjamini & Hochberg 1995).",
)


def _save(fig: Any, writer: Any, name: str) -> dict[str, str]:
    path = Path(writer.output_dir) / "group" / "figures" / f"{name}.svg"
    writer.save_figure(fig, path)
    plt.close(fig)
    rel = path.relative_to(writer.output_dir).as_posix()
    return {"src": rel, "caption": name.replace("_", " ").capitalize(), "anchor": name}


def _learning_curves(models: Any, writer: Any) -> tuple[list, list]:
    rows, figs = [], []
    for name, res in sorted(getattr(models, "training", {}).items()):
        rows.append((name, res.best_epoch, float(f"{res.best_val_loss:.4g}"),
                     len(res.history), res.device))
        hist = res.history
        if not hist:
            continue
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ep = [h["epoch"] for h in hist]
        ax.plot(ep, [h["train_loss"] for h in hist], label="train")
        ax.plot(ep, [h["val_loss"] for h in hist], ".-", ms=3, label="validation")
        initial = res.extra.get("initial_val_loss")
        if initial is not None:  # the initial (PCA) weights were a candidate
            ax.plot([-1], [initial], "s", color="tab:orange", mfc="none",
                    label="validation, initial weights")
        ax.axvline(res.best_epoch, color="0.5", ls=":", label="best")
        ax.set(xlabel="epoch", ylabel="loss (negative ELBO)", title=name)
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        figs.append(_save(fig, writer, f"learning_curve_{name}"))
    return rows, figs


def readable_run(label: str) -> str:
    """``"01/01/checker/n/a"`` -> ``"sub-01 ses-01 task-checker"`` (run kept when set)."""
    names = ("sub", "ses", "task", "run")
    parts = [f"{n}-{v}" for n, v in zip(names, label.split("/", 3)) if v and v != "n/a"]
    return " ".join(parts)


def _baseline_rows(models: Any) -> tuple[list, list[str]]:
    """Every held-out metric of VAE-1 and VAE-2 beside each of its baselines.

    Returns the table rows (model, metric, model value, baseline, baseline value, margin)
    and one plain sentence per model claim that the model does not beat every baseline
    (or that has no ridge baseline).
    """
    rows, not_beaten = [], []
    for name in ("vae1", "vae2"):
        label = name.upper().replace("VAE", "VAE-")
        for claim in getattr(models, "metrics", {}).get(name, {}).get("baseline_comparison", []):
            for base, value in claim["baselines"].items():
                rows.append((label, claim["metric"], float(f"{claim['value']:.4g}"), base,
                             float(f"{value:.4g}"), float(f"{claim['value'] - value:+.3g}")))
            if not claim["beats_all_baselines"]:
                not_beaten.append(f"{label} does not beat the {claim['best_baseline']} on "
                                  f"{claim['metric']} ({claim['value']:.4g} vs "
                                  f"{claim['baselines'][claim['best_baseline']]:.4g}).")
        missing = getattr(models, "metrics", {}).get(name, {}).get("ridge_missing", [])
        if missing:
            not_beaten.append(f"{label} has no band-power ridge baseline for "
                              f"{', '.join(missing)}: not observed in enough training and "
                              "validation windows, so no claim is made for them.")
    return rows, not_beaten


def feature_counts(annotations: Any) -> dict[str, int]:
    """Annotated units per stimulus feature (``features`` holds ``"a+b"`` strings)."""
    counts: dict[str, int] = {}
    if annotations is None or not len(annotations):
        return counts
    for value in annotations["features"]:
        for feature in str(value).split("+"):
            counts[feature] = counts.get(feature, 0) + 1
    return counts


def _listed(counts: dict[str, int], top: int = 5) -> str:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} ({v})" for k, v in ranked[:top])
    return text + (f" and {len(ranked) - top} more" if len(ranked) > top else "")


def _matched(head_summary: dict) -> str:
    """The head's smallest matched-unit p as table text (``n/a`` where not computed)."""
    p = (head_summary.get("power") or {}).get("smallest_matched_p")
    return "n/a" if p is None else f"{p:.2g}"


def inert_cross_findings(masking: Any) -> list[str]:
    """A sentence for each unit kind whose masking leaves VAE-1's other-modality prediction
    exactly unchanged (every effect 0), as the annotation then cannot select any unit.

    Parameters
    ----------
    masking : MaskingResult
        Masking results (``head(kind, model, head)``).

    Returns
    -------
    list of str
        One sentence per inert unit kind.
    """
    out = []
    if not hasattr(masking, "head"):
        return out
    for kind, units, other in (("fmri", "voxels", "EEG"), ("eeg", "EEG timestamps", "fMRI")):
        cross = masking.head(kind, "vae1", "cross")
        if cross is None or not len(cross.units) or np.any(cross.effect != 0):
            continue
        expert = {"fmri": "fMRI", "eeg": "EEG"}[kind]
        out.append(f"Masking {units} leaves VAE-1's {other} prediction exactly unchanged "
                   f"(every effect is 0): the {expert} expert adds nothing to the other "
                   f"modality unless `[model] cross_experts` includes \"{kind}\", so no "
                   f"{units[:-1]} can be annotated.")
    return out


def power_findings(summary: dict, level: float) -> list[str]:
    """What the held-out windows allow VAE-2's stimulus tests to find (matched-unit bound).

    Parameters
    ----------
    summary : dict
        :attr:`MaskingResult.summary` (heads with a ``power`` entry, see
        :func:`bids_app.masking.power.power_summary`).
    level : float
        FDR level.

    Returns
    -------
    list of str
        One sentence per unit kind with a VAE-2 stimulus head.
    """
    out = []
    for kind, unit in (("fmri", "voxel"), ("eeg", "EEG timestamp")):
        article = "an" if unit[0] in "aeiouAEIOU" else "a"
        head = summary.get(f"{kind}/vae2/stimulus", {})
        power = head.get("power")
        if not power or not power["matched_p"]:
            continue
        ranked = sorted(power["matched_p"].items(), key=lambda kv: kv[1])
        text = ", ".join(f"{f} {p:.2g} ({power['pairs_needed'][f]:,} pairs that strong "
                         "needed)" for f, p in ranked[:3])
        sentence = (f"On these held-out windows even {article} {unit} whose masking tracked a "
                    f"stimulus feature exactly would reach at best p = {text} among "
                    f"{head['tests']:,} {unit} x feature tests at q < {level}")
        if power["out_of_reach"]:
            sentence += (f"; no {unit} can reach p < {level} for "
                         f"{', '.join(power['out_of_reach'][:6])}")
        out.append(sentence + ". More held-out data (longer or more test runs) is what "
                   "raises these bounds; every feature's bound is in the Power entry of "
                   "desc-vaemask_effects.json (docs/methods.md, Masking power).")
    return out


def findings(models: Any, masking: Any, level: float) -> list[str]:
    """Plain-language findings for the top of the report: what was annotated, where and
    when, and whether each model beats its baselines on the held-out runs.

    Parameters
    ----------
    models : ModelsResult | None
        Group models (their ``metrics`` hold the baseline comparison).
    masking : MaskingResult | None
        Masking results (``annotations`` per unit kind).
    level : float
        FDR level of the annotations.

    Returns
    -------
    list of str
        One sentence per finding.
    """
    out: list[str] = []
    if masking is not None:
        eeg, vox = masking.annotations.get("eeg"), masking.annotations.get("fmri")
        n_eeg = 0 if eeg is None else len(eeg)
        n_vox = 0 if vox is None else len(vox)
        if n_eeg == 0 and n_vox == 0:
            out.append(f"No EEG timestamp and no voxel changed both VAEs at q < {level}, so "
                       "masking annotated nothing. The masking summary lists every test "
                       "beside the number expected under the null.")
            out += power_findings(getattr(masking, "summary", {}), level)
            out += inert_cross_findings(masking)
        if n_eeg:
            spans = [f"{readable_run(run)} {g['time_s'].min():.1f}-{g['time_s'].max():.1f} s"
                     for run, g in eeg.groupby("run")] if {"run", "time_s"} <= set(eeg) else []
            where = f" in {len(spans)} run(s): {'; '.join(spans[:4])}" if spans else ""
            out.append(f"{n_eeg} EEG timestamp(s) annotated{where}; stimulus features: "
                       f"{_listed(feature_counts(eeg))}.")
        if n_vox:
            regions = ""
            if "atlas_label" in vox:
                labels = vox["atlas_label"].fillna("unlabelled").astype(str).value_counts()
                regions = "; regions: " + _listed(labels.to_dict(), top=3)
            out.append(f"{n_vox} voxel(s) annotated; stimulus features: "
                       f"{_listed(feature_counts(vox))}{regions}.")
    for name in ("vae1", "vae2"):
        claims = (getattr(models, "metrics", None) or {}).get(name, {}).get(
            "baseline_comparison", [])
        if not claims:
            continue
        label = name.upper().replace("VAE", "VAE-")
        won = [c["metric"] for c in claims if c["beats_all_baselines"]]
        lost = [f"{c['metric']} (best baseline: {c['best_baseline']})"
                for c in claims if not c["beats_all_baselines"]]
        parts = [f"beats every baseline on {', '.join(won)}" if won else
                 "beats no baseline on any held-out metric"]
        if won and lost:
            parts.append(f"not on {'; '.join(lost)}")
        out.append(f"{label} on held-out runs: {', but '.join(parts)}.")
    return out


def _timelines(models: Any, masking: Any, writer: Any, max_runs: int = 6) -> list:
    """Per run: stimulus features as a heat map over time (one row per feature, no legend
    over the data), and below it the strongest VAE-2 effect of every EEG timestamp with the
    annotated timestamps shaded."""
    stamps = masking.timestamps
    stim = masking.head("eeg", "vae2", "stimulus")
    windows = models.windows
    ann = masking.annotations.get("eeg")
    labels = windows.run_labels()
    names = list(windows.feature_names or [])
    figs = []
    for run in sorted(stamps["run"].unique())[:max_runs]:
        sel = labels == run
        run_units = stamps[stamps["run"] == run]
        has_features = windows.stimulus is not None and bool(names)
        rows = [max(1.0, 0.2 * len(names)), 1.6] if has_features else [1.6]
        fig = plt.figure(figsize=(10, 0.9 + sum(rows)))
        grid = fig.add_gridspec(len(rows), 2, height_ratios=rows, width_ratios=[1, 0.015],
                                hspace=0.15, wspace=0.02)  # fmt: skip
        axes = [fig.add_subplot(grid[i, 0]) for i in range(len(rows))]
        if has_features:
            t = windows.meta["time_s"].to_numpy()[sel]
            values = np.asarray(windows.stimulus[sel], dtype=float).T
            step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
            im = axes[0].imshow(values, aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3,
                                interpolation="nearest",
                                extent=(t[0] - step / 2, t[-1] + step / 2, len(names) - 0.5,
                                        -0.5))  # fmt: skip
            axes[0].set_yticks(range(len(names)), names, fontsize=7)
            axes[0].tick_params(labelbottom=False)
            axes[0].set_title(f"{readable_run(run)}: stimulus features (z) and VAE-2 effect of "
                              "masking each EEG timestamp", fontsize=9)
            fig.colorbar(im, cax=fig.add_subplot(grid[0, 1]), label="z")
        ax = axes[-1]
        if stim is not None:
            eff = np.nanmax(stim.effect, axis=1)[run_units["unit"].to_numpy()]
            ax.plot(run_units["time_s"], eff, color="k", lw=0.6)
        if ann is not None and len(ann):
            times = run_units.set_index("unit")["time_s"]
            hit = ann[ann["unit"].isin(times.index)]
            for u in hit["unit"]:
                ax.axvspan(times[u], times[u] + 1.0 / windows.sfreq, color="tab:red",
                           alpha=0.3, lw=0)
        ax.set(xlabel="run time (s)", ylabel="VAE-2 effect\n(max over features)")
        if not has_features:
            ax.set_title(readable_run(run), fontsize=9)
        if has_features:
            lo = min(t[0] - step / 2, run_units["time_s"].min())
            hi = max(t[-1] + step / 2, run_units["time_s"].max())
            for a in axes:
                a.set_xlim(lo, hi)
        figs.append(_save(fig, writer, "timeline_" + run.replace("/", "_")))
        figs[-1]["caption"] = (f"{readable_run(run)}: stimulus features and the EEG "
                               "timestamps annotated by masking (shaded red)")
    return figs


def _voxel_figures(masking: Any, config: Any, writer: Any) -> list:
    import nibabel as nib

    from bids_app.report.figures import plot_stat_map

    eff_path, q_path = masking.paths.get("statmap_effect"), masking.paths.get("statmap_q")
    if eff_path is None or q_path is None:
        return []
    eff, q = nib.load(eff_path), nib.load(q_path)
    data = np.where(np.asarray(q.dataobj) < config.masking.fdr_q, np.asarray(eff.dataobj), 0)
    figs = []
    for name, img, thr in (("voxel_effect", eff, None),
                           ("voxel_effect_annotated", nib.Nifti1Image(data, eff.affine), 1e-6)):
        fig = plot_stat_map(img, title=name.replace("_", " "), threshold=thr, symmetric=False,
                            cmap="hot")
        figs.append(_save(fig, writer, name))
    return figs


def write_group_report(models: Any, masking: Any, config: Any, writer: Any, *,
                       validation: list[Any] | None = None,
                       validation_note: str = "") -> Path:
    """Write ``output_dir/group.html``.

    Parameters
    ----------
    models : ModelsResult | None
        Group models (None when that stage failed).
    masking : MaskingResult | None
        Masking results (None when that stage failed).
    config : Config
        Resolved configuration.
    writer : DerivativesWriter
        Output writer.
    validation : list of Check | None
        Checks against the planted truth (simulated input only; None: no such section).
    validation_note : str
        Why validation rows are missing, when they are.

    Returns
    -------
    Path
        The report.
    """
    from bids_app.report.participant import validation_rows

    failures = []
    ctx: dict[str, Any] = {"n_windows": 0, "n_runs": 0, "models_rows": [], "curve_figures": [],
                           "counts": [], "annotated": [], "feature_rows": [],
                           "timeline_figures": [], "voxel_figures": [], "voxel_rows": [],
                           "baseline_rows": [], "not_beaten": [], "findings": [],
                           "voxel_columns": (), "level": config.masking.fdr_q,
                           "methods": METHODS}
    if models is None:
        failures.append("The models stage did not produce models.")
    else:
        ctx["n_windows"] = len(models.windows)
        ctx["n_runs"] = len(np.unique(models.windows.run_labels()))
        ctx["models_rows"], ctx["curve_figures"] = _learning_curves(models, writer)
        ctx["baseline_rows"], ctx["not_beaten"] = _baseline_rows(models)
    if masking is None:
        failures.append("The masking stage did not run or failed.")
    else:
        ctx["counts"] = [(k, v["tests"], v["significant"], v["nominal_p_below_level"],
                          round(v["expected_under_null"], 1), _matched(v))
                         for k, v in masking.summary.items() if k != "annotated"]
        ctx["annotated"] = sorted(masking.summary.get("annotated", {}).items())
        eeg_n, vox_n = (feature_counts(masking.annotations.get(k)) for k in ("eeg", "fmri"))
        ctx["feature_rows"] = [(f, eeg_n.get(f, 0), vox_n.get(f, 0))
                               for f in sorted(set(eeg_n) | set(vox_n))]
        if models is not None:
            try:
                ctx["timeline_figures"] = _timelines(models, masking, writer)
                ctx["voxel_figures"] = _voxel_figures(masking, config, writer)
            except Exception as err:  # a figure never sinks the report
                logger.warning("group report figure failed: %s", err)
                failures.append(f"A figure could not be drawn: {err}")
        vt = masking.annotations.get("fmri")
        if vt is not None and len(vt) and "x" in vt:
            top = vt.sort_values("q_vae2").head(30)
            ctx["voxel_columns"] = ("x", "y", "z", "atlas_label", "features", "q_vae1",
                                    "q_vae2")
            ctx["voxel_rows"] = [tuple(float(f"{r[c]:.3g}") if c.startswith("q") else r[c]
                                       for c in ctx["voxel_columns"])
                                 for _, r in top.iterrows()]
    ctx["findings"] = findings(models, masking, config.masking.fdr_q)
    # one figure each beside the findings: annotated voxels, the first run's timeline
    ctx["findings_figures"] = [dict(f, anchor="findings-" + f["anchor"]) for f in
                               [f for f in ctx["voxel_figures"]
                                if f["anchor"] == "voxel_effect_annotated"
                                and ctx["annotated"] and dict(ctx["annotated"]).get("fmri")]
                               + ctx["timeline_figures"][:1]]
    html = render("group.html", failures=failures, validation=validation,
                  validation_rows=validation_rows(validation),
                  validation_note=validation_note, **ctx)
    path = Path(writer.output_dir) / "group.html"
    writer.write_bytes(path, html.encode())
    return path
