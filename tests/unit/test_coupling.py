"""EEG <-> BOLD coupling on planted truth: AUROC, sign, tables, outputs.

Recall, false positives and null calibration of the p- and q-values are in
``test_coupling_inference.py``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import mne
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn import datasets
from nilearn.glm.first_level import compute_regressor
from sklearn.metrics import roc_auc_score

from bids_app import coupling as cp
from bids_app.config import Config
from bids_app.eeg import source
from bids_app.natview import facts as nv
from bids_app.simulate import scenario
from bids_app.simulate.bold import planted_mni_bold
from bids_app.simulate.neural import simulate_neural
from bids_app.simulate.stimulus import simulate_stimulus

SFREQ, TR, N_VOL, LEAD = 250.0, nv.TR, 110, 3.0
BANDS = (("theta", 4.0, 8.0), ("alpha", 8.0, 13.0), ("beta", 13.0, 30.0))
BAND_OF = {s.name: s.band for s in scenario.sources_for_task("tp")}
BASIS = "spm + derivative + dispersion"


def _planted_run(null: bool, seed: int = 0) -> SimpleNamespace:
    """tp run: simulated EEG + MNI BOLD whose planted voxels follow their source's power."""
    duration = LEAD + N_VOL * TR + 3.0
    stim = simulate_stimulus("tp", N_VOL * TR + 10, 10.0, (32, 24),
                             np.random.default_rng(seed + 1), null=null, render=False)
    sim = simulate_neural("tp", stim, SFREQ, int(duration * SFREQ), -LEAD,
                          np.random.default_rng(seed), null=null)
    raw = mne.io.RawArray(sim.eeg.astype(float), mne.create_info(list(nv.EEG_CHANNELS), SFREQ,
                                                                  "eeg"), verbose="error")
    onsets = LEAD + np.arange(N_VOL) * TR
    mask = datasets.load_mni152_brain_mask(resolution=3)
    times = cp.acquisition_times(onsets, TR / 2)
    bold, planted = planted_mni_bold("tp", sim.source_power, times, mask,
                                     np.random.default_rng(seed + 2), null=null)  # fmt: skip
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    data = np.zeros(mask.shape + (N_VOL,), np.float32)
    data[tuple(ijk.T)] = bold.T
    return SimpleNamespace(raw=raw, onsets=onsets, mask=mask, bold=bold, planted=planted,
                           bold_img=nib.Nifti1Image(data, mask.affine), times=times)


def _couple(run: SimpleNamespace) -> dict[str, cp.BandCoupling]:
    maps = source.compute_source_maps(run.raw, run.onsets, TR, run.mask, bands=BANDS)
    assert np.array_equal(maps.grid.voxel_ijk, np.argwhere(np.asarray(run.mask.dataobj) > 0))
    return cp.couple_bands(
        {b: maps.coupling_power(b) for b, _, _ in BANDS},
        bold=run.bold, hrf=cp.hrf_matrix(run.onsets, TR, run.times, hrf_model=BASIS),
        weights=maps.grid.weights, nuisance=cp.nuisance_design(run.times, None),
        rr_mm=maps.grid.rr_mm, ch_names=maps.ch_names, window_s=TR, n_shifts=10,
        n_null_voxels=10_000)


@pytest.fixture(scope="module")
def planted() -> tuple[SimpleNamespace, dict]:
    run = _planted_run(null=False)
    return run, _couple(run)


def test_coupling_auroc_and_sign_on_planted_voxels(planted):
    run, results = planted
    for name, inside in run.planted.items():
        res = results[BAND_OF[name]]
        auc_local = roc_auc_score(inside, np.abs(res.local_r))
        assert auc_local >= 0.95, (name, auc_local)  # measured 0.999
    alpha = results["alpha"]
    occipital = run.planted["alpha_occipital"]
    assert roc_auc_score(occipital, -alpha.z) >= 0.95  # measured 1.000
    # alpha power <-> negative BOLD in the planted occipital voxels
    assert np.median(alpha.z[occipital]) < -3.0
    assert np.median(alpha.local_r[occipital]) < -0.3
    assert (alpha.q[occipital] < 0.05).mean() > 0.8


def test_source_channel_table(planted):
    _, results = planted
    table = results["alpha"].table
    assert list(table.columns) == ["band", "source", "x", "y", "z", "channel", "r"]
    assert len(table) == 5 * len(nv.EEG_CHANNELS)
    top = table[table["source"] == "alpha01"]
    # the strongest alpha source is occipital and its power follows occipital channels
    assert top["y"].iloc[0] < -50
    best = top.sort_values("r").iloc[-1]["channel"]
    assert best in {"O1", "O2", "Oz", "POz", "PO3", "PO4", "PO7", "PO8", "P7", "P8", "Pz",
                    "P1", "P2", "P3", "P4", "P5", "P6"}


def test_fdr_bh_and_hrf_matrix():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(cp.fdr_bh(p), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    onsets = np.arange(40) * 2.0
    times = onsets + 1.0
    matrix = cp.hrf_matrix(onsets, 2.0, times)[0]
    assert cp.hrf_matrix(onsets, 2.0, times, hrf_model=BASIS).shape == (3, 40, 40)
    block, _ = compute_regressor(np.array([[0.0], [80.0], [1.0]]), "spm", times,
                                 oversampling=16)
    np.testing.assert_allclose(matrix.sum(1), block[:, 0], atol=0.02 * block.max())


def test_workflow_writes_outputs(tmp_path, planted):
    from bids_app.io.bids import RunFiles
    from bids_app.io.derivatives import DerivativesWriter
    from bids_app.workflows.coupling import run_coupling_workflow

    run, _ = planted
    config = Config().replace("source", bands=(("alpha", 8.0, 13.0),)).replace(
        "coupling", n_shifts=10, n_null_voxels=10_000)
    writer = DerivativesWriter(tmp_path / "out", config, bids_dir=tmp_path / "bids")
    files = RunFiles(entities={"sub": "01", "ses": "01", "task": "tp", "run": "01"})
    eeg = SimpleNamespace(raw_clean=run.raw, volume_onsets_s=run.onsets, figures={})
    confounds = pd.DataFrame(np.random.default_rng(0).normal(size=(N_VOL, 3)),
                             columns=["trans_x", "rot_z", "unused"])
    fmri = SimpleNamespace(bold_mni=run.bold_img, mask_mni=run.mask, confounds=confounds,
                           tr=TR, slice_time_ref_s=TR / 2, figures={})
    result = run_coupling_workflow(files, eeg, fmri, config, writer)
    src = result.files["eegsource_alpha"]
    assert src.name == ("sub-01_ses-01_task-tp_run-01_space-MNI152NLin2009cAsym_res-3_"
                        "desc-alpha_eegsource.nii.gz")
    assert nib.load(src).shape == run.mask.shape + (N_VOL,)
    z = nib.load(result.files["z_alpha"])
    assert result.files["z_alpha"].parent.name == "func"
    occipital = tuple(np.argwhere(np.asarray(run.mask.dataobj))[run.planted["alpha_occipital"]].T)
    assert np.median(z.get_fdata()[occipital]) < -3
    assert np.median(nib.load(result.files["q_alpha"]).get_fdata()[occipital]) < 0.05
    for kind in ("p", "q", "localz", "localp", "localq", "localr"):
        stat = kind.removeprefix("local")
        assert result.files[f"{kind}_alpha"].name.endswith(f"_stat-{stat}_statmap.nii.gz")
    sidecar = json.loads(result.files["localq_alpha"].with_suffix("").with_suffix(
        ".json").read_text())
    assert sidecar["FDRFamily"] == cp.FDR_FAMILY
    assert sidecar["FDRTests"] == 2 * int(np.asarray(run.mask.dataobj).astype(bool).sum())
    assert sidecar["DegreesOfFreedom"][0] == 3 and sidecar["NoiseModel"].startswith("AR(")
    table = pd.read_csv(result.files["sourcechannel"], sep="\t")
    assert set(table["band"]) == {"alpha"}
    for path in [*result.files.values(), *result.figures.values()]:
        assert path.exists() and path.stat().st_size > 0
    assert result.files["sourcechannel"].with_suffix(".json").exists()
