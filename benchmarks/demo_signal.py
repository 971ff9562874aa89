"""Does the demo find what it plants? VAE-1 skill, masking heads and annotations vs truth.

Reads a finished ``eegfmri demo OUT`` folder (or first re-runs its group level with
``--rerun``, optionally with other settings from ``--config-file``; the participant
derivatives are reused) and prints, from the written outputs only:

1. VAE-1 and VAE-2 held-out skill beside every baseline (``group/models/*.json``);
2. per masking head (``desc-vaemask_effects.tsv``): units with q < level and how many of
   them are planted (a timestamp inside a planted response window, a voxel whose block
   holds a planted source's voxel; for the stimulus head, of the feature's source);
3. the annotations (units significant in both VAEs) per planted (feature, source) link,
   and their precision (annotated units with at least one planted feature), scored by
   the group report's own :func:`~bids_app.workflows.validation_group.score_annotations`.

The truth is read from ``OUT/raw/sourcedata/simulation`` (the simulator's record); the
pipeline never reads it. About 2-4 min with ``--rerun`` on 2 idle cores, seconds without.

    python benchmarks/demo_signal.py demo_output [--rerun] [--config-file FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEVEL = 0.05


def rerun_group(demo: Path, config_file: Path | None) -> None:
    """Run the demo's group level again (same paths and seed as ``eegfmri demo``), from
    scratch (the training checkpoints are deleted)."""
    import shutil

    from bids_app.config import load_config
    from bids_app.workflows.run import execute

    # training resumes from checkpoints: a re-run with other settings must start afresh
    shutil.rmtree(demo / "work" / "group_models" / "checkpoints", ignore_errors=True)
    info = json.loads((demo / "raw/sourcedata/simulation/simulation.json").read_text())
    config = load_config(config_file).replace(
        "execution", bids_dir=demo / "bids", output_dir=demo / "derivatives",
        work_dir=demo / "work", random_seed=info["seed"], verbosity=-1,
        skip_bids_validation=True, stimuli_dir=demo / "bids" / "stimuli",
        analysis_level="group")
    result = execute(config)
    if result.exit_code:
        raise SystemExit(f"group level failed: {[f.message for f in result.failures]}")


def load_truth(demo: Path) -> dict:
    """Planted intervals (:class:`PlantedTruth` links), source -> feature, and the MNI
    coordinates of each source's planted voxels."""
    from bids_app.workflows.validation_group import load_planted_truth

    planted = load_planted_truth(demo / "raw" / "sourcedata" / "simulation")
    voxels = {name: nib.affines.apply_affine(img.affine,
                                             np.argwhere(np.asarray(img.dataobj) > 0))
              for name, img in planted.regions.items()}
    feature_of = dict(planted.links[["source", "feature"]].drop_duplicates().to_numpy())
    return {"null": planted.null, "links": planted.links, "feature_of": feature_of,
            "voxels": voxels}


def planted_timestamp(truth: dict, run: str, time_s: np.ndarray, feature: str) -> np.ndarray:
    """Whether each EEG time of ``run`` lies in a planted interval of ``feature``."""
    links = truth["links"]
    rows = links[(links["run"] == run) & (links["feature"] == feature)]
    t = np.asarray(time_s, dtype=float)[:, None]
    on, dur = rows["onset_s"].to_numpy(float)[None], rows["duration_s"].to_numpy(float)[None]
    return ((t >= on) & (t <= on + dur)).any(axis=1)


def planted_voxel(truth: dict, mni: np.ndarray, feature: str, half_mm: np.ndarray
                  ) -> np.ndarray:
    """Whether each (coarse) voxel's block holds a voxel of a source driven by ``feature``."""
    hit = np.zeros(len(mni), bool)
    for source, feat in truth["feature_of"].items():
        if feat != feature or source not in truth["voxels"]:
            continue
        planted = truth["voxels"][source]
        for i, c in enumerate(mni):
            hit[i] |= bool(np.all(np.abs(planted - c) <= half_mm + 1e-6, axis=1).any())
    return hit


def skill_rows(derivatives: Path) -> dict[str, list[dict]]:
    """Each model's held-out claims beside its baselines (the sidecars' ``Baselines``
    rows of :func:`bids_app.models.comparison.baseline_comparison`); ``{}`` per model
    not trained."""
    rows = {}
    for name in ("vae1", "vae2"):
        path = derivatives / "group" / "models" / f"{name}.json"
        if path.exists():
            rows[name] = json.loads(path.read_text()).get("Baselines", [])
    return rows


def skill(derivatives: Path) -> None:
    rows = skill_rows(derivatives)
    for name in ("vae1", "vae2"):
        if name not in rows:
            print(f"{name}: not trained")
        for row in rows.get(name, []):
            base = ", ".join(f"{k} {v:.4f}" for k, v in row["baselines"].items())
            print(f"{name} | {row['metric']} | {row['value']:.4f} | {base} | margin "
                  f"{row['margin']:+.4f} over {row['best_baseline']}")


def masked_units(demo: Path, seed: int) -> dict:
    """Voxel MNI coordinates, block half-size and EEG timestamp table of the masking.

    Rebuilds the masked windows as the group level chose them with the default
    ``[model]`` split settings and ``[masking] windows = "test"``.
    """
    from bids_app.config import ModelConfig
    from bids_app.models.windows import load_windows, split_windows
    from bids_app.workflows.masking import masking_data

    windows = load_windows(demo / "work" / "group_models" / "windows")
    mc = ModelConfig()
    test = split_windows(windows.meta, by=mc.split_by, val_fraction=mc.val_fraction,
                         test_fraction=mc.test_fraction, seed=seed)["test"]
    if windows.stimulus is not None:
        test = test[windows.meta["has_stimulus"].to_numpy()[test]]
        test = test[np.isfinite(np.asarray(windows.stimulus[test])).any(axis=1)]
    _, stamps = masking_data(windows, test)
    half = np.sqrt((np.asarray(windows.mask_affine)[:3, :3] ** 2).sum(axis=0)) / 2
    return {"mni": windows.voxel_mni(), "half_mm": half, "stamps": stamps,
            "sfreq": windows.sfreq}


def planted_units(truth: dict, units: dict) -> dict[str, dict[str, np.ndarray]]:
    """Per unit kind (``eeg``, ``fmri``) and planted feature: which masked units are planted."""
    features = sorted(set(truth["feature_of"].values()))
    stamps = units["stamps"].set_index("unit")
    by_kind = {"fmri": {f: planted_voxel(truth, units["mni"], f, units["half_mm"])
                        for f in features},
               "eeg": {f: np.zeros(len(stamps), bool) for f in features}}
    for run, g in stamps.groupby("run"):
        for f in features:
            by_kind["eeg"][f][g.index.to_numpy()] = planted_timestamp(
                truth, run, g["time_s"].to_numpy(), f)
    return by_kind


def head_rows(derivatives: Path, truth: dict, units: dict) -> list[dict]:
    """Per masking head (unit kind, model, head): significant units, how many of them are
    planted, the smallest p and the AUROC of planted vs other units by their smallest p
    (NaN when every p is NaN or one class is empty)."""
    effects = pd.read_csv(next((derivatives / "group").glob("*desc-vaemask_effects.tsv")),
                          sep="\t")
    by_kind = planted_units(truth, units)
    rows = []
    for (kind, model, head), g in effects.groupby(["unit_kind", "model", "head"]):
        sig = g[g["q"] < LEVEL]
        sig_units = sig["unit"].unique().astype(int)
        planted_any = np.logical_or.reduce(list(by_kind[kind].values()))
        row = {"kind": kind, "model": model, "head": head, "units": int(g["unit"].nunique()),
               "significant": len(sig_units), "pairs": len(sig),
               "planted_significant": int(planted_any[sig_units].sum()),
               **separation(g, planted_any)}
        if head == "stimulus" and len(sig):
            row["feature_matched"] = {
                f: (int(by_kind[kind][f][s["unit"].astype(int)].sum()), len(s))
                for f, s in sig.groupby("feature") if f in by_kind[kind]}
        rows.append(row)
    return rows


def heads(derivatives: Path, truth: dict, units: dict) -> None:
    """Significant units per masking head and how many of them are planted."""
    for kind, per in planted_units(truth, units).items():
        n_any = int(np.logical_or.reduce(list(per.values())).sum())
        print(f"{kind} units masked: {len(next(iter(per.values())))}, planted {n_any} ("
              + ", ".join(f"{f} {int(v.sum())}" for f, v in per.items()) + ")")
    for row in head_rows(derivatives, truth, units):
        line = (f"{row['kind']}/{row['model']}/{row['head']}: {row['significant']} of "
                f"{row['units']} units with q < {LEVEL} ({row['pairs']} unit x output pairs)"
                f"; planted among them: {row['planted_significant']}")
        if not np.isfinite(row["min_p"]):
            line += "; no finite p"
        else:
            line += f"; min p {row['min_p']:.2g}, units with p < .001: {row['p_below_001']}"
            if np.isfinite(row["auroc"]):
                line += f", AUROC planted vs other (min p) {row['auroc']:.3f}"
        if "feature_matched" in row:
            hits = [f"{f} {n}/{m}" for f, (n, m) in row["feature_matched"].items()]
            line += f" (feature-matched: {', '.join(hits) or 'none'})"
        print(line)


def separation(g: pd.DataFrame, planted: np.ndarray) -> dict:
    """Smallest p of the head, units with p < .001, and the AUROC of planted vs other
    units by their min p (NaN when every p is NaN or one class is empty)."""
    p = g.groupby("unit")["p"].min()
    units = p.index.to_numpy().astype(int)
    is_planted = planted[units]
    out = {"min_p": float("nan"), "p_below_001": 0, "auroc": float("nan")}
    if not np.isfinite(p).any():
        return out
    out.update(min_p=float(p.min()), p_below_001=int((p < 1e-3).sum()))
    if 0 < is_planted.sum() < len(units):
        ranks = pd.Series(-p.to_numpy()).rank().to_numpy()  # small p = high rank
        n1, n0 = int(is_planted.sum()), int((~is_planted).sum())
        out["auroc"] = float((ranks[is_planted].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    return out


def annotation_table(derivatives: Path, sfreq: float) -> pd.DataFrame:
    """The written annotations (events per run, voxel table) as
    :func:`~bids_app.workflows.validation_group.score_annotations` reads them: one row per
    annotated EEG timestamp or voxel."""
    rows = []
    for tsv in sorted(derivatives.glob("sub-*/**/eeg/*_desc-vaemask_events.tsv")):
        ents = dict(p.split("-", 1) for p in tsv.name.split("_") if "-" in p)
        run = "/".join(ents.get(k, "n/a") for k in ("sub", "ses", "task", "run"))
        for _, e in pd.read_csv(tsv, sep="\t").iterrows():
            n = max(1, int(round(e["duration"] * sfreq)))
            rows += [{"unit_kind": "eeg", "features": e["features"], "run": run,
                      "time_s": t} for t in e["onset"] + np.arange(n) / sfreq]
    for tsv in sorted((derivatives / "group").glob("*desc-vaemask_voxels.tsv")):
        vox = pd.read_csv(tsv, sep="\t")
        rows += [{"unit_kind": "fmri", "features": v["features"], "x": v["x"], "y": v["y"],
                  "z": v["z"]} for _, v in vox.iterrows()]
    return pd.DataFrame(rows, columns=["unit_kind", "features", "run", "time_s", "x", "y",
                                       "z"])


def annotation_scores(demo: Path, units: dict) -> tuple[pd.DataFrame, dict]:
    """Annotations per planted link (:func:`~bids_app.workflows.validation_group.
    score_annotations`) and the precision of all, EEG and voxel annotations
    (:func:`~bids_app.workflows.validation_group.annotation_precision`), as the group
    report scores them."""
    from bids_app.workflows.validation_group import (
        annotation_precision,
        load_planted_truth,
        score_annotations,
    )

    table = annotation_table(demo / "derivatives", units["sfreq"])
    truth = load_planted_truth(demo / "raw" / "sourcedata" / "simulation")
    precision = {kind: annotation_precision(table[table["unit_kind"] == kind], truth)
                 for kind in ("eeg", "fmri")}
    precision["all"] = annotation_precision(table, truth)
    return score_annotations(table, truth), precision


def annotations(demo: Path, units: dict) -> None:
    """Annotations per planted link and their precision, scored as the group report does."""
    links, precision = annotation_scores(demo, units)
    print(links.to_string(index=False))
    for kind in ("eeg", "fmri"):
        prec = precision[kind]
        print(f"annotated {kind} units: {prec['units']}, planted {prec['planted']}, "
              f"precision {prec['precision']:.3f}")


def power(derivatives: Path, truth: dict) -> None:
    """Matched-unit bound of every tested head for the planted features (sidecar ``Power``):
    the p a unit tracking the feature exactly would reach, and the BH pairs it needs."""
    sidecar = json.loads((derivatives / "group" / "desc-vaemask_effects.json").read_text())
    features = sorted(set(truth["feature_of"].values()))
    for head, entry in sidecar.get("Power", {}).get("Heads", {}).items():
        shown = [f for f in features if f in entry["matched_p"]] or list(entry["matched_p"])
        parts = [f"{f} p {entry['matched_p'][f]:.2g} (needs {entry['pairs_needed'][f]:,})"
                 for f in shown]
        print(f"{head}: matched-unit bound {'; '.join(parts)}"
              + (f"; out of reach: {', '.join(entry['out_of_reach'])}"
                 if entry["out_of_reach"] else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="folder of a finished eegfmri demo")
    parser.add_argument("--rerun", action="store_true", help="re-run the group level first")
    parser.add_argument("--config-file", type=Path, help="settings of the re-run (TOML)")
    args = parser.parse_args(argv)
    demo = args.demo.absolute()
    if args.rerun:
        rerun_group(demo, args.config_file)
    truth = load_truth(demo)
    derivatives = demo / "derivatives"
    print(f"demo {demo} (null variant: {truth['null']})")
    seed = json.loads((demo / "raw/sourcedata/simulation/simulation.json").read_text())["seed"]
    units = masked_units(demo, seed)
    skill(derivatives)
    heads(derivatives, truth, units)
    power(derivatives, truth)
    annotations(demo, units)


if __name__ == "__main__":
    main()
