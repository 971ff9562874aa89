"""BOLD noise model: per-voxel AR(p) prewhitening, bias-corrected, order chosen from the data.

BOLD noise is autocorrelated; ordinary least squares then underestimates the variance of
an effect and inflates false positives (Purdon & Weisskoff 1998). Each voxel's residual
autocovariances up to ``max_order`` are computed from a first-pass least-squares fit and
corrected for the bias that the fitted design (drifts, confounds, regressors) introduces,
by solving ``E[a_l] = sum_j gamma_j tr(R D_l R (D_j + D_j'))`` for the noise
autocovariances ``gamma`` (R: residual-forming matrix, D_l: lag-l shift; Worsley et al.
2002). The AR order is the one with the smallest Akaike criterion averaged over voxels
(the same order for the whole run, as in AFNI's 3dREMLfit and FSL FILM's single model);
each voxel gets its own Yule-Walker coefficients (Levinson-Durbin, vectorised over voxels)
and data and design are whitened by that voxel's filter (the first ``p`` frames are
dropped, so the degrees of freedom fall by ``p``; Woolrich et al. 2001).

A voxel's autocorrelations estimated from ~100 frames are noisy (standard error about
``1/sqrt(n)``, Bartlett 1946), and the variance of a slow (HRF-convolved) regressor's
effect depends steeply on them, so estimation noise alone makes the statistics of some
voxels too large and others too small: a heavy-tailed pooled null. By default
(``shrink=True``) every voxel's bias-corrected autocorrelation at each lag is shrunk
towards the mean over voxels by the empirical-Bayes (James-Stein) factor
``1 - s^2 / var``, where ``var`` is the spread of the estimates over voxels and ``s^2``
their sampling variance from Bartlett's formula: voxels keep their own value where the
spread exceeds the sampling noise, and borrow strength where it does not (the spatial
regularisation of Worsley et al. 2002 and Woolrich et al. 2001, without needing
neighbours; Efron & Morris 1973).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ARModel:
    """Per-voxel AR(p) whitening filters.

    Attributes
    ----------
    coefs : ndarray, shape (n_vox, order)
        ``e_t = y_t - sum_k coefs[:, k-1] y_{t-k}``.
    order : int
        AR order chosen for the run.
    """

    coefs: np.ndarray
    order: int

    def whiten(self, x: np.ndarray) -> np.ndarray:
        """Whiten an (n_frames, n_vox) array voxel by voxel (``order`` fewer frames)."""
        p = self.order
        out = np.array(x[p:], dtype=float)
        for k in range(1, p + 1):
            out -= self.coefs[:, k - 1] * x[p - k: len(x) - k]
        return out

    def whiten_shared(self, x: np.ndarray) -> np.ndarray:
        """Whiten one (n_frames,) regressor shared by all voxels, (n_frames - order, n_vox)."""
        p = self.order
        out = np.repeat(np.asarray(x[p:], float)[:, None], len(self.coefs), axis=1)
        for k in range(1, p + 1):
            out -= self.coefs[:, k - 1] * np.asarray(x[p - k: len(x) - k], float)[:, None]
        return out


def autocovariances(resid: np.ndarray, max_lag: int) -> np.ndarray:
    """Sums ``a_l = sum_t r_t r_{t+l}`` for l = 0..max_lag of each column, (n_vox, max_lag+1)."""
    n = len(resid)
    return np.stack([(resid[: n - lag] * resid[lag:]).sum(0) for lag in range(max_lag + 1)],
                    axis=1)


def bias_matrix(design: np.ndarray, max_lag: int) -> np.ndarray:
    """Matrix M with ``E[a] = M gamma`` for residuals of ``design`` (Worsley et al. 2002).

    ``M[l, j] = tr(R D_l R V_j)``, V_0 = I and V_j = D_j + D_j' (lag-j shift D_j).
    """
    n = len(design)
    resid_forming = np.eye(n) - design @ np.linalg.pinv(design)
    m = np.empty((max_lag + 1, max_lag + 1))
    for lag in range(max_lag + 1):
        left = resid_forming @ np.eye(n, k=lag) @ resid_forming
        m[lag] = [np.trace(left) if j == 0 else np.trace(left, j) + np.trace(left, -j)
                  for j in range(max_lag + 1)]
    return m


def levinson_durbin(rho: np.ndarray, max_order: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Yule-Walker AR fits of every order 1..max_order, vectorised over voxels.

    Parameters
    ----------
    rho : ndarray, shape (n_vox, max_order + 1)
        Autocorrelations (``rho[:, 0] == 1``).
    max_order : int
        Highest order.

    Returns
    -------
    coefs : list of ndarray
        ``coefs[p-1]`` has shape (n_vox, p).
    error : ndarray, shape (n_vox, max_order)
        Innovation variance relative to the variance, per order.
    """
    n_vox = len(rho)
    a = np.zeros((n_vox, 0))
    err = np.ones(n_vox)
    coefs, errors = [], []
    for k in range(1, max_order + 1):
        acc = rho[:, k] - (a * rho[:, k - 1: 0: -1]).sum(1) if k > 1 else rho[:, 1].copy()
        refl = np.clip(acc / err, -0.99, 0.99)
        a = np.column_stack([a - refl[:, None] * a[:, ::-1], refl])
        err = err * (1 - refl**2)
        coefs.append(a)
        errors.append(err)
    return coefs, np.column_stack(errors)


def shrink_autocorrelations(rho: np.ndarray, n_dof: float) -> np.ndarray:
    """Empirical-Bayes shrinkage of per-voxel autocorrelations towards their mean.

    Parameters
    ----------
    rho : ndarray, shape (n_vox, max_lag + 1)
        Autocorrelations (``rho[:, 0] == 1``).
    n_dof : float
        Residual degrees of freedom of the series they were estimated from.

    Returns
    -------
    ndarray, shape (n_vox, max_lag + 1)
        ``mean + w_l (rho - mean)`` per lag l, ``w_l = max(0, 1 - s_l^2 / var_l)``, with
        Bartlett's sampling variance ``s_l^2 = (1 + 2 sum_{j<l} mean_j^2) / n_dof``.
    """
    rho = np.asarray(rho, float)
    if len(rho) < 3:
        return rho
    mean, spread = rho.mean(0), rho.var(0)
    bartlett = (1 + 2 * np.concatenate([[0.0, 0.0], np.cumsum(mean[1:] ** 2)[:-1]]))
    weight = np.clip(1 - bartlett / max(n_dof, 1.0) / np.maximum(spread, 1e-12), 0.0, 1.0)
    weight[0] = 1.0
    out = mean + weight * (rho - mean)
    out[:, 0] = 1.0
    return out


def fit_ar(autocov: np.ndarray, bias: np.ndarray, n_frames: int, *, max_order: int,
           order: int | None = None, shrink: bool = True) -> ARModel:
    """Bias-corrected AR model of every voxel, order chosen by the mean Akaike criterion.

    Parameters
    ----------
    autocov : ndarray, shape (n_vox, max_order + 1)
        From :func:`autocovariances` of first-pass residuals.
    bias : ndarray, shape (max_order + 1, max_order + 1)
        From :func:`bias_matrix` of the first-pass design.
    n_frames : int
        Length of the series.
    max_order : int
        Highest AR order considered (at least 1).
    order : int or None
        Use this order instead of choosing one.
    shrink : bool
        Shrink the autocorrelations towards their mean over voxels
        (:func:`shrink_autocorrelations`).

    Returns
    -------
    ARModel
    """
    gamma = np.linalg.solve(bias, autocov.T).T
    gamma0 = np.where(gamma[:, :1] > 0, gamma[:, :1], 1.0)
    rho = np.clip(gamma / gamma0, -0.99, 0.99)
    rho[:, 0] = 1.0
    if shrink:
        # bias[0, 0] = tr(R): the residual degrees of freedom of the first-pass fit
        rho = shrink_autocorrelations(rho, float(bias[0, 0]))
    coefs, error = levinson_durbin(rho, max_order)
    orders = np.arange(1, max_order + 1)
    aic = (n_frames * np.log(np.maximum(error, 1e-12)) + 2 * orders).mean(0)
    best = int(orders[np.argmin(aic)]) if order is None else order
    return ARModel(coefs[best - 1], best)
