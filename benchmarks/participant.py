"""Participant-level source imaging and coupling: quality and speed, side by side.

Simulates a movie run (task ``tp``, planted alpha/luminance/motion sources, 4-shell forward
model) with an MNI BOLD whose planted voxels follow their source's power, then compares

* inverse methods (eLORETA, sLORETA, dSPM, MNE): localisation error of each planted source
  (peak of its narrow-band power map) and coupling AUROC of the local source<->voxel
  correlation on planted voxels;
* GLM engines: the global F test of ``bids_app.coupling`` (AR(p) prewhitening, plus the
  source-resolved test and 20 circular shifts) against nilearn's ``run_glm`` (AR(1), F
  contrast of the same HRF basis) on the full 3 mm brain: time and agreement of F maps.

With ``--stage-times LOG [LOG ...]`` it instead tabulates the per-stage and per-step times
that participant-level logs (``output_dir/logs/eegfmri-*-participant.log``) record, one
column per log (e.g. before/after a change, on the demo dataset).

Usage::

    python benchmarks/participant.py [--volumes 127] [--seed 0]
    python benchmarks/participant.py --stage-times before.log after.log
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import mne
import numpy as np
from nilearn import datasets
from nilearn.glm.contrasts import compute_contrast
from nilearn.glm.first_level import run_glm
from sklearn.metrics import roc_auc_score

from bids_app import coupling as cp
from bids_app.eeg import source
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.bold import planted_mni_bold
from bids_app.simulate.neural import simulate_neural
from bids_app.simulate.stimulus import simulate_stimulus

SFREQ, TR, LEAD = 250.0, nv.TR, 3.0
BASIS = "spm + derivative + dispersion"


def simulate(n_vol: int, seed: int):
    """EEG RawArray, volume onsets, mask, in-mask BOLD and planted voxel masks."""
    duration = LEAD + n_vol * TR + 3.0
    stim = simulate_stimulus("tp", n_vol * TR + 10, 10.0, (32, 24),
                             np.random.default_rng(seed + 1), render=False)
    sim = simulate_neural("tp", stim, SFREQ, int(duration * SFREQ), -LEAD,
                          np.random.default_rng(seed))
    raw = mne.io.RawArray(sim.eeg.astype(float),
                          mne.create_info(list(nv.EEG_CHANNELS), SFREQ, "eeg"), verbose="error")
    onsets = LEAD + np.arange(n_vol) * TR
    mask = datasets.load_mni152_brain_mask(resolution=3)
    times = cp.acquisition_times(onsets, TR / 2)
    bold, planted = planted_mni_bold("tp", sim.source_power, times, mask,
                                     np.random.default_rng(seed + 2))  # fmt: skip
    return raw, onsets, mask, bold, planted, times


def compare_methods(raw, onsets, mask, bold, planted, times) -> list[tuple]:
    srcs = scenario.sources_for_task("tp")
    bands = tuple((s.name, s.freq_hz - 1.0, s.freq_hz + 1.0) for s in srcs)
    hrf = cp.hrf_matrix(onsets, TR, times)[0]
    nuisance = cp.nuisance_design(times, None)
    rows = []
    for method in source.METHODS:
        t0 = time.perf_counter()
        maps = source.compute_source_maps(raw, onsets, TR, mask, bands=bands, method=method)
        elapsed = time.perf_counter() - t0
        for s in srcs:
            power = maps.source_power[s.name]
            peak = maps.grid.rr_mm[np.argmax(power.mean(0))]
            err = float(np.linalg.norm(peak - np.array(s.mni_mm)))
            reg = cp.residualize(hrf @ cp.standardize(power), nuisance.to_numpy(float))
            r = cp.local_correlation(bold, maps.grid.to_voxels(reg), nuisance,
                                     regressors_residualized=True)
            auc = roc_auc_score(planted[s.name], np.abs(r))
            rows.append((method, s.name, err, auc, elapsed))
    return rows


def compare_glm(bold, times, onsets, raw, mask) -> tuple[float, float, float]:
    """Global alpha F test: bids_app.coupling (AR(p), 20 shifts) against nilearn (AR(1))."""
    maps = source.compute_source_maps(raw, onsets, TR, mask, bands=(("alpha", 8.0, 13.0),))
    hrf = cp.hrf_matrix(onsets, TR, times, hrf_model=BASIS)
    power = cp.standardize(np.nanmean(maps.channel_power["alpha"], 1))
    nuisance = cp.nuisance_design(times, None)
    t0 = time.perf_counter()
    fit = cp.fit_coupling_glm(bold, hrf, power, cp.standardize(maps.source_power["alpha"]),
                              maps.grid.weights, nuisance.to_numpy(float), window_s=TR)
    t_ours = time.perf_counter() - t0
    design = np.column_stack([*(h @ power for h in hrf), nuisance.to_numpy(float)])
    t0 = time.perf_counter()
    labels, results = run_glm(bold, design, noise_model="ar1", random_state=0)
    con = np.zeros((len(hrf), design.shape[1]))
    con[:, : len(hrf)] = np.eye(len(hrf))
    f_nl = compute_contrast(labels, results, con, stat_type="F").stat()
    t_nl = time.perf_counter() - t0
    return t_ours, t_nl, float(np.corrcoef(fit.global_test.f, f_nl)[0, 1])


_TIMED = re.compile(r"(?:Stage '(?P<stage>\w+)' of \S+|fMRI step (?P<step>\w+)) done in "
                    r"(?P<s>[0-9.]+) s")


def stage_times(log: Path) -> dict[str, list[float]]:
    """Seconds of every participant stage (``eeg`` ...) and fMRI step in a log, per run."""
    out: dict[str, list[float]] = {}
    for line in Path(log).read_text().splitlines():
        m = _TIMED.search(line)
        if m:
            name = m["stage"] or f"fmri: {m['step']}"
            out.setdefault(name, []).append(float(m["s"]))
    return out


def print_stage_times(logs: list[Path]) -> None:
    """Markdown table: total seconds (and number of runs) of each stage, one column per log."""
    tables = [stage_times(log) for log in logs]
    names = list(dict.fromkeys(n for t in tables for n in t))
    print("| stage | " + " | ".join(Path(log).name for log in logs) + " |")
    print("|---|" + "---|" * len(logs))
    for name in names:
        cells = [f"{sum(t[name]):.1f} s ({len(t[name])})" if name in t else "-" for t in tables]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=127)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage-times", nargs="+", type=Path, metavar="LOG",
                        help="tabulate stage times of participant logs instead")
    args = parser.parse_args()
    if args.stage_times:
        print_stage_times(args.stage_times)
        return
    data = simulate(args.volumes, args.seed)
    print(f"## Inverse methods (task tp, {args.volumes} volumes, 250 Hz, 61 channels)\n")
    print("| method | source | localisation error (mm) | coupling AUROC | maps time (s) |")
    print("|---|---|---|---|---|")
    for method, name, err, auc, elapsed in compare_methods(*data):
        print(f"| {method} | {name} | {err:.1f} | {auc:.3f} | {elapsed:.1f} |")
    raw, onsets, mask, bold, _, times = data
    t_ours, t_nl, r = compare_glm(bold, times, onsets, raw, mask)
    print(f"\n## Global F test (HRF + derivatives) on {bold.shape[1]} voxels x "
          f"{bold.shape[0]} volumes\n")
    print("| engine | time (s) | F correlation with nilearn |")
    print("|---|---|---|")
    print(f"| bids_app.coupling.fit_coupling_glm (AR(p), global + source-resolved, 20 "
          f"shifts) | {t_ours:.2f} | {r:.4f} |")
    print(f"| nilearn run_glm (AR(1)) + F contrast, global only, no shifts | {t_nl:.2f} | 1 |")


if __name__ == "__main__":
    main()
