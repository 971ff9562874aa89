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

from bids_app.masking.data import (
    UNIT_KINDS,
    MaskingData,
    compute_baseline,
    occurrences,
)

logger = logging.getLogger(__name__)

#: Heads of each model kind: VAE-1 gives cross-modal outputs and the latent (cognitive
#: basis), VAE-2 the stimulus features.
HEADS = ("cross", "latent", "stimulus")
CONTEXTS = ("single", "joint")
#: Heads with more outputs (voxels, EEG timestamps) get t intervals instead of bootstrap
#: ones: resampling every output costs ``n_boot`` times the forward pass.
_BOOTSTRAP_MAX_OUTPUTS = 64
_STATS_BUDGET = 2**22  # output elements per chunk of occurrences (~32 MB per float64 array)


def head_names(model: Any, kind: str) -> tuple[str, ...]:
    """Heads evaluated for ``model`` (VAE-1: cross-modal + latent, VAE-2: stimulus)."""
    return ("stimulus",) if hasattr(model, "decode_stimulus") else ("cross", "latent")


def _decode(model: Any, head: str, kind: str, mu: torch.Tensor, logvar: torch.Tensor):
    """Predictive ``(mean, logvar)`` of a head as ``(B, G, K)`` (K outputs per group)."""
    if head == "latent":
        return mu[:, :, None], logvar[:, :, None]
    if head == "stimulus":
        m, lv = model.decode_stimulus(mu)
        return m[:, :, None], lv[:, :, None]
    if kind == "eeg":  # masked EEG moves the fMRI prediction, one group per voxel
        m, lv = model.decode_fmri(mu)
        return m.reshape(m.shape[0], -1, 1), lv.reshape(lv.shape[0], -1, 1)
    m, lv = model.decode_eeg(mu)  # masked voxels move EEG: one group per timestamp
    b, t = m.shape[0], model.eeg_shape[1] if hasattr(model, "eeg_shape") else m.shape[-1]
    m, lv = m.reshape(b, -1, t), lv.reshape(b, -1, t)
    return m.transpose(1, 2), lv.transpose(1, 2)


def _fuse(model: Any, experts: list[tuple[torch.Tensor, torch.Tensor]]):
    from bids_app.models.vae import product_of_experts

    latent = experts[0][0].shape[1]
    return product_of_experts(experts, latent, experts[0][0])


class _Engine:
    """Cached unmasked state of one model on all windows (the fast path's tables)."""

    def __init__(self, model: Any, data: MaskingData, kind: str, device: torch.device,
                 batch_size: int, context: str) -> None:
        self.model, self.kind, self.device, self.joint = model, kind, device, context == "joint"
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
                xm = torch.as_tensor(x_m[s : s + batch_size], device=device, dtype=torch.float32)
                xo = torch.as_tensor(x_o[s : s + batch_size], device=device, dtype=torch.float32)
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
        d = torch.as_tensor(delta, device=self.device, dtype=torch.float32)
        with torch.no_grad():
            if self.kind == "eeg":  # rank-C update: (B,1,C) @ (B,C,H)
                dh = torch.bmm(d[:, None, :], self.w_cols[p_t])[:, 0]
            else:  # rank-1 update
                dh = d[:, None] * self.w_cols[p_t]
            expert = self.enc.body(self.h0[w_t] + dh)
            if not self.joint:
                return _fuse(self.model, [expert])
            other = (self.other[0][w_t], self.other[1][w_t])
            pair = [expert, other] if self.kind == "eeg" else [other, expert]
            return _fuse(self.model, pair)


def _windows_forward(model: Any, x_eeg: np.ndarray | None, x_fmri: np.ndarray | None,
                     device: torch.device, batch_size: int):
    """Full forward pass (``encode``) of windows, in batches (None: modality left out)."""
    mus, lvs = [], []
    with torch.no_grad():
        n = (x_eeg if x_eeg is not None else x_fmri).shape[0]
        for s in range(0, n, batch_size):
            e, f = (None if x is None else
                    torch.as_tensor(x[s : s + batch_size], device=device, dtype=torch.float32)
                    for x in (x_eeg, x_fmri))
            mu, lv = model.encode(x_eeg=e, x_fmri=f)
            mus.append(mu)
            lvs.append(lv)
    return torch.cat(mus), torch.cat(lvs)


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
    mu, lv = _windows_forward(model, *_context_inputs(data, kind, context), device, batch_size)
    out, const = {}, {}
    with torch.no_grad():
        for head in heads:
            parts = [_decode(model, head, kind, mu[s : s + batch_size], lv[s : s + batch_size])
                     for s in range(0, mu.shape[0], batch_size)]
            m, v = (torch.cat([p[i] for p in parts]) for i in range(2))
            # a predictive variance that is the same in every window is input-independent
            const[head] = v[0] if head != "latent" and bool((v == v[:1]).all()) else None
            out[head] = (m.double().cpu().numpy(), v.double().cpu().numpy())
    return out, const


def _targets(data: MaskingData, kind: str, head: str) -> np.ndarray | None:
    """Observed value of every output of a head in every window, ``(N, G, K)``."""
    if head == "latent":
        return None
    if head == "stimulus":
        return np.asarray(data.stimulus, dtype=np.float64)[:, :, None]
    if kind == "eeg":
        return np.asarray(data.x_fmri, dtype=np.float64)[:, :, None]
    return np.asarray(data.x_eeg, dtype=np.float64).transpose(0, 2, 1)


def _deltas(data: MaskingData, kind: str, base: np.ndarray, win, pos) -> np.ndarray:
    if kind == "eeg":
        return base[win, :, pos] - np.asarray(data.x_eeg[win, :, pos], dtype=np.float32)
    return base[win, pos] - np.asarray(data.x_fmri[win, pos], dtype=np.float32)


def _chunks(starts: np.ndarray, batch_size: int):
    """Consecutive unit ranges holding at most ``batch_size`` occurrences (>= 1 unit)."""
    u, n_units = 0, len(starts) - 1
    while u < n_units:
        end = int(np.searchsorted(starts, starts[u] + batch_size, side="right")) - 1
        end = max(end, u + 1)
        yield u, min(end, n_units)
        u = end


def _model_name(model: Any) -> str:
    return "vae2" if hasattr(model, "decode_stimulus") else "vae1"


def _output_names(model, kind, head, g: int, output_names) -> list[str]:
    if output_names and head in output_names:
        return list(output_names[head])
    if head == "stimulus":
        names = getattr(model, "feature_names", None)
        if names is not None and len(names) == g:
            return list(names)
    prefix = {"latent": "latent", "stimulus": "feature"}.get(
        head, "voxel" if kind == "eeg" else "eegtime")
    return [f"{prefix}-{i}" for i in range(g)]


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
) -> list[Any]:
    """Mask every unit of one modality and measure each head's change (fast, exact).

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
        per unit (heads with more than 64 outputs get t intervals over windows instead).
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
        Names of the output groups per head (defaults: ``voxel-i``, ``eegtime-t``, ...).

    Returns
    -------
    list of HeadEffects
        One per head: VAE-1 ``cross`` and ``latent``; VAE-2 ``stimulus``. p/q-values are
        NaN for the latent head.
    """
    from bids_app.masking import statistics as st

    if kind not in UNIT_KINDS:
        raise ValueError(f"kind must be one of {UNIT_KINDS}, got {kind!r}.")
    if measure not in st.MEASURES:
        raise ValueError(f"measure must be one of {st.MEASURES}, got {measure!r}.")
    if pvalue not in ("gaussian", "permutation"):
        raise ValueError(f"pvalue must be 'gaussian' or 'permutation', got {pvalue!r}.")
    device = resolve_device(device)
    model = model.to(device).eval()
    heads = head_names(model, kind)
    name = _model_name(model)
    rng = np.random.default_rng([seed, UNIT_KINDS.index(kind), int(name == "vae2")])
    ref, const_lv = _unmasked_heads(model, data, kind, heads, device, batch_size, context)
    engine = _Engine(model, data, kind, device, batch_size, context)
    base = compute_baseline(data, kind, baseline)
    units, starts, occ = occurrences(data, kind, units)
    targets = {h: _targets(data, kind, h) for h in heads}
    moments = {h: st.pool_moments(y) for h, y in targets.items()
               if y is not None and pvalue == "gaussian"}
    acc: dict[str, dict[str, list]] = {h: {} for h in heads}
    per_occ = max(int(np.prod(ref[h][0].shape[1:])) for h in heads)
    chunk = max(1, min(batch_size, _STATS_BUDGET // per_occ))  # bounds the float64 arrays
    for u0, u1 in _chunks(starts, chunk):
        s0, s1 = int(starts[u0]), int(starts[u1])
        win, pos = occ[s0:s1, 0], occ[s0:s1, 1]
        local = starts[u0 : u1 + 1] - s0
        delta = _deltas(data, kind, base, win, pos)
        post = [engine.forward(win[i : i + batch_size], pos[i : i + batch_size],
                               delta[i : i + batch_size])
                for i in range(0, len(win), batch_size)]
        mu1 = torch.cat([p[0] for p in post])
        lv1 = torch.cat([p[1] for p in post])
        for head in heads:
            with torch.no_grad():
                m1_t, l1_t = _decode(model, head, kind, mu1, lv1)
                row = const_lv[head]
                homo = row is not None and bool((l1_t == row).all())
            m1, m0 = m1_t.double().cpu().numpy(), ref[head][0][win]
            y = targets[head]
            if homo:
                smd, kl, b, c, dll = st.homoscedastic_stats(
                    m0, m1, ref[head][1][0], None if y is None else y[win])
                a = None
            else:
                l1, l0 = l1_t.double().cpu().numpy(), ref[head][1][win]
                smd, kl = st.predictive_change(m0, l0, m1, l1)
                if y is not None:
                    a, b, c = st.loglik_coefficients(m0, l0, m1, l1)
                    dll = st.loglik_change(y[win], a, b, c)
            out = acc[head]
            out.setdefault("smd", []).append(st.segment_mean(smd, local))
            out.setdefault("kl", []).append(st.segment_mean(kl, local))
            per_occ = {"smd": smd, "kl": kl}
            if y is None:
                dll = np.full_like(smd, np.nan)
            else:
                if pvalue == "gaussian":
                    mean, sd = st.null_moments(a, b, c, moments[head], local)
                    out.setdefault("null_mean", []).append(mean)
                    out.setdefault("null_sd", []).append(sd)
                elif n_null > 0:
                    out.setdefault("null", []).append(
                        st.null_draws(a, b, c, y, local, n_null, rng))
            per_occ["dll"] = -dll
            out.setdefault("dll", []).append(st.segment_mean(dll, local))
            if n_boot > 0 and not (measure == "dll" and y is None):
                lo, hi = (st.bootstrap_ci(per_occ[measure], local, n_boot, rng)
                          if smd.shape[1] <= _BOOTSTRAP_MAX_OUTPUTS else
                          st.normal_ci(per_occ[measure], local))
                out.setdefault("lo", []).append(lo)
                out.setdefault("hi", []).append(hi)
    results = []
    for head in heads:
        # concatenate and free block lists one statistic at a time (halves the peak memory)
        out = {k: np.concatenate(acc[head].pop(k), axis=1 if k == "null" else 0)
               for k in list(acc[head])}
        g = out["smd"].shape[1]
        eff = st.HeadEffects(
            kind=kind, model=name, head=head, units=units,
            outputs=_output_names(model, kind, head, g, output_names),
            n_windows=np.diff(starts), smd=out["smd"], kl=out["kl"], dll=out["dll"],
            measure=measure, ci_low=out.get("lo"), ci_high=out.get("hi"))
        if "null_mean" in out:
            eff.p, eff.z = st.gaussian_pvalues(-out["dll"], out["null_mean"], out["null_sd"])
            eff.q = st.fdr(eff.p)
        elif "null" in out:
            eff.p, eff.z = st.permutation_pvalues(-out["dll"], out["null"], method=pvalue)
            eff.q = st.fdr(eff.p)
        else:
            eff.p = eff.z = eff.q = np.full(out["smd"].shape, np.nan)
        results.append(eff)
        logger.info("masked %d %s units in %s (%s head, %d outputs)", len(units), kind, name,
                    head, g)
    return results
