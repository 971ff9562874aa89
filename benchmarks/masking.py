"""Benchmark: fast occlusion vs naive per-unit occlusion at NATVIEW size.

Models have the NATVIEW window shapes (61 channels x 210 timestamps = 8.4 s at 25 Hz, the
69 765 voxels of the 3 mm MNI brain mask, hidden 256, latent 16, 8 stimulus features) and
random weights (speed does not depend on training). One run of 289 windows (dme, TR 2.1 s,
windows every 52.5 EEG samples) is timed; the naive loop is timed on a few units and
extrapolated linearly, the fast path on a few hundred units, both with the same
statistics, then both are scaled to the NATVIEW group (392 runs, mean 240 windows). The
fast path is timed as a NATVIEW run uses it (``cross_outputs="auto"`` is hierarchical at
that size): the whole-prediction screening of every unit, plus the per-output test of a
stated fraction of selected units.

Run ``python benchmarks/masking.py [--quick]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bids_app.masking import MaskingData, naive_occlusion, occlusion_effects
from bids_app.models.vae import MultimodalVAE, StimulusVAE

C, T, F, STEP = 61, 210, 8, 52.5
GROUP_RUNS, GROUP_WINDOWS_PER_RUN = 392, 240


def _run_data(n_windows: int, n_voxels: int, rng: np.random.Generator) -> MaskingData:
    starts = np.rint(np.arange(n_windows) * STEP).astype(np.int64)
    idx = starts[:, None] + np.arange(T)[None]
    eeg = rng.standard_normal((C, idx.max() + 1), dtype=np.float32)
    return MaskingData(eeg[:, idx].transpose(1, 0, 2).copy(),
                       rng.standard_normal((n_windows, n_voxels), dtype=np.float32),
                       rng.standard_normal((n_windows, F), dtype=np.float32), idx)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    """Time both paths and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller voxel count")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    n_vox = 8000 if args.quick else 69765
    n_win = 289
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    kw = {"latent_dim": 16, "hidden_dim": 256, "dropout": 0.0}
    models = [MultimodalVAE((C, T), n_vox, **kw).eval(),
              StimulusVAE((C, T), n_vox, F, **kw).eval()]
    data = _run_data(n_win, n_vox, rng)
    ts_units = np.unique(data.eeg_units)
    mid = len(ts_units) // 2
    scale = GROUP_WINDOWS_PER_RUN / n_win  # windows per group run relative to the timed run

    def timed(fn, kind, units, **kw) -> float:
        """Seconds for both models (best of two), all statistics as configured."""
        return min(sum(_time(lambda m=m: fn(m, data, kind=kind, units=units,
                                            device=args.device, **kw)) for m in models)
                   for _ in range(2))

    def marginal(fn, kind, small, large, **kw) -> tuple[float, float]:
        """(fixed s, s per extra unit) from two unit counts."""
        t_small, t_large = timed(fn, kind, small, **kw), timed(fn, kind, large, **kw)
        per = max(t_large - t_small, 1e-9) / (len(large) - len(small))
        return max(t_small - per * len(small), 0.0), per

    core = {"pvalue": "permutation", "n_null": 0, "n_boot": 0}  # what naive computes
    stats = {"n_boot": 200}  # defaults: exact null moments + intervals
    n_ts = (GROUP_WINDOWS_PER_RUN - 1) * STEP + T
    fractions = (0.0, 0.05, 1.0)
    rows = []
    for kind in ("eeg", "fmri"):
        if kind == "eeg":
            small, large = ts_units[mid : mid + 200], ts_units[mid : mid + 2000]
            nsmall, nlarge = ts_units[mid : mid + 1], ts_units[mid : mid + 4]
        else:
            small, large = np.arange(16), np.arange(128)
            nsmall, nlarge = np.arange(1), np.arange(4)
        # screening: whole-prediction test (+ latent, stimulus) of every unit; then the
        # per-output test of the selected units (a NATVIEW run is far above the "auto" size)
        f_fix, f_per = marginal(occlusion_effects, kind, small, large, cross_outputs="none",
                                **core)
        s_fix, s_per = marginal(occlusion_effects, kind, small, large, cross_outputs="none",
                                **stats)
        _, a_per = marginal(occlusion_effects, kind, small, large, cross_outputs="all", **stats)
        d_per = max(a_per - s_per, 0.0)  # per-output test of one selected unit
        n_fix, n_per = marginal(naive_occlusion, kind, nsmall, nlarge)
        for frac in fractions:
            fast, stat = f_per + frac * d_per, s_per + frac * d_per
            if kind == "eeg":  # fast: ~4 windows per timestamp; naive: every window of the run
                group = [GROUP_RUNS * (fix * scale + n_ts * per)
                         for fix, per in ((f_fix, fast), (s_fix, stat))]
                group.append(GROUP_RUNS * (n_fix * scale + n_ts * n_per * scale))
            else:  # both evaluate every window of the group per voxel
                group = [GROUP_RUNS * scale * (fix + n_vox * per)
                         for fix, per in ((f_fix, fast), (s_fix, stat), (n_fix, n_per))]
            name = "EEG timestamps" if kind == "eeg" else "voxels"
            rows.append((f"{name}, {frac:.0%} selected", fast, stat, n_per, *group))
    print(f"NATVIEW-size models: EEG {C}x{T}, {n_vox} voxels, run of {n_win} windows "
          f"({len(ts_units)} timestamps); device {args.device}; torch threads "
          f"{torch.get_num_threads()}; VAE-1 + VAE-2\n")
    print("| units | fast s/unit | fast + statistics s/unit | naive s/unit | speed-up per "
          "unit (run of 289 windows) | group fast (h) | group fast + statistics (h) | "
          "group naive (h) | speed-up, group | speed-up, group, fast + statistics |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, f, s_, nv, fg, sg, ng in rows:
        print(f"| {name} | {f:.2e} | {s_:.2e} | {nv:.2e} | {nv / f:.0f}x | {fg / 3600:.1f} | "
              f"{sg / 3600:.1f} | {ng / 3600:.1f} | {ng / fg:.0f}x | {ng / sg:.0f}x |")
    k = len(fractions)
    for i, frac in enumerate(fractions):
        fg, sg, ng = (rows[i][j] + rows[k + i][j] for j in (4, 5, 6))
        print(f"| all units, {frac:.0%} selected | | | | | {fg / 3600:.1f} | "
              f"{sg / 3600:.1f} | {ng / 3600:.1f} | {ng / fg:.0f}x | {ng / sg:.0f}x |")
    print(f"\nGroup: {GROUP_RUNS} runs x {GROUP_WINDOWS_PER_RUN} windows. Fixed and per-unit "
          "costs are fitted from two unit counts (fast: 200/2000 timestamps, 16/128 voxels; "
          "naive: 1/4 units) and extrapolated linearly. Each row: the whole-prediction "
          "screening of every unit plus the per-output test of the given fraction of units "
          "(the fraction the screening selects depends on the data).")


if __name__ == "__main__":
    main()
