"""Effect sizes, permutation nulls, bootstrap intervals and FDR for occlusion effects.

Every quantity is computed per *occurrence* (a unit masked in one window) from the
unmasked predictive Gaussian ``N(m0, v0)`` and the masked one ``N(m1, v1)`` of each output,
then averaged over the occurrences of a unit:

* standardised mean shift ``smd = (m1 - m0) / sqrt(v0)`` (root mean square over the
  outputs of a group, e.g. the channels of an EEG timestamp),
* ``kl = KL(N(m0, v0) || N(m1, v1))`` (summed over a group),
* change of the predictive log-likelihood of the observed value ``y`` of the window,
  ``dll = log N(y; m1, v1) - log N(y; m0, v0)`` (summed over a group).

Significance tests the likelihood drop ``-dll``. The null hypothesis is that the series
of changes a unit causes (one per window it is masked in) carries no information about
the series of observed values. What is exchangeable under it is the *alignment* of the
two series within a run, not single windows: windows overlap and BOLD, EEG power and
stimulus features are autocorrelated, so the value of one window is not exchangeable
with that of a random other window (drawing windows independently underestimates the
variance of a sum over consecutive windows). Shifting the observed series circularly
within each run keeps its autocorrelation, and for a stationary series every shift is as
likely as the observed one; :mod:`bids_app.masking.shift_null` gives the exact mean and
variance over all shifts. ``dll`` is quadratic in ``y`` (``a y^2 + b y + c``), so each
null draw re-evaluates stored coefficients at the values of shifted windows without
another forward pass (:func:`null_draws`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats

_LOG_2PI = float(np.log(2.0 * np.pi))
MEASURES = ("smd", "kl", "dll")


@dataclass
class HeadEffects:
    """Occlusion effects of every unit on every output group of one model head.

    Attributes
    ----------
    kind : str
        Masked units: ``"eeg"`` (timestamps) or ``"fmri"`` (voxels).
    model : str
        ``"vae1"`` or ``"vae2"``.
    head : str
        ``"cross"`` (the other modality), ``"latent"`` or ``"stimulus"``.
    units : numpy.ndarray
        ``(U,)`` unit ids.
    outputs : list of str
        ``G`` output group names.
    n_windows : numpy.ndarray
        ``(U,)`` windows each unit was masked in.
    smd, kl, dll : numpy.ndarray
        ``(U, G)`` means over windows (``smd`` as mean absolute / RMS shift).
    measure : str
        Which of the three is the reported ``effect``.
    ci_low, ci_high : numpy.ndarray
        ``(U, G)`` bootstrap interval of ``effect`` over windows.
    z, p : numpy.ndarray
        ``(U, G)`` likelihood drop standardised against, and one-sided p-value from, the
        circular-shift null (NaN for the latent head, which has no observed value).
    q : numpy.ndarray
        ``(U, G)`` Benjamini-Hochberg q-values over all units x outputs of the head.
    matched_p : numpy.ndarray | None
        ``(G,)`` p-value a unit whose changes track the output's observed series would get
        on these windows (:mod:`bids_app.masking.power`); None where not computed.
    """

    kind: str
    model: str
    head: str
    units: np.ndarray
    outputs: list[str]
    n_windows: np.ndarray
    smd: np.ndarray
    kl: np.ndarray
    dll: np.ndarray
    measure: str = "smd"
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    z: np.ndarray | None = None
    p: np.ndarray | None = None
    q: np.ndarray | None = field(default=None)
    matched_p: np.ndarray | None = None

    @property
    def effect(self) -> np.ndarray:
        """The reported effect size (``smd``, ``kl`` or likelihood drop ``-dll``)."""
        return -self.dll if self.measure == "dll" else getattr(self, self.measure)


def predictive_change(m0, lv0, m1, lv1) -> tuple[np.ndarray, np.ndarray]:
    """Standardised mean shift and KL per occurrence and output group.

    Parameters
    ----------
    m0, lv0, m1, lv1 : numpy.ndarray
        ``(n, G, K)`` means and log-variances before (0) and after (1) masking.

    Returns
    -------
    smd, kl : numpy.ndarray
        ``(n, G)``: RMS over ``K`` of ``(m1 - m0) / sd0``; sum over ``K`` of the KL.
    """
    smd = (m1 - m0) * np.exp(-0.5 * lv0)
    kl = 0.5 * (lv1 - lv0 + (np.exp(lv0) + (m0 - m1) ** 2) * np.exp(-lv1) - 1.0)
    return np.sqrt(np.mean(smd**2, axis=2)), kl.sum(axis=2)


def homoscedastic_stats(m0, m1, lv, y=None):
    """Per-occurrence statistics when masking moves only the predictive means.

    Decoders with a learned, input-independent variance (``lv`` of shape ``(G, K)``,
    identical before and after masking) reduce the KL to ``0.5 d^2 / v`` and ``dll`` to a
    linear function of ``y`` (``a = 0``), which saves most of the elementwise work.

    Returns
    -------
    smd, kl : numpy.ndarray
        ``(n, G)`` as in :func:`predictive_change`.
    b, c : numpy.ndarray
        ``(n, G, K)`` coefficients of ``dll(y) = b y + c``.
    dll : numpy.ndarray | None
        ``(n, G)`` at the observed ``y`` (None without ``y``).
    """
    p = np.exp(-lv)
    d = m1 - m0
    b = d * p
    d2p = d * b
    smd = np.sqrt(d2p.mean(axis=2))
    kl = 0.5 * d2p.sum(axis=2)
    c = np.multiply(d, 0.5, out=d2p)  # reuse buffers: c = -b (m0 + d / 2)
    c += m0
    c *= b
    np.negative(c, out=c)
    dll = None if y is None else (b * y + c).sum(axis=2)
    return smd, kl, b, c, dll


def loglik_coefficients(m0, lv0, m1, lv1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients of ``dll(y) = a y^2 + b y + c`` (per element, shape ``(n, G, K)``)."""
    p0, p1 = np.exp(-lv0), np.exp(-lv1)
    a = -0.5 * (p1 - p0)
    b = m1 * p1 - m0 * p0
    c = -0.5 * (m1**2 * p1 - m0**2 * p0) - 0.5 * (lv1 - lv0)
    return a, b, c


def loglik_change(y, a, b, c) -> np.ndarray:
    """``dll`` summed over the last axis for observed values ``y`` (broadcast)."""
    return (a * y**2 + b * y + c).sum(axis=-1)


def gaussian_loglik(y, m, lv) -> np.ndarray:
    """Elementwise log density of ``y`` under ``N(m, exp(lv))``."""
    return -0.5 * (_LOG_2PI + lv + (y - m) ** 2 * np.exp(-lv))


def segment_sum(values: np.ndarray, starts: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sum of ``values`` over each segment ``starts[i]:starts[i+1]`` along ``axis``.

    Along the first axis of wide arrays, one contiguous ``sum`` per segment is an order of
    magnitude faster than ``np.add.reduceat`` (which walks the rows element by element).
    """
    values = np.asarray(values)
    if axis == 0 and values.ndim > 1 and values[0].size >= 64:
        out = np.empty((len(starts) - 1, *values.shape[1:]), dtype=values.dtype)
        for i in range(len(starts) - 1):
            values[starts[i] : starts[i + 1]].sum(axis=0, out=out[i])
        return out
    return np.add.reduceat(values, starts[:-1], axis=axis)


def segment_mean(values: np.ndarray, starts: np.ndarray, axis: int = 0,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """Mean of ``values`` over each segment ``starts[i]:starts[i+1]`` along ``axis``.

    ``weights`` (0/1, shape of ``values``, first axis only) restricts each mean to the
    observed entries; a segment without any is NaN.
    """
    if weights is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (segment_sum(np.where(weights, values, 0.0), starts)
                    / segment_sum(weights.astype(float), starts))
    sums = segment_sum(values, starts, axis=axis)
    counts = np.diff(starts).astype(float)
    shape = [1] * values.ndim
    shape[axis] = -1
    return sums / counts.reshape(shape)


def null_draws(a, b, c, pool: np.ndarray, starts: np.ndarray, windows: np.ndarray, *,
               budget: int = 2**23) -> np.ndarray:
    """Likelihood drop of each unit for the targets of other (e.g. shifted) windows.

    Parameters
    ----------
    a, b, c : numpy.ndarray
        ``(n, G, K)`` coefficients of the occurrences (grouped by unit by ``starts``).
    pool : numpy.ndarray
        ``(N, G, K)`` observed values of every window.
    starts : numpy.ndarray
        Segment offsets of the units.
    windows : numpy.ndarray
        ``(n_null, n)`` window whose values each occurrence is scored against in each
        draw (see :meth:`bids_app.masking.shift_null.RunCircles.shifted`).

    Returns
    -------
    numpy.ndarray
        ``(n_null, U, G)`` null values of the statistic ``-mean(dll)``.
    """
    a = np.zeros_like(b) if a is None else a
    block = max(1, budget // max(1, a.size))
    out = []
    for k in range(0, len(windows), block):
        y = pool[windows[k : k + block]]
        out.append(-segment_mean(loglik_change(y, a, b, c), starts, axis=1))
    return np.concatenate(out, axis=0)


def bootstrap_ci(values: np.ndarray, starts: np.ndarray, n_boot: int,
                 rng: np.random.Generator, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of each unit's mean over its windows.

    Parameters
    ----------
    values : numpy.ndarray
        ``(n, G)`` per-occurrence effects, grouped by unit by ``starts``.
    starts : numpy.ndarray
        Segment offsets (``U + 1``).
    n_boot : int
        Bootstrap resamples (windows drawn with replacement within each unit).
    rng : numpy.random.Generator
        Source of the resamples.
    level : float
        Coverage of the interval.

    Returns
    -------
    low, high : numpy.ndarray
        ``(U, G)``.
    """
    counts = np.diff(starts)
    unit_of = np.repeat(np.arange(len(counts)), counts)
    draws = rng.random((n_boot, values.shape[0]))
    idx = starts[unit_of] + np.floor(draws * counts[unit_of]).astype(np.int64)
    boot = segment_mean(values[idx], starts, axis=1)
    tail = 100 * (1 - level) / 2
    return np.percentile(boot, tail, axis=0), np.percentile(boot, 100 - tail, axis=0)


def gaussian_pvalues(observed: np.ndarray, mean: np.ndarray, sd: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Upper normal tail p-values and z of ``observed`` given the null mean and SD."""
    z = (observed - mean) / np.where(sd > 0, sd, np.inf)
    return special.ndtr(-z), z


def normal_ci(values: np.ndarray, starts: np.ndarray, level: float = 0.95,
              weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval of each unit's mean over its windows (the bootstrap's stand-in
    for heads with many outputs); a single window gives a zero-width interval.
    ``weights`` (0/1) restricts it to observed entries, as in :func:`segment_mean`."""
    if weights is None:
        n = np.diff(starts).astype(float)[:, None]
    else:
        n = segment_sum(weights.astype(float), starts)
        values = np.where(weights, values, 0.0)
    return normal_ci_from_sums(segment_sum(values, starts), segment_sum(values**2, starts), n,
                               level)


def normal_ci_from_sums(total: np.ndarray, total_sq: np.ndarray, n: np.ndarray,
                        level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval of means from streamed sums (see :func:`normal_ci`).

    Parameters
    ----------
    total, total_sq : numpy.ndarray
        ``(U, G)`` sums of the values and of their squares over each unit's windows.
    n : numpy.ndarray
        Windows per unit, broadcastable to ``(U, G)``.
    level : float
        Coverage of the interval.

    Returns
    -------
    low, high : numpy.ndarray
        ``(U, G)``.
    """
    with np.errstate(invalid="ignore", divide="ignore"):  # no observed window: NaN
        mean = total / n
        ss = total_sq - n * mean**2
        sd = np.sqrt(np.maximum(ss, 0) / np.maximum(n - 1, 1))
        half = stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    return mean - half, mean + half


def permutation_pvalues(observed: np.ndarray, null: np.ndarray, *, method: str = "gaussian"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One-sided p-values of observed statistics against their null draws, and z.

    Parameters
    ----------
    observed : numpy.ndarray
        ``(U, G)`` observed statistics.
    null : numpy.ndarray
        ``(n_null, U, G)`` null statistics.
    method : {"gaussian", "permutation"}
        ``"permutation"``: ``(1 + #null >= obs) / (1 + n_null)`` (exact, but never below
        ``1 / (1 + n_null)``, which limits FDR power over many tests); ``"gaussian"``:
        upper normal tail of ``z = (obs - mean(null)) / sd(null)`` (the statistic is a
        mean over windows and output elements, so its null is close to normal).

    Returns
    -------
    p, z : numpy.ndarray
        ``(U, G)``.
    """
    sd = null.std(axis=0)
    z = (observed - null.mean(axis=0)) / np.where(sd > 0, sd, np.inf)
    if method == "permutation":
        p = (1.0 + (null >= observed[None]).sum(axis=0)) / (1.0 + null.shape[0])
    elif method == "gaussian":
        p = stats.norm.sf(z)
    else:
        raise ValueError(f"method must be 'gaussian' or 'permutation', got {method!r}.")
    return p, z


def fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of all finite entries of ``p`` (NaN kept)."""
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m:  # step-up: q_(i) = min_{j >= i} p_(j) m / j (one sort, no inverse sort)
        pv = p[ok]
        order = np.argsort(pv)  # tied p get equal q in any order
        ranked = pv[order] * (m / np.arange(1, m + 1))
        ranked = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
        q_ok = np.empty(m)
        q_ok[order] = ranked
        q[ok] = q_ok
    return q


def family_qvalues(p: np.ndarray, selected: np.ndarray, *, n_families: int) -> np.ndarray:
    """Benjamini-Bogomolov q-values of the outputs of selected units (NaN elsewhere).

    Within each selected unit (a family, one row of ``p``), Benjamini-Hochberg q-values
    scaled by ``n_families / R`` (``R`` selected families): ``q < alpha`` exactly when BH
    at level ``alpha * R / m`` rejects, which controls the average FDR over the selected
    families (Benjamini & Bogomolov, 2014).
    """
    q = np.full(p.shape, np.nan)
    n_sel = int(np.sum(selected))
    for i in np.flatnonzero(selected):
        q[i] = np.minimum(fdr(p[i]) * n_families / max(n_sel, 1), 1.0)
    return q


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    scores, labels = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
