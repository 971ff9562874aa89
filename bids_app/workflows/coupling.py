"""Coupling stage of one run: EEG source maps on the fMRI grid and EEG <-> BOLD statistics.

Reads like the data flow: clean EEG + volume onsets -> band power of channels and sources
per volume window (source maps) -> HRF-convolved regressors at the acquisition times ->
GLM z maps, local source<->voxel correlations, source<->channel tables -> files + figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd

from bids_app import coupling as cp
from bids_app.eeg import forward, source
from bids_app.errors import StageError
from bids_app.report import figures

logger = logging.getLogger(__name__)

SPACE = "MNI152NLin2009cAsym"

#: Image kind -> BandCoupling attribute.
IMAGE_MAPS = {"z": "z", "p": "p", "q": "q", "localz": "local_z", "localp": "local_p",
              "localq": "local_q", "localr": "local_r"}

TABLE_COLUMNS = {
    "band": {"LongName": "Frequency band", "Description": "Band of the power envelopes."},
    "source": {"LongName": "Source peak", "Description": "Local maximum of mean band source "
               "power (band name + rank)."},
    "x": {"LongName": "MNI x", "Description": "Source position.", "Units": "mm"},
    "y": {"LongName": "MNI y", "Description": "Source position.", "Units": "mm"},
    "z": {"LongName": "MNI z", "Description": "Source position.", "Units": "mm"},
    "channel": {"LongName": "EEG channel", "Description": "Channel name."},
    "r": {"LongName": "Pearson correlation", "Description": "Correlation across fMRI volume "
          "windows of the source's band power with the channel's band power.", "Units": "n/a"},
}


@dataclass
class CouplingResult:
    """Outputs of the coupling stage of one run.

    Attributes
    ----------
    source_maps : source.SourceMaps
        Band power of channels and sources per volume window.
    bands : dict
        Band -> :class:`bids_app.coupling.BandCoupling` (voxel arrays in mask order).
    images : dict
        ``{kind}_{band}`` -> 3D image, kinds of :data:`IMAGE_MAPS` (global ``z``/``p``/``q``,
        source-resolved ``localz``/``localp``/``localq``, ``localr`` correlation).
    table : DataFrame
        Source<->channel correlations of every band.
    fdr_threshold : dict
        Band -> smallest global |z| significant at ``config.coupling.fdr_q`` (inf when none).
    fdr_tests : int
        Number of tests in the run's FDR family (2 x bands x voxels).
    files : dict
        Output kind -> path.
    figures : dict
        Figure name -> path (under ``sub-XX/figures``).
    """

    source_maps: source.SourceMaps
    bands: dict[str, cp.BandCoupling]
    images: dict[str, nib.Nifti1Image]
    table: pd.DataFrame
    fdr_threshold: dict[str, float]
    fdr_tests: int
    files: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


def _bold_matrix(bold: nib.Nifti1Image, ijk: np.ndarray, n: int) -> np.ndarray:
    """(n_frames, n_vox) in-mask BOLD of the first ``n`` volumes."""
    data = np.asanyarray(bold.dataobj)
    return np.asarray(data[ijk[:, 0], ijk[:, 1], ijk[:, 2], :n], float).T


def _check_grid(bold: nib.Nifti1Image, mask: nib.Nifti1Image) -> None:
    if bold.shape[:3] != mask.shape[:3] or not np.allclose(bold.affine, mask.affine, atol=1e-3):
        raise StageError("The MNI BOLD and its brain mask are not on the same grid.")


def run_coupling_workflow(run: Any, eeg: Any, fmri: Any, config: Any, writer: Any
                          ) -> CouplingResult:
    """Source maps and EEG <-> BOLD coupling of one run, written as BIDS derivatives.

    Parameters
    ----------
    run : RunFiles
        The run (entities, input paths for ``Sources``).
    eeg : EEGResult
        Clean EEG (``raw_clean``) and ``volume_onsets_s`` in its time.
    fmri : FMRIResult
        ``bold_mni``, ``mask_mni``, ``confounds``, ``tr``, ``slice_time_ref_s``.
    config : Config
        Uses ``config.source`` and ``config.coupling``.
    writer : DerivativesWriter
        Output writer.

    Returns
    -------
    CouplingResult
    """
    scfg, ccfg = config.source, config.coupling
    _check_grid(fmri.bold_mni, fmri.mask_mni)
    onsets = np.asarray(eeg.volume_onsets_s, float)
    n = min(len(onsets), fmri.bold_mni.shape[3])
    if n < 10:
        raise StageError(f"Only {n} volumes have both EEG and BOLD; coupling needs >= 10.")
    if len(onsets) != fmri.bold_mni.shape[3]:
        logger.warning("%d EEG volume markers but %d BOLD volumes; using the first %d.",
                       len(onsets), fmri.bold_mni.shape[3], n)
    onsets = onsets[:n]
    maps = source.compute_source_maps(
        eeg.raw_clean, onsets, fmri.tr, fmri.mask_mni, bands=scfg.bands, method=scfg.method,
        snr=scfg.snr, spacing_mm=scfg.source_spacing_mm, noise_cov=scfg.noise_cov,
        noise_cov_baseline_s=tuple(scfg.noise_cov_baseline_s) or None,
        montage=config.eeg.montage, electrodes=getattr(run, "electrodes", None),
        subjects_dir=scfg.subjects_dir, background=scfg.background,
    )
    grid = maps.grid
    bold = _bold_matrix(fmri.bold_mni, grid.voxel_ijk, n)
    frame_times = cp.acquisition_times(onsets, fmri.slice_time_ref_s)
    hrf = cp.hrf_matrix(onsets, fmri.tr, frame_times, hrf_model=ccfg.hrf_model)
    shapes = cp.hrf_shapes(onsets, fmri.tr, frame_times, peaks_s=tuple(ccfg.hrf_shape_peaks_s))
    nuisance = cp.run_nuisance(frame_times, fmri.confounds, ccfg.confounds,
                               high_pass_hz=ccfg.high_pass_hz, n_basis=hrf.shape[0],
                               max_ar_order=ccfg.max_ar_order)
    bands = cp.couple_bands(
        {name: maps.coupling_power(name) for name, _, _ in scfg.bands},
        bold=bold, hrf=hrf, weights=grid.weights, nuisance=nuisance, rr_mm=grid.rr_mm,
        ch_names=maps.ch_names, window_s=fmri.tr, n_peaks=ccfg.n_peaks, n_shifts=ccfg.n_shifts,
        min_shift_s=ccfg.min_shift_s, max_ar_order=ccfg.max_ar_order,
        n_null_voxels=ccfg.n_null_voxels, shapes=shapes if len(shapes) else None,
    )
    images = {f"{kind}_{name}": _voxel_img(grid, getattr(res, attr))
              for name, res in bands.items() for kind, attr in IMAGE_MAPS.items()}
    thresholds = {name: _z_threshold(res.z, res.q, ccfg.fdr_q) for name, res in bands.items()}
    tables = [res.table for res in bands.values()]
    result = CouplingResult(maps, bands, images, pd.concat(tables, ignore_index=True),
                            thresholds, 2 * len(bands) * len(grid.voxel_ijk))
    _write_outputs(result, run, fmri, config, writer)
    _write_figures(result, run, eeg, frame_times, config, writer)
    return result


def _z_threshold(z: np.ndarray, q: np.ndarray, level: float) -> float:
    """Smallest |z| with q below ``level`` (inf when none)."""
    sig = np.abs(z)[q < level]
    return float(sig.min()) if len(sig) else float("inf")


def _voxel_img(grid: Any, values: np.ndarray) -> nib.Nifti1Image:
    data = np.zeros(grid.mask_img.shape[:3], np.float32)
    data[tuple(grid.voxel_ijk.T)] = values
    return nib.Nifti1Image(data, grid.mask_img.affine)


def _sources(run: Any, writer: Any) -> list[str]:
    out = []
    for path in (getattr(run, "eeg", None), getattr(run, "bold", None)):
        if path is not None:
            try:
                out.append(writer.raw_uri(path))
            except ValueError:
                logger.debug("No BIDS URI for %s.", path)
    return out


def _write_outputs(result: CouplingResult, run: Any, fmri: Any, config: Any,
                   writer: Any) -> None:
    ents = {k: v for k, v in run.entities.items() if k in ("sub", "ses", "task", "run")}
    res = f"{config.fmri.resolution_mm:g}".replace(".", "p")
    maps = result.source_maps
    sources = _sources(run, writer)
    common = {"EEGSourceMethod": maps.method, "SourceSpacing": config.source.source_spacing_mm,
              "HeadModel": "3-shell sphere fitted to the electrodes" if
              config.source.subjects_dir is None else "fsaverage BEM"}
    for name, lo, hi in config.source.bands:
        path = writer.build_path({**ents, "space": SPACE, "res": res, "desc": name},
                                 "eegsource", ".nii.gz", datatype="eeg")
        img = maps.power_img(name)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = maps.window_length_s
        above = (" above the source's aperiodic (1/f) background (its mean over the windows is "
                 "the band's periodic power)" if maps.background == "aperiodic" else "")
        writer.write_nifti(path, img, sources=sources, sidecar={
            **common, "Description": f"EEG {name} band ({lo:g}-{hi:g} Hz) source power{above}, "
            "one volume per fMRI volume window (volume onset to onset + TR), interpolated from "
            "the source grid to the fMRI grid.", "FrequencyBand": [lo, hi],
            "SourceBackground": maps.background,
            "RepetitionTime": maps.window_length_s, "Units": "arbitrary (squared inverse units)"})
        result.files[f"eegsource_{name}"] = path
        stats = _statmap_sidecars(name, result.bands[name], config, result.fdr_tests,
                                  result.fdr_threshold[name])
        for kind, sidecar in stats.items():
            local = kind.startswith("local")
            path = writer.build_path({**ents, "space": SPACE, "res": res,
                                      "desc": f"{name}local" if local else name,
                                      "stat": kind.removeprefix("local")},
                                     "statmap", ".nii.gz", datatype="func")
            writer.write_nifti(path, result.images[f"{kind}_{name}"], sources=sources,
                               sidecar={**common, **sidecar})
            result.files[f"{kind}_{name}"] = path
    tpath = writer.build_path({**ents, "desc": "sourcechannel"}, "corr", ".tsv", datatype="eeg")
    writer.write_tsv(tpath, result.table, columns=TABLE_COLUMNS, sidecar={
        "Description": "Source<->channel band-power correlations at local maxima of mean "
        "source power.", "Sources": sources})
    result.files["sourcechannel"] = tpath


def _statmap_sidecars(band: str, res: cp.BandCoupling, config: Any, n_tests: int,
                      z_threshold: float) -> dict[str, dict[str, Any]]:
    """Sidecar of every statistical map of one band (image kind -> fields)."""
    ccfg = config.coupling
    glm = res.glm
    model = {
        "HRFModel": ccfg.hrf_model, "HighPass": ccfg.high_pass_hz,
        "NoiseModel": f"AR({glm.ar_order}) prewhitening per voxel, bias-corrected "
        f"autocorrelations shrunk towards their mean over voxels (empirical Bayes), order "
        f"chosen by AIC (<= {ccfg.max_ar_order})",
        "NullModel": f"{len(glm.shifts)} within-run circular shifts of the EEG band power "
        f"(>= {ccfg.min_shift_s:g} s), statistics pooled over {ccfg.n_null_voxels} voxels, "
        f"generalised Pareto tail beyond the pooled null's 99th percentile",
        "FDRFamily": cp.FDR_FAMILY, "FDRTests": n_tests, "FDRq": ccfg.fdr_q,
    }
    stat = (f"Largest squared t over HRFs peaking at "
            f"{', '.join(f'{p:g}' for p in ccfg.hrf_shape_peaks_s)} s (projected on the HRF "
            f"basis)" if ccfg.hrf_shape_peaks_s else "F test of the HRF basis")
    global_model = (f"{stat}: {band} mean-channel band power convolved with the HRF basis "
                    "(confounds, cosine drifts)")
    local_model = (f"{stat}: {band} band power of the EEG source at the voxel convolved "
                   "with the HRF basis, beside the mean-channel band power without the "
                   "forward projection of that source's cross-talk neighbourhood (confounds, "
                   "cosine drifts)")
    out = {}
    for prefix, test, text in (("", glm.global_test, global_model),
                               ("local", glm.local_test, local_model)):
        dof = {"DegreesOfFreedom": [test.df_num, test.df_den]}
        out[f"{prefix}z"] = {**model, **dof, "Description": f"Signed z of the circular-shift "
                             f"p-value ({text}); sign of the best HRF shape's coefficient."}
        out[f"{prefix}p"] = {**model, **dof, "Description": f"Uncorrected circular-shift "
                             f"p-value ({text})."}
        out[f"{prefix}q"] = {**model, **dof, "Description": f"Benjamini-Hochberg q-value "
                             f"({text}); family: {cp.FDR_FAMILY}."}
    # null when no voxel passes the FDR threshold (JSON has no infinity)
    out["z"]["FDRThresholdZ"] = _finite_or_none(z_threshold)
    out["localr"] = {"Description": f"Correlation of each voxel's BOLD with the canonical "
                     f"HRF-convolved {band} band power of the co-located source (confounds "
                     f"removed)."}
    return out


def _finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is infinite or NaN."""
    return float(value) if np.isfinite(value) else None


def _write_figures(result: CouplingResult, run: Any, eeg: Any, frame_times: np.ndarray,
                   config: Any, writer: Any) -> None:
    ents = run.entities
    subject = ents["sub"]
    stem = "_".join(f"{k}-{ents[k]}" for k in ("ses", "task", "run") if k in ents)
    maps = result.source_maps
    info = forward.make_eeg_info(maps.ch_names, montage=config.eeg.montage)
    r0, radius = forward.fit_head_sphere(info)
    sphere = (*r0, radius)

    def save(fig: Any, name: str, ext: str = ".svg") -> None:
        result.figures[name] = writer.write_figure(fig, subject, f"{stem}_{name}{ext}")
        plt.close(fig)

    bands = [name for name, _, _ in config.source.bands]
    power, thresholds, topo = {}, {}, {}
    for name in bands:
        mean = np.nan_to_num(maps.mean_power(name))
        power[name] = maps.grid.to_img(mean / (mean.max() or 1.0))
        thr = result.fdr_threshold[name]
        thresholds[name] = thr if np.isfinite(thr) else np.inf  # nothing shown if none
        table = result.bands[name].table
        labels = list(dict.fromkeys(table["source"]))
        values = np.array([table.loc[table["source"] == s, "r"].to_numpy() for s in labels])
        titles = [f"{s} ({int(x)},{int(y)},{int(z)})" for s, x, y, z in
                  table.drop_duplicates("source")[["source", "x", "y", "z"]].itertuples(False)]
        if len(values):
            topo[name] = (values, titles)
    save(figures.plot_stat_maps(power, titles={b: f"{b} source power" for b in bands},
                                thresholds=dict.fromkeys(bands, 0.5), cmap="hot",
                                symmetric=False, suptitle="Mean source power per band, "
                                "relative to its peak (> 0.5 shown)"),
         "desc-sourcemaps", ".png")
    save(figures.plot_stat_maps({b: result.images[f"z_{b}"] for b in bands},
                                titles={b: f"{b} power <-> BOLD (z)" for b in bands},
                                thresholds=thresholds, suptitle="Band power <-> BOLD z maps "
                                f"(FDR q<{config.coupling.fdr_q:g}; empty: none significant)"),
         "desc-zmaps", ".png")
    q = config.coupling.fdr_q
    local_thr = {b: _z_threshold(r.local_z, r.local_q, q) for b, r in result.bands.items()}
    save(figures.plot_stat_maps({b: result.images[f"localz_{b}"] for b in bands},
                                titles={b: f"{b} source power <-> BOLD (z)" for b in bands},
                                thresholds=local_thr, suptitle="Source-resolved z maps, "
                                f"beyond the other sources' band power (FDR q<{q:g}; empty: none "
                                "significant)"),
         "desc-localzmaps", ".png")
    if topo:
        save(figures.plot_topomap_rows(topo, info, sphere=sphere, suptitle="Channels related "
                                       "to source peaks (r of band power)"),
             "desc-topomaps", ".png")
    save(figures.plot_regressors(frame_times, {b: r.regressor for b, r in result.bands.items()},
                                 title="HRF-convolved mean-channel band power"), "regressors")
