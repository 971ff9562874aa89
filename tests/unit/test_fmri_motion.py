"""Rigid realignment recovers planted head motion; FD follows Power et al. 2012."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.fmri.motion import (
    framewise_displacement,
    grid_center,
    matrix_to_params,
    realign,
    rigid_matrix,
)
from bids_app.simulate.bold import simulate_bold
from bids_app.simulate.scenario import Scale

SMALL = Scale("test", ("01",), (), matrix=(40, 48), n_slices=30, t1w_voxel_mm=4.0)


@pytest.fixture(scope="module")
def sim():
    return simulate_bold("rest", 24, None, np.random.default_rng(11), SMALL,
                         voxel_size_mm=(4.5, 4.5, 5.0))  # fmt: skip


def test_matrix_roundtrip():
    rng = np.random.default_rng(0)
    center = np.array([1.0, -2.0, 3.0])
    for _ in range(20):
        p = np.r_[rng.uniform(-5, 5, 3), rng.uniform(-0.2, 0.2, 3)]
        assert np.allclose(matrix_to_params(rigid_matrix(p, center), center), p, atol=1e-10)


def test_framewise_displacement_by_hand():
    p = np.zeros((3, 6))
    p[1] = [0.1, -0.2, 0.0, 0.001, 0.0, -0.002]
    fd = framewise_displacement(p)
    assert np.isnan(fd[0])
    assert fd[1] == pytest.approx(0.3 + 50 * 0.003)
    assert fd[2] == pytest.approx(fd[1])


def test_realign_recovers_planted_motion(sim):
    data = np.asarray(sim.bold.dataobj)
    est, ref = realign(data, sim.bold.affine, ref_index=0)
    assert ref == 0
    err = np.abs(est - sim.motion)
    assert err[:, :3].max() < 0.2, err[:, :3].max()
    assert np.rad2deg(err[:, 3:]).max() < 0.2, np.rad2deg(err[:, 3:]).max()
    fd_true, fd_est = framewise_displacement(sim.motion), framewise_displacement(est)
    assert np.corrcoef(fd_true[1:], fd_est[1:])[0, 1] > 0.9


def test_realign_middle_reference_is_relative_motion(sim):
    data = np.asarray(sim.bold.dataobj)
    est, ref = realign(data, sim.bold.affine)
    assert ref == data.shape[3] // 2 and np.all(est[ref] == 0)
    c = grid_center(data.shape, sim.bold.affine)
    t_ref_inv = np.linalg.inv(rigid_matrix(sim.motion[ref], c))
    truth = np.stack([matrix_to_params(rigid_matrix(m, c) @ t_ref_inv, c) for m in sim.motion])
    err = np.abs(est - truth)
    assert err[:, :3].max() < 0.2 and np.rad2deg(err[:, 3:]).max() < 0.2


def test_realign_rejects_3d():
    with pytest.raises(ValueError, match="4D"):
        realign(np.zeros((4, 4, 4)), np.eye(4))


def test_realign_natview_matrix_subsampled_points(caplog):
    """A NATVIEW-sized volume (64 x 64 x 38, 3 mm) is matched on ~20 000 strided points."""
    import logging
    import time

    from bids_app.natview import facts as nv

    scale = Scale("test", ("01",), (), matrix=nv.MATRIX, n_slices=nv.N_SLICES,
                  t1w_voxel_mm=4.0)
    sim = simulate_bold("rest", 12, None, np.random.default_rng(5), scale)
    data = np.asarray(sim.bold.dataobj)
    tic = time.perf_counter()
    with caplog.at_level(logging.DEBUG, logger="bids_app.fmri.motion"):
        est, ref = realign(data, sim.bold.affine, ref_index=0)
    elapsed = time.perf_counter() - tic
    err = np.abs(est - sim.motion)
    print(f"NATVIEW matrix: {elapsed:.2f} s for 12 volumes; max error "
          f"{err[:, :3].max():.3f} mm, {np.rad2deg(err[:, 3:]).max():.3f} deg")
    assert "stride 2" in caplog.text
    assert err[:, :3].max() < 0.2 and np.rad2deg(err[:, 3:]).max() < 0.2
