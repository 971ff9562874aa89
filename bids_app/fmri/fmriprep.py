"""fMRIPrep as an external backend: command line, execution, and ingestion of its outputs.

eegfmri either runs fMRIPrep (``--fmri-backend fmriprep``, when the ``fmriprep`` executable
is on PATH) or reads an existing fMRIPrep derivatives folder (``--fmri-backend derivatives
--fmriprep-dir DIR``). Either way it reads, per run, ``*_space-MNI152NLin2009cAsym[_res-N]
_desc-preproc_bold.nii.gz``, ``*_space-MNI152NLin2009cAsym[_res-N]_desc-brain_mask.nii.gz``
and ``*_desc-confounds_timeseries.tsv``, checks them against the raw run (repetition time,
number of volumes) and raises one :class:`~bids_app.errors.InputError` naming the file when
they disagree or are missing.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from bids_app.errors import InputError, StageError
from bids_app.fmri.template import TEMPLATE_NAME

logger = logging.getLogger(__name__)

RUN_ENTITIES: tuple[str, ...] = ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo")


def find_fmriprep(executable: str = "fmriprep") -> str | None:
    """Path of the fMRIPrep executable on PATH (None when absent)."""
    return shutil.which(executable)


def resolve_backend(backend: str, *, fmriprep_dir: Path | None, fs_license_file: Path | None,
                    ) -> str:  # fmt: skip
    """Choose the fMRI backend.

    ``auto``: ``derivatives`` when an fMRIPrep folder is given, ``fmriprep`` when the
    executable is on PATH and a FreeSurfer license file is set, else ``builtin``.

    Parameters
    ----------
    backend : str
        "auto", "builtin", "fmriprep" or "derivatives".
    fmriprep_dir : Path | None
        ``--fmriprep-dir``.
    fs_license_file : Path | None
        FreeSurfer license (fMRIPrep needs one even with ``--fs-no-reconall``).

    Returns
    -------
    str
        "builtin", "fmriprep" or "derivatives".
    """
    allowed = ("auto", "builtin", "fmriprep", "derivatives")
    if backend not in allowed:
        raise InputError(f"--fmri-backend {backend!r} is not one of {', '.join(allowed)}.")
    if backend == "derivatives" and fmriprep_dir is None:
        raise InputError("--fmri-backend derivatives needs --fmriprep-dir (an fMRIPrep output).")
    if backend == "fmriprep" and find_fmriprep() is None:
        raise InputError("--fmri-backend fmriprep: no 'fmriprep' executable found on PATH.")
    if backend != "auto":
        return backend
    if fmriprep_dir is not None:
        return "derivatives"
    if find_fmriprep() is not None and fs_license_file is not None:
        return "fmriprep"
    return "builtin"


def fmriprep_command(
    bids_dir: Path,
    output_dir: Path,
    participant_label: str,
    *,
    work_dir: Path,
    resolution_mm: float = 3.0,
    nprocs: int = 1,
    omp_nthreads: int = 1,
    mem_mb: int = 8000,
    fs_license_file: Path | None = None,
    fs_no_reconall: bool = True,
    skip_bids_validation: bool = True,
    executable: str = "fmriprep",
) -> list[str]:
    """The fMRIPrep command line for one participant.

    Parameters
    ----------
    bids_dir, output_dir : Path
        Raw BIDS dataset and fMRIPrep's output folder.
    participant_label : str
        Subject label (with or without ``sub-``).
    work_dir : Path
        fMRIPrep working directory (``-w``).
    resolution_mm : float
        eegfmri's output resolution; fMRIPrep is asked for the TemplateFlow resolution
        index that is at least as fine (``res-1`` = 1 mm, ``res-2`` = 2 mm: the only two
        TemplateFlow ships for MNI152NLin2009cAsym) and ingestion resamples to
        ``resolution_mm``.
    nprocs, omp_nthreads, mem_mb : int
        Resources.
    fs_license_file : Path | None
        ``--fs-license-file``.
    fs_no_reconall : bool
        Add ``--fs-no-reconall``.
    skip_bids_validation : bool
        Add ``--skip-bids-validation`` (eegfmri validates the input itself).
    executable : str
        Program name or path.

    Returns
    -------
    list of str
    """
    label = participant_label.removeprefix("sub-")
    cmd = [
        executable, str(bids_dir), str(output_dir), "participant",
        "--participant-label", label,
        "--output-spaces", f"{TEMPLATE_NAME}:res-{templateflow_resolution(resolution_mm)}",
        "-w", str(work_dir),
        "--nprocs", str(int(nprocs)),
        "--omp-nthreads", str(int(omp_nthreads)),
        "--mem-mb", str(int(mem_mb)),
    ]  # fmt: skip
    if fs_license_file is not None:
        cmd += ["--fs-license-file", str(fs_license_file)]
    if fs_no_reconall:
        cmd.append("--fs-no-reconall")
    if skip_bids_validation:
        cmd.append("--skip-bids-validation")
    return cmd


def templateflow_resolution(resolution_mm: float) -> int:
    """TemplateFlow resolution index of MNI152NLin2009cAsym for an output resolution."""
    return 1 if resolution_mm < 2.0 else 2


def run_fmriprep(cmd: list[str], *, log_file: Path) -> None:
    """Run fMRIPrep, streaming its output to ``log_file``; StageError when it fails."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Running: %s", " ".join(cmd))
    with log_file.open("w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
        except OSError as err:
            raise StageError(f"Could not start fMRIPrep ({cmd[0]}): {err}.") from None
    if proc.returncode != 0:
        raise StageError(f"fMRIPrep exited with code {proc.returncode}; see {log_file}.")


@dataclass
class FMRIPrepRun:
    """fMRIPrep outputs of one run, validated against the raw run."""

    bold: nib.Nifti1Image
    mask: nib.Nifti1Image
    confounds: pd.DataFrame
    bold_path: Path
    mask_path: Path
    confounds_path: Path
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def slice_time_ref_s(self) -> float | None:
        """``StartTime`` of the preprocessed BOLD (fMRIPrep's slice-timing reference)."""
        value = self.sidecar.get("StartTime")
        return None if value is None else float(value)


def _entities(name: str) -> dict[str, str]:
    parts = name.split("_")[:-1]
    return dict(p.split("-", 1) for p in parts if "-" in p)


def _match(path: Path, want: Mapping[str, str]) -> bool:
    ents = _entities(path.name)
    return all(ents.get(k) == v for k, v in want.items() if k in RUN_ENTITIES and v)


def _find(root: Path, want: Mapping[str, str], pattern: str, what: str,
          prefer_res: str | None = None) -> Path:  # fmt: skip
    sub = want["sub"]
    candidates = sorted(root.glob(f"sub-{sub}/**/func/sub-{sub}_*{pattern}"))
    candidates += sorted(root.glob(f"fmriprep/sub-{sub}/**/func/sub-{sub}_*{pattern}"))
    hits = [p for p in candidates if _match(p, want)]
    if not hits:
        label = "_".join(f"{k}-{v}" for k, v in want.items() if v)
        raise InputError(
            f"fMRIPrep folder {root} has no {what} for {label} (expected a file matching "
            f"'*{pattern}' under sub-{sub}/); run fMRIPrep on this run or fix --fmriprep-dir."
        )
    # several resolutions (res-1, res-2): take the preferred one, then the first by name
    hits.sort(key=lambda p: _entities(p.name).get("res") != prefer_res)
    return hits[0]


def load_fmriprep_run(
    fmriprep_dir: Path,
    entities: Mapping[str, str],
    *,
    tr: float,
    n_volumes: int,
    space: str = TEMPLATE_NAME,
    resolution_mm: float | None = None,
) -> FMRIPrepRun:
    """Find, load and validate the fMRIPrep outputs of one raw run.

    Parameters
    ----------
    fmriprep_dir : Path
        fMRIPrep output folder (``sub-XX/`` inside it, or inside ``fmriprep/``).
    entities : mapping
        Raw run entities (sub, ses, task, run ...).
    tr : float
        Raw repetition time (s).
    n_volumes : int
        Number of raw volumes.
    space : str
        Output space to read.
    resolution_mm : float | None
        eegfmri's output resolution: when fMRIPrep wrote several, the TemplateFlow
        resolution :func:`templateflow_resolution` would request is preferred.

    Returns
    -------
    FMRIPrepRun

    Raises
    ------
    InputError
        A file is missing, or TR / volume count / row count disagree with the raw run.
    """
    root = Path(fmriprep_dir)
    if not root.is_dir():
        raise InputError(f"fMRIPrep folder {root} does not exist.")
    want = {k: str(v) for k, v in entities.items() if k in RUN_ENTITIES and v is not None}
    prefer = None if resolution_mm is None else str(templateflow_resolution(resolution_mm))
    bold_path = _find(root, want, f"space-{space}*_desc-preproc_bold.nii.gz",
                      "preprocessed BOLD", prefer)  # fmt: skip
    res = _entities(bold_path.name).get("res")
    mask_path = _find(root, want, f"space-{space}*_desc-brain_mask.nii.gz", "brain mask", res)
    conf_path = _find(root, want, "desc-confounds_timeseries.tsv", "confounds table")
    if res is not None and _entities(mask_path.name).get("res") not in (res, None):
        mask_path = _find(root, want, f"space-{space}_res-{res}_desc-brain_mask.nii.gz",
                          f"brain mask at res-{res}")  # fmt: skip
    bold = nib.load(bold_path)
    if bold.ndim != 4:
        raise InputError(f"fMRIPrep BOLD {bold_path} is not a 4D image.")
    sidecar_path = bold_path.with_name(bold_path.name.split(".")[0] + ".json")
    sidecar: dict[str, Any] = {}
    if sidecar_path.exists():
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"fMRIPrep sidecar {sidecar_path} is not valid JSON.") from None
    their_tr = float(sidecar.get("RepetitionTime", bold.header.get_zooms()[3]))
    if abs(their_tr - tr) > 1e-3:
        raise InputError(
            f"fMRIPrep BOLD {bold_path} has a repetition time of {their_tr:g} s but the raw "
            f"run has {tr:g} s; it belongs to another run or was resampled in time."
        )
    if bold.shape[3] != n_volumes:
        raise InputError(
            f"fMRIPrep BOLD {bold_path} has {bold.shape[3]} volumes but the raw run has "
            f"{n_volumes}; it belongs to another run or was truncated."
        )
    mask = nib.load(mask_path)
    if mask.shape[:3] != bold.shape[:3] or not np.allclose(mask.affine, bold.affine, atol=1e-3):
        raise InputError(f"fMRIPrep mask {mask_path} is not on the grid of {bold_path.name}.")
    confounds = pd.read_csv(conf_path, sep="\t", na_values=["n/a"])
    if len(confounds) != n_volumes:
        raise InputError(
            f"fMRIPrep confounds {conf_path} have {len(confounds)} rows but the raw run has "
            f"{n_volumes} volumes."
        )
    return FMRIPrepRun(bold=bold, mask=mask, confounds=confounds, bold_path=bold_path,
                       mask_path=mask_path, confounds_path=conf_path, sidecar=sidecar)  # fmt: skip
