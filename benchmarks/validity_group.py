"""Group rows of the validity benchmark: models, masking and annotations on a whole demo.

For each realism, ``eegfmri demo`` (:func:`bids_app.workflows.demo.run_demo`: simulate a
demo-scale NATVIEW-like release, convert, participant level, group level; default
settings, one seed) runs from scratch, so the VAEs and the masking see windows the
pipeline built from simulated recordings (not :func:`simulate_windows`). The rows are
read from its outputs with :mod:`demo_signal`'s functions, the truth from
``raw/sourcedata/simulation`` (never read by the pipeline):

- VAE-1 (``group: VAE-1 held out``): mean voxel r and explained variance of the fMRI
  predicted from EEG alone on the held-out runs, beside the sidecar's baselines (PCA
  latent from EEG, band-power ridge, VAE-1 on shuffled EEG); VAE-2 (``group: VAE-2 held
  out``): mean r over stimulus features beside the band-power ridge. The claim (issue 15,
  docs/benchmarks.md: "beats" = above every baseline on the held-out runs) holds when the
  model's number is strictly above every baseline's.
- masking (``group: masking``): per head (unit kind / model / head), the AUROC of planted
  vs other units ranked by their smallest p, beside chance (0.5); issue 15 claims >= 0.95.
- annotations (``group: annotations``): units annotated at the planted places of each
  planted (feature, source) link (issue 17: >= 1) and the share of annotated units that
  are planted (issue 17: >= 80 %; n/a when nothing is annotated, which fails the claim),
  scored by :mod:`bids_app.workflows.validation_group` as the group report does.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from demo_signal import annotation_scores, head_rows, load_truth, masked_units, skill_rows

#: The model claims scored (sidecar ``Baselines`` metric -> row metric).
MODEL_METRICS = {
    "vae1": {"mean voxel r, fMRI from EEG alone": "mean voxel r, fMRI from EEG alone",
             "fMRI explained variance from EEG alone":
                 "fMRI explained variance from EEG alone"},
    "vae2": {"mean r over features": "mean r over stimulus features"},
}  # fmt: skip
#: Claims on group rows: metric prefix -> (comparison, bound).
CLAIMS = {
    "AUROC planted vs other units": (">=", 0.95),
    "units annotated": (">=", 1),
    "annotation precision": (">=", 0.8),
}
CHANCE = "chance (planted units ranked at random)"


def demo_rows(demo: Path, realism: str, seed: int) -> list[dict]:
    """The group rows of one finished demo folder."""
    derivatives = demo / "derivatives"
    rows = []

    def add(check, metric, method, value):
        value = None if value is None or not math.isfinite(value) else round(float(value), 4)
        rows.append({"check": check, "metric": metric, "realism": realism, "method": method,
                     "value": value})

    for model, claims in skill_rows(derivatives).items():
        label = model.upper().replace("VAE", "VAE-")
        for claim in claims:
            metric = MODEL_METRICS[model].get(claim["metric"])
            if metric is None:
                continue
            check = f"group: {label} held out"
            add(check, metric, "eegfmri", claim["value"])
            for name, value in claim["baselines"].items():
                add(check, metric, name, value)
    truth = load_truth(demo)
    units = masked_units(demo, seed)
    for head in head_rows(derivatives, truth, units):
        if head["head"] == "latent":  # screening effects on the latent: no p-values
            continue
        metric = (f"AUROC planted vs other units, {head['kind']}/{head['model']}/"
                  f"{head['head']}")
        add("group: masking", metric, "eegfmri", head["auroc"])
        add("group: masking", metric, CHANCE, 0.5)
    links, precision = annotation_scores(demo, units)
    for link in links.itertuples():
        add("group: annotations", f"units annotated, {link.feature} -> {link.source}",
            "eegfmri", link.eeg_units + link.voxels)
    add("group: annotations", "annotation precision (planted / annotated units)", "eegfmri",
        precision["all"]["precision"])
    add("group: annotations", "annotated units (EEG timestamps + voxels)", "eegfmri",
        precision["all"]["units"])
    return rows


def group_rows(realisms: tuple[str, ...] = ("ideal", "hard"), *, seed: int = 0,
               scale: str = "demo", keep: Path | None = None) -> tuple[list[dict], dict]:
    """Run ``eegfmri demo`` per realism and score it; rows and seconds per realism.

    Parameters
    ----------
    realisms : tuple of str
        Simulator realisms (``"ideal"``, ``"hard"``).
    seed : int
        Seed of the simulation and of the run (the demo's default: 0).
    scale : str
        Simulator scale (``"demo"``: the demo's dataset).
    keep : Path | None
        Folder that keeps each demo (``KEEP/demo-<realism>``; an existing one is reused
        by the demo's resumable steps); None runs in a temporary folder.
    """
    from bids_app.workflows.demo import run_demo

    rows, seconds = [], {}
    with tempfile.TemporaryDirectory(prefix="validity-group-") as tmp:
        for realism in realisms:
            demo = Path(keep or tmp).absolute() / f"demo-{realism}"
            t0 = time.perf_counter()
            code = run_demo(demo, scale=scale, seed=seed, realism=realism, verbosity=-1)
            if code:
                raise RuntimeError(f"eegfmri demo ({realism}) failed (exit code {code}); "
                                   f"see {demo / 'derivatives' / 'logs'}")
            rows += demo_rows(demo, realism, seed)
            seconds[realism] = time.perf_counter() - t0
    return rows, seconds


def holds(row: dict, rows: list[dict]) -> str:
    """Whether a group row's claim holds: above every baseline (models), or its bound."""
    if row["method"] != "eegfmri":
        return ""
    if row["check"].startswith("group: VAE"):
        base = [r["value"] for r in rows if (r["check"], r["metric"], r["realism"]) == (
            row["check"], row["metric"], row["realism"]) and r["method"] != "eegfmri"
            and r["value"] is not None]
        return "yes" if row["value"] is not None and base and row["value"] > max(base) else "no"
    claim = next((c for prefix, c in CLAIMS.items() if row["metric"].startswith(prefix)), None)
    if claim is None:
        return ""
    op, bound = claim
    value = row["value"]
    return "yes" if value is not None and (value >= bound if op == ">=" else value <= bound
                                           ) else "no"
