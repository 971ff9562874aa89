"""What the held-out windows let the circular-shift null detect: the matched-unit bound.

A masking test asks whether the series of changes a unit causes (one per window it is
masked in) is aligned with the observed series of an output, against every circular
shift of the observed series within its run (:mod:`bids_app.masking.shift_null`). How
small its p-value can get depends on the observed series: a smooth series looks much the
same at many shifts, so even a perfectly aligned unit stands out little. The *matched
unit* of an output is one whose change in every window equals the run-centred observed
value of that window, as the change of a unit that carries the output's signal follows
that signal (a voxel whose BOLD follows a stimulus feature, an EEG timestamp inside a
response). Its z-score is

    z = sum_w yc_w^2 / sqrt(mean_s (sum_w yc_w yc_{w+s})^2)

summed over runs (``r`` below is the circular autocorrelation of the run): ``z^2 = L /
sum_s r(s)^2``, which for a stationary series is about half the effective number of
windows ``n_eff`` of Bartlett (1935) (``L (1 - rho^2) / (1 + rho^2)`` for AR(1)), as the
sample cross-products at the other shifts are of order ``sqrt(L)``, not zero. A
unit masked in only ``m`` windows (an EEG timestamp sits in the consecutive windows that
cover it) is matched on its ``m`` windows; its bound is the best placement in any run.
The matched z is not a hard ceiling (a unit whose changes follow a *whitened* copy of the
series could exceed it), but it is what a unit that tracks the output achieves, and real
units track it imperfectly (their z shrinks with their correlation with the series).

Benjamini-Hochberg declares a unit x output pair at level ``alpha`` among ``m`` tests only
if its p is at most ``alpha * k / m`` with ``k`` pairs declared; :func:`power_summary`
turns the matched p into the number of matched-strength pairs needed before any is
declared, and flags outputs where even a matched unit has ``p > alpha`` (no discovery is
possible there, whatever the model learns).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from bids_app.masking.shift_null import CircularShiftNull
from bids_app.masking.statistics import segment_sum


def matched_z_at(null: CircularShiftNull, win: np.ndarray, starts: np.ndarray,
                 k: int = 0) -> np.ndarray:
    """z-score of units matched on given windows: each occurrence's change equals the
    run-centred observed value of its window.

    Parameters
    ----------
    null : CircularShiftNull
        Null of one head.
    win : numpy.ndarray
        ``(n,)`` window of every occurrence, grouped by unit (windows on class ``k``'s
        circles).
    starts : numpy.ndarray
        ``(U + 1,)`` segment offsets of the units.
    k : int
        Observation class of the groups (see :class:`CircularShiftNull`).

    Returns
    -------
    numpy.ndarray
        ``(U, G_k)`` z-scores (NaN where the null variance is zero).
    """
    groups, circles = null.classes[k]
    centred = np.zeros((len(circles.run), len(groups), null.group_size))
    for r, members in enumerate(circles.windows):
        centred[members] = null.centred_values(r, k)
    coef = centred[win]
    signal = segment_sum((coef**2).sum(axis=-1), starts)
    var = null.variance(coef, win, starts, k=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, signal / np.sqrt(np.maximum(var, 0.0)), np.nan)


def matched_unit_z(null: CircularShiftNull, occurrences: int | None = None) -> np.ndarray:
    """z-score of the matched unit of every output group under the circular-shift null.

    Parameters
    ----------
    null : CircularShiftNull
        Null of one head (its observed values, runs and circles).
    occurrences : int | None
        Windows a unit is masked in, consecutive within one run (EEG timestamps): the best
        placement in any run; None: every window (voxels), the runs summed.

    Returns
    -------
    numpy.ndarray
        ``(G,)`` z-scores (NaN for a group that is constant within every run).
    """
    out = np.full(null.n_groups, np.nan)
    for k, (groups, circles) in enumerate(null.classes):
        if not circles.windows:
            continue
        if occurrences is None:  # one unit in every window of every run
            placements = [np.concatenate(circles.windows)]
        else:
            placements = [members[first : first + min(occurrences, len(members))]
                          for members in circles.windows
                          for first in range(len(members) - min(occurrences, len(members))
                                             + 1)]
        starts = np.concatenate([[0], np.cumsum([len(p) for p in placements])])
        z = matched_z_at(null, np.concatenate(placements), starts, k)
        best = np.max(np.where(np.isfinite(z), z, -np.inf), axis=0)
        out[groups] = np.where(np.isfinite(best), best, np.nan)
    return out


def matched_unit_p(null: CircularShiftNull, occurrences: int | None = None) -> np.ndarray:
    """One-sided Gaussian p-value of the matched unit of every output group (NaN: untestable).

    See :func:`matched_unit_z`; the masking p-values use the same normal tail.
    """
    return stats.norm.sf(matched_unit_z(null, occurrences))


def power_summary(matched_p: np.ndarray, outputs: list[str], n_tests: int,
                  alpha: float) -> dict:
    """What a head's FDR family allows, output by output, given its matched p-values.

    Parameters
    ----------
    matched_p : numpy.ndarray
        ``(G,)`` matched-unit p-values (:func:`matched_unit_p`).
    outputs : list of str
        The ``G`` output names.
    n_tests : int
        Tests in the head's FDR family (finite p-values).
    alpha : float
        FDR level.

    Returns
    -------
    dict
        ``matched_p`` (output -> p), ``pairs_needed`` (output -> matched-strength pairs BH
        needs before declaring any, ``ceil(p * n_tests / alpha)``), ``out_of_reach``
        (outputs whose matched p exceeds ``alpha``) and ``smallest_matched_p``.
    """
    finite = np.isfinite(matched_p)
    names = [str(o) for o in outputs]
    p = {n: float(v) for n, v in zip(names, matched_p) if np.isfinite(v)}
    need = {n: int(max(1, math.ceil(v * max(n_tests, 1) / alpha))) for n, v in p.items()}
    return {"matched_p": p, "pairs_needed": need,
            "out_of_reach": [n for n, v in p.items() if v > alpha],
            "smallest_matched_p": float(np.min(matched_p[finite])) if finite.any() else None}
