"""Shard parts of the masking on disk: one ``.npz`` of cell statistics and its manifest.

A part holds the work cells one shard computed (:mod:`bids_app.masking.shards`):
``shard-K-of-N.npz`` with, per cell id, ``<id>|units``, ``<id>|n_windows`` and
``<id>|<head>|<statistic>`` arrays, and ``shard-K-of-N.json``, written last, with the
run's fingerprint (settings, model weights, masked windows), the cell ids, the heads of
each cell and the SHA-256 of the ``.npz``. Both are written atomically, so a killed job
leaves no part, and a part is read only when its manifest matches the run and its data
their checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.io.atomic import atomic_path

logger = logging.getLogger(__name__)

#: ``(units, n_windows, stats)`` of one cell (see :data:`bids_app.masking.shards.CellStats`).
CellStats = tuple[np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_part(folder: Path, shard: Any, cells: dict[str, CellStats], key: dict) -> Path:
    """Write a shard's cells atomically: ``folder/shard-K-of-N.npz`` then its ``.json``.

    Parameters
    ----------
    folder : Path
        Where parts go (``WORK_DIR/masking_shards``).
    shard : ShardSpec
        The shard (``name`` gives the file stem, ``str`` the ``K/N`` label).
    cells : dict of str to CellStats
        The shard's cells by id.
    key : dict
        The run's fingerprint (:func:`bids_app.masking.shards.fingerprint`).

    The manifest is written last, so a part without one (a killed job) is ignored.

    Returns
    -------
    Path
        The manifest.
    """
    arrays: dict[str, np.ndarray] = {}
    heads: dict[str, list[str]] = {}
    for cid, (units, n_windows, stats) in cells.items():
        arrays[f"{cid}|units"], arrays[f"{cid}|n_windows"] = units, n_windows
        heads[cid] = sorted(stats)
        for head, values in stats.items():
            for name, array in values.items():
                arrays[f"{cid}|{head}|{name}"] = np.asarray(array)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{shard.name}.npz"
    with atomic_path(data) as tmp:
        np.savez(tmp, **arrays)
    manifest = {**key, "shard": str(shard), "cells": sorted(cells), "heads": heads,
                "npz": data.name, "sha256": _sha256(data)}
    path = folder / f"{shard.name}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    logger.info("masking shard %s: %d cell(s) written to %s", shard, len(cells), data)
    return path


def read_parts(folder: Path, key: dict) -> dict[str, CellStats]:
    """Cells of every complete part in ``folder`` whose manifest matches ``key``.

    A part made with other settings, models or windows, or whose data do not match its
    checksum, is skipped with a warning (its cells are then computed again).

    Parameters
    ----------
    folder : Path
        Where parts are.
    key : dict
        The run's fingerprint.

    Returns
    -------
    dict of str to CellStats
        Stored cells by id.
    """
    cells: dict[str, CellStats] = {}
    if not folder.is_dir():
        return cells
    for path in sorted(folder.glob("shard-*-of-*.json")):
        try:
            manifest = json.loads(path.read_text())
            data = folder / manifest["npz"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("masking: shard part %s cannot be read (%s); its cells are "
                           "computed again.", path, type(err).__name__)
            continue
        differs = [k for k in key if manifest.get(k) != key[k]]
        if differs:
            logger.warning("masking: shard part %s was made with other %s; its cells are "
                           "computed again.", path, " and ".join(differs))
            continue
        if not data.is_file() or _sha256(data) != manifest.get("sha256"):
            logger.warning("masking: shard part %s does not match its checksum; its cells "
                           "are computed again.", data)
            continue
        wanted = [c for c in manifest["cells"] if c not in cells]
        stats: dict[str, dict[str, dict[str, np.ndarray]]] = {
            c: {head: {} for head in manifest["heads"][c]} for c in wanted}
        with np.load(data, allow_pickle=False) as npz:
            for name in npz.files:
                parts = name.split("|")
                if parts[0] in stats and len(parts) == 3:
                    stats[parts[0]][parts[1]][parts[2]] = npz[name]
            for cid in wanted:
                cells[cid] = (npz[f"{cid}|units"], npz[f"{cid}|n_windows"], stats[cid])
        logger.info("masking: reusing %d cell(s) of shard part %s", len(manifest["cells"]),
                    path.name)
    return cells
