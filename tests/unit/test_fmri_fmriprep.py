"""fMRIPrep backend: exact command line, backend choice, ingestion and its errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.errors import InputError, StageError
from bids_app.fmri import fmriprep as fp

ENTS = {"sub": "01", "ses": "01", "task": "rest", "run": "01"}
STEM = "sub-01_ses-01_task-rest_run-01"


def make_fmriprep_dir(root: Path, *, n_volumes: int = 12, tr: float = 2.1) -> Path:
    """A minimal fMRIPrep output (res-2 MNI BOLD, mask, confounds) for ENTS."""
    func = root / "sub-01" / "ses-01" / "func"
    func.mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20, -20, -20]
    rng = np.random.default_rng(0)
    bold = nib.Nifti1Image(rng.normal(100, 1, (20, 20, 20, n_volumes)).astype(np.float32), affine)
    bold.header["pixdim"][4] = tr
    prefix = f"{STEM}_space-MNI152NLin2009cAsym_res-2"
    nib.save(bold, func / f"{prefix}_desc-preproc_bold.nii.gz")
    (func / f"{prefix}_desc-preproc_bold.json").write_text(json.dumps(
        {"RepetitionTime": tr, "SkullStripped": False, "StartTime": 1.026,
         "SliceTimingCorrected": True}))  # fmt: skip
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    nib.save(nib.Nifti1Image(mask, affine), func / f"{prefix}_desc-brain_mask.nii.gz")
    fd = [np.nan] + [0.1] * (n_volumes - 1)
    conf = pd.DataFrame({"global_signal": rng.normal(size=n_volumes),
                         "framewise_displacement": fd})  # fmt: skip
    conf.to_csv(func / f"{STEM}_desc-confounds_timeseries.tsv", sep="\t", index=False,
                na_rep="n/a")  # fmt: skip
    meta = {"global_signal": {"Method": "Mean", "Description": "Mean of the brain mask."}}
    (func / f"{STEM}_desc-confounds_timeseries.json").write_text(json.dumps(meta))
    return root


def test_command_is_exact():
    cmd = fp.fmriprep_command(Path("/data/bids"), Path("/out/fmriprep"), "sub-01",
                              work_dir=Path("/scratch/work"), resolution_mm=3.0, nprocs=4,
                              omp_nthreads=2, mem_mb=16000,
                              fs_license_file=Path("/opt/license.txt"))  # fmt: skip
    assert cmd == [
        "fmriprep", "/data/bids", "/out/fmriprep", "participant",
        "--participant-label", "01",
        "--output-spaces", "MNI152NLin2009cAsym:res-2",
        "-w", "/scratch/work", "--nprocs", "4", "--omp-nthreads", "2", "--mem-mb", "16000",
        "--fs-license-file", "/opt/license.txt", "--fs-no-reconall", "--skip-bids-validation",
    ]  # fmt: skip
    short = fp.fmriprep_command(Path("b"), Path("o"), "02", work_dir=Path("w"),
                                fs_no_reconall=False, skip_bids_validation=False)  # fmt: skip
    assert "--fs-no-reconall" not in short and "--fs-license-file" not in short
    assert short[short.index("--output-spaces") + 1] == "MNI152NLin2009cAsym:res-2"
    fine = fp.fmriprep_command(Path("b"), Path("o"), "02", work_dir=Path("w"), resolution_mm=1)
    assert fine[fine.index("--output-spaces") + 1] == "MNI152NLin2009cAsym:res-1"


def test_backend_resolution(monkeypatch, tmp_path):
    monkeypatch.setattr(fp, "find_fmriprep", lambda executable="fmriprep": None)
    assert fp.resolve_backend("auto", fmriprep_dir=None, fs_license_file=None) == "builtin"
    assert fp.resolve_backend("auto", fmriprep_dir=tmp_path, fs_license_file=None) == (
        "derivatives")
    with pytest.raises(InputError, match="PATH"):
        fp.resolve_backend("fmriprep", fmriprep_dir=None, fs_license_file=None)
    with pytest.raises(InputError, match="--fmriprep-dir"):
        fp.resolve_backend("derivatives", fmriprep_dir=None, fs_license_file=None)
    with pytest.raises(InputError, match="not one of"):
        fp.resolve_backend("spm", fmriprep_dir=None, fs_license_file=None)
    monkeypatch.setattr(fp, "find_fmriprep", lambda executable="fmriprep": "/usr/bin/fmriprep")
    lic = tmp_path / "license.txt"
    assert fp.resolve_backend("auto", fmriprep_dir=None, fs_license_file=lic) == "fmriprep"
    assert fp.resolve_backend("auto", fmriprep_dir=None, fs_license_file=None) == "builtin"


def test_detects_executable_on_path(monkeypatch, tmp_path):
    exe = tmp_path / "fmriprep"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert fp.find_fmriprep() == str(exe)


def test_run_fmriprep_success_and_failure(tmp_path):
    ok, bad = tmp_path / "ok.sh", tmp_path / "bad.sh"
    ok.write_text("#!/bin/sh\necho fmriprep says $@\n")
    bad.write_text("#!/bin/sh\necho boom\nexit 3\n")
    for exe in (ok, bad):
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "logs" / "fmriprep.log"
    fp.run_fmriprep([str(ok), "a", "b"], log_file=log)
    assert "fmriprep says a b" in log.read_text()
    with pytest.raises(StageError, match="code 3"):
        fp.run_fmriprep([str(bad)], log_file=log)


def test_ingest_valid_folder(tmp_path):
    root = make_fmriprep_dir(tmp_path / "fmriprep")
    run = fp.load_fmriprep_run(root, ENTS, tr=2.1, n_volumes=12)
    assert run.bold.shape == (20, 20, 20, 12)
    assert run.mask_path.name.endswith("res-2_desc-brain_mask.nii.gz")
    assert list(run.confounds.columns) == ["global_signal", "framewise_displacement"]
    assert np.isnan(run.confounds["framewise_displacement"].iloc[0])
    assert run.slice_time_ref_s == pytest.approx(1.026)


@pytest.mark.parametrize(
    ("kwargs", "entities", "match"),
    [
        ({"tr": 2.0, "n_volumes": 12}, ENTS, "repetition time of 2.1 s but the raw run has 2"),
        ({"tr": 2.1, "n_volumes": 15}, ENTS, "has 12 volumes but the raw run has 15"),
        ({"tr": 2.1, "n_volumes": 12}, {**ENTS, "run": "02"}, "no preprocessed BOLD"),
        ({"tr": 2.1, "n_volumes": 12}, {**ENTS, "task": "dme"}, "no preprocessed BOLD"),
    ],
)
def test_ingest_mismatch_errors(tmp_path, kwargs, entities, match):
    root = make_fmriprep_dir(tmp_path / "fmriprep")
    with pytest.raises(InputError, match=match) as err:
        fp.load_fmriprep_run(root, entities, **kwargs)
    assert str(root) in str(err.value)  # the message names the file or folder
    assert str(err.value).count(".") >= 1 and "\n" not in str(err.value)


def test_prefers_requested_resolution(tmp_path):
    root = make_fmriprep_dir(tmp_path / "fmriprep")
    func = root / "sub-01" / "ses-01" / "func"
    for path in list(func.glob("*res-2*.nii.gz")) + list(func.glob("*res-2*.json")):
        (func / path.name.replace("res-2", "res-1")).write_bytes(path.read_bytes())
    run = fp.load_fmriprep_run(root, ENTS, tr=2.1, n_volumes=12, resolution_mm=3.0)
    assert "res-2" in run.bold_path.name and "res-2" in run.mask_path.name
    run = fp.load_fmriprep_run(root, ENTS, tr=2.1, n_volumes=12, resolution_mm=1.0)
    assert "res-1" in run.bold_path.name and "res-1" in run.mask_path.name


def test_missing_folder_and_confounds(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        fp.load_fmriprep_run(tmp_path / "nope", ENTS, tr=2.1, n_volumes=12)
    root = make_fmriprep_dir(tmp_path / "fmriprep")
    next(root.rglob("*_desc-confounds_timeseries.tsv")).unlink()
    with pytest.raises(InputError, match="confounds table"):
        fp.load_fmriprep_run(root, ENTS, tr=2.1, n_volumes=12)
