"""Coupling recall, false positives and null calibration on ideal and hard BOLD, beside nilearn.

Usage::

    python benchmarks/coupling_runs.py [--seeds 0 1] [--realism ideal hard]

Simulates MNI-space runs (:func:`bids_app.simulate.mni_runs.simulate_mni_run`: planted
alpha, beta and theta sources; canonical, 2 s delayed and late (peak 8.5 s) HRFs; AR(1)
and 1/f nulls), smooths the BOLD as the pipeline does before its coupling stage
(``[fmri] fwhm``, 6 mm; :meth:`~bids_app.simulate.mni_runs.MNIRun.coupling_bold`), runs the
coupling statistics the pipeline runs (:func:`bids_app.coupling.couple_bands`, the
pipeline's default confounds and HRF basis) and scores, per band:

- recall: fraction of the band's planted voxels with q < 0.05 (global or source-resolved
  map);
- FP: fraction of the voxels that the smoothed planted signal does not reach
  (:meth:`~bids_app.simulate.mni_runs.MNIRun.planted_reach`) with q < 0.05 in either map;
- null p < .05: fraction of voxels with uncorrected p < 0.05 on null runs (each map).

Baseline, scored identically: nilearn's first-level GLM (``run_glm`` with the AR(1) noise
model, the engine of ``FirstLevelModel``) of the
canonical-HRF-convolved mean-channel band power with the same nuisance design, its
parametric p-values corrected by Benjamini-Hochberg over bands x voxels. eegfmri is also
scored without the global-signal confound (canonical HRF and AR(1) null). Statistics are
computed over the 26 521 posterior voxels (MNI y <= -40, which hold every planted source),
10 shifts over 10 000 null voxels, as in tests/unit/test_coupling_inference.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_app import coupling as cp  # noqa: E402
from bids_app.config import CouplingConfig, FMRIConfig  # noqa: E402
from bids_app.eeg import source  # noqa: E402
from bids_app.simulate.mni_runs import BANDS, HRFS, TR, MNIRun, simulate_mni_run  # noqa: E402
from bids_app.simulate.realism import REALISM  # noqa: E402

CFG, FMRI_CFG = CouplingConfig(), FMRIConfig()
NO_GLOBAL = tuple(c for c in CFG.confounds if c != "global_signal")
BASELINE = "nilearn first-level GLM, global band power (AR(1))"


@dataclasses.dataclass
class Scored:
    """Per-band maps of one run: q (recall/FP) and uncorrected p (null rate), per method."""

    q: dict[str, dict[str, np.ndarray]]
    p: dict[str, dict[str, np.ndarray]]
    planted: dict[str, np.ndarray]
    band_of: dict[str, str]
    reach: np.ndarray


def couple(run: MNIRun, *, confounds: tuple[str, ...] = CFG.confounds, baseline: bool = False,
           n_shifts: int = 10) -> Scored:
    """Coupling statistics of ``run`` over the posterior voxels (and the baseline's)."""
    maps = source.compute_source_maps(run.raw, run.onsets, TR, run.mask, bands=BANDS)
    keep = nib.affines.apply_affine(run.mask.affine, maps.grid.voxel_ijk)[:, 1] <= -40
    hrf = cp.hrf_matrix(run.onsets, TR, run.times, hrf_model=CFG.hrf_model)
    nuisance = cp.run_nuisance(run.times, run.confounds, confounds, high_pass_hz=CFG.high_pass_hz,
                               n_basis=hrf.shape[0], max_ar_order=CFG.max_ar_order)
    bold = run.coupling_bold(FMRI_CFG.fwhm)[:, keep]  # smoothed, as the pipeline's coupling
    res = cp.couple_bands(
        {b: maps.coupling_power(b) for b, _, _ in BANDS},
        bold=bold, hrf=hrf, weights=maps.grid.weights[keep], nuisance=nuisance,
        rr_mm=maps.grid.rr_mm, ch_names=maps.ch_names, window_s=TR, n_shifts=n_shifts,
        n_null_voxels=10_000,
        shapes=cp.hrf_shapes(run.onsets, TR, run.times, peaks_s=CFG.hrf_shape_peaks_s))
    q = {"eegfmri": {b: np.minimum(r.q, r.local_q) for b, r in res.items()}}
    p = {"eegfmri global": {b: r.p for b, r in res.items()},
         "eegfmri source-resolved": {b: r.local_p for b, r in res.items()}}
    if baseline:
        power = {b: cp.standardize(np.nanmean(maps.channel_power[b], axis=1)) for b, _, _ in BANDS}
        base_p = nilearn_glm(bold, hrf[0], power, nuisance)
        family = cp.fdr_bh(np.stack(list(base_p.values())))
        q[BASELINE] = dict(zip(base_p, family))
        p[BASELINE] = base_p
    # the source grid's voxels are the mask's in np.argwhere order, as the BOLD columns
    return Scored(q, p, {k: v[keep] for k, v in run.planted.items()}, run.band_of,
                  run.planted_reach(FMRI_CFG.fwhm)[keep])


def nilearn_glm(bold: np.ndarray, canonical: np.ndarray, power: dict[str, np.ndarray],
                nuisance: pd.DataFrame) -> dict[str, np.ndarray]:
    """Parametric p of nilearn's first-level GLM (``run_glm``, AR(1), as ``FirstLevelModel``
    fits it) of each band's canonical global regressor beside the same nuisance design."""
    from nilearn.glm.contrasts import compute_contrast
    from nilearn.glm.first_level import run_glm

    out = {}
    for band, x in power.items():
        design = np.column_stack([cp.standardize(canonical @ x), nuisance.to_numpy(float)])
        labels, results = run_glm(bold, design, noise_model="ar1")
        con = np.zeros(design.shape[1])
        con[0] = 1.0
        out[band] = compute_contrast(labels, results, con, stat_type="F").p_value()
    return out


def score(scored: Scored) -> list[dict]:
    """Recall and FP (voxels the smoothed planted signal does not reach) per band and method
    of a planted run."""
    rows = []
    for method, qs in scored.q.items():
        for name, inside in scored.planted.items():
            band = scored.band_of[name]
            rows.append({"metric": "recall", "band": band, "method": method,
                         "value": float((qs[band][inside] < 0.05).mean())})
        for band, q in qs.items():
            rows.append({"metric": "FP %", "band": band, "method": method,
                         "value": 100 * float((q[~scored.reach] < 0.05).mean())})
    return rows


def null_rates(scored: Scored) -> list[dict]:
    """Fraction (%) of voxels with uncorrected p < 0.05, per band and map."""
    return [{"metric": "null p<.05 %", "band": band, "method": method,
             "value": 100 * float((p < 0.05).mean())}
            for method, ps in scored.p.items() for band, p in ps.items()]


def coupling_table(seeds: list[int], realisms: list[str], *, baseline: bool = True,
                   global_signal_variants: bool = True) -> pd.DataFrame:
    """Every run of every seed: one row per (realism, condition, seed, metric, band, method)."""
    rows = []
    for realism in realisms:
        real = REALISM[realism]
        for seed in seeds:
            for cond in [*HRFS, "null ar1", "null 1f"]:
                null = cond.startswith("null")
                run = simulate_mni_run(None if null else cond, noise=cond[5:] if null else
                                       "planted", seed=seed + (7 if null else 0), realism=real)
                variants = {"": CFG.confounds}
                if global_signal_variants and cond in ("canonical", "null ar1"):
                    variants[" (no global signal)"] = NO_GLOBAL
                for tag, confounds in variants.items():
                    scored = couple(run, confounds=confounds, baseline=baseline and not tag)
                    for r in (null_rates(scored) if null else score(scored)):
                        rows.append({"realism": realism, "condition": cond + tag,
                                     "seed": seed, **r})
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--realism", nargs="+", default=["ideal", "hard"])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    table = coupling_table(args.seeds, args.realism)
    summary = table.groupby(["realism", "condition", "metric", "band", "method"])["value"].agg(
        ["mean", "min", "max"]).round(3)
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(summary)
    print(f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(table.to_dict("records"), indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
