"""Masking work cells: a fixed plan of cells that any process computes and any merge joins.

The occlusion passes of :func:`~bids_app.masking.occlusion.occlusion_effects` are split
into *cells*: one unit kind (EEG timestamps or voxels), one model (VAE-1 or VAE-2), one
phase (``screen``: the whole-prediction, latent and stimulus heads of every unit;
``outputs``: VAE-1's per-output test of the tested units) and one block of
``block_units`` consecutive units of that phase's unit list. The plan depends on the
data, the models and the settings only, never on how many processes share the work.

Invariants:

* every cell draws its random numbers (permutation null, bootstrap) from its own
  generator, seeded by ``--random-seed`` and the cell (:meth:`Cell.rng`), and its
  statistics depend on its own units only, so a cell gives the same bytes in any
  process, alone or after other cells;
* the statistics of a phase are the cells' statistics joined in plan order
  (:func:`join_cells`), in one process or after a merge of shard parts, so outputs are
  byte-identical whatever the number of shards;
* shard ``K`` of ``N`` owns the cells whose :meth:`Cell.index` is ``K - 1`` modulo ``N``.

A part (the cells one shard computed) is stored by :mod:`bids_app.io.masking_parts` with
the :func:`fingerprint` of the run (settings, model weights, masked windows); only parts
with a matching fingerprint are merged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PHASES = ("screen", "outputs")
KINDS = ("eeg", "fmri")
MODELS = ("vae1", "vae2")
PART_FORMAT = 1
_SPEC = re.compile(r"(\d+)/(\d+)")

#: ``(units, n_windows, stats)`` of a pass over some units: unit ids, the windows each
#: was masked in, and per head a dict of statistic arrays (``(U, G)``; ``null``:
#: ``(n_null, U, G)``), as returned by :func:`~bids_app.masking.passes.run_pass`.
CellStats = tuple[np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]]


@dataclass(frozen=True)
class Cell:
    """One work cell: a block of units of one unit kind, model and phase."""

    kind: str
    model: str
    phase: str
    block: int

    @property
    def id(self) -> str:
        """Name of the cell in shard parts, e.g. ``eeg-vae1-screen-00003``."""
        return f"{self.kind}-{self.model}-{self.phase}-{self.block:05d}"

    @property
    def group(self) -> int:
        """Position of the cell's (kind, model, phase) in the plan (0-7)."""
        return (KINDS.index(self.kind) * len(MODELS) + MODELS.index(self.model)
                ) * len(PHASES) + PHASES.index(self.phase)

    def index(self) -> int:
        """Index used to deal cells to shards (groups start on different shards)."""
        return self.group + self.block

    def rng(self, seed: int) -> np.random.Generator:
        """The cell's own random generator, from the run's seed and the cell."""
        return np.random.default_rng(np.random.SeedSequence(
            [int(seed) & (2**63 - 1), self.group, self.block]))


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``k`` (1-based) of ``n``."""

    k: int
    n: int

    def owns(self, cell: Cell) -> bool:
        """Whether this shard computes ``cell``."""
        return cell.index() % self.n == self.k - 1

    @property
    def name(self) -> str:
        """File stem of the shard's part, e.g. ``shard-2-of-4``."""
        return f"shard-{self.k}-of-{self.n}"

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"


def parse_shard(text: str) -> ShardSpec:
    """Parse ``"K/N"`` (``1 <= K <= N``).

    Raises
    ------
    ValueError
        One sentence naming the value and the expected form.
    """
    match = _SPEC.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"masking shard {text!r} must be K/N with whole numbers, e.g. 1/4.")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"masking shard {text!r} must be K/N with 1 <= K <= N, e.g. 1/4.")
    return ShardSpec(k, n)


def join_cells(parts: list[CellStats], heads: tuple[str, ...]) -> CellStats:
    """Statistics of consecutive cells joined in plan order (at least one cell)."""
    units = np.concatenate([p[0] for p in parts])
    n_windows = np.concatenate([p[1] for p in parts])
    stats = {h: {k: np.concatenate([p[2][h][k] for p in parts], axis=1 if k == "null" else 0)
                 for k in parts[0][2][h]} for h in heads}
    return units, n_windows, stats


class _OccurrenceTable:
    """Occurrences of the blocks of one phase, equal to ``ctx.occurrences_of(block)``.

    EEG timestamps are sliced from one table of the phase's units, built at the first
    block (each call sorts every timestamp occurrence of the data again); voxels occur
    in every window, so each block's table is built directly (a table of every voxel
    would hold voxels x windows rows).
    """

    def __init__(self, ctx: Any, kind: str, units: np.ndarray) -> None:
        self.ctx, self.units, self.sliced = ctx, units, kind == "eeg"
        self.full: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def block(self, first: int, count: int) -> Callable[[np.ndarray], Any]:
        """``occurrences_of`` for the units ``units[first:first + count]``."""
        if not self.sliced:
            return self.ctx.occurrences_of
        if self.full is None:
            self.full = self.ctx.occurrences_of(self.units)
            if not np.array_equal(self.full[0], self.units):  # not every unit occurs
                self.sliced = False
                return self.ctx.occurrences_of
        units, starts, occ = self.full
        s0, s1 = int(starts[first]), int(starts[first + count])
        table = (units[first : first + count], starts[first : first + count + 1] - s0,
                 occ[s0:s1])

        def occurrences_of(ids: np.ndarray):
            return table if np.array_equal(ids, table[0]) else self.ctx.occurrences_of(ids)

        return occurrences_of


class CellRunner:
    """Runs the cells of the masking passes: computes, reuses stored cells, records.

    Parameters
    ----------
    seed : int
        The run's random seed.
    block_units : int
        Units per cell.
    shard : ShardSpec | None
        Compute only this shard's cells (plus, where a later phase needs them, the
        missing cells of others); None: every cell.
    stored : dict of str to CellStats | None
        Cells already computed (merged shard parts), by cell id; each is removed from
        the dict when used, so its arrays are freed once joined.
    """

    def __init__(self, seed: int, block_units: int, shard: ShardSpec | None = None,
                 stored: dict[str, CellStats] | None = None) -> None:
        if block_units < 1:
            raise ValueError(f"block_units must be positive, got {block_units}.")
        self.seed, self.block_units, self.shard = seed, block_units, shard
        self.stored = stored if stored is not None else {}  # emptied as cells are used
        self.computed: dict[str, CellStats] = {}  # this shard's own cells
        self.reused = 0

    def run(self, pass_fn: Callable[..., Any], ctx: Any, heads: tuple[str, ...],
            units: np.ndarray, *, kind: str, model: str, phase: str, need_all: bool = True
            ) -> tuple[np.ndarray, np.ndarray, dict] | None:
        """Run one phase cell by cell; ``(units, starts, stats)`` like ``run_pass``.

        Parameters
        ----------
        pass_fn : callable
            ``pass_fn(ctx, heads, units) -> (units, starts, stats)``.
        ctx : PassContext
            The pass context; each cell runs with its own ``rng``.
        heads : tuple of str
            Heads of the phase.
        units : numpy.ndarray
            Sorted ids of every unit of the phase.
        kind, model, phase : str
            Which cells.
        need_all : bool
            In a shard, also compute the other shards' cells that no stored part holds
            (a later phase needs the whole phase); otherwise leave them out.

        Returns
        -------
        tuple | None
            Joined ``(units, starts, stats)``; None when a shard left cells out.
        """
        parts: list[CellStats] = []
        complete = True
        table = _OccurrenceTable(ctx, kind, units)
        for block, first in enumerate(range(0, len(units), self.block_units)):
            cell = Cell(kind, model, phase, block)
            block_ids = units[first : first + self.block_units]
            mine = self.shard is None or self.shard.owns(cell)
            saved = self.stored.pop(cell.id, None)  # used once: freed with the join
            if saved is not None and np.array_equal(saved[0], block_ids):
                self.reused += 1
                if mine and self.shard is not None:
                    self.computed[cell.id] = saved
                parts.append(saved)
                continue
            if saved is not None:
                logger.warning("masking: stored cell %s holds other units; recomputed.",
                               cell.id)
            if not (mine or need_all):
                complete = False
                continue
            cell_ctx = dataclasses.replace(ctx, rng=cell.rng(self.seed),
                                           occurrences_of=table.block(first, len(block_ids)))
            out_units, starts, stats = pass_fn(cell_ctx, heads, block_ids)
            result = (out_units, np.diff(starts), stats)
            if mine and self.shard is not None:
                self.computed[cell.id] = result
            parts.append(result)
        if not complete:
            return None
        if not parts:  # no unit: the pass's own empty result
            return pass_fn(ctx, heads, units[:0])
        out_units, n_windows, stats = join_cells(parts, heads)
        return out_units, np.append(0, np.cumsum(n_windows)).astype(np.int64), stats


# ------------------------------------------------------------------ what a part must match
def fingerprint(config_key: dict, models: dict[str, Any], index: np.ndarray) -> dict:
    """What a part must match to be merged: settings, model weights, masked windows.

    Parameters
    ----------
    config_key : dict
        The settings that change results (:func:`~bids_app.workflows.checkpoint.config_key`).
    models : dict of str to torch.nn.Module | None
        The trained models by name.
    index : numpy.ndarray
        The masked windows.
    """
    def model_sum(model: Any) -> str | None:
        if model is None:
            return None
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    config_text = json.dumps(config_key, sort_keys=True, default=str).encode()
    return {"format": PART_FORMAT, "config": hashlib.sha256(config_text).hexdigest(),
            "models": {name: model_sum(m) for name, m in sorted(models.items())},
            "windows": hashlib.sha256(np.asarray(index, np.int64).tobytes()).hexdigest()}
