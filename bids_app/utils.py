"""Shared helpers: logging to ``output_dir/logs/`` and the console, progress bars, timing.

Every module logs with ``logging.getLogger(__name__)``; :func:`setup_logging` attaches
one file handler (everything at DEBUG) and one console handler (INFO by default, DEBUG
with ``-v``, WARNING with ``-q``, ERROR with ``-qq``) to the ``bids_app`` logger.
:func:`progress` wraps tqdm on stderr and is silent when the console is quiet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
LOGGER_NAME = "bids_app"
_STATE: dict[str, Any] = {"quiet": False}
#: Third-party loggers whose INFO messages are hidden unless -v is given.
CHATTY_LIBRARIES: tuple[str, ...] = ("dipy",)
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def timestamp() -> str:
    """UTC time stamp for file names: ``20250101T120000Z`` (sortable, no colons)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")[:-7] + "Z"


def unique_stamp(folder: Path, stamp: str) -> str:
    """``stamp``, or ``stamp-2``, ``-3``... so that ``folder/config-<stamp>.toml`` is new.

    The config file is created empty (exclusively) to reserve the name across processes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(1, 10_000):
        candidate = stamp if index == 1 else f"{stamp}-{index}"
        try:
            fd = os.open(folder / f"config-{candidate}.toml", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise RuntimeError(f"No free log name for {stamp} in {folder}.")


def console_level(verbosity: int) -> int:
    """Console log level for ``-v`` (positive) / ``-q`` (negative) counts."""
    return {2: logging.DEBUG, 1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}.get(
        max(-2, min(2, verbosity)), logging.ERROR
    )


class TqdmHandler(logging.StreamHandler):
    """Console handler that prints through tqdm so messages do not break progress bars."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let logging break a run
            self.handleError(record)


@contextlib.contextmanager
def logging_to(log_file: Path | None, verbosity: int = 0) -> Iterator[logging.Logger]:
    """Send ``bids_app`` logs to ``log_file`` (DEBUG) and stderr for the block.

    Parameters
    ----------
    log_file : Path | None
        File to create (its folder is created); None for console only.
    verbosity : int
        Count of ``-v`` minus count of ``-q``.

    Yields
    ------
    logging.Logger
        The package logger.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handlers: list[logging.Handler] = []
    if not any(isinstance(h, TqdmHandler) for h in logger.handlers):  # nested: one console
        console = TqdmHandler()
        console.setLevel(console_level(verbosity))
        console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handlers.append(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(_FORMAT))
        handlers.append(file_handler)
    # Python warnings of libraries (nilearn, mne...) go to the log file, and to the console
    # only with -v, so the console shows eegfmri's own messages.
    warn_logger = logging.getLogger("py.warnings")
    warn_handlers = [h for h in handlers if not isinstance(h, TqdmHandler) or verbosity > 0]
    previous = (logger.level, logger.propagate, _STATE["quiet"], warn_logger.propagate)
    chatty = {name: logging.getLogger(name).level for name in CHATTY_LIBRARIES}
    if verbosity <= 0:  # libraries that print INFO progress on their own handlers
        for name in chatty:
            logging.getLogger(name).setLevel(logging.WARNING)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    warn_logger.propagate = False
    logging.captureWarnings(True)
    _STATE["quiet"] = verbosity < 0
    for handler in handlers:
        logger.addHandler(handler)
    for handler in warn_handlers:
        warn_logger.addHandler(handler)
    try:
        yield logger
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            warn_logger.removeHandler(handler)
            handler.close()
        logger.setLevel(previous[0])
        logger.propagate = previous[1]
        _STATE["quiet"] = previous[2]
        warn_logger.propagate = previous[3]
        for name, level in chatty.items():
            logging.getLogger(name).setLevel(level)
        if not warn_logger.handlers:
            logging.captureWarnings(False)


def add_log_file(log_file: Path) -> logging.Handler:
    """Attach an extra DEBUG file handler to the package logger (caller removes it)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logging.getLogger(LOGGER_NAME).addHandler(handler)
    return handler


def remove_handler(handler: logging.Handler) -> None:
    """Detach and close a handler added by :func:`add_log_file`."""
    logging.getLogger(LOGGER_NAME).removeHandler(handler)
    handler.close()


def progress(
    iterable: Iterable[T], *, desc: str = "", total: int | None = None, unit: str = "it",
    disable: bool | None = None, leave: bool = False,
) -> Iterable[T]:
    """A tqdm progress bar on stderr, off with ``-q`` or when stderr is not a terminal.

    Parameters
    ----------
    iterable : iterable
        Items to iterate over.
    desc : str
        Label shown before the bar.
    total : int | None
        Length when ``iterable`` has none.
    unit : str
        Unit name (``subject``, ``run``, ``epoch``).
    disable : bool | None
        True turns the bar off; it is also off with ``-q`` and when stderr is not a
        terminal (batch logs, SLURM), whatever the caller asks.
    leave : bool
        Keep the finished bar on screen.
    """
    from tqdm.auto import tqdm

    disable = bool(disable) or _STATE["quiet"] or not _isatty(sys.stderr)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, leave=leave,
                file=sys.stderr, dynamic_ncols=True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


class Timer:
    """Context manager measuring wall time: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def limit_threads(n_threads: int) -> None:
    """Cap the BLAS, OpenMP and torch threads of this process (and its children).

    ``--omp-nthreads`` in the main process, and ``cpu_count // nprocs`` in each worker:
    otherwise each process starts one thread per core and processes x threads
    oversubscribe the machine. Environment variables cover libraries initialised later
    (torch, numexpr) and child processes.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n_threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    else:
        threadpool_limits(n_threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n_threads)
