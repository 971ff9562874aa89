"""fMRI workflow: the built-in and fMRIPrep-derivatives backends write the same outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.config import Config
from bids_app.errors import InputError
from bids_app.fmri.template import template_grid
from bids_app.io.bids import RunFiles
from bids_app.io.derivatives import DerivativesWriter
from bids_app.simulate.bold import simulate_bold
from bids_app.simulate.scenario import Scale
from bids_app.workflows.fmri import FMRIResult, run_fmri_workflow

ENTS = {"sub": "01", "ses": "01", "task": "rest", "run": "01"}
STEM = "sub-01_ses-01_task-rest_run-01"
N_VOL = 12
SMALL = Scale("test", ("01",), (), matrix=(36, 44), n_slices=28, t1w_voxel_mm=4.0)


def _bids_run(root: Path, *, simulate: bool = True) -> RunFiles:
    if simulate:
        sim = simulate_bold("rest", N_VOL, None, np.random.default_rng(7), SMALL,
                            voxel_size_mm=(5.0, 5.0, 5.5))  # fmt: skip
    else:  # a plain raw series: only its TR and length matter to the ingestion backends
        bold = nib.Nifti1Image(np.ones((8, 8, 6, N_VOL), np.float32), np.eye(4))
        bold.header["pixdim"][4] = 2.1
        t1w = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
        sim = type("Sim", (), {"bold": bold, "t1w": t1w, "tr": 2.1,
                               "slice_timing": [0.0, 1.0, 0.2, 1.2, 0.4, 1.4]})  # fmt: skip
    func, anat = root / "sub-01" / "ses-01" / "func", root / "sub-01" / "ses-01" / "anat"
    func.mkdir(parents=True)
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    nib.save(sim.bold, func / f"{STEM}_bold.nii.gz")
    side = func / f"{STEM}_bold.json"
    side.write_text(json.dumps({"RepetitionTime": sim.tr, "SliceTiming": sim.slice_timing,
                                "SliceEncodingDirection": "k", "TaskName": "rest"}))  # fmt: skip
    nib.save(sim.t1w, anat / "sub-01_ses-01_T1w.nii.gz")
    return RunFiles(entities=dict(ENTS), bold=func / f"{STEM}_bold.nii.gz", bold_json=side,
                    t1w=anat / "sub-01_ses-01_T1w.nii.gz",
                    extra={"bold_sidecars": [side]})  # fmt: skip


def _fmriprep_dir(root: Path) -> Path:
    func = root / "sub-01" / "ses-01" / "func"
    func.mkdir(parents=True)
    affine = np.diag([2.5, 2.5, 2.5, 1.0])  # a grid unlike eegfmri's: ingestion resamples
    affine[:3, 3] = [-96, -132, -78]
    rng = np.random.default_rng(0)
    prefix = f"{STEM}_space-MNI152NLin2009cAsym_res-2"
    bold = nib.Nifti1Image(rng.normal(100, 1, (78, 92, 78, N_VOL)).astype(np.float32), affine)
    bold.header["pixdim"][4] = 2.1
    nib.save(bold, func / f"{prefix}_desc-preproc_bold.nii.gz")
    (func / f"{prefix}_desc-preproc_bold.json").write_text('{"RepetitionTime": 2.1, '
                                                           '"StartTime": 1.0}')  # fmt: skip
    mask = np.zeros((78, 92, 78), np.uint8)
    mask[16:64, 16:76, 16:64] = 1
    nib.save(nib.Nifti1Image(mask, affine), func / f"{prefix}_desc-brain_mask.nii.gz")
    pd.DataFrame({"framewise_displacement": [np.nan] + [0.1] * (N_VOL - 1),
                  "trans_x": np.zeros(N_VOL)}).to_csv(
        func / f"{STEM}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a")
    return root


def _config(tmp_path: Path, **fmri) -> Config:
    cfg = Config().replace("execution", bids_dir=str(tmp_path / "bids"),
                           output_dir=str(tmp_path / "out"))  # fmt: skip
    return cfg.replace("fmri", **fmri)


def _names(out: Path) -> set[str]:
    return {p.name for p in (out / "sub-01" / "ses-01" / "func").iterdir()}


EXPECTED = {
    f"{STEM}_space-MNI152NLin2009cAsym_res-3_desc-preproc_bold.nii.gz",
    f"{STEM}_space-MNI152NLin2009cAsym_res-3_desc-preproc_bold.json",
    f"{STEM}_space-MNI152NLin2009cAsym_res-3_desc-brain_mask.nii.gz",
    f"{STEM}_space-MNI152NLin2009cAsym_res-3_desc-brain_mask.json",
    f"{STEM}_desc-confounds_timeseries.tsv",
    f"{STEM}_desc-confounds_timeseries.json",
}


def _check_result(result: FMRIResult, out: Path) -> dict:
    shape, affine = template_grid(3.0)
    assert result.bold_mni.shape == (*shape, N_VOL)
    assert np.allclose(result.bold_mni.affine, affine)
    assert result.mask_mni.shape == shape and np.asarray(result.mask_mni.dataobj).any()
    assert len(result.confounds) == N_VOL and result.tr == pytest.approx(2.1)
    assert _names(out) == EXPECTED
    assert all(Path(p).exists() for p in result.figures.values()) and len(result.figures) == 3
    name = f"{STEM}_space-MNI152NLin2009cAsym_res-3_desc-preproc_bold.json"
    side = json.loads((out / "sub-01" / "ses-01" / "func" / name).read_text())
    for key in ("SkullStripped", "Resolution", "Sources", "RepetitionTime",
                "SliceTimingCorrected", "StartTime", "Parameters", "Steps"):  # fmt: skip
        assert key in side, key
    assert side["Sources"][0] == f"bids:raw:sub-01/ses-01/func/{STEM}_bold.nii.gz"
    assert side["Parameters"]["fwhm"] == 6.0
    return side


def test_derivatives_backend(tmp_path):
    run = _bids_run(tmp_path / "bids", simulate=False)
    fdir = _fmriprep_dir(tmp_path / "fmriprep")
    cfg = _config(tmp_path, backend="derivatives", fmriprep_dir=str(fdir))
    writer = DerivativesWriter(tmp_path / "out", cfg, bids_dir=tmp_path / "bids")
    result = run_fmri_workflow(run, cfg, writer, tmp_path / "work")
    side = _check_result(result, tmp_path / "out")
    assert result.backend == "derivatives" and result.slice_time_ref_s == pytest.approx(1.0)
    assert side["Backend"] == "derivatives"
    # smoothing applied: voxel-wise temporal noise shrinks (white noise, 6 mm over 3 mm voxels)
    inside = np.asarray(result.mask_mni.dataobj) > 0
    assert np.asarray(result.bold_mni.dataobj)[inside].std(axis=1).mean() < 0.5
    tsv = (tmp_path / "out" / "sub-01" / "ses-01" / "func" /
           f"{STEM}_desc-confounds_timeseries.tsv").read_text().splitlines()  # fmt: skip
    assert tsv[1].split("\t")[0] == "n/a"
    # a run the fMRIPrep folder does not have -> one InputError naming the folder
    other = RunFiles(entities={**ENTS, "run": "02"}, bold=run.bold, bold_json=run.bold_json,
                     extra=run.extra)  # fmt: skip
    with pytest.raises(InputError, match="no preprocessed BOLD"):
        run_fmri_workflow(other, cfg, writer, None)


def test_builtin_backend_and_cache(tmp_path, caplog):
    run = _bids_run(tmp_path / "bids")
    cfg = _config(tmp_path, backend="builtin", nonlinear=False, registration_resolution_mm=4.0)
    writer = DerivativesWriter(tmp_path / "out", cfg, bids_dir=tmp_path / "bids")
    result = run_fmri_workflow(run, cfg, writer, tmp_path / "work")
    side = _check_result(result, tmp_path / "out")
    assert result.backend == "builtin" and side["SliceTimingCorrected"] is True
    assert side["StartTime"] == pytest.approx(result.slice_time_ref_s)
    assert side["Sources"][1].endswith("sub-01_ses-01_T1w.nii.gz")
    assert {"trans_x", "framewise_displacement", "a_comp_cor_00"} <= set(result.confounds)
    with caplog.at_level(logging.INFO, logger="bids_app.workflows.fmri"):
        again = run_fmri_workflow(run, cfg, writer, tmp_path / "work")
    assert "Using cached fMRI results" in caplog.text
    assert np.allclose(np.asarray(again.bold_mni.dataobj), np.asarray(result.bold_mni.dataobj))
    # without a work_dir cache the subject's T1w registration is still reused
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bids_app.fmri.builtin"):
        third = run_fmri_workflow(run, cfg, writer, None)
    assert "T1w-to-template registration reused" in caplog.text
    # reuse is logged, not recorded: the sidecar is the same as after a fresh registration
    step = next(s for s in third.steps if s["name"] == "t1w_to_template")
    assert "reused" not in step
    assert np.array_equal(np.asarray(third.mask_mni.dataobj), np.asarray(result.mask_mni.dataobj))


def test_bad_inputs(tmp_path):
    run = _bids_run(tmp_path / "bids", simulate=False)
    cfg = _config(tmp_path, backend="builtin")
    writer = DerivativesWriter(tmp_path / "out", cfg, bids_dir=tmp_path / "bids")
    no_t1 = RunFiles(entities=dict(ENTS), bold=run.bold, bold_json=run.bold_json,
                     extra=run.extra)  # fmt: skip
    with pytest.raises(InputError, match="T1w"):
        run_fmri_workflow(no_t1, cfg, writer, None)
    flat = tmp_path / "flat_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), flat)
    broken = tmp_path / "broken_bold.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="cannot be read as NIfTI"):
        run_fmri_workflow(RunFiles(entities=dict(ENTS), bold=broken, t1w=run.t1w), cfg, writer,
                          None)  # fmt: skip
    with pytest.raises(InputError, match="not a 4D series"):
        run_fmri_workflow(RunFiles(entities=dict(ENTS), bold=flat, t1w=run.t1w), cfg, writer,
                          None)  # fmt: skip
