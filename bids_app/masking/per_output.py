"""VAE-1's per-output occlusion pass as large matrix products, with streamed statistics.

The per-output test compares each selected unit with every output of the other modality
(every voxel for a masked EEG timestamp, every EEG timestamp for a masked voxel). VAE-1's
decoder ends in a linear output layer (:mod:`bids_app.masking.omnibus`): for a block of
occurrences (units x windows), the masked latents of all of them go through the decoder
at once, so its output layer is ONE matrix product per block, and ``d = m1 - m0``. The
decoder's variance does not depend on the input, so every statistic of
:func:`bids_app.masking.passes.run_pass` is a function of ``d`` with ``p = exp(-logvar)``:

* ``smd = sqrt(mean_K p d^2)``, ``kl = sum_K p d^2 / 2``,
* ``dll = sum_K p d (y - m0 - d / 2)`` and its circular-shift null mean
  ``sum_K p d (ybar_r - m0 - d / 2)``,
* the null variance, a quadratic form in ``b = p d`` with the run's circular
  autocovariances (pair by pair for units in few windows, by FFT and Parseval for units
  in every window, see :mod:`bids_app.masking.shift_null`).

The GEMM runs in float32 on the model's device (the forward pass's precision); the
per-occurrence statistics of the block are computed in float64 from its result (the
residuals ``y - m0`` can be large next to the likelihood change), and every per-unit sum
is accumulated in float64 block by block: no ``(occurrences x outputs)`` array outlives its
block, and the block size bounds the memory.

The fast path is exact only where ``run_pass`` computes the same closed forms; it falls
back to ``run_pass`` for outputs unobserved in some windows (NaN targets: per-window
weights), permutation p-values with null draws (they resample targets per draw), small
heads whose intervals are bootstrapped (they consume the random source), and decoders
without the affine, homoscedastic form.
"""

from __future__ import annotations

import numpy as np
import torch

from bids_app.masking import statistics as st
from bids_app.masking.passes import (
    _BOOTSTRAP_MAX_OUTPUTS,
    _BOOTSTRAP_MAX_WINDOWS,
    PassContext,
    _chunks,
    run_pass,
)
from bids_app.masking.shift_null import SPARSE_MAX_OCCURRENCES

HEAD = "cross_outputs"
#: Output elements per block of occurrences (128 MB per float64 ``(occurrences, F)`` array).
BLOCK_ELEMENTS = 2**24


def fallback_reason(ctx: PassContext, counts: np.ndarray) -> str | None:
    """Why the GEMM pass cannot reproduce :func:`run_pass` exactly (None: it can).

    Parameters
    ----------
    ctx : PassContext
        The pass context of VAE-1 and one unit kind.
    counts : numpy.ndarray
        ``(U,)`` windows each unit is masked in.

    Returns
    -------
    str | None
        A short reason, or None when the fast path applies.
    """
    if ctx.omnibus is None or HEAD not in ctx.ref:
        return "no affine cross-modal decoder"
    if ctx.const_lv.get(HEAD) is None:
        return "the decoder's variance depends on the input"
    if ctx.pvalue == "permutation" and ctx.n_null > 0:
        return "permutation p-values draw shifted targets"
    if len(ctx.nulls[HEAD].classes) != 1:
        return "some outputs are unobserved in some windows"
    n_groups = ctx.ref[HEAD][0].shape[1]
    if (ctx.n_boot > 0 and n_groups <= _BOOTSTRAP_MAX_OUTPUTS
            and counts.min(initial=_BOOTSTRAP_MAX_WINDOWS) < _BOOTSTRAP_MAX_WINDOWS):
        return "bootstrap intervals"
    return None


class _OutputLayer:
    """Tables of one pass on the model's device: output weight, precisions, residuals."""

    def __init__(self, ctx: PassContext) -> None:
        omnibus = ctx.omnibus
        self.decoder = omnibus.decoder.module
        dev = omnibus.phi0.device
        self.device = dev
        m0 = ctx.ref[HEAD][0]  # (N, G, K) float64
        n, self.n_groups, self.k = m0.shape
        # decoder order: (G, K) for voxels (K = 1); (C, T) = (K, G) for EEG outputs
        self.swap = ctx.kind == "fmri"
        self.n_out = self.n_groups * self.k
        lv = ctx.const_lv[HEAD].double().cpu().numpy()  # (G, K)
        self.prec = self._flat(np.exp(-lv)[None])[0]
        null = ctx.nulls[HEAD]
        self.circles = null.classes[0][1]
        y = ctx.targets[HEAD]
        run_mean = null.run_means()[np.maximum(self.circles.run, 0)]
        self.m0 = self._flat(m0)  # (N, F): m0, y - m0 and ybar_r - m0
        self.resid = self._flat(y - m0)
        self.resid_bar = self._flat(run_mean - m0)
        self.null = null
        self._gamma: dict[tuple[int, int], torch.Tensor] = {}
        self._spec: dict[int, torch.Tensor] = {}

    def _flat(self, x: np.ndarray) -> torch.Tensor:
        """``(n, G, K)`` -> ``(n, F)`` float64 tensor in the decoder's order."""
        x = x.transpose(0, 2, 1) if self.swap else x
        return torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float64, device=self.device)

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, F)`` -> ``(n, G, K)`` view/copy in the statistics' order."""
        if self.swap:
            return x.reshape(len(x), self.k, self.n_groups).transpose(1, 2)
        return x.reshape(len(x), self.n_groups, self.k)

    def sum_k(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the ``K`` outputs of each group: ``(n, F)`` -> ``(n, G)``."""
        if self.k == 1:  # one output per group (voxels): nothing to sum
            return x
        if self.swap:
            return x.reshape(len(x), self.k, self.n_groups).sum(dim=1)
        return x.reshape(len(x), self.n_groups, self.k).sum(dim=2)

    # ------------------------------------------------------------------ null variance
    def _gamma_of(self, r: int, lag: int) -> torch.Tensor:
        if (r, lag) not in self._gamma:
            self._gamma[r, lag] = torch.as_tensor(self.null.autocovariance(r, lag),
                                                  dtype=torch.float64, device=self.device)
        return self._gamma[r, lag]

    def lag_variance(self, b: torch.Tensor, win: np.ndarray, unit: np.ndarray,
                     n_units: int) -> torch.Tensor:
        """``(u, G)`` null variance, pair by pair (units in few windows); ``b`` float64
        ``(n, G, K)``."""
        run, pos = self.circles.run[win], self.circles.pos[win]
        lengths = np.array([len(w) for w in self.circles.windows])
        out = torch.zeros(n_units, self.n_groups, dtype=torch.float64, device=self.device)
        counts = np.bincount(unit, minlength=n_units)
        for offset in range(int(counts.max(initial=0))):
            i = np.arange(len(win) - offset)
            j = i + offset
            ok = (unit[i] == unit[j]) & (run[i] >= 0) & (run[i] == run[j])
            i, j = i[ok], j[ok]
            if len(i) == 0:
                continue
            lag = (pos[j] - pos[i]) % lengths[run[i]]
            key = run[i] * (lengths.max() + 1) + lag
            for value in np.unique(key):
                sel = key == value
                gamma = self._gamma_of(int(run[i][sel][0]), int(lag[sel][0]))
                bi = b[torch.as_tensor(i[sel], device=self.device)]
                bj = b[torch.as_tensor(j[sel], device=self.device)]
                if self.k == 1:
                    term = bi[:, :, 0] * gamma[None, :, 0, 0] * bj[:, :, 0]
                else:
                    term = torch.einsum("ngk,gkl,ngl->ng", bi, gamma, bj)
                out.index_add_(0, torch.as_tensor(unit[i[sel]], device=self.device),
                               term * (1.0 if offset == 0 else 2.0))
        return out

    def fft_variance(self, b: torch.Tensor, win: np.ndarray, unit: np.ndarray,
                     n_units: int) -> torch.Tensor:
        """``(u, G)`` null variance as the mean square over shifts of the circular
        cross-correlation (FFT and Parseval; units in many windows)."""
        run, pos = self.circles.run[win], self.circles.pos[win]
        out = torch.zeros(n_units, self.n_groups, dtype=torch.float64, device=self.device)
        for r, members in enumerate(self.circles.windows):
            sel = np.flatnonzero(run == r)
            if len(sel) == 0:
                continue
            units_r, row = np.unique(unit[sel], return_inverse=True)
            length = len(members)
            series = torch.zeros(len(units_r), length, self.n_groups, self.k,
                                 dtype=torch.float64, device=self.device)
            idx = (torch.as_tensor(row, device=self.device),
                   torch.as_tensor(pos[sel], device=self.device))
            series.index_put_(idx, b[torch.as_tensor(sel, device=self.device)],
                              accumulate=True)
            if r not in self._spec:
                self._spec[r] = torch.as_tensor(self.null.spectrum(r), device=self.device)
            spec = (torch.fft.rfft(series, dim=1).conj() * self._spec[r][None]).sum(dim=-1)
            weights = torch.full((spec.shape[1],), 2.0, dtype=torch.float64,
                                 device=self.device)
            weights[0] = 1.0
            if length % 2 == 0:
                weights[-1] = 1.0
            power = (spec.real**2 + spec.imag**2) * weights[None, :, None]
            out[torch.as_tensor(units_r, device=self.device)] += power.sum(dim=1) / length**2
        return out


def _block(layer: _OutputLayer, ctx: PassContext, win: np.ndarray, pos: np.ndarray,
           unit: np.ndarray, n_units: int, sparse: bool, accumulator
           ) -> dict[str, torch.Tensor]:
    """Per-unit float64 sums of one block of occurrences (``unit``: local unit index),
    added into ``accumulator(key)`` (a zeroed ``(n_units, G)`` float64 tensor)."""
    delta = ctx.deltas(win, pos)
    bs = ctx.batch_size
    dev = layer.device
    win_t = torch.as_tensor(win, device=dev)
    unit_t = torch.as_tensor(unit, device=dev)
    with torch.no_grad():
        mu1 = torch.cat([ctx.engine.forward(win[i : i + bs], pos[i : i + bs],
                                            delta[i : i + bs])[0]
                         for i in range(0, len(win), bs)])
        # the output layer as one GEMM over the block (float32, the forward pass's
        # precision, the per-unit pass's arithmetic); statistics in float64
        m1 = layer.decoder(mu1)[0].reshape(len(win), -1)
        d = m1.double() - layer.m0[win_t]
        b = d * layer.prec
        kl = 0.5 * layer.sum_k(b * d)  # sum_K p d^2 / 2 = sum_K b d / 2
        per_occ = {"kl": kl, "smd": torch.sqrt(kl * (2.0 / layer.k))}
        # dll = sum_K b (y - m0 - d/2) = sum_K b (y - m0) - kl; the null mean likewise
        per_occ["dll"] = layer.sum_k(b * layer.resid[win_t]) - kl
        if ctx.pvalue == "gaussian":
            per_occ["null_e"] = layer.sum_k(b * layer.resid_bar[win_t]) - kl
        if ctx.n_boot > 0:
            value = per_occ["dll"].neg() if ctx.measure == "dll" else per_occ[ctx.measure]
            per_occ["v1"] = value.double()
            per_occ["v2"] = per_occ["v1"] ** 2  # squared in float64, as the reference
        sums = {}
        for key, x in per_occ.items():
            sums[key] = accumulator(key).index_add_(0, unit_t, x.double())
        if ctx.pvalue == "gaussian":
            b64 = layer.grouped(b)
            variance = layer.lag_variance if sparse else layer.fft_variance
            sums["null_var"] = accumulator("null_var").add_(variance(b64, win, unit, n_units))
    return sums


def per_output_pass(ctx: PassContext, units: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """VAE-1's per-output pass of ``units``: :func:`run_pass` with ``("cross_outputs",)``.

    Computed block by block with one output-layer GEMM per block and streamed float64
    per-unit sums where :func:`fallback_reason` allows; otherwise (NaN targets,
    permutation null draws, bootstrap intervals, non-affine decoders) by
    :func:`~bids_app.masking.passes.run_pass`, whose results it equals within float32
    rounding (1e-5).

    Parameters
    ----------
    ctx : PassContext
        The pass context (must hold the ``cross_outputs`` head).
    units : numpy.ndarray | None
        Unit ids to test (None: every unit).

    Returns
    -------
    units, starts, stats
        As :func:`~bids_app.masking.passes.run_pass`: ``stats["cross_outputs"]`` holds
        ``smd``, ``kl``, ``dll`` ``(U, G)``, ``lo``/``hi`` when ``n_boot > 0``, and
        ``null_mean``/``null_sd`` for Gaussian p-values.
    """
    units, starts, occ = ctx.occurrences_of(units)
    counts = np.diff(starts)
    if len(units) == 0 or fallback_reason(ctx, counts) is not None:
        return run_pass(ctx, (HEAD,), units)
    layer = _OutputLayer(ctx)
    sparse = counts.max() <= SPARSE_MAX_OCCURRENCES
    total: dict[str, np.ndarray] = {}  # (U, G) sums, allocated for the statistics computed
    on_cpu = layer.device.type == "cpu"
    for u0, u1 in _chunks(starts, max(1, BLOCK_ELEMENTS // layer.n_out)):
        s0, s1 = int(starts[u0]), int(starts[u1])
        unit = np.repeat(np.arange(u1 - u0), counts[u0:u1])

        def accumulator(key: str, u0: int = u0, u1: int = u1) -> torch.Tensor:
            if key not in total:
                total[key] = np.zeros((len(units), layer.n_groups))
            if on_cpu:  # sum straight into the result
                return torch.from_numpy(total[key][u0:u1])
            return torch.zeros(u1 - u0, layer.n_groups, dtype=torch.float64,
                               device=layer.device)

        sums = _block(layer, ctx, occ[s0:s1, 0], occ[s0:s1, 1], unit, u1 - u0, sparse,
                      accumulator)
        if not on_cpu:
            for key, value in sums.items():
                total[key][u0:u1] = value.cpu().numpy()
    n = counts.astype(float)[:, None]
    # means in place: (U, G) arrays are hundreds of MB for NATVIEW-size voxel outputs
    stats = {key: np.divide(total[key], n, out=total[key]) for key in ("smd", "kl", "dll")}
    if ctx.n_boot > 0:
        stats["lo"], stats["hi"] = st.normal_ci_from_sums(total["v1"], total["v2"], n)
    if ctx.pvalue == "gaussian":
        stats["null_mean"] = np.divide(total["null_e"], -n, out=total["null_e"])
        stats["null_sd"] = np.sqrt(np.maximum(total["null_var"], 0.0)) / n
    return units, starts, {HEAD: stats}
