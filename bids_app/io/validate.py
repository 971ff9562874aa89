"""Validation at the edge: the official BIDS validator and cheap per-file integrity checks.

:func:`run_validator` calls ``bids-validator-deno`` (the official validator, shipped on
PyPI) with JSON output and condenses its issues into plain sentences;
:func:`validate_bids_dir` turns validator errors into an :class:`InputError` at the
participant level, :func:`validate_derivatives` checks eegfmri's own outputs.
:func:`check_run` opens every file of a run cheaply (headers, sizes, markers, sidecars,
events) so that a broken input is reported in one sentence before processing starts.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.errors import InputError

logger = logging.getLogger(__name__)

VALIDATOR = "bids-validator-deno"
#: Tasks recorded with EEG only (no BOLD, no R128 markers) in NATVIEW.
EEG_ONLY_TASKS: frozenset[str] = frozenset({"checkeroff", "checkerout"})


@dataclass
class ValidationResult:
    """Issues reported by the BIDS validator for one dataset."""

    dataset: Path
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    messages: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the validator reported no error."""
        return not self.errors

    def summary(self, severity: str = "error", limit: int = 5) -> list[str]:
        """One sentence per issue code: code, how many files, first locations."""
        issues = self.errors if severity == "error" else self.warnings
        by_code: dict[str, list[str]] = {}
        for issue in issues:
            by_code.setdefault(issue.get("code", "UNKNOWN"), []).append(
                str(issue.get("location", "")) + (f" ({issue['subCode']})"
                                                  if issue.get("subCode") else "")
            )
        lines = []
        for code, where in by_code.items():
            first = self.messages.get(code, "").strip().split("\n")[0].rstrip(".")
            shown = ", ".join(where[:limit]) + (f" and {len(where) - limit} more"
                                                if len(where) > limit else "")
            lines.append(f"{code}{': ' + first if first else ''} — {shown}.")
        return lines


def find_validator() -> Path:
    """Path of the ``bids-validator-deno`` executable (beside Python, else on PATH)."""
    beside = Path(sys.executable).parent / VALIDATOR
    if beside.exists():
        return beside
    found = shutil.which(VALIDATOR)
    if found is None:
        raise InputError(
            f"The BIDS validator ({VALIDATOR}) is not installed; install it with "
            f"'pip install bids-validator-deno' or use --skip-bids-validation."
        )
    return Path(found)


def run_validator(dataset: Path | str, *, timeout: float = 600.0) -> ValidationResult:
    """Run the official validator on ``dataset`` and parse its JSON report.

    Parameters
    ----------
    dataset : Path | str
        Dataset root.
    timeout : float
        Seconds before giving up.

    Returns
    -------
    ValidationResult
        Errors and warnings with the validator's code messages.
    """
    dataset = Path(dataset).absolute()
    cmd = [str(find_validator()), "--format", "json", str(dataset)]
    env = dict(os.environ, NO_COLOR="1", DENO_NO_UPDATE_CHECK="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise InputError(f"The BIDS validator did not finish on {dataset} within "
                         f"{timeout:.0f} s; use --skip-bids-validation.") from None
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(f"The BIDS validator failed on {dataset} ({tail[0]}); "
                         "use --skip-bids-validation to go on.") from None
    issues = report.get("issues", {})
    result = ValidationResult(dataset=dataset, messages=issues.get("codeMessages", {}))
    for issue in issues.get("issues", []):
        if issue.get("severity") == "error":
            result.errors.append(issue)
        elif issue.get("severity") == "warning":
            result.warnings.append(issue)
    return result


def validate_bids_dir(bids_dir: Path | str) -> ValidationResult:
    """Validate the input dataset; raise InputError (one sentence) when it has errors."""
    result = run_validator(bids_dir)
    if result.warnings:
        logger.info("BIDS validator: %d warning(s) on %s (details in the log file).",
                    len(result.warnings), result.dataset)
    for line in result.summary("warning"):
        logger.debug("BIDS validator warning: %s", line)
    if not result.ok:
        for line in result.summary("error"):
            logger.error("BIDS validator error: %s", line)
        first = result.summary("error", limit=2)[0]
        raise InputError(
            f"BIDS dataset {result.dataset} has {len(result.errors)} validator error(s), "
            f"first {first[:-1]}; fix them (see the log) or use --skip-bids-validation."
        )
    return result


def validate_derivatives(output_dir: Path | str) -> ValidationResult:
    """Run the validator on an eegfmri output (derivatives) dataset."""
    return run_validator(output_dir)


# ------------------------------------------------------------------------------ per file
def _gzip_isize(path: Path) -> int | None:
    """Uncompressed size modulo 2**32 from a gzip trailer (None when unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int.from_bytes(fh.read(4), "little")
    except OSError:
        return None


def check_nifti(path: Path, *, ndim: int | None = None, label: str = "image") -> Any:
    """Open a NIfTI header and verify the file holds all its data (cheap, no full read).

    Returns the nibabel image (proxy) or raises InputError naming the file.
    """
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many types for broken headers
        raise InputError(f"{label} {path} cannot be read as NIfTI ({err}).") from None
    if ndim is not None and img.ndim != ndim:
        raise InputError(f"{label} {path} has {img.ndim} dimensions {img.shape}; "
                         f"expected a {ndim}D image.")
    header = img.header
    offset = int(getattr(img.dataobj, "offset", header["vox_offset"]))
    expected = offset + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
    if path.name.endswith(".gz"):
        isize = _gzip_isize(path)
        if isize != expected % 2**32:  # trailer disagrees: confirm by decompressing
            try:
                with gzip.open(path, "rb") as fh:
                    size = 0
                    while chunk := fh.read(1 << 22):
                        size += len(chunk)
            except (OSError, EOFError):
                size = -1
            if size < expected:
                raise InputError(f"{label} {path} is truncated or corrupt (incomplete "
                                 "gzip data); download or convert it again.")
    elif path.stat().st_size < expected:
        raise InputError(f"{label} {path} is truncated ({path.stat().st_size} bytes, "
                         f"header needs {expected}); download or convert it again.")
    return img


def check_events(path: Path) -> None:
    """An events TSV must have numeric, non-decreasing ``onset`` and ``duration``."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
    except Exception as err:
        raise InputError(f"Events file {path} cannot be read as TSV ({err}).") from None
    for column in ("onset", "duration"):
        if column not in table.columns:
            raise InputError(f"Events file {path} has no '{column}' column.")
    onset = pd.to_numeric(table["onset"], errors="coerce").to_numpy()
    if np.isnan(onset).any():
        raise InputError(f"Events file {path} has non-numeric onsets.")
    if np.any(np.diff(onset) < 0):
        line = int(np.argmax(np.diff(onset) < 0)) + 3  # header is line 1
        raise InputError(f"Events file {path} has onsets that go backwards (line {line}); "
                         "sort the events by onset.")


def check_brainvision_header(vhdr: Path) -> None:
    """The data and marker files a ``.vhdr`` names must exist beside it."""
    try:
        text = vhdr.read_text(errors="replace")
    except OSError as err:
        raise InputError(f"EEG header {vhdr} cannot be read ({err}).") from None
    for key in ("DataFile", "MarkerFile"):
        for line in text.splitlines():
            if line.strip().startswith(key + "="):
                target = vhdr.parent / line.split("=", 1)[1].strip()
                if not target.is_file():
                    raise InputError(f"EEG header {vhdr} points to {key} {target.name}, "
                                     "which does not exist.")


def read_eeg(path: Path) -> Any:
    """Open an EEG recording with MNE without loading more than needed."""
    import mne

    readers = {".set": mne.io.read_raw_eeglab, ".vhdr": mne.io.read_raw_brainvision,
               ".edf": mne.io.read_raw_edf, ".bdf": mne.io.read_raw_bdf,
               ".fif": mne.io.read_raw_fif}
    if path.suffix == ".vhdr":
        check_brainvision_header(path)
    try:
        return readers[path.suffix](path, preload=False, verbose="error")
    except Exception as err:  # MNE/scipy/h5py raise many types for corrupt files
        raise InputError(f"EEG file {path} cannot be read ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'corrupt'}).") from None


def _check_nan(raw: Any, path: Path, n_chunks: int = 20, chunk_s: float = 1.0) -> None:
    """Look for NaN/inf in ``n_chunks`` evenly spread one-second pieces (whole if short)."""
    n = raw.n_times
    size = max(1, int(chunk_s * raw.info["sfreq"]))
    if n <= n_chunks * size:
        starts = [0]
        size = n
    else:
        starts = np.linspace(0, n - size, n_chunks).astype(int).tolist()
    for start in starts:
        data = raw.get_data(start=start, stop=start + size)
        if not np.isfinite(data).all():
            raise InputError(f"EEG file {path} contains NaN or infinite samples "
                             f"(near {start / raw.info['sfreq']:.1f} s).")


def volume_marker_tolerance(n_volumes: int) -> int:
    """Largest difference between volume markers and BOLD volumes accepted for one run.

    Parameters
    ----------
    n_volumes : int
        Volumes of the BOLD image.

    Returns
    -------
    int
        ``max(2, ceil(5 % of n_volumes))`` markers (a recording may start a volume late or
        stop a few volumes early; more means another run or a broken marker channel).
    """
    return max(2, math.ceil(0.05 * n_volumes))


def check_run(run: Any, config: Any) -> list[str]:
    """Check every file of one run cheaply; return problem sentences (empty when fine).

    Parameters
    ----------
    run : RunFiles
        The run's files.
    config : Config
        Resolved configuration (volume marker, fMRI backend).
    """
    problems: list[str] = []
    n_volumes = tr = None
    marker = config.eeg.volume_marker
    task = run.entities.get("task", "")
    backend = config.fmri.backend
    check_bold = backend == "builtin" or (backend == "auto" and config.fmri.fmriprep_dir is None)
    try:
        if run.eeg is None and run.bold is None:
            raise InputError(f"Run {run.run_id} has neither EEG nor BOLD data.")
        if run.bold is not None:
            img = check_nifti(run.bold, ndim=4, label="BOLD")
            n_volumes = img.shape[3]
            if check_bold:
                if run.bold_json is None:
                    raise InputError(f"BOLD {run.bold} has no JSON sidecar with "
                                     "RepetitionTime and SliceTiming.")
                meta = run.metadata("bold")
                tr = meta.get("RepetitionTime")
                if not isinstance(tr, int | float) or not tr > 0:
                    raise InputError(f"BOLD sidecar {run.bold_json} has no valid "
                                     "RepetitionTime; add it (seconds).")
                timing = meta.get("SliceTiming")
                axis = {"i": 0, "j": 1, "k": 2}.get(
                    str(meta.get("SliceEncodingDirection", "k")).rstrip("-"), 2)
                if not isinstance(timing, list) or len(timing) != img.shape[axis]:
                    raise InputError(
                        f"BOLD sidecar {run.bold_json} needs SliceTiming with one entry per "
                        f"slice ({img.shape[axis]}); add it from the scanner protocol."
                    )
                if run.t1w is None:
                    raise InputError(
                        f"BOLD {run.bold} has no T1w image (anat/*_T1w.nii.gz) in its "
                        "subject or session; the built-in fMRI path needs one to register "
                        "to MNI space."
                    )
                if max(timing) >= tr or min(timing) < 0:
                    raise InputError(f"BOLD sidecar {run.bold_json} has SliceTiming values "
                                     f"outside [0, RepetitionTime={tr}).")
        for events in {run.bold_events, run.eeg_events} - {None}:
            check_events(events)
        if run.t1w is not None:
            check_nifti(run.t1w, ndim=3, label="T1w")
        if run.eeg is None:
            raise InputError(f"BOLD {run.bold} has no matching EEG recording "
                             f"(expected {run.run_id}_eeg.* in the eeg folder).")
        raw = read_eeg(run.eeg)
        if run.eeg.suffix == ".set" and raw.n_times == 0:
            raise InputError(f"EEG file {run.eeg} holds no samples.")
        _check_nan(raw, run.eeg)
        onsets = [a["onset"] for a in raw.annotations
                  if str(a["description"]).strip().split("/")[-1].strip() == marker]
        if run.bold is None:
            if onsets and task not in EEG_ONLY_TASKS:
                raise InputError(
                    f"EEG file {run.eeg} has {len(onsets)} {marker} volume markers but no "
                    f"matching BOLD run (expected func/{run.run_id}_bold.nii.gz)."
                )
            return problems  # recorded outside the scanner: EEG only
        if not onsets:
            raise InputError(f"EEG file {run.eeg} has no {marker} volume markers, so it "
                             f"cannot be aligned with BOLD {run.bold.name}.")
        if abs(len(onsets) - n_volumes) > volume_marker_tolerance(n_volumes):
            raise InputError(
                f"EEG file {run.eeg} has {len(onsets)} {marker} markers but BOLD "
                f"{run.bold.name} has {n_volumes} volumes; check that they are the same run."
            )
        duration = raw.n_times / raw.info["sfreq"]
        needed = n_volumes * float(tr or 0.0)
        if check_bold and duration + 0.5 * float(tr or 0.0) < needed:
            raise InputError(
                f"EEG file {run.eeg} lasts {duration:.1f} s, shorter than BOLD "
                f"{run.bold.name} ({n_volumes} volumes x TR {tr} s = {needed:.1f} s)."
            )
    except InputError as err:
        problems.append(str(err))
    return problems


def check_stimulus_video(path: Path) -> None:
    """A stimulus video must decode at least one frame (PyAV)."""
    import av

    try:
        with av.open(str(path)) as container:
            next(container.decode(video=0))
    except Exception as err:  # PyAV raises its own error types
        raise InputError(f"Stimulus video {path} cannot be decoded ({type(err).__name__}); "
                         "replace it with a working copy.") from None
