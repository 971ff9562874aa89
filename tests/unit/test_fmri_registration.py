"""Built-in path end to end on a simulated subject: masks, registration, planted signal."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.config import Config
from bids_app.fmri.builtin import mni_to_native_points, preprocess_bold
from bids_app.fmri.registration import apply_affine_points, epi_brain_mask, grid_points
from bids_app.fmri.template import load_template, template_grid
from bids_app.simulate.bold import simulate_bold
from bids_app.simulate.scenario import Scale

SMALL = Scale("test", ("01",), (), matrix=(40, 48), n_slices=30, t1w_voxel_mm=3.0)
N_VOL = 30


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def run():
    rng = np.random.default_rng(2)
    n = int(N_VOL * 2.1 * 10) + 400
    slow = np.convolve(rng.normal(size=n + 300), np.ones(150) / 150, mode="same")[150:-150]
    power = {"alpha_occipital": np.abs(1 + 8 * slow[:n])}
    sim = simulate_bold("rest", N_VOL, power, np.random.default_rng(4), SMALL,
                        voxel_size_mm=(4.5, 4.5, 5.0))  # fmt: skip
    cfg = Config().fmri
    res = preprocess_bold(sim.bold, sim.t1w, tr=sim.tr, slice_timing=sim.slice_timing,
                          config=cfg)  # fmt: skip
    return sim, res, cfg


def _template_points(cfg):
    tpl = load_template(cfg.resolution_mm)
    mask = np.asarray(tpl.mask.dataobj) > 0
    return mask, grid_points(mask.shape, tpl.mask.affine)


def _in_fov(sim, pts_native, shape):
    inv = np.linalg.inv(sim.bold.affine)
    idx = apply_affine_points(inv, pts_native)
    return np.all((idx > -0.5) & (idx < np.asarray(sim.bold.shape[:3]) - 0.5), axis=1).reshape(
        shape
    )


def test_output_grid_and_timing(run):
    sim, res, cfg = run
    shape, affine = template_grid(cfg.resolution_mm)
    assert res.bold_mni.shape == (*shape, N_VOL)
    assert np.allclose(res.bold_mni.affine, affine)
    assert res.mask_mni.shape == shape
    assert res.slice_timing_corrected
    assert res.slice_time_ref_s == pytest.approx(0.5 * max(sim.slice_timing))
    assert [s["name"] for s in res.steps][:2] == ["head_motion", "slice_timing"]


def test_native_mask_matches_truth(run):
    sim, res, _ = run
    truth = np.asarray(sim.brain_mask.dataobj) > 0
    est = np.asarray(res.mask_native.dataobj) > 0
    assert _dice(truth, est) >= 0.9


def test_normalised_mask_dice_with_template(run):
    sim, res, cfg = run
    tmask, pts = _template_points(cfg)
    fov = _in_fov(sim, sim.native_to_mni.inverse(pts), tmask.shape)
    dice = _dice(np.asarray(res.mask_mni.dataobj) > 0, tmask & fov)
    assert dice >= 0.9, dice


def test_registration_chain_recovers_planted_anatomy(run):
    """MNI -> native point map vs the planted (affine + nonlinear) transform."""
    sim, res, cfg = run
    tmask, pts = _template_points(cfg)
    brain_pts = pts[tmask.ravel()]
    truth = sim.native_to_mni.inverse(brain_pts)
    est = mni_to_native_points(brain_pts, res.t1w_to_mni, res.bold_to_t1w)
    err = np.linalg.norm(est - truth, axis=1)
    # measured: median 1.35 mm, 95th percentile 2.0 mm (BOLD voxels 4.5 x 4.5 x 5 mm)
    assert np.median(err) < 1.5, np.median(err)
    assert np.percentile(err, 95) < 3.0, np.percentile(err, 95)
    # SyN captures the planted nonlinear displacement that the affine part cannot
    affine_only = apply_affine_points(np.linalg.inv(res.bold_to_t1w),
                                      apply_affine_points(res.t1w_to_mni.affine, brain_pts))
    err_affine = np.linalg.norm(affine_only - truth, axis=1)
    assert np.percentile(err, 95) < 0.8 * np.percentile(err_affine, 95)


def test_motion_estimates_in_pipeline(run):
    sim, res, _ = run
    from bids_app.fmri.motion import grid_center, matrix_to_params, rigid_matrix

    c = grid_center(sim.bold.shape, sim.bold.affine)
    t_ref_inv = np.linalg.inv(rigid_matrix(sim.motion[res.ref_index], c))
    truth = np.stack([matrix_to_params(rigid_matrix(m, c) @ t_ref_inv, c) for m in sim.motion])
    err = np.abs(res.motion - truth)
    assert err[:, :3].max() < 0.2 and np.rad2deg(err[:, 3:]).max() < 0.2


def test_planted_bold_signal_survives_preprocessing(run):
    """Coupled MNI voxels follow the planted regressor after the whole chain."""
    sim, res, _ = run
    coupled = np.asarray(sim.coupled["alpha_occipital"].dataobj) > 0
    data = np.asarray(res.bold_mni_unsmoothed.dataobj, dtype=float)
    mask = np.asarray(res.mask_mni.dataobj) > 0
    assert (coupled & mask).sum() > 10

    def signal(sel):  # mean percent signal of a region, global drift removed by a trend fit
        ts = data[sel]
        pct = (ts / ts.mean(axis=1, keepdims=True)).mean(axis=0)
        t = np.arange(len(pct))
        return pct - np.polyval(np.polyfit(t, pct, 2), t)

    # the rest of the brain carries the shared drift and global fluctuation
    control = signal(mask & ~coupled)
    # after slice-timing correction every voxel represents the reference time
    reg = sim.regressors["alpha_occipital"]
    st = np.asarray(sim.slice_timing)
    k_ref = int(np.argmin(np.abs(st - res.slice_time_ref_s)))
    t = np.arange(N_VOL)
    target = reg[:, k_ref] - np.polyval(np.polyfit(t, reg[:, k_ref], 2), t)
    r = np.corrcoef(signal(coupled & mask) - control, target)[0, 1]
    assert r > 0.8, r
    r_control = np.corrcoef(control, target)[0, 1]
    assert abs(r_control) < 0.5, r_control


def test_epi_brain_mask_on_plain_blob():
    import nibabel as nib

    g = np.indices((30, 30, 20)).astype(float)
    r = np.sqrt((g[0] - 15) ** 2 + (g[1] - 15) ** 2 + ((g[2] - 10) * 1.5) ** 2)
    img = nib.Nifti1Image((800 * (r < 9) + np.random.default_rng(0).rayleigh(8, r.shape))
                          .astype(np.float32), np.eye(4))  # fmt: skip
    m = np.asarray(epi_brain_mask(img).dataobj) > 0
    assert _dice(m, r < 9) > 0.95
