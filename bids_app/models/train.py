"""Training of the VAEs: one code path for a single process and ``torch.distributed``.

Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) :func:`fit` joins the process
group (gloo on CPU, NCCL on GPU), wraps the model in ``DistributedDataParallel``, shards
every epoch with a ``DistributedSampler`` (the per-rank batch is ``batch_size //
world_size`` so the global batch is the same as in one process), and averages the
validation loss over all ranks. A single process runs the very same loop with one
replica.

Every epoch is seeded from ``(seed, epoch, rank)`` (shuffling through the sampler's own
generator, dropout and reparameterisation noise through ``torch.manual_seed``), so a run
resumed from its last checkpoint continues exactly as if it had not stopped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from bids_app.models.evaluate import evaluate_vae1, evaluate_vae2, fit_pca_baseline
from bids_app.models.feed import WindowFeed, choose_feed, device_memory
from bids_app.models.inference import load_model, model_bytes, predict, state_cpu
from bids_app.models.vae import MultimodalVAE, StimulusVAE, build_model

logger = logging.getLogger(__name__)

Model = MultimodalVAE | StimulusVAE
#: Per-epoch fields that depend on the machine and its load, not on the data and seed.
TIMING_KEYS = frozenset({"seconds", "windows_per_s", "gpu_peak_allocated_gb",
                         "gpu_peak_reserved_gb", "gpu_utilisation_percent"})


@dataclass
class TrainResult:
    """Outcome of :func:`fit`.

    Attributes
    ----------
    model : MultimodalVAE | StimulusVAE
        The model with the weights of the best validation epoch, on CPU, in eval mode.
    history : list of dict
        One entry per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``seconds``,
        ``windows_per_s``.
    best_epoch : int
        Epoch (0-based) with the lowest validation loss; -1 when the initial weights
        were kept (``include_initial=True``).
    best_val_loss : float
        That loss.
    stopped_early : bool
        True when training stopped because of ``patience``.
    world_size : int
        Number of processes that trained.
    device : str
        Device used by this process.
    resumed_from : int | None
        Epoch of the checkpoint the run resumed from.
    """

    model: Model
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    world_size: int
    device: str
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metrics(self, *, timing: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary.

        Parameters
        ----------
        timing : bool
            Keep the wall-clock and device-memory fields of each epoch
            (:data:`TIMING_KEYS`). Off for the model sidecars, which must be identical
            between two runs with the same seed; :meth:`performance` summarises them.
        """
        history = self.history if timing else [
            {k: v for k, v in h.items() if k not in TIMING_KEYS} for h in self.history]
        return {
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "world_size": self.world_size,
            "device": self.device,
            "resumed_from": self.resumed_from,
            "history": history,
            **self.extra,
        }

    def performance(self) -> dict[str, float]:
        """Mean throughput and peak device memory over the epochs (varies run to run)."""
        if not self.history:
            return {}
        out = {"seconds": float(sum(h["seconds"] for h in self.history)),
               "windows_per_s": float(np.mean([h["windows_per_s"] for h in self.history]))}
        for key in ("gpu_peak_allocated_gb", "gpu_utilisation_percent"):
            values = [h[key] for h in self.history if key in h]
            if values:
                out[key] = float(max(values) if key.endswith("_gb") else np.mean(values))
        return out


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA GPU is available.")
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return torch.device(device)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; return (rank, world size)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # long timeout: rank 0 alone builds the group windows while the others wait
    dist.init_process_group(backend=backend, timeout=timedelta(hours=6))
    logger.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return dist.get_rank(), dist.get_world_size()


def make_model(kind: str, *, seed: int, **kwargs: Any) -> Model:
    """Build a VAE with weights initialised from ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model({"kind": kind, **kwargs})


class _LossModule(nn.Module):
    """Wraps a VAE so that DDP sees the loss computation as ``forward``."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch)[0]


class _Range:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


@contextmanager
def _deterministic(enabled: bool):
    previous = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _evaluate(
    model: Model,
    windows: WindowFeed,
    idx: np.ndarray,
    *,
    batch_size: int,
    rank: int,
    world: int,
    amp: bool,
) -> float:
    """Mean loss over ``idx`` (sharded over ranks, reduced to every rank)."""
    model.eval()
    shard = idx[rank::world]
    device = windows.device
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad(), _autocast(device, amp):
        for n, batch in windows.batches(shard, batch_size):
            loss, _ = model.loss(batch)
            total[0] += float(loss) * n
            total[1] += n
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return nullcontext()


def fit(
    model: Model,
    arrays: Mapping[str, np.ndarray],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    epochs: int = 60,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    patience: int = 8,
    seed: int = 0,
    device: str = "auto",
    checkpoint: Path | None = None,
    resume: bool = True,
    amp: bool = True,
    feed: str = "auto",
    gpu_batch_size: int | None = None,
    include_initial: bool = False,
    progress: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` with Adam, early stopping on the validation loss and checkpoints.

    Parameters
    ----------
    model : MultimodalVAE | StimulusVAE
        Model to train (modified in place, then loaded with the best weights).
    arrays : mapping of str to numpy.ndarray
        Inputs indexed by window along axis 0 (memory-mapped arrays are read batch by
        batch): ``"eeg"`` ``(N, C, T)`` and ``"fmri"`` ``(N, V)``; VAE-2 also needs
        ``"stimulus"`` ``(N, F)``.
    train_idx, val_idx : numpy.ndarray
        Window indices of the training and validation sets.
    epochs : int
        Maximum number of epochs.
    batch_size : int
        Global batch size (split over the ranks under torchrun).
    learning_rate, weight_decay : float
        AdamW parameters.
    patience : int
        Stop after this many epochs without a better validation loss.
    seed : int
        Seeds shuffling, dropout and reparameterisation noise.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    checkpoint : Path | None
        File written (atomically, by rank 0) after every epoch; with ``resume=True`` an
        existing file is loaded and training continues after its epoch. ``metrics.json``
        is written beside it.
    resume : bool
        Continue from ``checkpoint`` when it exists.
    amp : bool
        Mixed precision (bfloat16 autocast) on CUDA; ignored on CPU.
    feed : str
        How windows reach the device (:mod:`bids_app.models.feed`): ``"auto"`` reads
        them from the host arrays on CPU (as always) and, on CUDA, keeps them resident
        on the GPU in float16 when they fit, else prefetches them through pinned memory.
    gpu_batch_size : int | None
        Global batch size on CUDA (None: ``batch_size``); when larger than
        ``batch_size`` the learning rate is scaled by the square root of the ratio
        (Krizhevsky 2014; Hoffer et al. 2017). Ignored on CPU.
    include_initial : bool
        Evaluate the initial weights on the validation set and keep them as a candidate
        (``best_epoch`` -1), so that a model initialised from a good solution (e.g.
        :func:`~bids_app.models.initialise.init_from_pca`) can only leave it for one with
        a lower validation loss.
    progress : bool
        Show a progress bar (rank 0).
    callback : callable, optional
        Called as ``callback(epoch, record)`` after each epoch's checkpoint.

    Returns
    -------
    TrainResult
        Best model, history and metrics.
    """
    dev = resolve_device(device)
    rank, world = init_distributed(dev)
    keys = ["eeg", "fmri"] + (["stimulus"] if isinstance(model, StimulusVAE) else [])
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"fit() needs arrays {keys}; missing {missing}.")
    train_idx, val_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, np.int64)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError("fit() needs at least one training and one validation window.")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        if gpu_batch_size and gpu_batch_size > batch_size:
            learning_rate *= float(np.sqrt(gpu_batch_size / batch_size))
            batch_size = int(gpu_batch_size)
    windows = WindowFeed(arrays, keys, dev, choose_feed(arrays, keys, dev, feed))
    model.to(dev)
    wrapped: nn.Module = _LossModule(model)
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    sampler = DistributedSampler(
        _Range(len(train_idx)), num_replicas=world, rank=rank, shuffle=True, seed=seed
    )
    local_batch = max(1, batch_size // world)

    history: list[dict[str, float]] = []
    best_val, best_epoch, bad_epochs, start = float("inf"), -1, 0, 0
    best_state = state_cpu(model)
    resumed_from = initial_val = None
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, best_val, best_epoch = state["history"], state["best_val"], state["best_epoch"]
        bad_epochs, best_state = state["bad_epochs"], state["best_state"]
        start = resumed_from = state["epoch"] + 1
        initial_val = state.get("initial_val")
        logger.info("resuming from %s after epoch %d", checkpoint, state["epoch"])
    elif include_initial:
        initial_val = _evaluate(model, windows, val_idx, batch_size=batch_size, rank=rank,
                                world=world, amp=amp)
        best_val = initial_val
        logger.info("validation loss of the initial weights: %.4g", initial_val)

    from bids_app.utils import progress as progress_bar

    epochs_iter = progress_bar(range(start, epochs), desc=f"train {model.kind}", unit="epoch",
                               disable=not (progress and rank == 0))  # fmt: skip
    with _deterministic(dev.type == "cpu"):
        for epoch in epochs_iter:
            if bad_epochs >= patience:
                break
            t0 = time.perf_counter()
            torch.manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)
            sampler.set_epoch(epoch)
            order = train_idx[np.fromiter(iter(sampler), dtype=np.int64)]
            model.train()
            total, count = 0.0, 0
            for n, batch in windows.batches(order, local_batch):
                with _autocast(dev, amp):
                    loss = wrapped(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                optimizer.step()
                total += float(loss.detach()) * n
                count += n
            val = _evaluate(model, windows, val_idx, batch_size=batch_size, rank=rank,
                            world=world, amp=amp)
            seconds = time.perf_counter() - t0
            record = {
                "epoch": epoch,
                "train_loss": total / max(count, 1),
                "val_loss": val,
                "seconds": seconds,
                "windows_per_s": count * world / seconds,
                **device_memory(dev),
            }
            history.append(record)
            if val < best_val:
                best_val, best_epoch, bad_epochs = val, epoch, 0
                best_state = state_cpu(model)
            else:
                bad_epochs += 1
            if checkpoint is not None and rank == 0:
                _atomic_save(
                    {
                        "model": state_cpu(model),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "history": history,
                        "best_val": best_val,
                        "best_epoch": best_epoch,
                        "bad_epochs": bad_epochs,
                        "best_state": best_state,
                        "architecture": model.architecture(),
                        "seed": seed,
                        "initial_val": initial_val,
                    },
                    Path(checkpoint),
                )
                _atomic_json(history, Path(checkpoint).with_name("metrics.json"))
            if world > 1:
                dist.barrier()
            if hasattr(epochs_iter, "set_postfix"):
                epochs_iter.set_postfix(train=f"{record['train_loss']:.3g}", val=f"{val:.3g}")
            logger.debug("epoch %d: train %.4g val %.4g", epoch, record["train_loss"], val)
            if callback is not None:
                callback(epoch, record)
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        stopped_early=bad_epochs >= patience,
        world_size=world,
        device=str(dev),
        resumed_from=resumed_from,
        extra={"feed": windows.mode, "batch_size": batch_size, "learning_rate": learning_rate,
               **({} if initial_val is None else {"initial_val_loss": initial_val})},
    )


__all__ = [
    "TrainResult",
    "evaluate_vae1",
    "evaluate_vae2",
    "fit",
    "fit_pca_baseline",
    "init_distributed",
    "load_model",
    "make_model",
    "model_bytes",
    "predict",
    "resolve_device",
]
