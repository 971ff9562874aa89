"""Atomic file writes: a reader never sees a half-written output file.

Every writer creates a temporary file in the destination folder (same file system), flushes
and ``fsync``s it, then renames it over the destination with :func:`os.replace`, which is
atomic on POSIX and Windows. If anything fails before the rename, the temporary file is
removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TMP_PREFIX = ".eegfmri-tmp-"


def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (``mkstemp`` uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk where the platform allows it (cheap, best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` only if the block succeeds.

    Parameters
    ----------
    path : Path | str
        Final destination.
    fsync : bool
        Flush the file to disk before the rename.

    Yields
    ------
    Path
        A temporary file name in the destination folder with the same extension (so
        writers that infer the format from the name keep working).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"The writer did not create {tmp}.")
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        # outputs must be readable like any other file (group members on shared storage)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: Path | str, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def write_text(path: Path | str, text: str, *, fsync: bool = True) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


@contextlib.contextmanager
def atomic_dir_files(destination_dir: Path | str) -> Iterator[Path]:
    """Yield a temporary folder whose files are moved into ``destination_dir`` on success.

    For writers that produce several linked files at once (BrainVision ``.vhdr``/``.vmrk``/
    ``.eeg``): they are written in a hidden temporary folder beside the destination and
    moved one by one with :func:`os.replace` only after the writer returned. On failure
    the temporary folder is removed and nothing appears in ``destination_dir``.
    """
    destination_dir = Path(destination_dir)
    destination_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=destination_dir))
    try:
        yield tmp_dir
        files = sorted(p for p in tmp_dir.iterdir() if p.is_file())
        # Move the data files first and the header last, so a header never points at
        # data that is not there yet.
        files.sort(key=lambda p: p.suffix in (".vhdr", ".json"))
        for item in files:
            with open(item, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(item, destination_dir / item.name)
        _fsync_dir(destination_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def leftover_temporaries(root: Path | str) -> list[Path]:
    """Temporary files or folders left under ``root`` (should be empty after any run)."""
    return sorted(Path(root).rglob(f"{TMP_PREFIX}*"))
