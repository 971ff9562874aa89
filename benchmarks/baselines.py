"""VAE-1 and VAE-2 beside their baselines over several splits: the spread in docs/benchmarks.md.

Trains the models of ``tests/unit/test_vae.py`` (the same windows, recipe and evaluation,
imported from the test so the numbers are the test's) on several split seeds (VAE-1) and
simulation seeds (VAE-2), and prints every comparison row
(:func:`bids_app.models.comparison.baseline_comparison`) and the margins over the best
baseline. About 1 min per VAE-1 split and 10 s per VAE-2 seed on 2 idle cores.

    python benchmarks/baselines.py --splits 0 1 2 3 --stimulus-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit")]

from bids_app.models.initialise import calibrate_experts, select_own_paths  # noqa: E402
from bids_app.models.train import evaluate_vae1, evaluate_vae2, fit, make_model  # noqa: E402
from bids_app.models.windows import split_windows  # noqa: E402
from bids_app.simulate.stimulus import simulate_windows  # noqa: E402


def _print_rows(tag: str, rows: list[dict], margins: dict[str, list[float]]) -> None:
    for row in rows:
        base = ", ".join(f"{k} {v:.4f}" for k, v in row["baselines"].items())
        verdict = "beats every baseline" if row["beats_all_baselines"] else "does NOT beat"
        print(f"{tag} | {row['metric']} | {row['value']:.4f} | {base} | {verdict} "
              f"(best: {row['best_baseline']}, margin {row['margin']:+.4f})")  # fmt: skip
        margins.setdefault(f"{row['model']} {row['metric']}", []).append(row["margin"])


def vae1_splits(splits: list[int]) -> dict[str, list[float]]:
    """Comparison rows of VAE-1 (the test's recipe) on each split seed."""
    from test_vae import _train_default_vae1

    pw = simulate_windows(n_subjects=3, n_runs=4, n_volumes=150, n_channels=16, window_s=8.4,
                          sfreq=5.0, n_voxels=200, n_planted=20, eeg_noise=0.5,
                          global_signal=0.0, seed=0)  # fmt: skip
    arrays = {"eeg": pw.eeg, "fmri": pw.fmri}
    planted = np.concatenate(list(pw.planted_voxels.values()))
    margins: dict[str, list[float]] = {}
    for seed in splits:
        split = split_windows(pw.meta, seed=seed)
        model = _train_default_vae1(pw, split).model
        select_own_paths(model, arrays, split["val"])
        calibrate_experts(model, arrays, split["val"])
        ev = evaluate_vae1(model, arrays, split["train"], split["test"], planted_voxels=planted,
                           val_idx=split["val"], sfreq=5.0)  # fmt: skip
        _print_rows(f"VAE-1 split {seed}", ev["baseline_comparison"], margins)
    return margins


def vae2_seeds(seeds: list[int]) -> dict[str, list[float]]:
    """Comparison rows of VAE-2 (the test's recipe) on each simulation (= split) seed."""
    margins: dict[str, list[float]] = {}
    for null in (False, True):
        for seed in seeds:
            pw = simulate_windows(n_subjects=4, n_runs=4, n_volumes=100, n_channels=16,
                                  window_s=8.4, sfreq=5.0, n_voxels=100, n_planted=15,
                                  null=null, seed=seed)  # fmt: skip
            stim = (pw.stimulus - pw.stimulus.mean(0)) / pw.stimulus.std(0)
            arrays = {"eeg": pw.eeg, "fmri": pw.fmri, "stimulus": stim}
            split = split_windows(pw.meta, seed=seed)
            model = make_model("vae2", seed=0, eeg_shape=pw.eeg.shape[1:], n_voxels=100,
                               n_features=2, feature_names=pw.feature_names, latent_dim=4,
                               hidden_dim=64, beta=0.01)  # fmt: skip
            res = fit(model, arrays, split["train"], split["val"], epochs=30, batch_size=32,
                      patience=5, seed=0, device="cpu")  # fmt: skip
            groups = (pw.meta["subject"] + "/" + pw.meta["run"]).to_numpy()[split["test"]]
            ev = evaluate_vae2(res.model, arrays, split["test"], groups, n_permutations=500,
                               train_idx=split["train"], val_idx=split["val"], sfreq=5.0)
            tag = f"VAE-2 {'null' if null else 'planted'} seed {seed}"
            for name, score in ev["features"].items():
                ridge = ev["ridge_features"].get(name, {"r": np.nan, "p": np.nan})
                print(f"{tag} | {name}: VAE-2 r {score['r']:.3f} (p {score['p']:.3f}), ridge "
                      f"r {ridge['r']:.3f} (p {ridge['p']:.3f}, inputs "
                      f"{ridge.get('inputs', '-')})")  # fmt: skip
            if not null:
                _print_rows(tag, ev["baseline_comparison"], margins)
    return margins


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", type=int, nargs="*", default=[0, 1, 2, 3])
    p.add_argument("--stimulus-seeds", type=int, nargs="*", default=[0, 1, 2])
    args = p.parse_args()
    margins = {**vae1_splits(args.splits), **vae2_seeds(args.stimulus_seeds)}
    print("\nmargin over the best baseline (min to max over seeds):")
    for claim, values in margins.items():
        print(f"  {claim}: {min(values):+.4f} to {max(values):+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
