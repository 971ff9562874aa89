"""Group training at NATVIEW size: window storage, throughput and peak memory.

Synthesises planted windows directly (no raw data) for 22 subjects x 10 runs x 290
volumes with 61 EEG channels x 8.4 s at 25 Hz and the 3 mm MNI brain mask (69 763
voxels) into memory-mapped ``.npy`` files, then trains VAE-1 with the production
:func:`bids_app.models.train.fit` in a fresh process on windows drawn from the whole
group, and reports windows per second and the peak resident memory of that process::

    python benchmarks/training.py --work-dir bench_work            # NATVIEW size
    python benchmarks/training.py --work-dir bench_small --subjects 2 --runs 2  # quick check

With ``--group-windows DIR`` (the ``work/group_models/windows`` folder of a group run, e.g.
of the demo) it instead times :func:`bids_app.workflows.models.train_group_models` on those
windows with the default recipe (block-PCA start, calibrated experts) and with a random
initialisation, and prints epochs, seconds and held-out explained variance against PCA::

    python benchmarks/training.py --group-windows demo_work/group_models/windows

Numbers depend on the machine; docs/benchmarks.md ("Group training") records a run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def synthesise(args: argparse.Namespace) -> dict:
    """Write planted windows of the whole group into memory-mapped files."""
    import pandas as pd

    from bids_app.simulate.stimulus import simulate_windows

    n_t = int(round(8.4 * 25.0))
    per_subject = args.runs * args.volumes
    n = args.subjects * per_subject
    root = Path(args.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    mm = np.lib.format.open_memmap
    eeg = mm(root / "eeg.npy", "w+", np.float32, (n, args.channels, n_t))
    fmri = mm(root / "fmri.npy", "w+", np.float32, (n, args.voxels))
    stim = mm(root / "stimulus.npy", "w+", np.float32, (n, 2))
    t0 = time.perf_counter()
    metas = []
    for s in range(args.subjects):
        sl = slice(s * per_subject, (s + 1) * per_subject)
        pw = simulate_windows(
            n_subjects=1,
            n_runs=args.runs,
            n_volumes=args.volumes,
            n_channels=args.channels,
            window_s=8.4,
            sfreq=25.0,
            n_voxels=args.voxels,
            seed=s,
            out={"eeg": eeg[sl], "fmri": fmri[sl], "stimulus": stim[sl]},
        )
        metas.append(pw.meta.assign(subject=f"{s + 1:02d}"))
        eeg.flush(), fmri.flush()
    pd.concat(metas, ignore_index=True).to_parquet(root / "meta.parquet")
    seconds = time.perf_counter() - t0
    size = (eeg.nbytes + fmri.nbytes + stim.nbytes) / 1e9
    return {
        "windows": n,
        "data_gb": size,
        "synthesis_s": seconds,
        "eeg_shape": [args.channels, n_t],
        "voxels": args.voxels,
    }


def peak_rss_gb() -> float:
    """Peak resident memory of this process (VmHWM; ``ru_maxrss`` would include the
    parent's resident set at fork time, inherited across ``exec`` on Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1e6
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def train_only(args: argparse.Namespace) -> dict:
    """Train VAE-1 for one epoch on ``batches`` batches drawn from the whole group."""
    import torch

    from bids_app.config import Config
    from bids_app.models.train import fit, make_model
    from bids_app.workflows.models import initialise_vae1

    torch.set_num_threads(args.threads)
    root = Path(args.work_dir)
    arrays = {k: np.load(root / f"{k}.npy", mmap_mode="r") for k in ("eeg", "fmri")}
    n = len(arrays["eeg"])
    rng = np.random.default_rng(0)
    idx = rng.permutation(n)
    train = idx[: args.batches * args.batch_size]
    val = idx[-args.batch_size * 2 :]
    model = make_model(
        "vae1",
        seed=0,
        eeg_shape=arrays["eeg"].shape[1:],
        n_voxels=arrays["fmri"].shape[1],
        latent_dim=16,
        hidden_dim=256,
        eeg_decoder_rank=Config().model.eeg_decoder_rank,
    )
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    initialise_vae1(model, arrays, train, Config().model, seed=0)  # the default recipe
    init_s = time.perf_counter() - t0
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rss0 = peak_rss_gb()
    t0 = time.perf_counter()
    res = fit(
        model,
        arrays,
        train,
        val,
        epochs=1,
        batch_size=args.batch_size,
        seed=0,
        device=args.device,
        amp=True,
        feed=args.feed,
        gpu_batch_size=args.gpu_batch_size,
        include_initial=Config().model.pca_init,
    )
    seconds = time.perf_counter() - t0
    peak = peak_rss_gb()
    out = {
        "device": res.device,
        "feed": res.extra["feed"],
        "batch_size": res.extra["batch_size"],
        "threads": args.threads,
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "init_s": init_s,
        "train_windows": len(train),
        "seconds": seconds,
        "windows_per_s": len(train) / seconds,
        "peak_rss_gb": peak,
        "rss_before_training_gb": rss0,
    }
    if torch.cuda.is_available() and res.device.startswith("cuda"):
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
        out["gpu_utilisation_percent"] = res.history[-1].get("gpu_utilisation_percent")
    return out


def compare_on_windows(directory: Path) -> None:
    """Time both VAEs on existing group windows: default recipe vs random initialisation."""
    from bids_app.config import Config
    from bids_app.models.windows import load_windows
    from bids_app.workflows.models import train_group_models

    windows = load_windows(directory)
    config = Config()
    config = config.replace("execution", verbosity=-1)
    variants = {
        "random initialisation": config.replace("model", pca_init=False,
                                                calibrate_experts=False),  # fmt: skip
        "default (block-PCA start, calibrated)": config,
    }
    print("| VAE-1 recipe | VAE-1 epochs | VAE-1 s | VAE-2 s | total s | EEG EV (PCA) "
          "| fMRI EV (PCA) |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        _, results, splits, metrics = train_group_models(windows, cfg)
        total = time.perf_counter() - t0
        secs = {k: sum(h["seconds"] for h in r.history) for k, r in results.items()}
        m = metrics["vae1"]
        print(f"| {name} | {len(results['vae1'].history)} | {secs['vae1']:.1f} | "
              f"{secs.get('vae2', float('nan')):.1f} | {total:.1f} | "
              f"{m['ev_eeg']:.4f} ({m['ev_pca_eeg']:.4f}) | "
              f"{m['ev_fmri']:.4f} ({m['ev_pca_fmri']:.4f}) |")  # fmt: skip
        for model in ("vae1", "vae2"):
            for row in metrics.get(model, {}).get("baseline_comparison", []):
                print(f"    {model} {row['metric']}: {row['value']:.4f}, best baseline "
                      f"{row['best_baseline']} {row['baselines'][row['best_baseline']]:.4f}"
                      f"{'' if row['beats_all_baselines'] else ' (not beaten)'}")  # fmt: skip
    runs = windows.run_labels()
    print("test runs:", sorted(set(runs[splits["vae1"]["test"]])))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", type=Path)
    p.add_argument("--group-windows", type=Path, help="time both VAEs on these windows")
    p.add_argument("--subjects", type=int, default=22)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--volumes", type=int, default=290)
    p.add_argument("--channels", type=int, default=61)
    p.add_argument("--voxels", type=int, default=69763)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--feeds", default="auto",
                   help="comma-separated feeds to time side by side (host, resident, "
                        "prefetch, auto), each in a fresh process, e.g. host,auto on a GPU")
    p.add_argument("--feed", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--gpu-batch-size", type=int, default=None,
                   help="global batch size on CUDA (default: --batch-size)")
    p.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the synthesised files")
    args = p.parse_args()
    if args.group_windows is not None:
        compare_on_windows(args.group_windows)
        return 0
    if args.work_dir is None:
        p.error("--work-dir is required (or --group-windows)")
    if args.train_only:
        print(json.dumps(train_only(args)))
        return 0
    data = synthesise(args)
    trains = {}
    for feed in args.feeds.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--train-only", "--feed", feed, *sys.argv[1:]],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
        )
        trains[feed] = json.loads(child.stdout.strip().splitlines()[-1])
    train = next(iter(trains.values()))
    epoch_windows = 0.6 * data["windows"]
    rows = [
        ("windows (subjects x runs x volumes)", f"{data['windows']:,}"),
        ("EEG window (channels x samples)", "x".join(map(str, data["eeg_shape"]))),
        ("voxels (3 mm MNI brain mask)", f"{data['voxels']:,}"),
        ("memory-mapped data on disk", f"{data['data_gb']:.1f} GB"),
        ("synthesis time", f"{data['synthesis_s']:.0f} s"),
        ("VAE-1 parameters (trained by the default recipe)",
         f"{train['parameters'] / 1e6:.1f} M ({train['trainable_parameters'] / 1e6:.1f} M)"),
        ("PCA initialisation (block PCA of the training windows)", f"{train['init_s']:.0f} s"),
        ("device / threads", f"{train['device']} / {train['threads']}"),
    ]
    per_feed = [
        ("feed (how windows reach the device) / batch size",
         lambda r: f"{r['feed']} / {r['batch_size']}"),
        ("training throughput", lambda r: f"{r['windows_per_s']:.1f} windows/s"),
        ("one epoch (60 % of windows), extrapolated",
         lambda r: f"{epoch_windows / r['windows_per_s'] / 60:.1f} min"),
        ("peak resident memory (training process)", lambda r: f"{r['peak_rss_gb']:.2f} GB"),
    ]
    if "peak_gpu_gb" in train:
        per_feed += [("peak GPU memory", lambda r: f"{r['peak_gpu_gb']:.2f} GB"),
                     ("GPU utilisation (last epoch, NVML)",
                      lambda r: f"{r.get('gpu_utilisation_percent')} %")]
    width = max(len(r[0]) for r in rows + per_feed)
    print(f"| {'quantity':<{width}} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    head = " | ".join(f"--feed {f}" for f in trains)
    print(f"\n| {'training (one epoch)':<{width}} | {head} |\n"
          f"|{'-' * (width + 2)}|{'---|' * len(trains)}")
    for name, fmt in per_feed:
        print(f"| {name:<{width}} | {' | '.join(fmt(r) for r in trains.values())} |")
    if not args.keep:
        shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
