"""fMRI stage of one run: backend choice, preprocessing, outputs, QC figures.

Three backends produce the same outputs on the same MNI grid (``config.fmri.resolution_mm``):

- ``builtin``: bids_app.fmri.builtin (slice timing, motion, registration, one resampling);
- ``fmriprep``: runs fMRIPrep for the subject (once; later runs reuse its output) and
  ingests it;
- ``derivatives``: ingests an existing fMRIPrep folder (``--fmriprep-dir``).

Outputs (through the derivatives writer): ``func/<run>_space-MNI152NLin2009cAsym_res-N_
desc-preproc_bold.nii.gz`` (+ JSON), ``..._desc-brain_mask.nii.gz``, ``<run>_desc-confounds_
timeseries.tsv`` (+ JSON column dictionary) and three figures (motion, carpet, mask). The
built-in results are cached in ``work_dir/fmri/<run>/`` keyed by the inputs and settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from bids_app import __version__
from bids_app.errors import InputError
from bids_app.fmri import confounds as conf_mod
from bids_app.fmri import fmriprep as fp
from bids_app.fmri.builtin import preprocess_bold, smooth_series
from bids_app.fmri.template import TEMPLATE_NAME, TEMPLATE_SOURCE, load_template, template_grid

logger = logging.getLogger(__name__)
#: The last T1w -> template registration (the runs of a subject share it).
_ANATOMY: dict[str, Any] = {}
_SLICE_AXES = {"i": 0, "i-": 0, "j": 1, "j-": 1, "k": 2, "k-": 2}


@dataclass
class FMRIResult:
    """Preprocessed BOLD of one run in MNI space (the contract of docs/developer.md)."""

    bold_mni: nib.Nifti1Image
    mask_mni: nib.Nifti1Image
    confounds: pd.DataFrame
    tr: float
    slice_time_ref_s: float
    figures: dict[str, Path] = field(default_factory=dict)
    backend: str = "builtin"
    steps: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)


def run_fmri_workflow(run: Any, config: Any, writer: Any, work_dir: Path | None) -> FMRIResult:
    """Preprocess the BOLD run of ``run`` and write its derivatives.

    Parameters
    ----------
    run : RunFiles
        The run (``bold``, ``t1w``, ``entities``; sidecar metadata via ``run.metadata``).
    config : Config
        Full configuration (``fmri`` and ``execution`` sections are used).
    writer : DerivativesWriter
        Output writer.
    work_dir : Path | None
        Cache folder (None: no cache).

    Returns
    -------
    FMRIResult
    """
    cfg = config.fmri
    if run.bold is None:
        raise InputError(f"Run {run.run_id} has no BOLD file.")
    bold = _load(run.bold, "BOLD")
    if bold.ndim != 4 or bold.shape[3] < 2:
        raise InputError(f"BOLD file {run.bold} is not a 4D series (shape {bold.shape}).")
    meta = run.metadata("bold") if hasattr(run, "metadata") else {}
    if not meta and getattr(run, "bold_json", None) and Path(run.bold_json).exists():
        try:
            meta = json.loads(Path(run.bold_json).read_text())
        except json.JSONDecodeError:
            raise InputError(f"BOLD sidecar {run.bold_json} is not valid JSON.") from None
    tr = float(meta.get("RepetitionTime") or bold.header.get_zooms()[3])
    if tr <= 0:
        raise InputError(f"BOLD file {run.bold} has no valid RepetitionTime.")
    backend = fp.resolve_backend(cfg.backend, fmriprep_dir=cfg.fmriprep_dir,
                                 fs_license_file=cfg.fs_license_file)  # fmt: skip
    logger.info("fMRI backend for %s: %s", run.run_id, backend)
    if backend == "builtin":
        data = _builtin(run, bold, meta, tr, config, work_dir)
    else:
        data = _from_fmriprep(run, bold, tr, config, backend, work_dir)
    result = FMRIResult(
        bold_mni=data["bold"], mask_mni=data["mask"], confounds=data["confounds"], tr=tr,
        slice_time_ref_s=data["slice_time_ref_s"], backend=backend, steps=data["steps"],
    )  # fmt: skip
    result.outputs = _write_outputs(run, result, data, meta, config, writer)
    result.figures = write_qc_figures(
        writer, run.entities["sub"], run.run_id, confounds=result.confounds,
        unsmoothed=data["unsmoothed"], mask=result.mask_mni,
        template=load_template(cfg.resolution_mm), fd_threshold=cfg.fd_threshold_mm,
    )  # fmt: skip
    return result


def _load(path: Path, what: str) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(f"{what} file {path} cannot be read as NIfTI ({err}).") from None


def _builtin(run: Any, bold: nib.Nifti1Image, meta: dict, tr: float, config: Any,
             work_dir: Path | None) -> dict[str, Any]:  # fmt: skip
    cfg = config.fmri
    if run.t1w is None:
        raise InputError(f"BOLD file {run.bold} has no T1w image in its subject/session; "
                         "the built-in fMRI path needs one.")  # fmt: skip
    slice_timing = meta.get("SliceTiming")
    direction = str(meta.get("SliceEncodingDirection", "k"))
    axis = _SLICE_AXES.get(direction, 2)
    if slice_timing is not None and len(slice_timing) != bold.shape[axis]:
        raise InputError(f"BOLD sidecar of {run.bold} has {len(slice_timing)} SliceTiming "
                         f"entries but the image has {bold.shape[axis]} slices.")  # fmt: skip
    if slice_timing is not None and direction.endswith("-"):
        slice_timing = list(slice_timing)[::-1]  # BIDS: listed along the encoding direction
    cache = _cache_dir(work_dir, run, [run.bold, run.t1w], config)
    if cache is not None and (cache / "done.json").exists():
        logger.info("Using cached fMRI results in %s", cache)
        return _load_cache(cache)
    t1w = _load(run.t1w, "T1w")
    key = f"{Path(run.t1w).resolve()}:{Path(run.t1w).stat().st_mtime_ns}:{cfg.nonlinear}:" \
          f"{cfg.registration_resolution_mm}"
    res = preprocess_bold(bold, t1w, tr=tr, slice_timing=slice_timing, config=cfg,
                          slice_axis=axis, anatomy=_ANATOMY.get(key))  # fmt: skip
    _ANATOMY.clear()  # one T1w registration per subject and process
    _ANATOMY[key] = (res.t1w_to_mni, res.t1w_brain)
    tpl = load_template(cfg.resolution_mm)
    unsmoothed = np.asarray(res.bold_mni_unsmoothed.dataobj)
    confounds, columns = conf_mod.compute_confounds(
        unsmoothed, np.asarray(res.mask_mni.dataobj) > 0, np.asarray(tpl.wm.dataobj),
        np.asarray(tpl.csf.dataobj), res.motion, tr=tr, n_acompcor=cfg.n_acompcor,
        fd_threshold_mm=cfg.fd_threshold_mm, dvars_threshold=cfg.dvars_threshold,
    )  # fmt: skip
    data = {
        "bold": res.bold_mni, "mask": res.mask_mni, "confounds": confounds,
        "columns": columns, "unsmoothed": res.bold_mni_unsmoothed,
        "slice_time_ref_s": res.slice_time_ref_s, "steps": res.steps,
        "stc": res.slice_timing_corrected, "skull_stripped": False,
    }  # fmt: skip
    if cache is not None:
        _save_cache(cache, data)
    return data


def _from_fmriprep(run: Any, bold: nib.Nifti1Image, tr: float, config: Any, backend: str,
                   work_dir: Path | None) -> dict[str, Any]:  # fmt: skip
    cfg, ex = config.fmri, config.execution
    fmriprep_dir = cfg.fmriprep_dir
    steps: list[dict[str, Any]] = []
    if backend == "fmriprep":
        base = Path(work_dir or Path(ex.output_dir) / "work")
        fmriprep_dir = base / "fmriprep_out"
        subject = run.entities["sub"]
        marker = fmriprep_dir / f".eegfmri_sub-{subject}_done"
        cmd = fp.fmriprep_command(
            Path(ex.bids_dir), fmriprep_dir, subject, work_dir=base / "fmriprep_work",
            resolution_mm=cfg.resolution_mm, nprocs=ex.nprocs, omp_nthreads=ex.omp_nthreads,
            mem_mb=int(ex.mem_gb * 1000), fs_license_file=cfg.fs_license_file,
            fs_no_reconall=cfg.fs_no_reconall,
        )  # fmt: skip
        if not marker.exists():
            fp.run_fmriprep(cmd, log_file=base / f"fmriprep_sub-{subject}.log")
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(" ".join(cmd) + "\n")
        steps.append({"name": "fmriprep", "command": cmd})
    loaded = fp.load_fmriprep_run(Path(fmriprep_dir), run.entities, tr=tr,
                                  n_volumes=int(bold.shape[3]),
                                  resolution_mm=cfg.resolution_mm)  # fmt: skip
    shape, affine = template_grid(cfg.resolution_mm)
    unsmoothed = np.asarray(loaded.bold.dataobj, dtype=np.float32)
    mask = np.asarray(loaded.mask.dataobj) > 0
    if loaded.bold.shape[:3] != shape or not np.allclose(loaded.bold.affine, affine, atol=1e-3):
        vox = np.linalg.inv(loaded.bold.affine) @ affine  # output voxel -> fMRIPrep voxel
        unsmoothed = np.stack([
            ndimage.affine_transform(unsmoothed[..., t], vox[:3, :3], offset=vox[:3, 3],
                                     output_shape=shape, order=1)
            for t in range(unsmoothed.shape[3])], axis=-1)  # fmt: skip
        mask = ndimage.affine_transform(mask.astype(np.float32), vox[:3, :3], offset=vox[:3, 3],
                                        output_shape=shape, order=1) > 0.5  # fmt: skip
        steps.append({"name": "resample_to_template", "resolution_mm": cfg.resolution_mm,
                      "interpolation": "trilinear"})  # fmt: skip
    smoothed = smooth_series(unsmoothed, affine, fwhm=cfg.fwhm)
    steps.append({"name": "smoothing", "fwhm_mm": cfg.fwhm})
    hdr = nib.Nifti1Image(smoothed, affine)
    hdr.header.set_xyzt_units("mm", "sec")
    hdr.header["pixdim"][4] = tr
    ref = loaded.slice_time_ref_s
    return {
        "bold": hdr, "mask": nib.Nifti1Image(mask.astype(np.uint8), affine),
        "confounds": loaded.confounds, "columns": _fmriprep_columns(loaded.confounds_path,
                                                        list(loaded.confounds.columns)),
        "unsmoothed": nib.Nifti1Image(unsmoothed, affine),
        "slice_time_ref_s": float(ref) if ref is not None else tr / 2.0,
        "steps": steps, "stc": bool(loaded.sidecar.get("SliceTimingCorrected", ref is not None)),
        "skull_stripped": bool(loaded.sidecar.get("SkullStripped", False)),
        "sources": [str(loaded.bold_path), str(loaded.mask_path)],
    }  # fmt: skip


def _fmriprep_columns(tsv: Path, columns: list[str]) -> dict[str, dict[str, str]]:
    """Column descriptions: fMRIPrep's confounds JSON where given, else eegfmri's own."""
    side = tsv.with_suffix(".json")
    try:
        meta = json.loads(side.read_text()) if side.exists() else {}
    except json.JSONDecodeError:
        meta = {}
    out = {}
    for col in columns:
        info = meta.get(col) if isinstance(meta.get(col), dict) else {}
        known = conf_mod.describe_column(col)
        out[col] = {"LongName": str(info.get("LongName", known["LongName"])),
                    "Description": str(info.get("Description", known["Description"])),
                    "Units": str(info.get("Units", known["Units"]))}  # fmt: skip
    return out


def _write_outputs(run: Any, result: FMRIResult, data: dict[str, Any], meta: dict,
                   config: Any, writer: Any) -> dict[str, Path]:  # fmt: skip
    cfg = config.fmri
    res_label = f"{cfg.resolution_mm:g}".replace(".", "p")
    ents = {k: run.entities.get(k) for k in ("sub", "ses", "task", "acq", "run")}
    sources = [writer.raw_uri(run.bold)]
    if run.t1w is not None and result.backend == "builtin":
        sources.append(writer.raw_uri(run.t1w))
    params = config.to_dict()["fmri"]
    side = {
        "RepetitionTime": result.tr,
        "TaskName": run.entities.get("task"),
        "SkullStripped": data.get("skull_stripped", False),
        "SliceTimingCorrected": bool(data.get("stc", False)),
        "StartTime": result.slice_time_ref_s,
        "SpatialReference": TEMPLATE_NAME,
        "TemplateImplementation": TEMPLATE_SOURCE if result.backend == "builtin"
        else "TemplateFlow (fMRIPrep)",
        "Backend": result.backend,
        "SmoothingFWHM": cfg.fwhm,
        "Steps": data["steps"],
        "Parameters": params,
        "SoftwareVersion": __version__,
    }  # fmt: skip
    if "SliceTiming" in meta:
        side["RawSliceTiming"] = meta["SliceTiming"]
    out: dict[str, Path] = {}
    mni = {**ents, "space": TEMPLATE_NAME, "res": res_label}
    path = writer.build_path({**mni, "desc": "preproc"}, "bold", ".nii.gz", "func")
    out["bold"] = writer.write_nifti(path, result.bold_mni, sidecar=side, sources=sources)
    path = writer.build_path({**mni, "desc": "brain"}, "mask", ".nii.gz", "func")
    out["mask"] = writer.write_nifti(path, result.mask_mni, sidecar={"Type": "Brain"},
                                     sources=sources)  # fmt: skip
    path = writer.build_path({**ents, "desc": "confounds"}, "timeseries", ".tsv", "func")
    out["confounds"] = writer.write_tsv(
        path, result.confounds, columns=data.get("columns") or {},
        sidecar={"Sources": sources, "Backend": result.backend},
    )  # fmt: skip
    return out


def _cache_dir(work_dir: Path | None, run: Any, files: list[Path], config: Any) -> Path | None:
    if work_dir is None:
        return None
    h = hashlib.sha1(usedforsecurity=False)
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps(config.to_dict()["fmri"], sort_keys=True, default=str).encode())
    h.update(__version__.encode())
    return Path(work_dir) / "fmri" / f"{run.run_id}-{h.hexdigest()[:12]}"


def _save_cache(cache: Path, data: dict[str, Any]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    nib.save(data["bold"], cache / "bold.nii")
    nib.save(data["unsmoothed"], cache / "unsmoothed.nii")
    nib.save(data["mask"], cache / "mask.nii.gz")
    data["confounds"].to_csv(cache / "confounds.tsv", sep="\t", index=False, na_rep="n/a")
    meta = {k: data[k] for k in ("columns", "slice_time_ref_s", "steps", "stc")}
    (cache / "meta.json").write_text(json.dumps(meta, default=str))
    (cache / "done.json").write_text("{}")


def _load_cache(cache: Path) -> dict[str, Any]:
    meta = json.loads((cache / "meta.json").read_text())
    return {
        "bold": nib.load(cache / "bold.nii"), "unsmoothed": nib.load(cache / "unsmoothed.nii"),
        "mask": nib.load(cache / "mask.nii.gz"),
        "confounds": pd.read_csv(cache / "confounds.tsv", sep="\t", na_values=["n/a"]),
        "skull_stripped": False, **meta,
    }  # fmt: skip


# ----------------------------------------------------------------------------- figures
def write_qc_figures(writer: Any, subject: str, run_id: str, *, confounds: pd.DataFrame,
                     unsmoothed: nib.Nifti1Image, mask: nib.Nifti1Image, template: Any,
                     fd_threshold: float) -> dict[str, Path]:  # fmt: skip
    """Motion traces, carpet plot and mask-over-template figures of one run."""
    figs = {
        "Head motion and framewise displacement": (
            plot_motion(confounds, fd_threshold=fd_threshold), f"{run_id}_desc-motion_bold.svg"),
        "Carpet plot (brain voxels by tissue)": (
            plot_carpet(unsmoothed, mask, template, confounds),
            f"{run_id}_desc-carpet_bold.png"),
        "Brain mask over the MNI template": (
            plot_mask(mask, template), f"{run_id}_desc-brainmask_bold.svg"),
    }  # fmt: skip
    return {caption: writer.write_figure(fig, subject, name)
            for caption, (fig, name) in figs.items()}  # fmt: skip


def plot_motion(confounds: pd.DataFrame, *, fd_threshold: float) -> Any:
    """Translations, rotations (degrees) and FD with the outlier threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    for name in ("trans_x", "trans_y", "trans_z"):
        if name in confounds:
            axes[0].plot(confounds[name].to_numpy(float), label=name)
    for name in ("rot_x", "rot_y", "rot_z"):
        if name in confounds:
            axes[1].plot(np.rad2deg(confounds[name].to_numpy(float)), label=name)
    if "framewise_displacement" in confounds:
        axes[2].plot(confounds["framewise_displacement"].to_numpy(float), color="k")
        axes[2].axhline(fd_threshold, color="r", ls="--", lw=1, label="outlier threshold")
    for ax, unit in zip(axes, ("mm", "degrees", "FD (mm)")):
        ax.set_ylabel(unit)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    axes[2].set_xlabel("volume")
    fig.suptitle("Head motion")
    return fig


def plot_carpet(bold: nib.Nifti1Image, mask: nib.Nifti1Image, template: Any,
                confounds: pd.DataFrame, *, max_rows: int = 1500) -> Any:  # fmt: skip
    """Power-style carpet plot: z-scored brain voxels, grouped GM / WM / CSF."""
    from matplotlib.figure import Figure

    data = np.asarray(bold.dataobj, dtype=np.float32)
    inside = np.asarray(mask.dataobj) > 0
    tissue = np.argmax(np.stack([np.asarray(t.dataobj) for t in
                                 (template.gm, template.wm, template.csf)]), axis=0)  # fmt: skip
    rows = []
    for label in range(3):
        sel = data[inside & (tissue == label)]
        step = max(1, int(np.ceil(len(sel) * 3 / max_rows)))
        rows.append(sel[::step])
    carpet = np.concatenate(rows) if rows else np.zeros((1, data.shape[3]))
    carpet = (carpet - carpet.mean(axis=1, keepdims=True)) / (
        carpet.std(axis=1, keepdims=True) + 1e-6)
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax_fd, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 4]})
    if "global_signal" in confounds:
        gs = confounds["global_signal"].to_numpy(float)
        ax_fd.plot((gs - np.nanmean(gs)) / (np.nanstd(gs) + 1e-12), label="global signal (z)")
    if "std_dvars" in confounds:
        ax_fd.plot(confounds["std_dvars"].to_numpy(float), label="std DVARS")
    if ax_fd.get_legend_handles_labels()[0]:
        ax_fd.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    ax.imshow(carpet, aspect="auto", cmap="gray", vmin=-2, vmax=2, interpolation="nearest")
    bounds = np.cumsum([len(r) for r in rows])[:-1]
    for b in bounds:
        ax.axhline(b, color="r", lw=0.8)
    ax.set_ylabel("voxels (GM | WM | CSF)")
    ax.set_xlabel("volume")
    return fig


def plot_mask(mask: nib.Nifti1Image, template: Any) -> Any:
    """Brain mask contour over three orthogonal template slices."""
    from matplotlib.figure import Figure

    t1 = np.asarray(template.t1.dataobj, dtype=np.float32)
    m = np.asarray(mask.dataobj) > 0
    center = [int(c) for c in np.round(np.argwhere(m).mean(axis=0))] if m.any() else [
        s // 2 for s in m.shape]  # fmt: skip
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 3)
    for axis, ax in enumerate(axes):
        sl = [slice(None)] * 3
        sl[axis] = center[axis]
        ax.imshow(np.rot90(t1[tuple(sl)]), cmap="gray")
        ax.contour(np.rot90(m[tuple(sl)].astype(float)), levels=[0.5], colors="r",
                   linewidths=0.8)  # fmt: skip
        ax.set_axis_off()
    fig.suptitle("Brain mask (red) on the MNI template")
    return fig
