"""Benchmark: fast occlusion vs the fair naive loop on one full NATVIEW-size run.

VAE-1 (the model with the per-output test) has the NATVIEW shapes (61 channels x 210
timestamps = 8.4 s at 25 Hz, the 69 765 voxels of the 3 mm MNI brain mask, hidden 256,
latent 16) and random weights (speed does not depend on training). One run of 289
windows (dme, TR 2.1 s, windows every 52.5 EEG samples: 15 330 timestamps) is measured
end to end, every unit of a kind, no extrapolation across units:

* fast, screening only: the whole-prediction and latent effects of every unit;
* fast, like for like: the screening plus the per-output test (every voxel or EEG
  timestamp of the other modality) of the selected units (``--fraction``, the first
  units of the run; the fraction the screening selects depends on the data). The
  per-output test is a second public call on the selected units, which screens them
  again and rebuilds its tables (counted against the fast path);
* both with ``pvalue="permutation", n_null=0, n_boot=0`` (the outputs the naive loop
  computes: smd, kl, dll) and with the default statistics (exact circular-shift null
  moments, t intervals, p and q values), which the naive loop does not compute;
* naive: :func:`~bids_app.masking.naive_occlusion`, one batched forward pass of the
  windows each unit touches, keeping the per-output effects of the selected units
  (``outputs_of``). ``--naive all`` loops over every unit of the run; ``--naive
  selected`` over the selected units only, and the run's naive time is their measured
  per-unit time times the run's units (stated in the output).

The script asserts fast == naive (rtol 1e-5, atol 1e-5, as the unit tests) on every
unit the naive loop measured; where the two float32 computations differ by more than
that (float32 rounding of a tiny masked change, in either path), the naive loop on a
float64 copy of the model decides, and the fast result must be within 1e-5 of it. And,
for the default fraction on CPU, the issue's claim:
like-for-like speed-up >= 20x. The group figure (``--runs`` runs of 240 windows) scales
the measured run by windows. ``--device cpu,cuda`` adds a GPU column when
CUDA is present (skipped otherwise). Times are wall seconds; the last column gives the
three speed-ups from process CPU time (all threads), which other processes' load barely
changes.

Run ``nice -n 10 python benchmarks/masking.py [--kinds eeg,fmri] [--fraction 0.05]
[--voxels 69765] [--naive all|selected] [--device cpu[,cuda]]``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch

from bids_app.masking import MaskingData, naive_occlusion, occlusion_effects
from bids_app.models.vae import MultimodalVAE

C, T, STEP, N_WINDOWS = 61, 210, 52.5, 289
GROUP_WINDOWS_PER_RUN = 240
CLAIM = 20.0  # issue 20: like-for-like speed-up on CPU at 5 % selected
CORE = {"pvalue": "permutation", "n_null": 0, "n_boot": 0}  # what the naive loop computes
STATS = {"pvalue": "gaussian", "n_boot": 200}  # the defaults


def run_data(n_windows: int, n_voxels: int, rng: np.random.Generator) -> MaskingData:
    """One run of NATVIEW-shaped windows of noise."""
    starts = np.rint(np.arange(n_windows) * STEP).astype(np.int64)
    idx = starts[:, None] + np.arange(T)[None]
    eeg = rng.standard_normal((C, idx.max() + 1), dtype=np.float32)
    return MaskingData(eeg[:, idx].transpose(1, 0, 2).copy(),
                       rng.standard_normal((n_windows, n_voxels), dtype=np.float32),
                       np.zeros((n_windows, 1), dtype=np.float32), idx)


def _timed(fn) -> tuple[np.ndarray, object]:
    """``([wall s, process CPU s], result)``: CPU time (all threads) is robust to other
    processes' load, wall time is what a user waits."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return np.array([time.perf_counter() - t0, time.process_time() - c0]), out


def fast_run(model, data, kind, selected, device, cfg) -> tuple[np.ndarray, np.ndarray, list]:
    """``[wall, CPU]`` seconds of the screening of every unit, of the per-output test of
    ``selected``, and the effects (screening heads + ``cross_outputs`` of the selected
    units)."""
    t_screen, screen = _timed(lambda: occlusion_effects(
        model, data, kind=kind, cross_outputs="none", device=device, **cfg))
    t_detail, detail = _timed(lambda: occlusion_effects(
        model, data, kind=kind, units=selected, cross_outputs="all", device=device, **cfg))
    return t_screen, t_detail, screen + [detail[-1]]


def check_equal(fast: list, naive: list, exact=None) -> tuple[float, int]:
    """Assert fast == naive (the unit tests' 1e-5) on the naive loop's units.

    Where the float32 naive loop and the fast path differ by more than 1e-5, the float64
    naive loop (``exact(units)``: the same loop on a float64 copy of the model) decides:
    the fast result must be within 1e-5 of it. Returns the largest absolute difference
    from the naive loop and the number of units so arbitrated.
    """
    worst, disputed = 0.0, {}
    by_head = {e.head: e for e in fast}
    for ref in naive:
        eff = by_head[ref.head]
        rows = np.searchsorted(eff.units, ref.units)
        assert np.array_equal(eff.units[rows], ref.units), ref.head
        for key in ("smd", "kl", "dll"):
            got, want = getattr(eff, key)[rows], getattr(ref, key)
            if want.size == 0 or not np.isfinite(want).any():
                continue
            off = ~np.isclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True).all(axis=1)
            disputed.setdefault(ref.head, set()).update(ref.units[off].tolist())
            worst = max(worst, float(np.nanmax(np.abs(got - want))))
    units = sorted(set().union(*disputed.values())) if disputed else []
    if units:
        assert exact is not None, f"fast != naive beyond 1e-5 on units {units[:10]}"
        for ref in exact(np.asarray(units)):
            eff = by_head[ref.head]
            rows = np.searchsorted(eff.units, ref.units)
            for key in ("smd", "kl", "dll"):
                got, want = getattr(eff, key)[rows], getattr(ref, key)
                if want.size and np.isfinite(want).any():
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                               err_msg=f"{ref.head} {key} vs float64")
    return worst, len(units)


def measure(kind: str, data: MaskingData, model, fraction: float, naive_mode: str,
            device: str) -> dict:
    """Every timing of one kind on one device (seconds for the whole run)."""
    units = np.unique(data.eeg_units) if kind == "eeg" else np.arange(data.x_fmri.shape[1])
    selected = units[: max(1, round(fraction * len(units)))]
    out = {"units": len(units), "selected": len(selected)}
    for name, cfg in (("core", CORE), ("stats", STATS)):
        screen, detail, effects = fast_run(model, data, kind, selected, device, cfg)
        out[name] = {"screen": screen, "detail": detail, "effects": effects}
    naive_units = units if naive_mode == "all" else selected
    print(f"  [{kind} {device}] fast: screening {out['core']['screen'][0]:.1f} s, per-output"
          f" {out['core']['detail'][0]:.1f} s; naive on {len(naive_units)} units ...",
          flush=True)
    t_naive, naive = _timed(lambda: naive_occlusion(model, data, kind=kind, units=naive_units,
                                                    outputs_of=selected, device=device))
    out["naive_measured"] = t_naive
    out["naive_units"] = len(naive_units)
    out["naive"] = t_naive * len(units) / len(naive_units)
    model64 = copy.deepcopy(model).double()

    def exact(some: np.ndarray) -> list:  # float64 naive loop on disputed units
        return naive_occlusion(model64, data, kind=kind, units=some,
                               outputs_of=np.intersect1d(some, selected), device=device)

    checks = [check_equal(out[n]["effects"], naive, exact) for n in ("core", "stats")]
    out["max_abs_diff"] = max(c[0] for c in checks)
    out["arbitrated"] = max(c[1] for c in checks)
    for name in ("core", "stats"):
        del out[name]["effects"]
    return out


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=392, help="runs of the group")
    parser.add_argument("--voxels", type=int, default=69765)
    parser.add_argument("--windows", type=int, default=N_WINDOWS, help="windows of the run")
    parser.add_argument("--fraction", type=float, default=0.05,
                        help="units tested output by output")
    parser.add_argument("--kinds", default="eeg,fmri")
    parser.add_argument("--naive", choices=("all", "selected"), default="all",
                        help="naive loop over every unit, or over the selected ones")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cpu,cuda")
    args = parser.parse_args(argv)
    devices = [d for d in args.device.split(",") if d != "cuda" or torch.cuda.is_available()]
    if "cuda" in args.device and "cuda" not in devices:
        print("CUDA is not available: GPU column skipped.\n")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = MultimodalVAE((C, T), args.voxels, latent_dim=16, hidden_dim=256,
                          dropout=0.0).eval()
    data = run_data(args.windows, args.voxels, rng)
    scale = args.runs * GROUP_WINDOWS_PER_RUN / args.windows
    print(f"VAE-1, EEG {C}x{T}, {args.voxels} voxels, one run of {args.windows} windows; "
          f"torch threads {torch.get_num_threads()}; load before: {os.getloadavg()}\n")
    print("| units | device | fast screening (s) | fast like-for-like (s) | "
          "fast like-for-like + statistics (s) | naive (s) | screening-only speed-up | "
          "like-for-like speed-up | with statistics | group fast + statistics (h) | "
          "group naive (h) | max abs. difference | speed-ups by CPU time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes, failures = [], []
    for kind in args.kinds.split(","):
        for device in devices:
            m = measure(kind, data, model, args.fraction, args.naive, device)
            core, stats = m["core"], m["stats"]
            lfl = core["screen"] + core["detail"]
            lfl_stats = stats["screen"] + stats["detail"]
            name = "EEG timestamps" if kind == "eeg" else "voxels"
            ratios = [m["naive"] / x for x in (core["screen"], lfl, lfl_stats)]
            speed = ratios[1][0]
            wall = [f"{x[0]:.1f}" for x in (core["screen"], lfl, lfl_stats, m["naive"])]
            print(f"| {name} ({m['units']}, {m['selected']} = {args.fraction:.1%} tested per "
                  f"output) | {device} | {' | '.join(wall)} | "
                  + " | ".join(f"{r[0]:.0f}x" for r in ratios)
                  + f" | {lfl_stats[0] * scale / 3600:.1f} | {m['naive'][0] * scale / 3600:.1f}"
                  f" | {m['max_abs_diff']:.1e} | "
                  + " / ".join(f"{r[1]:.0f}x" for r in ratios) + " |", flush=True)
            notes.append(f"{name} on {device}: naive measured on {m['naive_units']} of "
                         f"{m['units']} units in {m['naive_measured'][0]:.1f} s "
                         f"({m['naive_measured'][1]:.1f} CPU-s)"
                         + f"; {m['arbitrated']} units beyond 1e-5 of the float32 naive loop, "
                         "all within 1e-5 of the float64 naive loop"
                         + ("" if m["naive_units"] == m["units"] else
                            f", scaled to the run's {m['units']} units"))
            if device == "cpu" and abs(args.fraction - 0.05) < 1e-12 and speed < CLAIM:
                failures.append(f"{name}: like-for-like {speed:.1f}x < {CLAIM:.0f}x")
    print(f"\nLoad after: {os.getloadavg()}. Group: {args.runs} runs x "
          f"{GROUP_WINDOWS_PER_RUN} windows, scaled by windows from the measured run.")
    for note in notes:
        print(f"- {note}")
    assert not failures, "; ".join(failures)


if __name__ == "__main__":
    main()
