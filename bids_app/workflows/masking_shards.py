"""Group masking over several processes or GPUs: shards, torchrun ranks and the merge.

Three ways to run the group level's masking (see docs/hpc.md):

* one process (``eegfmri … group``): every work cell here; complete shard parts found in
  ``WORK_DIR/masking_shards/`` with a matching manifest are merged instead of computed
  (:func:`run_masking_stage`, the group level's ``masking`` stage);
* SLURM arrays: ``group --models-only`` trains the models (a checkpoint in the work
  directory), then ``group --masking-shard K/N`` jobs compute their cells into
  ``WORK_DIR/masking_shards/shard-K-of-N.{npz,json}`` (:func:`run_shard_level`, no
  output written), then a plain ``group`` run merges them and writes the outputs;
* torchrun: with ``WORLD_SIZE`` > 1 each rank is shard ``RANK+1`` of ``WORLD_SIZE``;
  rank 0 trains the models and, after every rank wrote its part, merges and writes the
  outputs. :mod:`torch.distributed` (gloo on CPU, nccl on CUDA) is used only for the
  barriers between these steps.

Outputs are byte-identical however the cells were dealt (:mod:`bids_app.masking.shards`).
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any

from bids_app.errors import InputError
from bids_app.io.masking_parts import read_parts, write_part
from bids_app.masking.shards import CellRunner, ShardSpec, fingerprint, parse_shard
from bids_app.workflows.masking import MaskingResult, _select_windows, run_masking_workflow

logger = logging.getLogger(__name__)

SHARD_FOLDER = "masking_shards"
#: How long a rank waits at a barrier (rank 0 may train the models for hours first).
BARRIER_TIMEOUT = datetime.timedelta(days=7)


def shard_folder(config: Any) -> Path:
    """``WORK_DIR/masking_shards``: where shard parts are written and found."""
    output_dir = Path(config.execution.output_dir)
    return Path(config.execution.work_dir or output_dir / "work").absolute() / SHARD_FOLDER


def part_key(models: Any, config: Any) -> dict:
    """Fingerprint a part must carry to be merged into this run (settings, models, windows)."""
    from bids_app.workflows.checkpoint import config_key

    return fingerprint(config_key(config), {"vae1": models.vae1, "vae2": models.vae2},
                       _select_windows(models, config))


def run_masking_stage(models: Any, config: Any, writer: Any) -> MaskingResult | None:
    """The group ``masking`` stage: merge stored shard parts, compute the rest, write.

    Parameters
    ----------
    models : ModelsResult
        Windows and trained models.
    config : Config
        Resolved configuration.
    writer : DerivativesWriter
        Writer of the outputs.

    Returns
    -------
    MaskingResult | None
        As :func:`~bids_app.workflows.masking.run_masking_workflow`.
    """
    cells = CellRunner(config.execution.random_seed, config.masking.cell_units,
                       stored=read_parts(shard_folder(config), part_key(models, config)))
    result = run_masking_workflow(models, config, writer, cells)
    if cells.reused:
        logger.info("masking: merged %d stored cell(s) of shard parts; computed the others "
                    "here.", cells.reused)
    return result


def run_masking_shard(models: Any, config: Any, shard: ShardSpec) -> Path:
    """Compute one shard's cells and write its part; no output is written.

    Returns
    -------
    Path
        The part's manifest.
    """
    from bids_app.workflows.masking import masking_effects

    folder = shard_folder(config)
    key = part_key(models, config)
    cells = CellRunner(config.execution.random_seed, config.masking.cell_units, shard=shard,
                       stored=read_parts(folder, key))
    masking_effects(models, config, cells)
    return write_part(folder, shard, cells.computed, key)


class RankGroup:
    """This process's place under torchrun; barriers through :mod:`torch.distributed`.

    The barriers run in their own gloo group with a long timeout (a rank may wait hours
    for the models or for the slowest shard), beside the default group that training
    joins (gloo on CPU, nccl on CUDA; created here with gloo when training did not run).

    Parameters
    ----------
    rank, world_size : int
        ``RANK`` and ``WORLD_SIZE`` set by torchrun.
    device : str
        ``execution.device``; with CUDA, each rank masks on GPU ``LOCAL_RANK``.
    """

    def __init__(self, rank: int, world_size: int, device: str) -> None:
        import torch

        self.rank, self.world_size = rank, world_size
        self.shard = ShardSpec(rank + 1, world_size)
        if device in ("auto", "cuda") and torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        self._group: Any = None

    def barrier(self) -> None:
        """Wait for every rank (the barrier group is created at the first call)."""
        import torch.distributed as dist

        if self._group is None:
            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
            self._group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
        dist.barrier(group=self._group)

    def close(self) -> None:
        """Leave the process group."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self._group = None


def rank_group(config: Any) -> RankGroup | None:
    """The torchrun rank of this process (None outside torchrun or with one process).

    Raises
    ------
    InputError
        ``--masking-shard`` or ``--models-only`` given under torchrun.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    if world_size <= 1 or config.execution.analysis_level != "group":
        return None
    if config.execution.masking_shard or config.execution.models_only:
        raise InputError("Options --masking-shard and --models-only cannot be used under "
                         "torchrun, which gives each rank its shard (RANK+1 of WORLD_SIZE).")
    return RankGroup(rank, world_size, config.execution.device)


def shard_of(config: Any) -> ShardSpec | None:
    """The shard this process computes without writing outputs (None: it writes them).

    ``--masking-shard K/N``, or a torchrun rank other than 0.
    """
    if config.execution.masking_shard:
        try:
            return parse_shard(config.execution.masking_shard)
        except ValueError as err:  # set in a --config-file rather than on the command line
            raise InputError(f"Setting [execution] {err}") from None
    group = rank_group(config)
    return group.shard if group is not None and group.rank != 0 else None


def run_shard_level(config: Any, subjects: list[str], load_models: Any,
                    train: Any = None) -> Any:
    """A shard of the group level: wait for the models, compute the cells, write the part.

    Parameters
    ----------
    config : Config
        Resolved configuration (``--masking-shard`` or a torchrun rank other than 0).
    subjects : list of str
        Subjects of the group level.
    load_models : callable
        ``load_models() -> ModelsResult | None``: the models stage's checkpoint.
    train : callable | None
        Under torchrun: ``train()`` joins rank 0's distributed training of the models
        (when it has no checkpoint to resume from either).

    Returns
    -------
    LevelResult
        With ``masking`` run.

    Raises
    ------
    InputError
        No trained models in the work directory.
    """
    from bids_app.workflows.stages import LevelResult

    group = rank_group(config)
    shard = group.shard if group is not None else shard_of(config)
    try:
        if group is not None:
            if train is not None:
                train()
            group.barrier()  # rank 0 has written the models and their checkpoint
        models = load_models()
        if models is None and group is not None:
            raise InputError(f"Rank 0 left no trained models in {shard_folder(config).parent}"
                             "; see its log for why training failed.")
        if models is None:
            raise InputError(
                f"Work directory {shard_folder(config).parent} has no trained models for "
                "these settings; run 'eegfmri BIDS_DIR OUTPUT_DIR group --models-only' with "
                "the same options (and -w) before the masking shards.")
        path = run_masking_shard(models, config, shard)
        logger.info("Masking shard %s of %d subject(s) written to %s; a plain group run "
                    "merges the parts.", shard, len(subjects), path)
    finally:
        if group is not None:
            group.barrier()  # every part is written; rank 0 merges
            group.close()
    return LevelResult(stages_run={"masking"})
