"""Group validation against the simulator's planted truth (report only).

With :mod:`bids_app.workflows.validation`, the only module that reads
``sourcedata/simulation/``; it runs inside the group report stage, so the models, masking
tables and maps never depend on the truth. Checks and their pass marks (issue 17 and
docs/methods.md):

- model skill: every held-out metric of VAE-1 and VAE-2 minus its best baseline: > 0;
- annotations, per planted (feature, source) link: at least one annotated unit, i.e. an
  EEG timestamp annotated with the feature inside one of the link's planted intervals
  (``_dependencies.tsv``, widened by ``tolerance_s``), or a voxel annotated with the
  feature inside the source's planted region (``_source-<name>_mask``);
- annotations, overall: >= 80 % of the annotated units are planted (a unit is planted when
  one of the features it names is planted there); on the null variant, nothing annotated.

:func:`score_annotations` and :func:`annotation_precision` are plain functions of an
annotation table and a :class:`PlantedTruth`, for reuse by other scorers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_app.workflows.validation import Check, inside_mask, make_check, truth_folder

logger = logging.getLogger(__name__)

#: Pass marks: share of annotated units that are planted; units per planted link.
PRECISION = 0.8
UNITS_PER_LINK = 1


@dataclass
class PlantedTruth:
    """Planted (feature, source) links of a simulated dataset.

    Attributes
    ----------
    links : pandas.DataFrame
        One row per planted interval: ``run`` (``sub/ses/task/run`` label, ``n/a`` when
        absent, as the group windows name runs), ``feature``, ``source``, ``onset_s`` and
        ``duration_s`` (EEG run time).
    regions : dict
        Source name -> planted region (MNI mask image; the union over subjects).
    null : bool
        True for the null variant (nothing planted).
    """

    links: pd.DataFrame
    regions: dict[str, Any] = field(default_factory=dict)
    null: bool = False


def _run_label(name: str) -> str:
    ents = dict(part.split("-", 1) for part in name.split("_") if "-" in part)
    return "/".join(ents.get(k, "n/a") for k in ("sub", "ses", "task", "run"))


def load_planted_truth(folder: Path | str) -> PlantedTruth:
    """Read the planted links and regions from ``sourcedata/simulation``.

    Parameters
    ----------
    folder : Path | str
        The truth folder (with ``simulation.json`` and ``sub-*/``).

    Returns
    -------
    PlantedTruth
    """
    import nibabel as nib

    folder = Path(folder)
    meta = json.loads((folder / "simulation.json").read_text())
    frames = []
    for path in sorted(folder.glob("sub-*/*_dependencies.tsv")):
        table = pd.read_csv(path, sep="\t")
        if len(table):
            table.insert(0, "run", _run_label(path.name.removesuffix("_dependencies.tsv")))
            frames.append(table)
    columns = ["run", "feature", "source", "onset_s", "duration_s"]
    links = (pd.concat(frames, ignore_index=True)[columns] if frames
             else pd.DataFrame(columns=columns))
    regions: dict[str, Any] = {}
    for path in sorted(folder.glob("sub-*/*_source-*_mask.nii*")):
        name = path.name.split("_source-", 1)[1].split("_mask", 1)[0]
        img = nib.load(path)
        data = np.asarray(img.dataobj) > 0
        if name in regions:
            data = data | (np.asarray(regions[name].dataobj) > 0)
        regions[name] = nib.Nifti1Image(data.astype(np.uint8), img.affine)
    return PlantedTruth(links, regions, bool(meta.get("null", False)))


def stack_annotations(annotations: Mapping[str, pd.DataFrame | None]) -> pd.DataFrame:
    """One table of the masking annotations with a ``unit_kind`` column (``eeg``/``fmri``)."""
    frames = [frame.assign(unit_kind=kind) for kind, frame in annotations.items()
              if frame is not None and len(frame)]
    if not frames:
        return pd.DataFrame(columns=["unit_kind", "features"])
    return pd.concat(frames, ignore_index=True)


def _hits(annotations: pd.DataFrame, truth: PlantedTruth, feature: str, source: str,
          tolerance_s: float) -> np.ndarray:
    """Rows of ``annotations`` naming ``feature`` at a planted place of the link."""
    names = annotations["features"].astype(str).str.split("+")
    named = names.apply(lambda items: feature in items).to_numpy(bool)
    hit = np.zeros(len(annotations), bool)
    kind = annotations["unit_kind"].to_numpy()
    eeg = named & (kind == "eeg")
    if eeg.any():
        rows = truth.links[(truth.links["feature"] == feature)
                           & (truth.links["source"] == source)]
        runs = annotations["run"].to_numpy()
        times = annotations["time_s"].to_numpy(float)
        for run, onset, duration in rows[["run", "onset_s", "duration_s"]].itertuples(
                index=False):
            hit |= eeg & (runs == run) & (times >= onset - tolerance_s) & (
                times <= onset + duration + tolerance_s)
    vox = named & (kind == "fmri")
    if vox.any() and source in truth.regions:
        xyz = annotations.loc[vox, ["x", "y", "z"]].to_numpy(float)
        hit[np.flatnonzero(vox)[inside_mask(truth.regions[source], xyz)]] = True
    return hit


def _link_pairs(truth: PlantedTruth) -> list[tuple[str, str]]:
    pairs = truth.links[["feature", "source"]].drop_duplicates()
    return sorted(map(tuple, pairs.to_numpy()))


def score_annotations(annotations: pd.DataFrame, truth: PlantedTruth, *,
                      tolerance_s: float = 0.5) -> pd.DataFrame:
    """Annotated units of every planted (feature, source) link.

    Parameters
    ----------
    annotations : pandas.DataFrame
        :func:`stack_annotations` of the masking annotations: ``unit_kind``, ``features``
        (``+``-joined), ``run`` and ``time_s`` for EEG timestamps, ``x``, ``y``, ``z``
        (MNI mm) for voxels.
    truth : PlantedTruth
        :func:`load_planted_truth`.
    tolerance_s : float
        Margin around each planted interval within which an EEG timestamp counts.

    Returns
    -------
    pandas.DataFrame
        One row per link: ``feature``, ``source``, ``region`` (atlas label of the region's
        centre), ``eeg_units`` and ``voxels`` annotated with the feature at the link's
        planted places, ``found`` (at least :data:`UNITS_PER_LINK` unit) and
        ``precision`` (share of the units annotated with the feature that lie at the
        link's planted places; NaN when no unit names the feature).
    """
    from bids_app.masking.atlas import atlas_labels

    rows = []
    for feature, source in _link_pairs(truth):
        hit = (_hits(annotations, truth, feature, source, tolerance_s) if len(annotations)
               else np.zeros(0, bool))
        kind = annotations["unit_kind"].to_numpy() if len(annotations) else np.zeros(0)
        region = "n/a"
        if source in truth.regions:
            img = truth.regions[source]
            ijk = np.argwhere(np.asarray(img.dataobj) > 0)
            if len(ijk):
                import nibabel as nib

                centre = nib.affines.apply_affine(img.affine, ijk.mean(axis=0))
                region = str(atlas_labels(centre[None], max_distance_mm=20.0)[0][0])
        n_eeg, n_vox = int((hit & (kind == "eeg")).sum()), int((hit & (kind == "fmri")).sum())
        named = (annotations["features"].astype(str).str.split("+").apply(
            lambda items, f=feature: f in items).to_numpy(bool) if len(annotations)
                 else np.zeros(0, bool))
        rows.append({"feature": feature, "source": source, "region": region,
                     "eeg_units": n_eeg, "voxels": n_vox,
                     "found": n_eeg + n_vox >= UNITS_PER_LINK,
                     "precision": (n_eeg + n_vox) / named.sum() if named.any() else np.nan})
    return pd.DataFrame(rows, columns=["feature", "source", "region", "eeg_units", "voxels",
                                       "found", "precision"])


def annotation_precision(annotations: pd.DataFrame, truth: PlantedTruth, *,
                         tolerance_s: float = 0.5) -> dict[str, float]:
    """Share of annotated units that are planted.

    A unit is planted when at least one feature it names is planted at that unit (see
    :func:`score_annotations`).

    Returns
    -------
    dict
        ``units`` (annotated), ``planted`` (of them) and ``precision`` (NaN when nothing
        was annotated).
    """
    planted = np.zeros(len(annotations), bool)
    if len(annotations):
        for feature, source in _link_pairs(truth):
            planted |= _hits(annotations, truth, feature, source, tolerance_s)
    n = len(annotations)
    return {"units": n, "planted": int(planted.sum()),
            "precision": float(planted.mean()) if n else float("nan")}


def skill_checks(models: Any) -> list[Check]:
    """Each held-out model metric minus its best baseline (pass: the model beats it)."""
    rows = []
    for name in ("vae1", "vae2"):
        label = name.upper().replace("VAE", "VAE-")
        claims = (getattr(models, "metrics", None) or {}).get(name, {}).get(
            "baseline_comparison", [])
        for claim in claims:
            best = claim["baselines"][claim["best_baseline"]]
            rows.append(make_check("model skill minus best baseline",
                                   f"{label}: {claim['metric']} (vs {claim['best_baseline']})",
                                   claim["value"] - best, ">", 0.0))
    return rows


def validate_group(models: Any, masking: Any, bids_dir: Path | str | None, *,
                   tolerance_s: float = 0.5) -> list[Check]:
    """Every group check against the planted truth (empty for real data).

    Parameters
    ----------
    models : ModelsResult | None
        Group models (their ``metrics`` hold the baseline comparison).
    masking : MaskingResult | None
        Masking results (``annotations`` per unit kind).
    bids_dir : Path | None
        The input dataset.
    tolerance_s : float
        See :func:`score_annotations`.

    Returns
    -------
    list of Check
    """
    folder = truth_folder(bids_dir)
    if folder is None:
        return []
    truth = load_planted_truth(folder)
    rows = skill_checks(models) if models is not None else []
    if masking is not None:
        table = stack_annotations(masking.annotations)
        score = annotation_precision(table, truth, tolerance_s=tolerance_s)
        if truth.null:
            rows.append(make_check("annotated units (null: nothing planted)", "all units",
                                   score["units"], "<=", 0, "units"))
        else:
            for link in score_annotations(table, truth, tolerance_s=tolerance_s).itertuples():
                rows.append(make_check(
                    "annotation recall", f"{link.feature} -> {link.source} ({link.region}): "
                    f"{link.eeg_units} EEG timestamp(s), {link.voxels} voxel(s); precision "
                    f"of '{link.feature}' annotations {link.precision:.2f}",
                    link.eeg_units + link.voxels, ">=", UNITS_PER_LINK, "unit"))
            rows.append(make_check("annotation precision",
                                   f"{score['planted']} of {score['units']} annotated units "
                                   "planted", score["precision"], ">=", PRECISION))
    logger.info("Group validation against planted truth: %d of %d checks pass.",
                sum(r.passed for r in rows), len(rows))
    return rows
