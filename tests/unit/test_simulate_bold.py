"""Tests of the simulated BOLD run: geometry, determinism, planted motion and coupling."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.natview import facts as nv
from bids_app.simulate.bold import simulate_bold
from bids_app.simulate.scenario import Scale

SMALL = Scale("test", ("01",), (), matrix=(36, 44), n_slices=28, t1w_voxel_mm=3.0)
VOXEL = (5.0, 5.0, 5.5)


def _power(n_s: float, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(n_s * 10)
    slow = np.convolve(rng.normal(size=n + 200), np.ones(200) / 200, mode="same")[100:-100]
    return {"alpha_occipital": np.abs(1.0 + 5 * slow[:n])}


@pytest.fixture(scope="module")
def sim():
    return simulate_bold("rest", 40, _power(40 * nv.TR), np.random.default_rng(0), SMALL,
                         voxel_size_mm=VOXEL, motion=False)  # fmt: skip


def test_geometry_and_slice_timing(sim):
    assert sim.bold.shape == (36, 44, 28, 40)
    assert np.allclose(sim.bold.header.get_zooms(), (*VOXEL, nv.TR))
    assert len(sim.slice_timing) == 28 and max(sim.slice_timing) < nv.TR
    # interleaved: odd 0-based slices first
    assert sim.slice_timing[1] == 0.0 and sim.slice_timing[0] > sim.slice_timing[-1]
    full = Scale("n", ("01",), (), matrix=(8, 8), t1w_voxel_mm=6.0)
    one = simulate_bold("rest", 2, None, np.random.default_rng(0), full, voxel_size_mm=(24, 24, 4))
    assert one.slice_timing == pytest.approx(nv.slice_timing(), abs=1e-6)


def test_deterministic_and_null():
    a = simulate_bold("rest", 4, _power(10), np.random.default_rng(3), SMALL, voxel_size_mm=VOXEL)
    b = simulate_bold("rest", 4, _power(10), np.random.default_rng(3), SMALL, voxel_size_mm=VOXEL)
    assert np.array_equal(np.asarray(a.bold.dataobj), np.asarray(b.bold.dataobj))
    assert np.array_equal(a.motion, b.motion)
    null = simulate_bold("rest", 4, _power(10), np.random.default_rng(3), SMALL, null=True,
                         voxel_size_mm=VOXEL)  # fmt: skip
    assert null.coupled == {} and null.regressors == {}
    assert set(a.coupled) == {"alpha_occipital"}


def test_planted_motion_is_smooth_and_bounded():
    s = simulate_bold("rest", 30, None, np.random.default_rng(5), SMALL, voxel_size_mm=VOXEL)
    assert np.all(s.motion[0] == 0)
    assert np.abs(s.motion[:, :3]).max() <= 1.5 + 1e-9
    assert np.rad2deg(np.abs(s.motion[:, 3:])).max() <= 1.2 + 1e-9
    assert np.abs(s.motion[:, :3]).max() > 0.3  # there is motion to correct
    # smooth: frame-to-frame steps much smaller than the range
    assert np.abs(np.diff(s.motion[:, :3], axis=0)).max() < 0.5


def test_anatomy_transform_inverse(sim):
    pts = np.random.default_rng(0).uniform(-60, 60, (200, 3))
    back = sim.native_to_mni(sim.native_to_mni.inverse(pts))
    assert np.abs(back - pts).max() < 1e-3
    disp = sim.native_to_mni.displacement(pts)
    assert 1.0 < np.abs(disp).max() < 3.0  # mild nonlinear part is present


def test_planted_coupling_in_native_voxels(sim):
    """Voxels whose tissue lies in the coupled MNI sphere follow the planted regressor."""
    from bids_app.fmri.registration import grid_points

    data = np.asarray(sim.bold.dataobj, dtype=float)
    pts = grid_points(sim.bold.shape, sim.bold.affine)
    mni = sim.native_to_mni(pts)
    src = np.array([0.0, -78.0, 18.0])
    inside = (np.linalg.norm(mni - src, axis=1) < 8).reshape(sim.bold.shape[:3])
    inside &= np.asarray(sim.brain_mask.dataobj) > 0
    assert inside.sum() >= 5
    ts = data[inside]
    pct = (ts / ts.mean(axis=1, keepdims=True) - 1).mean(axis=0)
    reg = sim.regressors["alpha_occipital"]  # (n_volumes, n_slices), sign -1
    k = int(np.round(np.argwhere(inside)[:, 2].mean()))
    r = np.corrcoef(pct, reg[:, k])[0, 1]
    assert r > 0.8, r
    assert 0.005 < reg.std() < 0.02  # ~1 % signal change


def test_spm_hrf_matches_nilearn_and_t1w_optional():
    from nilearn.glm.first_level import spm_hrf as nilearn_hrf

    from bids_app.simulate.bold import spm_hrf

    for dt in (0.1, 2.1):
        np.testing.assert_allclose(spm_hrf(dt), nilearn_hrf(dt, oversampling=1), atol=1e-12)
    scale = Scale("n", ("01",), (), matrix=(8, 8), n_slices=6, t1w_voxel_mm=6.0)
    a = simulate_bold("tp", 3, None, np.random.default_rng(3), scale, t1w=False)
    b = simulate_bold("tp", 3, None, np.random.default_rng(3), scale)
    assert a.t1w is None and b.t1w.shape == (30, 36, 32)
    np.testing.assert_array_equal(a.bold.get_fdata(), b.bold.get_fdata())  # BOLD first
