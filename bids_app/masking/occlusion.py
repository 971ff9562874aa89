"""Occlusion of EEG timestamps and fMRI voxels in the trained VAEs: exact and fast.

A *unit* is one absolute EEG timestamp of a run (all channels at that instant, present in
every window whose EEG segment covers it) or one voxel (present in every window). Masking
a unit replaces its value by a baseline in every window that contains it; the effect is
the change of a model's predictive Gaussian in those windows.

The fast path (:func:`occlusion_effects`) uses that every encoder starts with a linear map
of the flattened input (``encoder.input``): masking EEG timestamp ``t`` changes the
pre-activation by ``W[:, c*T + t] @ (b - x[:, t])`` (a rank-C update), masking voxel ``v``
by ``W[:, v] * (b_v - x_v)`` (rank 1). The other modality's expert is computed once per
window, only the windows that contain a unit are evaluated, and many masks share one
batched pass. :func:`naive_occlusion` is the reference: one full forward pass of every
window per masked unit (the Captum-style loop). Both give the same numbers.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from bids_app.masking import statistics as st
from bids_app.masking.data import (
    UNIT_KINDS,
    MaskingData,
    compute_baseline,
    occurrences,
)
from bids_app.masking.omnibus import OmnibusTables, affine_decoder, output_targets
from bids_app.masking.passes import PassContext, run_pass, significance
from bids_app.masking.per_output import per_output_pass
from bids_app.masking.power import matched_unit_p
from bids_app.masking.shards import CellRunner
from bids_app.masking.shift_null import CircularShiftNull

logger = logging.getLogger(__name__)

#: Heads of each model kind: VAE-1 gives cross-modal outputs and the latent (cognitive
#: basis), VAE-2 the stimulus features.
HEADS = ("cross", "cross_outputs", "latent", "stimulus")
CONTEXTS = ("single", "joint")
CROSS_OUTPUTS = ("auto", "significant", "all", "none")
#: Largest ``placements x occurrences x outputs`` for which a head's matched-unit p-values
#: are computed (the per-output head of a NATVIEW run exceeds it and gets none).
MATCHED_MAX_ELEMENTS = 20_000_000
#: ``cross_outputs="auto"`` tests every unit output by output while units x outputs stays
#: below this (80 MB per float64 statistic, about ten of them), hierarchically above it
#: (a NATVIEW run has 15 330 timestamps x 69 765 voxels = 1.1e9).
AUTO_MAX_ELEMENTS = 10_000_000


def head_names(model: Any, kind: str) -> tuple[str, ...]:
    """Heads of the screening pass (VAE-1: whole cross-modal output + latent; VAE-2:
    stimulus). VAE-1's per-output head ``cross_outputs`` follows on selected units."""
    return ("stimulus",) if hasattr(model, "decode_stimulus") else ("cross", "latent")


def _decode(model: Any, head: str, kind: str, mu: torch.Tensor, logvar: torch.Tensor):
    """Predictive ``(mean, logvar)`` of a head as ``(B, G, K)`` (K outputs per group)."""
    if head == "latent":
        return mu[:, :, None], logvar[:, :, None]
    if head == "stimulus":
        m, lv = model.decode_stimulus(mu)
        return m[:, :, None], lv[:, :, None]
    # cross_outputs: the other modality's outputs
    if kind == "eeg":  # masked EEG moves the fMRI prediction, one group per voxel
        m, lv = model.decode_fmri(mu)
        return m.reshape(m.shape[0], -1, 1), lv.reshape(lv.shape[0], -1, 1)
    m, lv = model.decode_eeg(mu)  # masked voxels move EEG: one group per timestamp
    b, t = m.shape[0], model.eeg_shape[1] if hasattr(model, "eeg_shape") else m.shape[-1]
    m, lv = m.reshape(b, -1, t), lv.reshape(b, -1, t)
    return m.transpose(1, 2), lv.transpose(1, 2)


class _Engine:
    """Cached unmasked state of one model on all windows (the fast path's tables)."""

    def __init__(self, model: Any, data: MaskingData, kind: str, device: torch.device,
                 batch_size: int, context: str) -> None:
        self.model, self.kind, self.device, self.joint = model, kind, device, context == "joint"
        self.dtype = model_dtype(model)
        self.enc = model.eeg_encoder if kind == "eeg" else model.fmri_encoder
        other = model.fmri_encoder if kind == "eeg" else model.eeg_encoder
        x_m = data.x_eeg if kind == "eeg" else data.x_fmri
        x_o = data.x_fmri if kind == "eeg" else data.x_eeg
        w = self.enc.input.weight.detach()
        if kind == "eeg":
            c, t = data.x_eeg.shape[1:]
            self.w_cols = w.reshape(w.shape[0], c, t).permute(2, 1, 0).contiguous()  # (T,C,H)
        else:
            self.w_cols = w.t().contiguous()  # (V, H)
        hs, o_mu, o_lv = [], [], []
        with torch.no_grad():
            for s in range(0, data.n_windows, batch_size):
                xm = torch.as_tensor(x_m[s : s + batch_size], device=device, dtype=self.dtype)
                xo = torch.as_tensor(x_o[s : s + batch_size], device=device, dtype=self.dtype)
                hs.append(self.enc.input(xm.reshape(xm.shape[0], -1)))
                if self.joint:
                    mu, lv = other(xo)
                    o_mu.append(mu)
                    o_lv.append(lv)
        self.h0 = torch.cat(hs)
        self.other = (torch.cat(o_mu), torch.cat(o_lv)) if self.joint else None

    def forward(self, win: np.ndarray, pos: np.ndarray, delta: np.ndarray):
        """Posterior ``(mu, logvar)`` with unit ``pos`` of windows ``win`` moved by delta."""
        w_t = torch.as_tensor(win, device=self.device)
        p_t = torch.as_tensor(pos, device=self.device)
        d = torch.as_tensor(delta, device=self.device, dtype=self.dtype)
        with torch.no_grad():
            if self.kind == "eeg":  # rank-C update: (B,1,C) @ (B,C,H)
                dh = torch.bmm(d[:, None, :], self.w_cols[p_t])[:, 0]
            else:  # rank-1 update
                dh = d[:, None] * self.w_cols[p_t]
            expert = self.enc.body(self.h0[w_t] + dh)
            if not self.joint:
                return self.model.fuse([expert])
            other = (self.other[0][w_t], self.other[1][w_t])
            pair = [expert, other] if self.kind == "eeg" else [other, expert]
            return self.model.fuse(pair)


def _windows_forward(model: Any, x_eeg: np.ndarray | None, x_fmri: np.ndarray | None,
                     device: torch.device, batch_size: int):
    """Full forward pass (``encode``) of windows, in batches (None: modality left out)."""
    mus, lvs = [], []
    dtype = model_dtype(model)
    with torch.no_grad():
        n = (x_eeg if x_eeg is not None else x_fmri).shape[0]
        for s in range(0, n, batch_size):
            e, f = (None if x is None else
                    torch.as_tensor(x[s : s + batch_size], device=device, dtype=dtype)
                    for x in (x_eeg, x_fmri))
            mu, lv = model.encode(x_eeg=e, x_fmri=f)
            mus.append(mu)
            lvs.append(lv)
    return torch.cat(mus), torch.cat(lvs)


def model_dtype(model: Any) -> torch.dtype:
    """Precision of the masking arithmetic: the model's floating-point parameter type
    (float32 for a float32 or half-precision model, float64 for a float64 one)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                 torch.float32)
    return torch.promote_types(dtype, torch.float32)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _context_inputs(data: MaskingData, kind: str, context: str, x_eeg=None, x_fmri=None):
    """Inputs of the posterior: the masked modality alone, or both (``"joint"``)."""
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}.")
    x_eeg = data.x_eeg if x_eeg is None else x_eeg
    x_fmri = data.x_fmri if x_fmri is None else x_fmri
    if context == "joint":
        return x_eeg, x_fmri
    return (x_eeg, None) if kind == "eeg" else (None, x_fmri)


def _unmasked_heads(model, data, kind, heads, device, batch_size, context):
    """Unmasked ``(mean, logvar)`` per head (not ``cross``), constant log-variances, and the
    posterior mean of every window."""
    mu, lv = _windows_forward(model, *_context_inputs(data, kind, context), device, batch_size)
    out, const = {}, {}
    with torch.no_grad():
        for head in (h for h in heads if h != "cross"):
            parts = [_decode(model, head, kind, mu[s : s + batch_size], lv[s : s + batch_size])
                     for s in range(0, mu.shape[0], batch_size)]
            m, v = (torch.cat([p[i] for p in parts]) for i in range(2))
            # a predictive variance that is the same in every window is input-independent
            const[head] = v[0] if head != "latent" and bool((v == v[:1]).all()) else None
            out[head] = (m.double().cpu().numpy(), v.double().cpu().numpy())
    return out, const, mu


def _targets(data: MaskingData, kind: str, head: str) -> np.ndarray | None:
    """Observed value of every output of a head in every window, ``(N, G, K)``."""
    if head in ("latent", "cross"):  # no observation / see omnibus.output_targets
        return None
    if head == "stimulus":
        return np.asarray(data.stimulus, dtype=np.float64)[:, :, None]
    if kind == "eeg":
        return np.asarray(data.x_fmri, dtype=np.float64)[:, :, None]
    return np.asarray(data.x_eeg, dtype=np.float64).transpose(0, 2, 1)


def _unit_ids(data: MaskingData, kind: str, units: np.ndarray | None, ctx: PassContext
              ) -> np.ndarray:
    """Sorted ids of the units to mask, as :func:`occurrences` gives them; voxels (present
    in every window) without building the occurrence table of every voxel x window."""
    if kind == "fmri":
        ids = np.arange(data.x_fmri.shape[1])
        return ids if units is None else ids[np.isin(ids, np.asarray(units))]
    return ctx.occurrences_of(units)[0]


def _deltas(data: MaskingData, kind: str, base: np.ndarray, win, pos,
            dtype: type = np.float32) -> np.ndarray:
    if kind == "eeg":
        return base[win, :, pos].astype(dtype) - np.asarray(data.x_eeg[win, :, pos], dtype=dtype)
    return base[win, pos].astype(dtype) - np.asarray(data.x_fmri[win, pos], dtype=dtype)


def _model_name(model: Any) -> str:
    return "vae2" if hasattr(model, "decode_stimulus") else "vae1"


def _output_names(model, kind, head, g: int, output_names) -> list[str]:
    if head == "cross":  # the whole prediction of the other modality
        return ["fmri" if kind == "eeg" else "eeg"]
    if output_names and head in output_names:
        return list(output_names[head])
    if head == "stimulus":
        names = getattr(model, "feature_names", None)
        if names is not None and len(names) == g:
            return list(names)
    prefix = {"latent": "latent", "stimulus": "feature"}.get(
        head, "voxel" if kind == "eeg" else "eegtime")
    return [f"{prefix}-{i}" for i in range(g)]


def _context(model, data, kind, *, baseline, measure, pvalue, n_null, n_boot, batch_size,
             context, device, rng, heads) -> PassContext:
    """Everything the passes over one model and unit kind share."""
    ref, const_lv, mu0 = _unmasked_heads(model, data, kind, heads, device, batch_size, context)
    targets = {h: _targets(data, kind, h) for h in heads}
    nulls = {h: CircularShiftNull(y, data.window_runs) for h, y in targets.items()
             if y is not None}
    omnibus = None
    if "cross" in heads:
        decoder = affine_decoder(model.fmri_decoder if kind == "eeg" else model.eeg_decoder)
        if decoder is None:
            raise ValueError("VAE-1's decoders must be affine in their features with an "
                             "input-independent variance (GaussianDecoder) for masking.")
        omnibus = OmnibusTables(decoder, mu0, output_targets(data.x_eeg, data.x_fmri, kind),
                                data.window_runs)
    base = compute_baseline(data, kind, baseline)
    np_dtype = torch.empty(0, dtype=model_dtype(model)).numpy().dtype
    return PassContext(
        model=model, kind=kind, engine=_Engine(model, data, kind, device, batch_size, context),
        decode=lambda head, mu, lv: _decode(model, head, kind, mu, lv), ref=ref,
        const_lv=const_lv, targets=targets, nulls=nulls, omnibus=omnibus,
        occurrences_of=lambda units: occurrences(data, kind, units),
        deltas=lambda win, pos: _deltas(data, kind, base, win, pos, np_dtype), measure=measure,
        pvalue=pvalue, n_null=n_null, n_boot=n_boot, batch_size=batch_size, rng=rng)


def _effects(ctx: PassContext, head: str, units, starts, stats, output_names
             ) -> st.HeadEffects:
    g = stats["smd"].shape[1]
    eff = st.HeadEffects(
        kind=ctx.kind, model=_model_name(ctx.model), head=head, units=units,
        outputs=_output_names(ctx.model, ctx.kind, head, g, output_names),
        n_windows=np.diff(starts), smd=stats["smd"], kl=stats["kl"], dll=stats["dll"],
        measure=ctx.measure, ci_low=stats.get("lo"), ci_high=stats.get("hi"))
    sig = significance(stats, ctx.pvalue)
    if sig is None:
        eff.p = eff.z = eff.q = np.full(stats["smd"].shape, np.nan)
    else:
        eff.p, eff.z = sig
        eff.q = st.fdr(eff.p)
        eff.matched_p = _matched_p(ctx, head, np.diff(starts))
    return eff


def _matched_p(ctx: PassContext, head: str, counts: np.ndarray) -> np.ndarray | None:
    """Matched-unit p-values of a head's outputs (:mod:`bids_app.masking.power`): voxels
    are masked in every window, EEG timestamps in their typical number of windows."""
    null = ctx.omnibus.shift if head == "cross" else ctx.nulls.get(head)
    if null is None or len(counts) == 0:
        return None
    occurrences = None if ctx.kind == "fmri" else int(np.median(counts))
    n_windows = sum(len(w) for _, c in null.classes for w in c.windows)
    size = n_windows * (occurrences or 1) * null.n_groups * null.group_size
    if size > MATCHED_MAX_ELEMENTS:
        return None
    return matched_unit_p(null, occurrences)


def _per_output_phase(ctx: PassContext, heads: tuple[str, ...], units: np.ndarray | None):
    """The per-output phase (``heads`` is always ``("cross_outputs",)``) as GEMMs."""
    return per_output_pass(ctx, units)


def occlusion_effects(
    model: Any,
    data: MaskingData,
    *,
    kind: str,
    baseline: str = "zero",
    measure: str = "smd",
    n_null: int = 200,
    n_boot: int = 200,
    batch_size: int = 4096,
    context: str = "single",
    pvalue: str = "gaussian",
    units: np.ndarray | None = None,
    device: str | torch.device | None = "cpu",
    seed: int = 0,
    output_names: dict[str, list[str]] | None = None,
    cross_outputs: str = "auto",
    alpha: float = 0.05,
    cells: CellRunner | None = None,
) -> list[st.HeadEffects]:
    """Mask every unit of one modality and measure each head's change (fast, exact).

    VAE-1's effect on the other modality is measured on its *whole* prediction (head
    ``cross``: one test per unit, computed in the decoder's feature space without running
    its output layer, see :mod:`bids_app.masking.omnibus`) and output by output (head
    ``cross_outputs``). Per-output testing of every unit (``"all"``, Benjamini-Hochberg
    over all units x outputs) costs the output layer for every masked window; with
    ``"significant"`` the test is hierarchical (Benjamini & Bogomolov, 2014): only the
    units the whole-prediction test selects at FDR ``alpha`` are tested output by output,
    each unit's outputs at level ``alpha * R / m`` (``R`` of ``m`` units selected;
    reported as q-values scaled by ``m / R``, so ``q < alpha`` marks a discovery).

    Parameters
    ----------
    model : MultimodalVAE | StimulusVAE
        Trained model with ``eeg_encoder``/``fmri_encoder`` (linear ``input`` then
        ``body``), ``encode`` (product of experts) and Gaussian decoders.
    data : MaskingData
        Windows to mask (use windows the model was not trained on for valid tests).
    kind : {"eeg", "fmri"}
        Mask EEG timestamps or voxels.
    baseline : {"zero", "mean", "conditional"}
        Value of a masked unit (see :func:`compute_baseline`).
    measure : {"smd", "kl", "dll"}
        Effect size reported as ``effect`` (with bootstrap interval).
    n_null, n_boot : int
        Permutation-null draws (``pvalue="permutation"`` only) and bootstrap resamples
        per unit (heads with more than 64 outputs, and units masked in 30 windows or more,
        get t intervals over windows instead).
    batch_size : int
        Masked occurrences per batched pass.
    context : {"single", "joint"}
        Posterior from the masked modality alone (default: the cross-modal prediction,
        which the other modality cannot fill in) or from both modalities.
    pvalue : {"gaussian", "permutation"}
        ``"gaussian"``: normal tail with the exact null mean and SD (no draws needed,
        ``n_null`` unused); ``"permutation"``: empirical p from ``n_null`` draws.
    units : numpy.ndarray | None
        Mask only these unit ids (timestamp ids or voxel indices); None: all.
    device : str | torch.device | None
        Torch device (``"cuda"`` supported); ``None``/``"auto"`` picks CUDA if present.
    seed : int
        Seed of the null draws and bootstrap resamples.
    output_names : dict | None
        Names of the outputs per head (defaults: ``voxel-i``, ``eegtime-t``, ...).
    cross_outputs : {"auto", "significant", "all", "none"}
        VAE-1 units tested output by output: those selected by the whole-prediction test
        (hierarchical), every unit, or none. ``"auto"``: every unit while units x outputs
        is at most :data:`AUTO_MAX_ELEMENTS`, the selected ones above.
    alpha : float
        FDR level of the selection.
    cells : CellRunner | None
        Run the passes as the fixed work cells of :mod:`bids_app.masking.shards` (each
        with its own seed from ``seed``; stored cells reused; in a shard, only its own
        cells where nothing needs the rest). None: one pass per phase with one generator.

    Returns
    -------
    list of HeadEffects
        VAE-1: ``cross`` (one output: the whole prediction), ``latent`` and
        ``cross_outputs`` (the tested units only); VAE-2: ``stimulus``. p/q-values are NaN
        for the latent head. In a shard (``cells.shard``), the heads whose cells it left
        out are missing (the part it computed is in ``cells.computed``).
    """
    if kind not in UNIT_KINDS:
        raise ValueError(f"kind must be one of {UNIT_KINDS}, got {kind!r}.")
    if measure not in st.MEASURES:
        raise ValueError(f"measure must be one of {st.MEASURES}, got {measure!r}.")
    if pvalue not in ("gaussian", "permutation"):
        raise ValueError(f"pvalue must be 'gaussian' or 'permutation', got {pvalue!r}.")
    if cross_outputs not in CROSS_OUTPUTS:
        raise ValueError(f"cross_outputs must be one of {CROSS_OUTPUTS}, got "
                         f"{cross_outputs!r}.")
    device = resolve_device(device)
    model = model.to(device).eval()
    heads = head_names(model, kind)
    name = _model_name(model)
    rng = np.random.default_rng([seed, UNIT_KINDS.index(kind), int(name == "vae2")])
    all_heads = heads + (("cross_outputs",) if "cross" in heads else ())
    ctx = _context(model, data, kind, baseline=baseline, measure=measure, pvalue=pvalue,
                   n_null=n_null, n_boot=n_boot, batch_size=batch_size, context=context,
                   device=device, rng=rng, heads=all_heads)
    def resolve(mode: str, n_units: int) -> str:  # "auto" -> "all" or "significant"
        if mode != "auto" or "cross" not in heads:
            return mode
        size = n_units * int(np.prod(ctx.ref["cross_outputs"][0].shape[1:]))
        return "all" if size <= AUTO_MAX_ELEMENTS else "significant"

    if cells is not None:  # the cells need the unit list (and the mode) first
        units = _unit_ids(data, kind, units, ctx)
        cross_outputs = resolve(cross_outputs, len(units))

    def phase(phase_heads, phase_units, phase_name, need_all=True, pass_fn=run_pass):
        if cells is None:
            return pass_fn(ctx, phase_heads, phase_units)
        return cells.run(pass_fn, ctx, phase_heads, phase_units, kind=kind, model=name,
                         phase=phase_name, need_all=need_all)

    screened = phase(heads, units, "screen", need_all=cross_outputs == "significant")
    if screened is None:  # a shard that left cells of this phase to others
        return []
    units, starts, stats = screened
    results = [_effects(ctx, h, units, starts, stats[h], output_names) for h in heads]
    cross_outputs = resolve(cross_outputs, len(units))
    if "cross" in heads and cross_outputs != "none":
        screen = results[0]
        selected = screen.q[:, 0] < alpha
        tested = units if cross_outputs == "all" else units[selected]
        detailed = phase(("cross_outputs",), tested, "outputs", need_all=False,
                         pass_fn=_per_output_phase)  # GEMMs, exact
        if detailed is None:
            return results
        t_units, t_starts, t_stats = detailed
        detail = _effects(ctx, "cross_outputs", t_units, t_starts, t_stats["cross_outputs"],
                          output_names)
        if cross_outputs == "significant":
            detail.q = st.family_qvalues(detail.p, np.isin(t_units, units[selected]),
                                         n_families=int(np.isfinite(screen.p).sum()))
        results.append(detail)
    for eff in results:
        logger.info("masked %d %s units in %s (%s head, %d outputs)", len(eff.units), kind,
                    name, eff.head, len(eff.outputs))
    return results
