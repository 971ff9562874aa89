"""Command-line entry point for group training under ``torchrun`` (or one process).

Trains VAE-1 or VAE-2 on a window directory written by
:class:`bids_app.models.windows.WindowStore` with the very same :func:`fit` that the
group workflow uses. Example on one node with 4 GPUs (NCCL) or 4 CPU processes (gloo)::

    torchrun --nproc_per_node 4 -m bids_app.models.distributed \\
        --windows work/group_models/windows --model vae1 --out group_vae1

Rank 0 writes ``<out>/<model>.pt`` (weights + architecture) and ``<out>/metrics.json``;
``<out>/<model>.ckpt`` is the per-epoch checkpoint a restarted job resumes from.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch.distributed as dist

from bids_app.config import Config
from bids_app.models.train import fit, make_model, model_bytes
from bids_app.models.windows import load_windows, split_windows

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m bids_app.models.distributed``."""
    mc = Config().model
    p = argparse.ArgumentParser(prog="python -m bids_app.models.distributed",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--windows", type=Path, required=True, help="WindowStore directory")
    p.add_argument("--out", type=Path, required=True, help="output folder (rank 0 writes)")
    p.add_argument("--model", choices=("vae1", "vae2"), default="vae1")
    p.add_argument("--epochs", type=int, default=mc.epochs)
    p.add_argument("--batch-size", type=int, default=mc.batch_size)
    p.add_argument("--learning-rate", type=float, default=mc.learning_rate)
    p.add_argument("--weight-decay", type=float, default=mc.weight_decay)
    p.add_argument("--patience", type=int, default=mc.patience)
    p.add_argument("--latent-dim", type=int, default=mc.latent_dim)
    p.add_argument("--hidden-dim", type=int, default=mc.hidden_dim)
    p.add_argument("--beta", type=float, default=mc.beta)
    p.add_argument("--cross-weight", type=float, default=mc.cross_weight)
    p.add_argument("--stimulus-beta", type=float, default=mc.stimulus_beta)
    p.add_argument("--split-by", choices=("run", "subject"), default=mc.split_by)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    """Train one model; return 0 on success."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    windows = load_windows(args.windows)
    splits = split_windows(windows.meta, by=args.split_by, seed=args.seed)
    kw = {
        "eeg_shape": windows.eeg.shape[1:],
        "n_voxels": windows.fmri.shape[1],
        "latent_dim": args.latent_dim,
        "hidden_dim": args.hidden_dim,
        "beta": args.beta,
        "cross_weight": args.cross_weight,
    }
    if args.model == "vae2":
        has = windows.meta["has_stimulus"].to_numpy()
        splits = {k: v[has[v]] for k, v in splits.items()}
        kw.update(
            n_features=windows.stimulus.shape[1],
            feature_names=windows.feature_names,
            beta=args.stimulus_beta,
        )
    model = make_model(args.model, seed=args.seed, **kw)
    args.out.mkdir(parents=True, exist_ok=True)
    result = fit(model, windows.arrays(), splits["train"], splits["val"],
                 epochs=args.epochs, batch_size=args.batch_size,
                 learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                 patience=args.patience, seed=args.seed, device=args.device,
                 checkpoint=args.out / f"{args.model}.ckpt", resume=not args.no_resume,
                 progress=True)  # fmt: skip
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == 0:
        (args.out / f"{args.model}.pt").write_bytes(model_bytes(result.model))
        (args.out / "metrics.json").write_text(json.dumps(result.metrics(timing=True), indent=2))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
