"""Benchmark of the built-in fMRI path on a NATVIEW-sized simulated run.

Usage::

    python benchmarks/fmri_builtin.py [--volumes 289] [--seed 0] [--work DIR]

Simulates one NATVIEW-shaped run (64 x 64 x 38 BOLD at 3 x 3 x 3.33 mm, TR 2.1 s,
interleaved SliceTiming, 1 mm T1w with scalp, planted anatomy, motion and coupled voxels),
writes it as BIDS, then runs ``run_fmri_workflow`` (backend ``builtin``, default settings)
in a fresh process and prints time per step, peak memory (max RSS of that process) and the
accuracy against the planted truth as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STEM = "sub-01_ses-01_task-dme_run-01"


def simulate(root: Path, n_volumes: int, seed: int) -> None:
    """Write the simulated run as BIDS plus the truth (npz) under ``root``."""
    import nibabel as nib

    from bids_app.simulate.bold import simulate_bold
    from bids_app.simulate.scenario import SCALES

    rng = np.random.default_rng(seed)
    n = int(n_volumes * 2.1 * 10) + 600
    power = {}
    for name in ("luminance_lo", "motion_mt", "alpha_occipital"):
        slow = np.convolve(rng.normal(size=n + 400), np.ones(200) / 200, mode="same")[200:-200]
        power[name] = np.abs(1 + 8 * slow[:n])
    sim = simulate_bold("dme", n_volumes, power, rng, SCALES["natview"])
    func, anat = root / "sub-01" / "ses-01" / "func", root / "sub-01" / "ses-01" / "anat"
    func.mkdir(parents=True, exist_ok=True)
    anat.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}')
    nib.save(sim.bold, func / f"{STEM}_bold.nii.gz")
    (func / f"{STEM}_bold.json").write_text(json.dumps(
        {"RepetitionTime": sim.tr, "SliceTiming": sim.slice_timing,
         "SliceEncodingDirection": "k", "TaskName": "dme"}))  # fmt: skip
    nib.save(sim.t1w, anat / "sub-01_ses-01_T1w.nii.gz")
    truth = {f"coupled_{k}": np.asarray(v.dataobj) for k, v in sim.coupled.items()}
    truth.update({f"reg_{k}": v for k, v in sim.regressors.items()})
    np.savez(root / "truth.npz", motion=sim.motion, affine=sim.native_to_mni.affine,
             amplitude=sim.native_to_mni.amplitude_mm, phase=sim.native_to_mni.phase,
             wavelength=sim.native_to_mni.wavelength_mm, bold_affine=sim.bold.affine,
             bold_shape=np.array(sim.bold.shape), slice_timing=np.array(sim.slice_timing),
             **truth)  # fmt: skip


def run_pipeline(root: Path, out: Path) -> dict:
    """Run the workflow (fresh process) and return timings, memory and accuracy."""
    from bids_app.config import Config
    from bids_app.fmri.motion import grid_center, matrix_to_params, rigid_matrix
    from bids_app.fmri.registration import apply_affine_points, grid_points
    from bids_app.fmri.template import load_template
    from bids_app.io.bids import RunFiles
    from bids_app.io.derivatives import DerivativesWriter
    from bids_app.simulate.bold import NativeToMNI
    from bids_app.workflows.fmri import run_fmri_workflow

    func = root / "sub-01" / "ses-01" / "func"
    side = func / f"{STEM}_bold.json"
    run = RunFiles(entities={"sub": "01", "ses": "01", "task": "dme", "run": "01"},
                   bold=func / f"{STEM}_bold.nii.gz", bold_json=side,
                   t1w=root / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_T1w.nii.gz",
                   extra={"bold_sidecars": [side]})  # fmt: skip
    cfg = Config().replace("execution", bids_dir=str(root), output_dir=str(out))
    cfg = cfg.replace("fmri", backend="builtin")
    writer = DerivativesWriter(out, cfg, bids_dir=root)
    tic = time.perf_counter()
    result = run_fmri_workflow(run, cfg, writer, None)
    total = time.perf_counter() - tic
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    t = np.load(root / "truth.npz")
    # motion relative to the reference volume (found as the volume with zero estimate)
    est = result.confounds[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]]
    est = est.to_numpy(float)
    ref = int(np.argmin(np.abs(est).sum(axis=1)))
    c = grid_center(tuple(t["bold_shape"][:3]), t["bold_affine"])
    inv_ref = np.linalg.inv(rigid_matrix(t["motion"][ref], c))
    truth = np.stack([matrix_to_params(rigid_matrix(m, c) @ inv_ref, c) for m in t["motion"]])
    err = np.abs(est - truth)
    fd_t = np.abs(np.diff(truth, axis=0)) @ np.r_[1, 1, 1, 50, 50, 50]
    fd_e = result.confounds["framewise_displacement"].to_numpy(float)[1:]
    anatomy = NativeToMNI(t["affine"], t["amplitude"], float(t["wavelength"]), t["phase"])
    tpl = load_template(3.0)
    tmask = np.asarray(tpl.mask.dataobj) > 0
    pts = grid_points(tmask.shape, tpl.mask.affine)
    idx = apply_affine_points(np.linalg.inv(t["bold_affine"]), anatomy.inverse(pts))
    fov = np.all((idx > -0.5) & (idx < t["bold_shape"][:3] - 0.5), axis=1).reshape(tmask.shape)
    mask = np.asarray(result.mask_mni.dataobj) > 0
    dice = 2 * (mask & tmask & fov).sum() / (mask.sum() + (tmask & fov).sum())
    compare = compare_realignment(run.bold, truth, ref, est)
    return {
        "total_s": total, "peak_rss_gb": peak_gb, "steps": result.steps, "compare": compare,
        "motion_max_err_mm": float(err[:, :3].max()),
        "motion_max_err_deg": float(np.rad2deg(err[:, 3:]).max()),
        "fd_r": float(np.corrcoef(fd_t, fd_e)[0, 1]), "dice_fov": float(dice),
        "n_volumes": int(est.shape[0]),
    }  # fmt: skip


def compare_realignment(bold_path: Path, truth: np.ndarray, ref: int, est: np.ndarray,
                        n: int = 20) -> list[dict]:  # fmt: skip
    """eegfmri's Gauss-Newton realignment vs dipy's per-volume rigid MI registration."""
    import nibabel as nib
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.transforms import RigidTransform3D

    from bids_app.fmri.motion import grid_center, matrix_to_params, realign

    img = nib.load(bold_path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    vols = np.linspace(0, data.shape[3] - 1, n).round().astype(int)
    c = grid_center(data.shape, img.affine)
    tic = time.perf_counter()
    sub = np.concatenate([data[..., [ref]], data[..., vols]], axis=3)
    ours, _ = realign(sub, img.affine, ref_index=0)
    t_ours = (time.perf_counter() - tic) / n
    reg = AffineRegistration(metric=MutualInformationMetric(nbins=32), level_iters=[100, 50],
                             sigmas=[1.0, 0.0], factors=[2, 1], verbosity=0)  # fmt: skip
    tic = time.perf_counter()
    theirs = []
    for v in vols:
        m = reg.optimize(data[..., ref], data[..., v], RigidTransform3D(), None,
                         static_grid2world=img.affine, moving_grid2world=img.affine).affine
        theirs.append(matrix_to_params(m, c))
    t_dipy = (time.perf_counter() - tic) / n
    rows = []
    for name, params, sec in (("eegfmri Gauss-Newton (default)", ours[1:], t_ours),
                              ("dipy rigid MI, per volume", np.array(theirs), t_dipy)):
        err = np.abs(params - truth[vols])
        rows.append({"method": name, "s_per_volume": sec, "max_mm": float(err[:, :3].max()),
                     "max_deg": float(np.rad2deg(err[:, 3:]).max())})  # fmt: skip
    return rows


def main() -> None:
    """Parse arguments, simulate, run the pipeline in a child process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=289)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_pipeline(args.child / "bids", args.child / "out"), default=str))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="eegfmri-bench-fmri-"))
    tic = time.perf_counter()
    simulate(work / "bids", args.volumes, args.seed)
    print(f"simulated {args.volumes} volumes in {time.perf_counter() - tic:.0f} s ({work})")
    proc = subprocess.run([sys.executable, __file__, "--child", str(work)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\n| step | time (s) |\n|---|---|")
    for step in res["steps"]:
        print(f"| {step['name']} | {step['duration_s']:.1f} |")
    print(f"| **workflow total (incl. confounds, outputs, figures)** | {res['total_s']:.1f} |")
    print(f"\npeak memory (max RSS): {res['peak_rss_gb']:.2f} GB")
    print("\n| accuracy vs planted truth | value |\n|---|---|")
    print(f"| max motion error (mm / deg) | {res['motion_max_err_mm']:.3f} / "
          f"{res['motion_max_err_deg']:.3f} |")  # fmt: skip
    print(f"| FD correlation | {res['fd_r']:.3f} |")
    print(f"| Dice(mask, template mask in FOV) | {res['dice_fov']:.3f} |")
    print("\n| realignment (20 volumes) | s / volume | max error (mm / deg) |\n|---|---|---|")
    for row in res["compare"]:
        print(f"| {row['method']} | {row['s_per_volume']:.3f} | {row['max_mm']:.3f} / "
              f"{row['max_deg']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
