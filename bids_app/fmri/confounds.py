"""Nuisance regressors with fMRIPrep's column names and sidecar descriptions.

Columns: ``global_signal``, ``csf``, ``white_matter``, ``dvars``, ``std_dvars``,
``framewise_displacement``, the six motion parameters with ``_derivative1``, ``_power2`` and
``_derivative1_power2`` expansions (Friston-24), ``cosine00..`` (discrete cosine high-pass
basis, 128 s), ``a_comp_cor_00..`` (anatomical CompCor, Behzadi et al. 2007, on the combined
WM + CSF mask) and ``motion_outlier00..`` (one column per volume with FD or std_dvars above
threshold). As in fMRIPrep, derivatives, FD and DVARS have no value (``n/a``) at volume 0.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from bids_app.fmri.motion import MOTION_COLUMNS, framewise_displacement

logger = logging.getLogger(__name__)

_MOTION_LONG = {
    "trans_x": ("Translation along x", "mm"),
    "trans_y": ("Translation along y", "mm"),
    "trans_z": ("Translation along z", "mm"),
    "rot_x": ("Rotation about x", "rad"),
    "rot_y": ("Rotation about y", "rad"),
    "rot_z": ("Rotation about z", "rad"),
}


def dvars(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS (Power et al. 2012; Nichols 2013).

    Parameters
    ----------
    data : array (n_voxels, T)
        In-mask time series.

    Returns
    -------
    dvars : ndarray (T,)
        RMS of the backward difference across voxels (nan at 0).
    std_dvars : ndarray (T,)
        DVARS divided by its expectation under temporal independence, estimated from the
        robust (IQR) standard deviation and AR(1) coefficient of each voxel (nan at 0).
    """
    data = np.asarray(data, dtype=np.float64)
    diff = np.diff(data, axis=1)
    raw = np.sqrt(np.mean(diff**2, axis=0))
    q75, q25 = np.percentile(data, [75, 25], axis=1)
    sd = (q75 - q25) / 1.349
    centred = data - data.mean(axis=1, keepdims=True)
    num = (centred[:, 1:] * centred[:, :-1]).sum(axis=1)
    ar1 = num / np.maximum((centred**2).sum(axis=1), 1e-12)
    expected = np.sqrt(np.mean(2 * (1 - ar1) * sd**2))
    std = raw / max(expected, 1e-12)
    return np.r_[np.nan, raw], np.r_[np.nan, std]


def cosine_basis(n_volumes: int, tr: float, *, cutoff_s: float = 128.0) -> np.ndarray:
    """Discrete cosine drift basis (SPM/nilearn convention) without the constant term."""
    order = int(np.floor(2 * n_volumes * tr / cutoff_s))
    t = np.arange(n_volumes)
    cols = [
        np.sqrt(2.0 / n_volumes) * np.cos(np.pi * (t + 0.5) * k / n_volumes)
        for k in range(1, order + 1)
    ]
    return np.stack(cols, axis=1) if cols else np.zeros((n_volumes, 0))


def acompcor(data: np.ndarray, basis: np.ndarray, n_components: int) -> np.ndarray:
    """Anatomical CompCor: principal components of high-passed, variance-normalised noise
    voxels.

    Parameters
    ----------
    data : array (n_voxels, T)
        Time series of the noise (WM + CSF) mask.
    basis : array (T, k)
        High-pass basis regressed out first (with a constant).
    n_components : int
        Number of components.

    Returns
    -------
    ndarray (T, n_components), unit-norm columns.
    """
    x = np.asarray(data, dtype=np.float64).T
    design = np.column_stack([np.ones(len(x)), basis])
    beta, *_ = np.linalg.lstsq(design, x, rcond=None)
    resid = x - design @ beta
    std = resid.std(axis=0)
    resid = resid[:, std > 1e-8] / std[std > 1e-8]
    if resid.shape[1] == 0:
        return np.zeros((len(x), n_components))
    u, _, _ = np.linalg.svd(resid, full_matrices=False)
    k = min(n_components, u.shape[1])
    out = np.zeros((len(x), n_components))
    out[:, :k] = u[:, :k] * np.sign(u[0, :k] + 1e-30)
    return out


def compute_confounds(
    bold: np.ndarray,
    brain_mask: np.ndarray,
    wm_prob: np.ndarray,
    csf_prob: np.ndarray,
    motion: np.ndarray,
    *,
    tr: float,
    n_acompcor: int = 5,
    fd_threshold_mm: float = 0.5,
    dvars_threshold: float = 1.5,
) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """Build the confounds table of one run.

    Parameters
    ----------
    bold : array (X, Y, Z, T)
        Motion-corrected, unsmoothed series on the template grid.
    brain_mask : array (X, Y, Z) of bool
        Brain mask on the same grid.
    wm_prob, csf_prob : array (X, Y, Z)
        Tissue probability maps on the same grid (template priors).
    motion : array (T, 6)
        Rigid motion parameters (mm, radians).
    tr : float
        Repetition time (s).
    n_acompcor : int
        Number of aCompCor components.
    fd_threshold_mm, dvars_threshold : float
        Motion-outlier thresholds on FD and std_dvars.

    Returns
    -------
    confounds : pandas.DataFrame
        One row per volume (``NaN`` where fMRIPrep writes ``n/a``).
    columns : dict
        Column -> {"LongName", "Description", "Units"} for the JSON sidecar.
    """
    n = bold.shape[3]
    mask = np.asarray(brain_mask, dtype=bool)
    # Conservative noise masks: high-probability tissue, eroded, inside the brain mask.
    wm = ndimage.binary_erosion((wm_prob > 0.9) & mask, iterations=1)
    csf = (csf_prob > 0.9) & mask  # ventricles are too thin at 3 mm to erode
    cols: dict[str, np.ndarray] = {}
    desc: dict[str, dict[str, str]] = {}

    def add(name: str, values: np.ndarray, long: str, text: str, units: str) -> None:
        cols[name] = np.asarray(values, dtype=float)
        desc[name] = {"LongName": long, "Description": text, "Units": units}

    masked = bold[mask]
    add("global_signal", _mean(masked, n), "Global signal",
        "Mean BOLD signal within the brain mask.", "arbitrary")  # fmt: skip
    add("csf", _mean(bold[csf], n), "Cerebrospinal fluid signal",
        "Mean BOLD signal within the CSF mask (template prior > 0.9, in brain).",
        "arbitrary")  # fmt: skip
    add("white_matter", _mean(bold[wm], n), "White-matter signal",
        "Mean BOLD signal within the eroded WM mask (template prior > 0.9).",
        "arbitrary")  # fmt: skip
    dv, std_dv = dvars(masked) if masked.size else (np.full(n, np.nan),) * 2
    add("dvars", dv, "DVARS", "RMS across brain voxels of the temporal derivative "
        "(Power et al. 2012); n/a at the first volume.", "arbitrary")  # fmt: skip
    add("std_dvars", std_dv, "Standardised DVARS", "DVARS divided by its expected value "
        "under temporal independence (Nichols 2013).", "n/a")  # fmt: skip
    fd = framewise_displacement(motion)
    add("framewise_displacement", fd, "Framewise displacement", "Sum of absolute backward "
        "differences of the motion parameters, rotations as arcs on a 50 mm sphere "
        "(Power et al. 2012).", "mm")  # fmt: skip
    for j, name in enumerate(MOTION_COLUMNS):
        long, units = _MOTION_LONG[name]
        base = motion[:, j]
        d1 = np.r_[np.nan, np.diff(base)]
        add(name, base, long, f"{long} relative to the motion reference volume.", units)
        add(f"{name}_derivative1", d1, f"{long}, backward difference",
            f"Backward difference of {name}.", units)  # fmt: skip
        add(f"{name}_power2", base**2, f"{long}, squared", f"Square of {name}.", f"{units}^2")
        add(f"{name}_derivative1_power2", d1**2, f"{long}, squared backward difference",
            f"Square of {name}_derivative1.", f"{units}^2")  # fmt: skip
    basis = cosine_basis(n, tr)
    for k in range(basis.shape[1]):
        add(f"cosine{k:02d}", basis[:, k], f"Discrete cosine {k}",
            "Discrete cosine basis regressor of the 128 s high-pass filter.", "n/a")  # fmt: skip
    noise = bold[wm | csf]
    comps = acompcor(noise, basis, n_acompcor) if len(noise) else np.zeros((n, n_acompcor))
    for k in range(n_acompcor):
        add(f"a_comp_cor_{k:02d}", comps[:, k], f"aCompCor component {k}",
            "Principal component of the high-passed, variance-normalised BOLD signal in the "
            "combined WM + CSF mask (Behzadi et al. 2007).", "n/a")  # fmt: skip
    outliers = np.flatnonzero(
        (np.nan_to_num(fd) > fd_threshold_mm) | (np.nan_to_num(std_dv) > dvars_threshold)
    )
    for k, vol in enumerate(outliers):
        spike = np.zeros(n)
        spike[vol] = 1.0
        add(f"motion_outlier{k:02d}", spike, f"Motion outlier {k}",
            f"Volume {vol} has FD > {fd_threshold_mm} mm or std_dvars > {dvars_threshold}.",
            "n/a")  # fmt: skip
    logger.info("Confounds: %d columns, %d motion outliers.", len(cols), len(outliers))
    return pd.DataFrame(cols), desc


def describe_column(name: str) -> dict[str, str]:
    """LongName / Description / Units of a confound column (fMRIPrep naming).

    Used for tables written by fMRIPrep whose own sidecar lacks a column.
    """
    motion = next((m for m in MOTION_COLUMNS if name.startswith(m)), None)
    if motion is not None:
        long, units = _MOTION_LONG[motion]
        suffix = name[len(motion):]
        if "power2" in suffix:
            units = f"{units}^2"
        text = {"": "", "_derivative1": "backward difference of ", "_power2": "square of ",
                "_derivative1_power2": "squared backward difference of "}.get(suffix, "")
        return {"LongName": f"{long}{suffix}", "Units": units,
                "Description": f"{text or 'Estimated '}{long.lower()} (head-motion model)."}
    fixed = {
        "global_signal": ("Global signal", "Mean BOLD signal within the brain mask.", "arbitrary"),
        "csf": ("CSF signal", "Mean BOLD signal within the CSF mask.", "arbitrary"),
        "white_matter": ("White-matter signal", "Mean BOLD signal within the WM mask.",
                         "arbitrary"),
        "dvars": ("DVARS", "RMS of the temporal derivative across brain voxels.", "arbitrary"),
        "std_dvars": ("Standardised DVARS", "DVARS over its expected value.", "n/a"),
        "framewise_displacement": ("Framewise displacement",
                                   "Power et al. 2012 framewise displacement.", "mm"),
    }  # fmt: skip
    base = name.split("_power2")[0].split("_derivative1")[0]
    if base in fixed:
        long, text, units = fixed[base]
        return {"LongName": long if base == name else f"{long} ({name})", "Description": text,
                "Units": units}  # fmt: skip
    return {"LongName": name, "Description": f"fMRIPrep confound regressor {name}.",
            "Units": "n/a"}  # fmt: skip


def _mean(values: np.ndarray, n: int) -> np.ndarray:
    return values.mean(axis=0) if len(values) else np.full(n, np.nan)


def confounds_sidecar(config_values: dict[str, Any]) -> dict[str, Any]:
    """Top-level sidecar entries recording how the confounds were computed."""
    return {"Description": "Nuisance regressors (fMRIPrep column names).", **config_values}
