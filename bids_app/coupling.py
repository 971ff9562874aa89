"""EEG <-> fMRI coupling statistics (pure functions, no file I/O).

Band power per volume window (channels and sources, :mod:`bids_app.eeg.source`) is
convolved with the canonical HRF and sampled at the BOLD acquisition times (volume onset +
slice-time reference), then

* a first-level GLM per voxel (regressor = z-scored HRF-convolved mean channel band power,
  confounds, cosine drifts, intercept) with AR(1) prewhitening (the model of nilearn's
  ``run_glm``, vectorised; BOLD noise is autocorrelated, and OLS without prewhitening
  inflates false positives) gives one z map per band, thresholded with Benjamini-Hochberg
  FDR;
* each voxel's BOLD is correlated with the HRF-convolved power of its co-located source
  (confounds and drifts regressed out of both);
* each source's band power is correlated with each channel's band power.

References
----------
Goldman RI et al. (2002) NeuroReport 13:2487-2492. Laufs H et al. (2003) PNAS 100:11053.
Friston KJ et al. (1998) NeuroImage 7:30-40 (canonical HRF). Benjamini Y, Hochberg Y (1995)
J R Stat Soc B 57:289-300.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from nilearn.glm.first_level import compute_regressor, make_first_level_design_matrix
from scipy import stats

logger = logging.getLogger(__name__)


def acquisition_times(volume_onsets_s: np.ndarray, slice_time_ref_s: float) -> np.ndarray:
    """Time (EEG clock) that each BOLD volume represents."""
    return np.asarray(volume_onsets_s, float) + float(slice_time_ref_s)


def hrf_matrix(window_onsets_s: np.ndarray, window_length_s: float, frame_times: np.ndarray,
               *, hrf_model: str = "spm", oversampling: int = 16) -> np.ndarray:
    """Linear map from per-window power to HRF-convolved regressors at ``frame_times``.

    Column j is the canonical-HRF response (nilearn ``compute_regressor``) to a unit block
    covering window j, so ``hrf_matrix(...) @ power`` convolves any power series exactly.

    Parameters
    ----------
    window_onsets_s : ndarray, shape (n_win,)
        Window starts.
    window_length_s : float
        Window length.
    frame_times : ndarray, shape (n_frames,)
        BOLD acquisition times.
    hrf_model : str
        nilearn HRF model name (``spm``, ``glover``...).
    oversampling : int
        Temporal oversampling of the convolution.

    Returns
    -------
    ndarray, shape (n_frames, n_win)
    """
    out = np.zeros((len(frame_times), len(window_onsets_s)))
    for j, onset in enumerate(np.asarray(window_onsets_s, float)):
        cond = np.array([[onset], [window_length_s], [1.0]])
        reg, _ = compute_regressor(cond, hrf_model, np.asarray(frame_times, float),
                                   oversampling=oversampling, min_onset=-24)
        out[:, j] = reg[:, 0]
    return out


def standardize(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Z-score along ``axis`` ignoring NaNs; NaNs (empty windows) become 0 (the mean)."""
    x = np.asarray(x, float)
    mu = np.nanmean(x, axis=axis, keepdims=True)
    sd = np.nanstd(x, axis=axis, keepdims=True)
    z = (x - mu) / np.where(sd > 0, sd, 1.0)
    return np.nan_to_num(z)


def nuisance_design(frame_times: np.ndarray, confounds: pd.DataFrame | None, *,
                    high_pass_hz: float = 0.01) -> pd.DataFrame:
    """Confounds (z-scored, NaN -> 0), cosine drifts below ``high_pass_hz`` and a constant."""
    add = None
    names = None
    if confounds is not None and confounds.shape[1]:
        add = standardize(confounds.to_numpy(float))
        names = [str(c) for c in confounds.columns]
    return make_first_level_design_matrix(np.asarray(frame_times, float), events=None,
                                          drift_model="cosine", high_pass=high_pass_hz,
                                          add_regs=add, add_reg_names=names)


def glm_zmap(bold: np.ndarray, regressor: np.ndarray, nuisance: pd.DataFrame, *,
             noise_model: str = "ar1", ar_bins: int = 100) -> np.ndarray:
    """Voxel-wise GLM z statistic of one regressor of interest, AR(1)-prewhitened.

    OLS residuals give each voxel's lag-1 autocorrelation, rounded to ``ar_bins`` levels as
    in nilearn's ``run_glm``; voxels of one level are refitted together after the
    Prais-Winsten AR(1) transform of data and design (exact GLS for AR(1) noise), all in
    vectorised numpy (nilearn's per-voxel Yule-Walker loop is ~10x slower on a full brain).

    Parameters
    ----------
    bold : ndarray, shape (n_frames, n_vox)
        BOLD time series of in-mask voxels.
    regressor : ndarray, shape (n_frames,)
        HRF-convolved regressor of interest.
    nuisance : DataFrame
        Output of :func:`nuisance_design`.
    noise_model : str
        ``ar1`` (prewhitened) or ``ols``.
    ar_bins : int
        Number of autocorrelation levels.

    Returns
    -------
    ndarray, shape (n_vox,)
        z score of the regressor's effect.
    """
    if noise_model not in ("ar1", "ols"):
        raise ValueError(f"noise_model must be 'ar1' or 'ols', got {noise_model!r}.")
    y = np.asarray(bold, float)
    x = np.column_stack([standardize(regressor), nuisance.to_numpy(float)])
    n, p = x.shape
    resid = residualize(y, x)
    if noise_model == "ols":
        return _t_to_z(*_ols_t(x, y), n - p)
    den = (resid**2).sum(0)
    rho = np.where(den > 0, (resid[1:] * resid[:-1]).sum(0) / np.where(den > 0, den, 1), 0)
    levels = np.round(np.clip(rho, -0.99, 0.99) * ar_bins / 2) / (ar_bins / 2)
    z = np.zeros(y.shape[1])
    for level in np.unique(levels):
        cols = np.flatnonzero(levels == level)
        t, _ = _ols_t(_prais_winsten(x, level), _prais_winsten(y[:, cols], level))
        z[cols] = _t_to_z(t, n - p)
    return z


def _prais_winsten(a: np.ndarray, rho: float) -> np.ndarray:
    out = np.empty_like(a)
    out[0] = np.sqrt(1 - rho**2) * a[0]
    out[1:] = a[1:] - rho * a[:-1]
    return out


def _ols_t(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, None]:
    """t statistic of the first column of ``x`` for each column of ``y``."""
    pinv = np.linalg.pinv(x)
    beta = pinv @ y
    dof = x.shape[0] - x.shape[1]
    sigma2 = ((y - x @ beta) ** 2).sum(0) / dof
    var = sigma2 * (pinv @ pinv.T)[0, 0]
    return beta[0] / np.sqrt(np.where(var > 0, var, np.inf)), None


def _t_to_z(t: np.ndarray, dof: int) -> np.ndarray:
    """Convert t to z with matching tail probability (accurate in both tails)."""
    t = np.asarray(t, float)
    return np.sign(t) * stats.norm.isf(stats.t.sf(np.abs(t), dof))


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of a p-value array (any shape)."""
    p = np.asarray(p, float)
    flat = p.ravel()
    order = np.argsort(flat)
    ranked = flat[order] * len(flat) / np.arange(1, len(flat) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(flat)
    out[order] = np.clip(q, 0, 1)
    return out.reshape(p.shape)


def z_to_q(z: np.ndarray) -> np.ndarray:
    """Two-sided p-values of z scores, corrected with :func:`fdr_bh`."""
    return fdr_bh(2 * stats.norm.sf(np.abs(np.asarray(z, float))))


def residualize(y: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Least-squares residuals of the columns of ``y`` on ``design``."""
    return y - design @ (np.linalg.pinv(design) @ y)


def local_correlation(bold: np.ndarray, voxel_regressors: np.ndarray,
                      nuisance: pd.DataFrame, *, regressors_residualized: bool = False
                      ) -> np.ndarray:
    """Pearson r between each voxel's BOLD and its own (co-located source) regressor.

    Parameters
    ----------
    bold : ndarray, shape (n_frames, n_vox)
        BOLD of in-mask voxels.
    voxel_regressors : ndarray, shape (n_frames, n_vox)
        HRF-convolved power of the source at each voxel's position.
    nuisance : DataFrame
        Confounds and drifts removed from both before correlating.
    regressors_residualized : bool
        The regressors already had ``nuisance`` removed (residualising is linear, so it
        can be done on the source grid before interpolation, which is much cheaper).

    Returns
    -------
    ndarray, shape (n_vox,)
    """
    design = nuisance.to_numpy(float)
    a = residualize(np.asarray(bold, float), design)
    b = np.asarray(voxel_regressors, float)
    if not regressors_residualized:
        b = residualize(b, design)
    a -= a.mean(0)
    b -= b.mean(0)
    den = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1), 0.0)


def power_peaks(rr_mm: np.ndarray, values: np.ndarray, *, n_peaks: int = 5,
                min_distance_mm: float = 25.0) -> np.ndarray:
    """Indices of the largest values at least ``min_distance_mm`` apart (greedy)."""
    order = np.argsort(np.asarray(values))[::-1]
    chosen: list[int] = []
    for i in order:
        if all(np.linalg.norm(rr_mm[i] - rr_mm[j]) >= min_distance_mm for j in chosen):
            chosen.append(int(i))
        if len(chosen) == n_peaks:
            break
    return np.asarray(chosen, int)


def source_channel_table(band: str, source_power: np.ndarray, channel_power: np.ndarray,
                         rr_mm: np.ndarray, ch_names: list[str],
                         peaks: np.ndarray) -> pd.DataFrame:
    """Correlation across volume windows of peak-source power with every channel's power.

    Parameters
    ----------
    band : str
        Band name (a column of the table).
    source_power : ndarray, shape (n_win, n_src)
        Source band power.
    channel_power : ndarray, shape (n_win, n_ch)
        Channel band power.
    rr_mm : ndarray, shape (n_src, 3)
        Source positions (MNI mm).
    ch_names : list of str
        Channel names.
    peaks : ndarray of int
        Sources to tabulate (e.g. :func:`power_peaks`).

    Returns
    -------
    DataFrame
        Columns band, source, x, y, z, channel, r (one row per source and channel).
    """
    s = standardize(source_power[:, peaks])
    c = standardize(channel_power)
    r = s.T @ c / len(s)
    rows = []
    for k, idx in enumerate(peaks):
        x, y, z = rr_mm[idx]
        label = f"{band}{k + 1:02d}"
        rows += [(band, label, x, y, z, ch, float(r[k, i])) for i, ch in enumerate(ch_names)]
    return pd.DataFrame(rows, columns=["band", "source", "x", "y", "z", "channel", "r"])


@dataclass
class BandCoupling:
    """Coupling results of one band (voxel arrays follow the source grid's voxel order)."""

    band: str
    z: np.ndarray
    q: np.ndarray
    local_r: np.ndarray
    table: pd.DataFrame
    regressor: np.ndarray


def couple_band(band: str, *, bold: np.ndarray, frame_times: np.ndarray,
                source_power: np.ndarray, channel_power: np.ndarray, hrf: np.ndarray,
                to_voxels, nuisance: pd.DataFrame, rr_mm: np.ndarray, ch_names: list[str],
                n_peaks: int = 5, noise_model: str = "ar1") -> BandCoupling:
    """All coupling statistics of one band.

    Parameters
    ----------
    band : str
        Band name.
    bold : ndarray, shape (n_frames, n_vox)
        In-mask BOLD (voxel order of ``to_voxels``).
    frame_times : ndarray
        Acquisition times.
    source_power, channel_power : ndarray
        (n_win, n_src) and (n_win, n_ch) band power.
    hrf : ndarray, shape (n_frames, n_win)
        From :func:`hrf_matrix`.
    to_voxels : callable
        Maps (..., n_src) to (..., n_vox) (``SourceGrid.to_voxels``).
    nuisance : DataFrame
        From :func:`nuisance_design`.
    rr_mm : ndarray
        Source positions.
    ch_names : list of str
        Channel names.
    n_peaks : int
        Source peaks tabulated against channels.
    noise_model : str
        GLM noise model (``ar1`` or ``ols``).

    Returns
    -------
    BandCoupling
    """
    global_power = standardize(np.nanmean(channel_power, axis=1))
    z = glm_zmap(bold, hrf @ global_power, nuisance, noise_model=noise_model)
    src_reg = residualize(hrf @ standardize(source_power), nuisance.to_numpy(float))
    local_r = local_correlation(bold, to_voxels(src_reg), nuisance, regressors_residualized=True)
    peaks = power_peaks(rr_mm, np.nanmean(source_power, axis=0), n_peaks=n_peaks)
    table = source_channel_table(band, source_power, channel_power, rr_mm, ch_names, peaks)
    q = z_to_q(z)
    logger.info("Band %s: %d voxels with q < 0.05, max |z| %.1f.", band, int((q < 0.05).sum()),
                float(np.abs(z).max()))
    return BandCoupling(band, z, q, local_r, table, standardize(hrf @ global_power))
