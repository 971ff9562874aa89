"""Resumable stages: a finished stage's result is checkpointed in the work directory.

When a stage returns, :meth:`Checkpoints.run` pickles its result with a key and the
size and modification time of every output file the stage wrote (the files under the
stage's output root that are new or changed since the stage started). Rerunning the same
command after SIGINT, SIGTERM or SIGKILL loads that result instead of recomputing the
stage when

1. the key matches: eegfmri's version, the stage, its label (run or ``group``), the
   settings that change results (every section but the run's own bookkeeping, see
   :data:`NOT_IN_KEY`), the size and modification time of every input file, and the
   keys of the stages it consumes; and
2. every recorded output still exists with its recorded size and modification time.

Otherwise the stage runs again and its checkpoint is replaced. A checkpoint is written
atomically after the stage's own outputs, so a stage killed half-way has none (its
temporary file is removed by the next run); a result that cannot be pickled is not
checkpointed (the stage simply runs again). The pickles hold the in-memory results, so
a resumed run continues with exactly the objects a continuous run would have had, which
keeps its outputs byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_app import __version__
from bids_app.io.atomic import atomic_path, leftover_temporaries

logger = logging.getLogger(__name__)

#: Execution settings that organise a run but do not change any stage's result.
NOT_IN_KEY: frozenset[str] = frozenset({
    "analysis_level", "participant_label", "session_label", "task_label",
    "bids_filter_file", "skip_bids_validation", "work_dir", "nprocs", "omp_nthreads",
    "mem_gb", "reports_only", "verbosity", "masking_shard", "models_only",
})
#: Folders of the output that hold no stage outputs (logs, locks).
SKIPPED_FOLDERS: frozenset[str] = frozenset({"logs", ".eegfmri-locks"})

Snapshot = dict[str, tuple[int, int]]


def file_state(paths: Iterable[Path | None]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of each existing file; the fingerprint of stage inputs."""
    states = []
    for path in sorted({Path(p) for p in paths if p is not None}):
        try:
            stat = path.stat()
        except OSError:
            continue
        states.append((str(path), stat.st_size, stat.st_mtime_ns))
    return states


def config_key(config: Any) -> dict[str, Any]:
    """The settings that change results: every section, minus :data:`NOT_IN_KEY`."""
    plain = config.to_dict()
    plain["execution"] = {k: v for k, v in plain["execution"].items() if k not in NOT_IN_KEY}
    return plain


def stage_key(stage: str, func: Callable[..., Any], label: str, config: Any,
              inputs: Iterable[Path | None], upstream: Iterable[str] = ()) -> str:
    """SHA-256 over everything that determines a stage's result (see the module notes)."""
    code = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}"
    payload = {"version": __version__, "stage": stage, "code": code, "label": label,
               "config": config_key(config), "inputs": file_state(inputs),
               "upstream": list(upstream)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()


def snapshot(root: Path, exclude: Iterable[Path] = ()) -> Snapshot:
    """Size and mtime of every file under ``root`` (relative paths), minus ``exclude``."""
    root = Path(root)
    excluded = {Path(p).absolute() for p in exclude}
    state: Snapshot = {}
    if not root.is_dir():
        return state
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_FOLDERS
                         and (here / d).absolute() not in excluded)
        for name in files:
            path = here / name
            try:
                stat = path.stat()
            except OSError:
                continue
            state[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return state


def ignore_work_dir(writer: Any, config: Any) -> None:
    """List a work directory inside the output (the default) in its ``.bidsignore``."""
    output_dir = Path(config.execution.output_dir).absolute()
    work_dir = Path(config.execution.work_dir or output_dir / "work").absolute()
    if work_dir.is_relative_to(output_dir) and work_dir != output_dir:
        rel = work_dir.relative_to(output_dir).as_posix()
        writer.add_bidsignore([f"{rel}/", rel])  # the validator needs the bare folder too


@dataclass
class Checkpoints:
    """Checkpoints of the stages of one level, kept in ``folder`` of the work directory.

    Parameters
    ----------
    folder : Path
        Where the pickles go, e.g. ``WORK_DIR/checkpoints/sub-01``.
    output_root : Path
        Folder whose new or changed files are a stage's outputs (a subject's output
        folder, or the whole output folder for the group level).
    exclude : tuple of Path
        Folders under ``output_root`` that are never outputs (the work directory).
    clean : bool
        Remove temporary files left by a killed run (False for a reader, e.g. a masking
        shard, that may run beside the process writing the checkpoints).
    """

    folder: Path
    output_root: Path
    exclude: tuple[Path, ...] = ()
    clean: bool = True

    def __post_init__(self) -> None:
        for tmp in leftover_temporaries(self.folder) if self.clean else ():  # killed run
            tmp.unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        """Checkpoint file of stage ``name`` (e.g. ``sub-01_task-rest-eeg``)."""
        return self.folder / f"{name}.pkl"

    def load(self, name: str, key: str) -> tuple[bool, Any]:
        """``(True, result)`` when a valid checkpoint of ``name`` with ``key`` exists."""
        path = self.path(name)
        if not path.is_file():
            return False, None
        try:
            with open(path, "rb") as stream:
                saved = pickle.load(stream)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint is recomputed
            logger.info("Checkpoint %s cannot be read (%s); the stage runs again.", path,
                        type(err).__name__)
            return False, None
        if saved.get("key") != key:
            return False, None
        now = snapshot(self.output_root, self.exclude)
        changed = [rel for rel, state in saved["outputs"].items() if now.get(rel) != state]
        if changed:
            logger.info("Outputs of %s changed since its checkpoint (%s); it runs again.",
                        name, changed[0])
            return False, None
        return True, saved["result"]

    def run(self, name: str, key: str, func: Callable[..., Any], *args: Any) -> Any:
        """Return the checkpointed result of ``name``, or run ``func(*args)`` and save it.

        A result of None (a stage that did nothing) is not checkpointed.
        """
        found, result = self.load(name, key)
        if found:
            logger.info("Resumed %s from its checkpoint (%s).", name, self.path(name))
            return result
        before = snapshot(self.output_root, self.exclude)
        result = func(*args)
        if result is None:
            return result
        after = snapshot(self.output_root, self.exclude)
        outputs = {rel: state for rel, state in after.items() if before.get(rel) != state}
        try:
            data = pickle.dumps({"key": key, "outputs": outputs, "result": result},
                                protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - an unpicklable result is not resumable
            logger.debug("Result of %s cannot be checkpointed (%s: %s).", name,
                         type(err).__name__, err)
            return result
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(name)) as tmp:
            tmp.write_bytes(data)
        return result
