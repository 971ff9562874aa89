"""Download the NKI NATVIEW EEG-fMRI release (or a subset) from its public S3 bucket.

The bucket ``fcp-indi`` is listable without credentials through the S3 ListObjectsV2 API.
:func:`download_natview` lists the unpacked tree (``raw_data/``), keeps the files of the
requested subjects, sessions and tasks, skips files already complete (size, and MD5 when
the ETag is a plain MD5), resumes partial files with HTTP ``Range`` requests
(``<file>.part``, renamed once verified), retries with exponential backoff and downloads
in parallel. Per-subject tarballs (``raw_data_gz/sub-XX.tar.gz``) and the stimulus videos
(``video.tar.gz``) are extracted safely: members that would escape the target, links and
devices are refused.
"""

from __future__ import annotations

import logging
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bids_app.errors import InputError
from bids_app.natview import facts as nv
from bids_app.natview.s3 import (  # noqa: F401  (public names of this module)
    RemoteFile,
    fetch,
    is_complete,
    list_objects,
)

logger = logging.getLogger(__name__)


#: Release trees: unpacked folders and per-subject tarballs.
KINDS: dict[str, str] = {
    "raw": "raw_data/",
    "preproc": "preproc_data/",
    "raw_gz": "raw_data_gz/",
    "preproc_gz": "preproc_data_gz/",
}


@dataclass
class DownloadReport:
    """Outcome of :func:`download_natview`.

    Attributes
    ----------
    target : Path
        Destination folder.
    selected : int
        Files selected for download after filtering.
    downloaded, skipped, resumed : list of str
        Relative paths fetched, already complete, and resumed from a partial file.
    failed : list of (str, str)
        Relative path and one-sentence reason.
    bytes_downloaded : int
        Bytes transferred.
    """

    target: Path
    selected: int = 0
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes_downloaded: int = 0

    @property
    def ok(self) -> bool:
        """True when every selected file is complete."""
        return not self.failed

    def summary(self) -> str:
        """One line for the command line."""
        return (
            f"{self.selected} file(s) selected: {len(self.downloaded)} downloaded "
            f"({len(self.resumed)} resumed, {self.bytes_downloaded / 1e6:.1f} MB), "
            f"{len(self.skipped)} already complete, {len(self.failed)} failed, in {self.target}."
        )


def _label(value: str, entity: str) -> str:
    value = str(value)
    return value if value.startswith(f"{entity}-") else f"{entity}-{value}"


def select_files(
    files: list[RemoteFile],
    root: str,
    *,
    subjects=(),
    sessions=(),
    tasks=(),
) -> list[tuple[RemoteFile, str]]:
    """Keep the files of the requested subjects, sessions and tasks.

    Parameters
    ----------
    files : list of RemoteFile
        Listing of the tree.
    root : str
        Key prefix of the tree; the returned relative paths start after it.
    subjects, sessions, tasks : sequence of str
        Labels with or without ``sub-``/``ses-``; empty means all. Top-level files are always
        kept; files without a task entity (T1w, electrodes) are kept for selected sessions.

    Returns
    -------
    list of (RemoteFile, str)
        Files and their paths relative to ``root``.
    """
    subs = {_label(s, "sub") for s in subjects}
    sess = {_label(s, "ses") for s in sessions}
    task_set = {str(t).removeprefix("task-") for t in tasks}
    chosen = []
    for remote in files:
        if not remote.key.startswith(root):
            continue
        rel = remote.key[len(root) :]
        parts = PurePosixPath(rel).parts
        if not parts or ".." in parts:
            continue
        if parts[0].startswith("sub-"):
            if subs and parts[0] not in subs:
                continue
            if sess and len(parts) > 2 and parts[1].startswith("ses-") and parts[1] not in sess:
                continue
            match = re.search(r"_task-([a-zA-Z0-9]+)", parts[-1])
            if task_set and match and match.group(1) not in task_set:
                continue
        chosen.append((remote, rel))
    return chosen


def download_natview(
    target: str | Path,
    *,
    subjects=(),
    sessions=(),
    tasks=(),
    with_stimuli: bool = False,
    base_url: str = nv.S3_BUCKET_URL,
    prefix: str = nv.S3_PREFIX,
    jobs: int = 4,
    kind: str = "raw",
    stimuli_url: str = nv.STIMULI_URL,
    retries: int = 4,
    backoff_s: float = 1.0,
    progress: bool | None = None,
) -> DownloadReport:
    """Download (a subset of) the NATVIEW release into ``target``.

    Parameters
    ----------
    target : str | Path
        Destination; the tree below the release prefix is reproduced here.
    subjects, sessions, tasks : sequence of str
        Selection (empty: everything). With tarball kinds, sessions and tasks select the
        members that are extracted.
    with_stimuli : bool
        Also fetch and extract ``video.tar.gz`` into ``target/stimuli``.
    base_url : str
        Bucket endpoint (overridable for mirrors and tests).
    prefix : str
        Release prefix in the bucket.
    jobs : int
        Parallel transfers.
    kind : {"raw", "preproc", "raw_gz", "preproc_gz"}
        Unpacked tree or per-subject tarballs.
    stimuli_url : str
        Location of the stimulus videos archive.
    retries : int
        Retries per file (exponential backoff from ``backoff_s``).
    backoff_s : float
        First backoff delay in seconds.
    progress : bool | None
        Show a tqdm progress bar (None: only on a terminal).

    Returns
    -------
    DownloadReport
        What was downloaded, skipped, resumed and what failed.

    Raises
    ------
    InputError
        When ``kind`` is unknown, the bucket cannot be reached, or nothing matches.
    """
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise InputError(f"Unknown release kind {kind!r}; choose one of {', '.join(KINDS)}.")
    target = Path(target)
    root = prefix + KINDS[kind]
    listing = list_objects(base_url, root)
    tarballs = kind.endswith("_gz")
    if tarballs:
        wanted = {f"{_label(s, 'sub')}.tar.gz" for s in subjects}
        chosen = [
            (f, f.key[len(root):]) for f in listing
            if not wanted or f.key[len(root):] in wanted | {"base_folder.tar.gz"}
        ]  # fmt: skip
    else:
        chosen = select_files(listing, root, subjects=subjects, sessions=sessions, tasks=tasks)
    if not chosen:
        raise InputError(
            f"No file of {base_url}/{root} matches subjects={list(subjects)}, "
            f"sessions={list(sessions)}, tasks={list(tasks)}."
        )
    report = DownloadReport(target=target, selected=len(chosen))
    work = target / ".download" if tarballs else target
    todo = []
    for remote, rel in chosen:
        if is_complete(work / rel, remote):
            report.skipped.append(rel)
        else:
            todo.append((remote, rel))
    total = sum(r.size for r, _ in todo)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="NATVIEW", disable=progress is False
               if progress is not None else None)  # fmt: skip

    def one(remote: RemoteFile, rel: str) -> tuple[str, bool]:
        url = f"{base_url.rstrip('/')}/{urllib.parse.quote(remote.key)}"
        resumed = fetch(url, work / rel, size=remote.size, md5=remote.md5, retries=retries,
                        backoff_s=backoff_s, progress=bar.update)  # fmt: skip
        return rel, resumed

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(one, r, rel): (r, rel) for r, rel in todo}
        for future in as_completed(futures):
            remote, rel = futures[future]
            try:
                _, resumed = future.result()
            except OSError as err:
                report.failed.append((rel, str(err)))
                logger.error("%s", err)
                continue
            report.downloaded.append(rel)
            report.bytes_downloaded += remote.size
            if resumed:
                report.resumed.append(rel)
    bar.close()
    if tarballs:
        for _, rel in chosen:
            if (work / rel).is_file():
                safe_extract(work / rel, target, subjects=subjects, sessions=sessions,
                             tasks=tasks)  # fmt: skip
    if with_stimuli:
        archive = target / ".download" / "video.tar.gz"
        if not archive.is_file():
            try:
                fetch(stimuli_url, archive, retries=retries, backoff_s=backoff_s)
            except OSError as err:
                report.failed.append(("stimuli/video.tar.gz", str(err)))
        if archive.is_file():
            safe_extract(archive, target / "stimuli")
    for name in ("downloaded", "skipped", "resumed"):
        getattr(report, name).sort()
    logger.info(report.summary())
    return report


# --- safe extraction -----------------------------------------------------------------------
def safe_extract(archive: str | Path, dest: str | Path, *, subjects=(), sessions=(),
                 tasks=()) -> list[str]:  # fmt: skip
    """Extract a tar archive, refusing members that escape ``dest``, links and devices.

    Parameters
    ----------
    archive : str | Path
        ``.tar``/``.tar.gz`` file.
    dest : str | Path
        Destination folder.
    subjects, sessions, tasks : sequence of str
        Optional selection of the members to extract (as :func:`select_files`).

    Returns
    -------
    list of str
        Names of the extracted files.

    Raises
    ------
    InputError
        When a member is an absolute path, contains ``..``, resolves outside ``dest``, or is
        a symbolic/hard link, device or FIFO (nothing is extracted then).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"Archive {archive} cannot be opened ({err}).") from None
    with tar:
        members = tar.getmembers()
        for m in members:
            name = PurePosixPath(m.name)
            if name.is_absolute() or ".." in name.parts:
                raise InputError(f"Archive {archive} has a member escaping the target: {m.name}.")
            if not (base / m.name).resolve().is_relative_to(base):
                raise InputError(f"Archive {archive} has a member escaping the target: {m.name}.")
            if not (m.isfile() or m.isdir()):
                raise InputError(
                    f"Archive {archive} has a link or special file, refused: {m.name}."
                )
        files = [m for m in members if m.isfile()]
        if subjects or sessions or tasks:
            fake = [RemoteFile(_strip_top(m.name), m.size) for m in files]
            keep = {rel for _, rel in select_files(fake, "", subjects=subjects,
                                                   sessions=sessions, tasks=tasks)}  # fmt: skip
            files = [m for m in files if _strip_top(m.name) in keep]
        for m in files:
            tar.extract(m, dest, filter="data")
    return [m.name for m in files]


def _strip_top(name: str) -> str:
    """Member name from its ``sub-XX`` folder on (tarballs may wrap it in a top folder)."""
    parts = PurePosixPath(name).parts
    for i, part in enumerate(parts):
        if part.startswith("sub-"):
            return str(PurePosixPath(*parts[i:]))
    return name
