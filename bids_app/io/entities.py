"""One parser of BIDS file names: entities, suffix, extension and label rules.

BIDS labels are ASCII letters and digits (the schema's ``[0-9a-zA-Z]+``); free text
elsewhere (sidecar values, the folder that holds the dataset) may be any unicode, so only
entity labels are checked here. :func:`unreadable_reason` says why an entry with a data
file's name cannot be read (a directory, a broken DataLad/git-annex symbolic link).
"""

from __future__ import annotations

import re
from pathlib import Path

#: EEG data formats in order of preference (NATVIEW: .set holds the data, .vhdr does not).
EEG_EXTENSIONS: tuple[str, ...] = (".set", ".vhdr", ".edf", ".bdf", ".fif")
_ENTITY_LIKE = re.compile(r"([a-zA-Z]+)-(.*)")
#: A BIDS label: ASCII letters and digits (the BIDS schema's ``[0-9a-zA-Z]+``).
LABEL = re.compile(r"[0-9a-zA-Z]+")
#: Extensions of the files a run reads; an entry with one of them must be a regular file.
DATA_EXTENSIONS: tuple[str, ...] = (*EEG_EXTENSIONS, ".eeg", ".vmrk", ".fdt", ".json",
                                    ".tsv", ".nii", ".nii.gz")
_ENTITY = re.compile(r"([a-zA-Z]+)-([0-9a-zA-Z]+)")


def parse_entities(name: str) -> tuple[dict[str, str], str, str]:
    """Split a BIDS filename into (entities, suffix, extension)."""
    stem, _, ext = name.partition(".")
    parts = stem.split("_")
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        match = _ENTITY.fullmatch(part)
        if match:
            entities[match.group(1)] = match.group(2)
    return entities, parts[-1], "." + ext if ext else ""


def label_problem(name: str) -> str | None:
    """Why a BIDS file or folder name has an invalid entity label (None when it is fine).

    Parameters
    ----------
    name : str
        File or folder name, e.g. ``sub-01_task-rest_bold.nii.gz`` or ``sub-ü01``.

    Returns
    -------
    str | None
        A phrase such as ``"the label 'ü01' of entity 'sub' uses characters BIDS does
        not allow (only letters a-z, A-Z and digits)"``.
    """
    stem = name.partition(".")[0]
    parts = stem.split("_")
    for part in parts[:-1] if len(parts) > 1 else parts:
        match = _ENTITY_LIKE.fullmatch(part)
        if match and not LABEL.fullmatch(match.group(2)):
            return (f"the label '{match.group(2)}' of entity '{match.group(1)}' uses "
                    "characters BIDS does not allow (only letters a-z, A-Z and digits)")
    return None


def unreadable_reason(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (None when it is a readable regular file)."""
    if path.is_symlink() and not path.exists():
        return (f"is a broken symbolic link (its target {path.readlink()} does not exist); "
                "if this is a DataLad dataset, run 'datalad get' on it first")
    if path.is_dir():
        return "is a directory, not a file; replace it with the file or remove it"
    if not path.is_file():
        return "is not a regular file; replace it with the file or remove it"
    return None
