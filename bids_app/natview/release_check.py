"""Find release files that are placeholders rather than data, before converting anything.

Mirrors of the release kept as DataLad/git-annex datasets (NEMAR, OpenNeuro-style) hold
each large file as an annex pointer until it is fetched: a symbolic link into
``.git/annex/objects`` whose target is absent, or (unlocked) a small text file starting
with ``/annex/objects/``. An interrupted download can also leave empty data files. The
converter would otherwise fail on the first such file with a reader error that does not
say why; :func:`check_release_files` names the file and says how to get its content.
"""

from __future__ import annotations

import os
from pathlib import Path

from bids_app.errors import InputError

#: Extensions of files that hold recorded data (an empty one is a placeholder).
DATA_SUFFIXES: tuple[str, ...] = (".set", ".fdt", ".eeg", ".nii", ".nii.gz", ".tsv.gz")
_POINTER_PREFIXES = (b"/annex/objects/", b".git/annex/objects/")
_POINTER_MAX_BYTES = 1024


def is_annex_pointer(path: Path) -> bool:
    """Whether ``path`` is a git-annex pointer (broken annex link or unlocked pointer file).

    Parameters
    ----------
    path : Path
        A file of the release.

    Returns
    -------
    bool
        True when the file's content has not been fetched.
    """
    if path.is_symlink():
        target = os.readlink(path)
        return "annex/objects" in target and not path.exists()
    try:
        if path.stat().st_size > _POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            head = handle.read(_POINTER_MAX_BYTES)
    except OSError:
        return False
    return head.lstrip().startswith(_POINTER_PREFIXES)


def check_release_files(raw_dir: Path, files: list[Path]) -> None:
    """Raise when a release file is an annex pointer or an empty data placeholder.

    Parameters
    ----------
    raw_dir : Path
        Release root (named in the message).
    files : list of Path
        Files of the release to check.

    Raises
    ------
    InputError
        Naming the first such file, how many there are, and how to fetch the content.
    """
    pointers = [p for p in files if is_annex_pointer(p)]
    if pointers:
        more = f" (and {len(pointers) - 1} more)" if len(pointers) > 1 else ""
        raise InputError(
            f"Release file {pointers[0]}{more} is a git-annex pointer, not the data; fetch "
            f"the content with 'datalad get -r {raw_dir}' (or 'git annex get .' inside "
            "it), then convert again."
        )
    empty = [p for p in files if p.name.endswith(DATA_SUFFIXES) and p.stat().st_size == 0]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise InputError(
            f"Release file {empty[0]}{more} is empty (0 bytes), a placeholder rather than "
            "the data; download it again (eegfmri download natview, or 'datalad get' / "
            "'git annex get' on a DataLad copy), then convert again."
        )
