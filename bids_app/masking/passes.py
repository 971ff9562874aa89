"""One occlusion pass: mask a set of units, accumulate per-unit statistics of some heads.

:func:`~bids_app.masking.occlusion.occlusion_effects` runs two passes: the screening pass
(VAE-1's whole cross-modal output, its latent, VAE-2's stimulus features: every unit) and,
for VAE-1, the per-output pass (every voxel or EEG timestamp of the other modality) on
the units the screening selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bids_app.masking import statistics as st
from bids_app.masking.omnibus import OmnibusTables

#: Heads with more outputs (voxels, EEG timestamps) get t intervals instead of bootstrap
#: ones: resampling every output costs ``n_boot`` times the forward pass.
_BOOTSTRAP_MAX_OUTPUTS = 64
#: Units masked in at least this many windows (every voxel) get t intervals too: the mean
#: over that many windows is close to normal, and resampling them dominates the run time.
_BOOTSTRAP_MAX_WINDOWS = 30
_STATS_BUDGET = 2**22  # output elements per chunk of occurrences (~32 MB per float64 array)


@dataclass
class PassContext:
    """What every pass over one model and unit kind shares (built once).

    Attributes
    ----------
    model, kind, engine, decode
        The model, the unit kind, the fast-path engine (``forward(win, pos, delta)``) and
        the head decoder ``decode(head, mu, logvar) -> (mean, logvar)`` as ``(B, G, K)``.
    ref, const_lv
        Unmasked ``(mean, logvar)`` per head and the input-independent log-variance (or
        None) per head.
    targets, nulls
        Observed values per head and their circular-shift nulls
        (:class:`~bids_app.masking.shift_null.CircularShiftNull`).
    omnibus : OmnibusTables | None
        Tables of the whole-output ``cross`` head.
    base, occurrences_of
        Baseline values and ``occurrences_of(units) -> (units, starts, occ)``.
    deltas
        ``deltas(win, pos) -> baseline - value`` per occurrence.
    measure, pvalue, n_null, n_boot, batch_size, rng
        Settings and the random source.
    """

    model: Any
    kind: str
    engine: Any
    decode: Any
    ref: dict
    const_lv: dict
    targets: dict
    nulls: dict
    omnibus: OmnibusTables | None
    occurrences_of: Any
    deltas: Any
    measure: str
    pvalue: str
    n_null: int
    n_boot: int
    batch_size: int
    rng: np.random.Generator


def _chunks(starts: np.ndarray, batch_size: int):
    """Consecutive unit ranges holding at most ``batch_size`` occurrences (>= 1 unit)."""
    u, n_units = 0, len(starts) - 1
    while u < n_units:
        end = int(np.searchsorted(starts, starts[u] + batch_size, side="right")) - 1
        end = max(end, u + 1)
        yield u, min(end, n_units)
        u = end


def _omnibus_stats(ctx: PassContext, mu1: torch.Tensor, win: np.ndarray, local: np.ndarray,
                   out: dict) -> dict[str, np.ndarray]:
    """Whole-output statistics of one chunk; returns per-occurrence effects."""
    occ = ctx.omnibus.occurrences(mu1, win)
    q = occ["q"]
    smd = np.sqrt(q / ctx.omnibus.n_outputs)[:, None]
    kl = 0.5 * q[:, None]
    dll = occ["dll"][:, None]
    if ctx.pvalue == "gaussian":
        out.setdefault("null_mean", []).append(-st.segment_mean(occ["null_mean"][:, None], local))
        out.setdefault("null_sd", []).append(ctx.omnibus.null_sd(occ["s"], win, local)[:, None])
    elif ctx.n_null > 0:
        draws = ctx.omnibus.null_draws(occ["dphi"], q, win, local, ctx.n_null, ctx.rng)
        out.setdefault("null", []).append(draws[:, :, None])
    return {"smd": smd, "kl": kl, "dll": dll}


def _head_stats(ctx: PassContext, head: str, mu1, lv1, win, local, out: dict):
    """Per-output statistics of one chunk; returns per-occurrence effects."""
    with torch.no_grad():
        m1_t, l1_t = ctx.decode(head, mu1, lv1)
        row = ctx.const_lv[head]
        homo = row is not None and bool((l1_t == row).all())
    m1, m0 = m1_t.double().cpu().numpy(), ctx.ref[head][0][win]
    y = ctx.targets[head]
    yw, obs = (None, None) if y is None else (y[win], None)
    if yw is not None and not np.isfinite(yw).all():  # outputs undefined in some windows
        obs = np.isfinite(yw).all(axis=2)  # (n, G): each unit is scored where observed
        yw = np.where(np.isfinite(yw), yw, 0.0)
    a = b = c = dll = None
    if homo:
        smd, kl, b, c, dll = st.homoscedastic_stats(m0, m1, ctx.ref[head][1][0], yw)
    else:
        l1, l0 = l1_t.double().cpu().numpy(), ctx.ref[head][1][win]
        smd, kl = st.predictive_change(m0, l0, m1, l1)
        if y is not None:
            a, b, c = st.loglik_coefficients(m0, l0, m1, l1)
            dll = st.loglik_change(yw, a, b, c)
    if y is None:
        dll = np.full_like(smd, np.nan)
    elif ctx.pvalue == "gaussian":
        mean, sd = ctx.nulls[head].moments(a, b, c, win, local)
        out.setdefault("null_mean", []).append(mean)
        out.setdefault("null_sd", []).append(sd)
    elif obs is not None:
        raise ValueError("pvalue='permutation' needs every output observed in every masked "
                         "window; use pvalue='gaussian'.")
    elif ctx.n_null > 0:
        shifted = ctx.nulls[head].shifted(win, ctx.rng, ctx.n_null)
        out.setdefault("null", []).append(st.null_draws(a, b, c, y, local, shifted))
    return {"smd": smd, "kl": kl, "dll": dll, "obs": obs}


def run_pass(ctx: PassContext, heads: tuple[str, ...], units: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """Mask ``units`` (None: all) and accumulate the statistics of ``heads``.

    Returns
    -------
    units, starts : numpy.ndarray
        Masked unit ids and their occurrence offsets.
    stats : dict
        Per head: ``smd``, ``kl``, ``dll`` ``(U, G)`` means over windows, the interval
        ``lo``/``hi`` of the configured measure, and ``null_mean``/``null_sd`` or ``null``.
    """
    units, starts, occ = ctx.occurrences_of(units)
    acc: dict[str, dict[str, list]] = {h: {} for h in heads}
    per_occ = max(1 if h == "cross" else int(np.prod(ctx.ref[h][0].shape[1:])) for h in heads)
    chunk = max(1, min(ctx.batch_size, _STATS_BUDGET // per_occ))  # bounds float64 arrays
    for u0, u1 in _chunks(starts, chunk):
        s0, s1 = int(starts[u0]), int(starts[u1])
        win, pos = occ[s0:s1, 0], occ[s0:s1, 1]
        local = starts[u0 : u1 + 1] - s0
        delta = ctx.deltas(win, pos)
        bs = ctx.batch_size
        post = [ctx.engine.forward(win[i : i + bs], pos[i : i + bs], delta[i : i + bs])
                for i in range(0, len(win), bs)]
        mu1 = torch.cat([p[0] for p in post])
        lv1 = torch.cat([p[1] for p in post])
        for head in heads:
            out = acc[head]
            if head == "cross":
                occ_stats = _omnibus_stats(ctx, mu1, win, local, out)
            else:
                occ_stats = _head_stats(ctx, head, mu1, lv1, win, local, out)
            obs = occ_stats.get("obs")  # None: every output observed in every window
            for key in ("smd", "kl", "dll"):
                out.setdefault(key, []).append(
                    st.segment_mean(occ_stats[key], local, weights=obs))
            values = -occ_stats["dll"] if ctx.measure == "dll" else occ_stats[ctx.measure]
            if ctx.n_boot > 0 and np.isfinite(values).any():
                few = (obs is None and values.shape[1] <= _BOOTSTRAP_MAX_OUTPUTS
                       and np.diff(local).max() < _BOOTSTRAP_MAX_WINDOWS)
                lo, hi = (st.bootstrap_ci(values, local, ctx.n_boot, ctx.rng) if few
                          else st.normal_ci(values, local, weights=obs))
                out.setdefault("lo", []).append(lo)
                out.setdefault("hi", []).append(hi)
    stats = {}
    for head in heads:
        if not acc[head]:  # no unit to mask
            g = 1 if head == "cross" else ctx.ref[head][0].shape[1]
            keys = ("smd", "kl", "dll") + (("null_mean", "null_sd")
                                           if ctx.pvalue == "gaussian" else ())
            stats[head] = {k: np.zeros((0, g)) for k in keys}
            continue
        # concatenate and free block lists one statistic at a time (halves the peak memory)
        stats[head] = {k: np.concatenate(acc[head].pop(k), axis=1 if k == "null" else 0)
                       for k in list(acc[head])}
    return units, starts, stats


def significance(stats: dict[str, np.ndarray], pvalue: str
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(p, z)`` of the likelihood drop of one head's pass statistics (None: no null)."""
    if "null_mean" in stats:
        return st.gaussian_pvalues(-stats["dll"], stats["null_mean"], stats["null_sd"])
    if "null" in stats:
        return st.permutation_pvalues(-stats["dll"], stats["null"], method=pvalue)
    return None
