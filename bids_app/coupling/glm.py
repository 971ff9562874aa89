"""Global and source-resolved EEG-informed GLM with circular-shift inference, vectorised.

Two models per band and voxel v, both after removing the nuisance design N (confounds,
cosine drifts, constant) by least squares and prewhitening with the voxel's AR(p) model
(:mod:`bids_app.coupling.noise`):

* **global**: ``y_v = G gamma + e``, G = the mean-channel band power convolved with each
  HRF basis function;
* **source-resolved**: ``y_v = R_v gamma + L_v delta + e``, L_v = the band power of the
  EEG source at the voxel (trilinear interpolation of the source grid) convolved with the
  same basis; R_v (``covariate_power``, the pipeline's default) = the mean-channel band
  power without the forward projection of the sources that leak into that source's
  estimate (:func:`bids_app.eeg.source.remainder_power`), convolved and interpolated
  alike, or G when not given. The test of ``delta`` asks whether the local source explains
  the voxel beyond the band power of the rest of the brain. (Holding G fixed instead
  removes the local source's own share of the global power from its test: hard simulated
  BOLD, canonical HRF, alpha / beta / theta recall 0.88 / 0.32 / 0.78 with G against
  0.90 / 0.40 / 0.82 with R_v; docs/methods.md.)

With ``shapes`` (the pipeline's default), each test is the largest squared t statistic
over a grid of HRF shapes (peaks 4-9 s, :data:`bids_app.coupling.design.SHAPE_PEAKS_S`),
each shape a fixed linear combination of the basis columns (its least-squares projection
on the basis): a union-intersection test of "some plausible HRF links the voxel to the
EEG". A response close to one shape then keeps nearly the power of a single-regressor t
test, while the F test of all basis columns spends its power on every direction of the
basis (hard simulated BOLD, canonical HRF, same noise model and p-values: alpha / beta /
theta recall 0.83 / 0.56 / 0.28 against 0.71 / 0.46 / 0.20; docs/methods.md). Without
``shapes`` the test is the F test of all basis columns of the tested block (the
derivative "boost" of Calhoun et al. 2004; Lindquist et al. 2009). The sign is that of
the best shape's (or the canonical column's) coefficient.

p-values come from within-run circular shifts of the EEG band power against the BOLD
(the shifted regressor keeps its own autocorrelation, the BOLD keeps its own, and the
link between them is broken). Shifts closer than ``min_shift_s`` to zero, or to a whole
cycle, are excluded so that the HRF-smeared true coupling does not enter its own null.
Every shift repeats the whole procedure, noise model included (AR coefficients from the
residuals of the model with the shifted regressors, the AR order of the observed fit): the
observed statistic is then exchangeable with the shifted ones under the null. (Fitting the
noise model once, after the observed regressors, makes the observed F values larger than
the shifted ones: 6.7-7.2 % of voxels at parametric p < 0.05 under an AR(1) null; fitting
it before any EEG regressor keeps exchangeability but lets planted signal inflate the
autocorrelation and halves recall.) The source-resolved null keeps the observed
covariates (R_v or G). The F statistics of all shifts, at ``n_null_voxels`` voxels spread
evenly over the mask, form one pooled null distribution (prewhitening makes the
statistic's null distribution nearly the same in every voxel). Beyond the pooled null's
99th percentile, where BH at q < .05 over 10^5 tests needs p-values of 10^-4 to 10^-6 that
a few hundred thousand null values cannot resolve, the tail is a generalised Pareto
distribution fitted by maximum likelihood to the top 1 % of the null values (Knijnenburg
et al. 2009; Winkler et al. 2016); with fewer than :data:`MIN_TAIL` exceedances the
empirical p-value is used throughout. The parametric F p-value is returned as a
diagnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse, stats

from bids_app.coupling.design import residualize
from bids_app.coupling.noise import autocovariances, bias_matrix, fit_ar

#: Fraction of the pooled null whose exceedances form the generalised Pareto tail.
TAIL_FRACTION = 0.01
#: Fewest exceedances for a tail fit (below: empirical p-values only).
MIN_TAIL = 100


@dataclass(frozen=True)
class BlockTest:
    """Voxel-wise test of one block of regressors.

    Attributes
    ----------
    f : ndarray, shape (n_vox,)
        F statistic of the block.
    sign : ndarray, shape (n_vox,)
        Sign of the best HRF shape's (without shapes: the canonical-HRF) coefficient.
    p : ndarray, shape (n_vox,)
        p-value of ``stat`` from the pooled circular-shift null (generalised Pareto tail).
    p_parametric : ndarray, shape (n_vox,)
        p-value of ``f`` under F(df_num, df_den).
    df_num, df_den : int
        Degrees of freedom of the F statistic.
    stat : ndarray, shape (n_vox,)
        The tested statistic: the largest squared t over the HRF shapes, or ``f``.
    best_shape : ndarray of int, shape (n_vox,)
        Index of the HRF shape with the largest t (0 without shapes).
    """

    f: np.ndarray
    sign: np.ndarray
    p: np.ndarray
    p_parametric: np.ndarray
    df_num: int
    df_den: int
    stat: np.ndarray | None = None
    best_shape: np.ndarray | None = None


@dataclass(frozen=True)
class CouplingGLM:
    """Result of :func:`fit_coupling_glm` for one band."""

    global_test: BlockTest
    local_test: BlockTest
    ar_order: int
    shifts: np.ndarray


def circular_shifts(n_windows: int, window_s: float, *, n_shifts: int,
                    min_shift_s: float) -> np.ndarray:
    """Evenly spread circular shifts (in windows) at least ``min_shift_s`` from 0 and n.

    For very short runs the margin falls to a quarter of the run.
    """
    margin = max(1, min(int(np.ceil(min_shift_s / window_s)), n_windows // 4))
    candidates = np.arange(margin, n_windows - margin + 1)
    if len(candidates) <= n_shifts:
        return candidates
    return np.unique(np.round(np.linspace(candidates[0], candidates[-1], n_shifts)).astype(int))


def _gram(a: list[np.ndarray], b: list[np.ndarray] | None = None) -> np.ndarray:
    """Per-voxel inner products of (n, n_vox) columns, shape (n_vox, len(a), len(b)).

    ``b=None`` is the symmetric Gram matrix of ``a`` (each product computed once).
    """
    sym = b is None
    b = a if b is None else b
    out = np.empty((a[0].shape[1], len(a), len(b)))
    for i, u in enumerate(a):
        for j, v in enumerate(b):
            if sym and j < i:
                out[:, i, j] = out[:, j, i]
            else:
                out[:, i, j] = np.einsum("tv,tv->v", u, v)
    return out


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched ``a^-1 b`` for small symmetric positive (semi)definite ``a``."""
    ridge = 1e-10 * np.trace(a, axis1=1, axis2=2)[:, None, None] + 1e-300
    return np.linalg.solve(a + ridge * np.eye(a.shape[-1]), b)


def _tested_block(yy: np.ndarray, xy: np.ndarray, xx: np.ndarray, covariates: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cross-products of the tested block after partialling out the covariates.

    Returns ``tt`` (n_vox, q, q), ``ty`` (n_vox, q), the block's coefficients ``beta``
    (n_vox, q), its extra sum of squares (n_vox,) and the full model's residual sum of
    squares (n_vox,), for the arguments of :func:`block_f`.
    """
    c = covariates
    q = xx.shape[-1] - c
    tt, ty = xx[:, c:, c:], xy[:, c:]
    if c:
        ct = _solve(xx[:, :c, :c], np.concatenate([xx[:, :c, c:], xy[:, :c, None]], -1))
        tt = tt - np.einsum("vci,vcj->vij", xx[:, :c, c:], ct[..., :q])
        ty = ty - np.einsum("vci,vc->vi", xx[:, :c, c:], ct[..., q])
        yy = yy - np.einsum("vc,vc->v", xy[:, :c], ct[..., q])
    beta = _solve(tt, ty[..., None])[..., 0]
    extra = (beta * ty).sum(1)
    rss = np.maximum(yy - extra, 1e-12 * np.abs(yy) + 1e-300)
    return tt, ty, beta, extra, rss


def block_f(yy: np.ndarray, xy: np.ndarray, xx: np.ndarray, *, covariates: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """F ratio of the last block of regressors, from per-voxel Gram matrices.

    Parameters
    ----------
    yy : ndarray, shape (n_vox,)
        Sum of squares of the (whitened) data.
    xy : ndarray, shape (n_vox, k)
        Regressors' inner products with the data.
    xx : ndarray, shape (n_vox, k, k)
        Regressors' Gram matrix; the first ``covariates`` columns are kept, the others
        tested (Frisch-Waugh-Lovell: the tested block is tested after the covariates).
    covariates : int
        Number of covariates.

    Returns
    -------
    ratio : ndarray, shape (n_vox,)
        ``(extra sum of squares / q) / residual sum of squares``; F = ratio * dof.
    canonical : ndarray, shape (n_vox,)
        Coefficient of the first tested column.
    """
    q = xx.shape[-1] - covariates
    _, _, beta, extra, rss = _tested_block(yy, xy, xx, covariates)
    return extra / q / rss, beta[:, 0]


def block_max_t(yy: np.ndarray, xy: np.ndarray, xx: np.ndarray, contrasts: np.ndarray, *,
                covariates: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """F ratio and largest squared t over ``contrasts`` of the last block of regressors.

    Parameters are those of :func:`block_f`, plus ``contrasts`` (n_shapes, k - covariates):
    each row a direction in the tested block's coefficient space. The t statistic of
    contrast ``a`` is that of the single regressor ``X a`` after the covariates, with the
    residual variance of the full model: ``t^2 = (a'X'y)^2 / (a'X'X a) / (rss / dof)``.

    Returns
    -------
    f_ratio : ndarray, shape (n_vox,)
        As :func:`block_f` (F = f_ratio * dof).
    t2_ratio : ndarray, shape (n_vox,)
        ``max_a (a'X'y)^2 / (a'X'X a) / rss`` (t^2 = t2_ratio * dof).
    sign : ndarray, shape (n_vox,)
        Sign of ``a'X'y`` for the best contrast.
    best : ndarray of int, shape (n_vox,)
        Index of the best contrast.
    """
    q = xx.shape[-1] - covariates
    tt, ty, _, extra, rss = _tested_block(yy, xy, xx, covariates)
    num = ty @ contrasts.T
    den = np.einsum("ki,vij,kj->vk", contrasts, tt, contrasts)
    t2 = num**2 / np.maximum(den, 1e-300)
    best = np.argmax(t2, axis=1)
    sign = np.sign(np.take_along_axis(num, best[:, None], 1)[:, 0])
    return extra / q / rss, t2.max(1) / rss, sign, best


def shape_contrasts(hrf: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Unit-norm least-squares coefficients of each HRF shape on the basis.

    Parameters
    ----------
    hrf : ndarray, shape (n_basis, n_frames, n_win)
        Basis (:func:`bids_app.coupling.design.hrf_matrix`).
    shapes : ndarray, shape (n_shapes, n_frames, n_win)
        Shapes (:func:`bids_app.coupling.design.hrf_shapes`).

    Returns
    -------
    ndarray, shape (n_shapes, n_basis)
    """
    basis = np.asarray(hrf, float).reshape(len(hrf), -1).T
    target = np.asarray(shapes, float).reshape(len(shapes), -1).T
    coefs = np.linalg.lstsq(basis, target, rcond=None)[0].T
    return coefs / np.linalg.norm(coefs, axis=1, keepdims=True)


def _tail_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Pooled-null p-values with a generalised Pareto tail above the top ``TAIL_FRACTION``.

    Below the threshold (and when fewer than ``MIN_TAIL`` values exceed it, or the fit
    fails) the p-value is :func:`_pooled_p`'s.
    """
    null = np.sort(np.asarray(null, float))
    p = _pooled_p(observed, null)
    n_tail = int(TAIL_FRACTION * len(null))
    if n_tail < MIN_TAIL:
        return p
    threshold = null[-n_tail - 1]
    try:
        shape, _, scale = stats.genpareto.fit(null[-n_tail:] - threshold, floc=0)
    except (ValueError, RuntimeError):  # pragma: no cover - degenerate null
        return p
    if not (np.isfinite(shape) and np.isfinite(scale) and scale > 0):
        return p
    above = observed > threshold
    frac = n_tail / (1.0 + len(null))
    p[above] = np.clip(frac * stats.genpareto.sf(observed[above] - threshold, shape, 0,
                                                 scale), 1e-300, 1.0)
    return p


def _pooled_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """P(null >= observed), with the observed value counted once (never 0)."""
    null = np.sort(null)
    exceed = len(null) - np.searchsorted(null, observed, side="left")
    return (1.0 + exceed) / (1.0 + len(null))


def fit_coupling_glm(bold: np.ndarray, hrf: np.ndarray, global_power: np.ndarray,
                     source_power: np.ndarray, weights: sparse.spmatrix, nuisance: np.ndarray,
                     *, window_s: float, n_shifts: int = 20, min_shift_s: float = 30.0,
                     max_ar_order: int = 4, n_null_voxels: int = 10000,
                     shapes: np.ndarray | None = None,
                     covariate_power: np.ndarray | None = None) -> CouplingGLM:
    """Global and source-resolved tests of one band, with circular-shift p-values.

    Parameters
    ----------
    bold : ndarray, shape (n_frames, n_vox)
        In-mask BOLD.
    hrf : ndarray, shape (n_basis, n_frames, n_win)
        From :func:`bids_app.coupling.design.hrf_matrix`.
    global_power : ndarray, shape (n_win,)
        Standardised mean-channel band power.
    source_power : ndarray, shape (n_win, n_src)
        Standardised source band power.
    weights : sparse matrix, shape (n_vox, n_src)
        Source grid -> voxel interpolation.
    nuisance : ndarray, shape (n_frames, n_nuisance)
        Confounds, drifts and constant.
    window_s : float
        Window length (one TR).
    n_shifts : int
        Circular shifts in the null.
    min_shift_s : float
        Smallest shift.
    max_ar_order : int
        Highest AR order considered.
    n_null_voxels : int
        Voxels (evenly spread over the mask) whose shifted statistics form the null; the
        pooled null has ``n_shifts * n_null_voxels`` values.
    shapes : ndarray, shape (n_shapes, n_frames, n_win), optional
        HRF shapes (:func:`bids_app.coupling.design.hrf_shapes`): the tested statistic is
        the largest squared t over them; None: the F statistic of the basis.
    covariate_power : ndarray, shape (n_win, n_src), optional
        Standardised band power that each voxel's source-resolved test holds fixed, per
        source (interpolated and convolved as ``source_power``); None: the global power.

    Returns
    -------
    CouplingGLM
    """
    n, n_vox = bold.shape
    n_basis = hrf.shape[0]
    n_win = len(global_power)
    y = residualize(np.asarray(bold, float), nuisance)
    contrasts = (np.eye(n_basis)[:1] if shapes is None or len(shapes) == 0
                 else shape_contrasts(hrf, shapes))
    use_t = shapes is not None and len(shapes) > 0

    def regressors(shift: int, voxels: np.ndarray | slice = slice(None)
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
        glob = residualize(np.stack([h @ np.roll(global_power, shift) for h in hrf], 1),
                           nuisance)
        src = _per_source(np.roll(source_power, shift, axis=0), hrf, nuisance)
        return glob, _at_voxels(src, weights, voxels)

    # per-source covariates, convolved and residualised once (never shifted)
    cov_src = None if covariate_power is None else _per_source(covariate_power, hrf, nuisance)
    glob0, loc0 = regressors(0)
    max_order = max(1, min(max_ar_order, (n - nuisance.shape[1] - 2 * n_basis) // 4))
    observed = _whitened_tests(
        y, glob0, loc0, nuisance, max_order, contrasts=contrasts,
        local_covariates=None if cov_src is None else _at_voxels(cov_src, weights, slice(None)))
    order = observed.order
    df_den_global = n - order - np.linalg.matrix_rank(nuisance) - n_basis
    df_den_local = df_den_global - n_basis
    null_voxels = np.unique(np.linspace(0, n_vox - 1, min(n_null_voxels, n_vox)).astype(int))
    y_null = y[:, null_voxels]
    shifts = circular_shifts(n_win, window_s, n_shifts=n_shifts, min_shift_s=min_shift_s)
    null = {"global": [], "local": []}
    cov_null = None if cov_src is None else _at_voxels(cov_src, weights, null_voxels)
    for shift in shifts:
        glob, loc = regressors(int(shift), null_voxels)
        # each null repeats the whole procedure (noise model included) on shifted regressors;
        # the source-resolved null keeps the observed covariates
        shifted = _whitened_tests(y_null, glob, loc, nuisance, max_order, order=order,
                                  contrasts=contrasts, tests=("global",))
        null["global"].append(shifted.global_t2 if use_t else shifted.global_ratio)
        local = _whitened_tests(y_null, glob0, loc, nuisance, max_order, order=order,
                                contrasts=contrasts, local_covariates=cov_null,
                                tests=("local",))
        null["local"].append(local.local_t2 if use_t else local.local_ratio)
    tests = {}
    for kind, dof in (("global", df_den_global), ("local", df_den_local)):
        f_obs = getattr(observed, f"{kind}_ratio") * dof
        stat = getattr(observed, f"{kind}_t2") * dof if use_t else f_obs
        pooled = np.concatenate(null[kind]) * dof if len(shifts) else np.zeros(0)
        tests[kind] = BlockTest(
            f=f_obs, sign=np.where(getattr(observed, f"{kind}_sign") < 0, -1.0, 1.0),
            p=_tail_p(stat, pooled) if len(pooled) else np.ones(n_vox),
            p_parametric=stats.f.sf(f_obs, n_basis, max(dof, 1)), df_num=n_basis,
            df_den=int(dof), stat=stat, best_shape=getattr(observed, f"{kind}_best"))
    return CouplingGLM(tests["global"], tests["local"], order, shifts)


def _per_source(power: np.ndarray, hrf: np.ndarray, nuisance: np.ndarray) -> list[np.ndarray]:
    """Per-source ``power`` (n_win, n_src) convolved with each HRF basis function, the
    nuisance regressed out: n_basis arrays (n_frames, n_src)."""
    return [residualize(h @ power, nuisance) for h in hrf]


def _at_voxels(per_source: list[np.ndarray], weights: sparse.spmatrix,
               voxels: np.ndarray | slice) -> list[np.ndarray]:
    """Per-source regressors interpolated at ``voxels``: arrays (n_frames, n_vox)."""
    w = weights[voxels]
    return [np.ascontiguousarray((w @ r.T).T) for r in per_source]


@dataclass(frozen=True)
class _Ratios:
    global_ratio: np.ndarray | None
    global_t2: np.ndarray | None
    global_sign: np.ndarray | None
    global_best: np.ndarray | None
    local_ratio: np.ndarray | None
    local_t2: np.ndarray | None
    local_sign: np.ndarray | None
    local_best: np.ndarray | None
    order: int


def _whitened_tests(y: np.ndarray, glob: np.ndarray, loc: list[np.ndarray],
                    nuisance: np.ndarray, max_order: int, order: int | None = None, *,
                    contrasts: np.ndarray, local_covariates: list[np.ndarray] | None = None,
                    tests: tuple[str, ...] = ("global", "local")) -> _Ratios:
    """Noise model from the residuals of ``[glob, loc]``, then both tests, per voxel.

    ``y``, ``glob`` (n, n_basis) and ``loc`` (n_basis arrays (n, n_vox)) have the nuisance
    regressed out. The global test is ``glob`` alone; the source-resolved test is ``loc``
    beside ``local_covariates`` (n_basis arrays (n, n_vox), nuisance regressed out; None:
    ``glob``). ``order`` fixes the AR order (None: chosen by AIC). ``contrasts``
    (n_shapes, n_basis) are the HRF shapes of the max-t statistic (a single canonical row:
    the sign of the canonical coefficient). ``tests`` names the tests computed (the fields
    of the others are None).
    """
    n_basis = glob.shape[1]
    cols = [np.broadcast_to(c[:, None], y.shape) for c in glob.T] + loc
    beta = _solve(_gram(cols), _gram(cols, [y]))[..., 0]
    resid = y - sum(c * b for c, b in zip(cols, beta.T))
    ar = fit_ar(autocovariances(resid, max_order),
                bias_matrix(np.column_stack([nuisance, glob]), max_order), len(y),
                max_order=max_order, order=order)
    yw, f_test = ar.whiten(y), len(contrasts) == 1 and n_basis > 1
    yy = (yw**2).sum(0)
    need_glob = "global" in tests or local_covariates is None
    wglob = [ar.whiten_shared(c) for c in glob.T] if need_glob else []
    g = loc_t = (None, None, None, None)
    if "local" in tests:
        # the source-resolved block's covariates: the global columns or per-voxel ones
        covs = wglob if local_covariates is None else [ar.whiten(c) for c in local_covariates]
        cols = covs + [ar.whiten(c) for c in loc]
        xx, xy = _gram(cols), _gram(cols, [yw])[..., 0]
        loc_t = block_max_t(yy, xy, xx, contrasts, covariates=n_basis)
        if f_test:  # F test: sign of the canonical coefficient
            loc_t = (loc_t[0], loc_t[1], np.sign(block_f(yy, xy, xx, covariates=n_basis)[1]),
                     loc_t[3])
    if "global" in tests:
        if "local" in tests and local_covariates is None:
            gxx, gxy = xx[:, :n_basis, :n_basis], xy[:, :n_basis]
        else:
            gxx, gxy = _gram(wglob), _gram(wglob, [yw])[..., 0]
        g = block_max_t(yy, gxy, gxx, contrasts)
        if f_test:
            g = (g[0], g[1], np.sign(block_f(yy, gxy, gxx)[1]), g[3])
    return _Ratios(g[0], g[1], g[2], g[3], loc_t[0], loc_t[1], loc_t[2], loc_t[3], ar.order)
