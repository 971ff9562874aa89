"""Design of the coupling GLM: acquisition times, HRF basis, drifts and confounds.

Band power per volume window is convolved with an HRF basis (nilearn's
``compute_regressor``) and sampled at the BOLD acquisition times (volume onset +
slice-time reference). The default basis is the SPM canonical HRF with its temporal and
dispersion derivatives (Friston et al. 1998), so a response that peaks earlier or later, or
is wider, than the canonical one is still captured by the span of the three columns.
:func:`hrf_shapes` gives the responses of a grid of double-gamma HRFs peaking at 4-9 s
(:data:`SHAPE_PEAKS_S`), whose projections on the basis are the directions the coupling
test maximises over (:func:`bids_app.coupling.glm.shape_contrasts`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd
from nilearn.glm.first_level import compute_regressor, make_first_level_design_matrix
from scipy import stats

logger = logging.getLogger(__name__)

#: Prefix of the one-volume spike columns (fMRIPrep's ``motion_outlierNN``).
SPIKE_PREFIX = "motion_outlier"
#: Peak times (s) of the HRF shapes of the coupling test: the canonical 5 s and the range
#: of regions and subjects (Handwerker et al. 2004) up to the late responses of issue 15.
SHAPE_PEAKS_S = (4.0, 5.0, 6.0, 7.0, 8.0, 9.0)


def _double_gamma(t_r: float, oversampling: int = 50, *, peak_s: float = 5.0,
                  time_length: float = 32.0) -> np.ndarray:
    """SPM-like double-gamma HRF peaking at ``peak_s`` (undershoot 10 s later, ratio 1/6)."""
    t = np.linspace(0, time_length, int(np.rint(time_length * oversampling / t_r)))
    h = stats.gamma.pdf(t, peak_s + 1.0) - stats.gamma.pdf(t, peak_s + 11.0) / 6.0
    return h / h.sum()


def acquisition_times(volume_onsets_s: np.ndarray, slice_time_ref_s: float) -> np.ndarray:
    """Time (EEG clock) that each BOLD volume represents."""
    return np.asarray(volume_onsets_s, float) + float(slice_time_ref_s)


def hrf_matrix(window_onsets_s: np.ndarray, window_length_s: float, frame_times: np.ndarray,
               *, hrf_model: str | Callable = "spm", oversampling: int = 16) -> np.ndarray:
    """Linear maps from per-window power to HRF-convolved regressors at ``frame_times``.

    Column j of basis function b is the response (nilearn ``compute_regressor``) to a unit
    block covering window j, so ``hrf_matrix(...)[b] @ power`` convolves any power series
    with basis function b exactly.

    Parameters
    ----------
    window_onsets_s : ndarray, shape (n_win,)
        Window starts.
    window_length_s : float
        Window length.
    frame_times : ndarray, shape (n_frames,)
        BOLD acquisition times.
    hrf_model : str or callable
        nilearn HRF model (``spm``, ``spm + derivative``, ``spm + derivative + dispersion``,
        ``glover``..., or a kernel function ``f(t_r, oversampling)``). The first basis
        function is always the canonical response.
    oversampling : int
        Temporal oversampling of the convolution.

    Returns
    -------
    ndarray, shape (n_basis, n_frames, n_win)
    """
    frame_times = np.asarray(frame_times, float)
    columns = []
    for onset in np.asarray(window_onsets_s, float):
        cond = np.array([[onset], [window_length_s], [1.0]])
        reg, _ = compute_regressor(cond, hrf_model, frame_times, oversampling=oversampling,
                                   min_onset=-24)
        columns.append(reg)
    return np.stack(columns, axis=-1).transpose(1, 0, 2)


def _peaking_at(peak_s: float) -> Callable:
    """Kernel function ``f(t_r, oversampling)`` of :func:`_double_gamma` (named for nilearn)."""
    def kernel(t_r: float, oversampling: int = 50) -> np.ndarray:
        return _double_gamma(t_r, oversampling, peak_s=peak_s)
    kernel.__name__ = f"hrf_peak_{peak_s:g}s"
    return kernel


def hrf_shapes(window_onsets_s: np.ndarray, window_length_s: float, frame_times: np.ndarray,
               *, peaks_s: tuple[float, ...] = SHAPE_PEAKS_S, oversampling: int = 16
               ) -> np.ndarray:
    """:func:`hrf_matrix` of double-gamma HRFs peaking at each of ``peaks_s``.

    Returns
    -------
    ndarray, shape (len(peaks_s), n_frames, n_win)
    """
    return np.concatenate([
        hrf_matrix(window_onsets_s, window_length_s, frame_times, oversampling=oversampling,
                   hrf_model=_peaking_at(float(peak)))
        for peak in peaks_s]) if len(peaks_s) else np.zeros((0, len(frame_times),
                                                               len(window_onsets_s)))


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


def select_confounds(confounds: pd.DataFrame | None, names: tuple[str, ...] | list[str]
                     ) -> pd.DataFrame | None:
    """Columns of ``confounds`` named in ``names``; a name ending in ``*`` is a prefix.

    ``motion_outlier*`` picks every spike column (``motion_outlier00``, ...), however many
    the run has. Columns keep the order of ``names``; missing ones are skipped.
    """
    if confounds is None:
        return None
    cols: list[str] = []
    for name in names:
        if name.endswith("*"):
            cols += [c for c in confounds.columns if str(c).startswith(name[:-1])]
        elif name in confounds.columns:
            cols.append(name)
    return confounds[list(dict.fromkeys(cols))]


def residual_dof(n_frames: int, nuisance: np.ndarray, n_basis: int, max_ar_order: int
                 ) -> int:
    """Residual degrees of freedom of the source-resolved test (global + local blocks)."""
    return int(n_frames - np.linalg.matrix_rank(nuisance) - 2 * n_basis - max_ar_order)


def run_nuisance(frame_times: np.ndarray, confounds: pd.DataFrame | None,
                 names: tuple[str, ...] | list[str], *, high_pass_hz: float, n_basis: int,
                 max_ar_order: int) -> pd.DataFrame:
    """Nuisance design of one run from the configured confound ``names``.

    Spike columns (``motion_outlier*``) remove one volume each; when they would leave the
    source-resolved test fewer than 2 residual degrees of freedom
    (:func:`residual_dof`), they are dropped with a warning and the other confounds kept.
    """
    conf = select_confounds(confounds, names)
    if conf is not None:
        conf = conf.iloc[: len(frame_times)]
    design = nuisance_design(frame_times, conf, high_pass_hz=high_pass_hz)
    spikes = [] if conf is None else [c for c in conf.columns
                                      if str(c).startswith(SPIKE_PREFIX)]
    if spikes and residual_dof(len(frame_times), design.to_numpy(float), n_basis,
                               max_ar_order) < 2:
        logger.warning("Dropping %d motion-outlier spike columns: with them the coupling "
                       "GLM of %d volumes would have fewer than 2 residual degrees of "
                       "freedom.", len(spikes), len(frame_times))
        design = nuisance_design(frame_times, conf.drop(columns=spikes),
                                 high_pass_hz=high_pass_hz)
    return design


def residualize(y: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Least-squares residuals of the columns of ``y`` on ``design``."""
    return y - design @ (np.linalg.pinv(design) @ y)
