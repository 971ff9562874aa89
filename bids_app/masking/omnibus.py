"""Whole-output occlusion statistics of VAE-1's cross-modal prediction, in feature space.

VAE-1's Gaussian decoders are affine in a feature vector of the latent,
``m(z) = W phi(z) + b`` with ``phi(z) = [z, h(z)]`` (the linear skip path and the last
hidden layer of the residual MLP). The change a masked unit causes in *all* ``F`` outputs
of the other modality (every voxel, or every EEG channel-time) is therefore ``d = W dphi``
with ``dphi`` of size ``P = L + H`` (272 for a 256-wide decoder).

The whole prediction is scored with a *calibrated* predictive variance: ``v_f`` is the
mean squared error of the unmasked cross-modal prediction of output ``f`` over the masked
windows (the decoder's own variance describes reconstruction from both modalities and
would give outputs the other modality cannot predict the largest weights). Every
whole-output statistic is then a linear or quadratic form in ``dphi``:

* ``sum_f d_f^2 / v_f = dphi' A dphi`` with ``A = W' V^-1 W``,
* the log-likelihood change of the observed output ``y`` of the window,
  ``dll = dphi' rho - dphi' A dphi / 2`` with ``rho = W' V^-1 (y - m0)``,
* under the circular-shift null of :mod:`bids_app.masking.shift_null` (the observed
  outputs of each run shifted against the windows), ``E[dll] = dphi' rho_bar -
  dphi' A dphi / 2`` with ``rho_bar = W' V^-1 (ybar_r - m0)`` (``ybar_r`` the run mean),
  and the variance of a unit's sum is that of ``sum_i dphi_i' W' V^-1 yc_{w_i + s}``
  over shifts: the outputs enter only through their ``P``-dimensional projections
  ``W' V^-1 yc`` (``yc`` centred per run), so the lagged covariances of all ``F``
  outputs are ``P x P`` matrices.

These are exactly the sums over outputs that per-output occlusion computes, at a cost of
``O(P^2)`` per masked (unit, window) instead of ``O(F P)``: the output layer never runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bids_app.masking.shift_null import CircularShiftNull
from bids_app.masking.statistics import segment_mean

_CHECK_TOLERANCE = 1e-4


@dataclass
class AffineDecoder:
    """A Gaussian decoder's mean written as ``weight @ features(z) + bias``.

    Attributes
    ----------
    module : torch.nn.Module
        The decoder (``skip`` linear map, ``net`` MLP ending in a linear layer that reads
        ``hidden(z)``).
    weight : numpy.ndarray
        ``(F, P)`` float64, ``[skip.weight, net[-1].weight]``.
    bias : numpy.ndarray
        ``(F,)`` float64.
    """

    module: nn.Module
    weight: np.ndarray
    bias: np.ndarray
    linear: bool = False

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """``phi(z) = [z, h(z)]``, or ``z`` for a linear decoder (``(B, P)``, in the
        decoder's precision and on its device)."""
        if self.linear:
            return z
        with torch.no_grad():
            return torch.cat([z, self.module.hidden(z)], dim=1)


def affine_decoder(decoder: nn.Module) -> AffineDecoder | None:
    """The affine form of a :class:`~bids_app.models.layers.GaussianDecoder`, or None.

    The decomposition is checked numerically on random latents; a decoder of another
    structure gives None.
    """
    net, skip = getattr(decoder, "net", None), getattr(decoder, "skip", None)
    if not (isinstance(net, nn.Sequential) and len(net) > 0 and isinstance(net[-1], nn.Linear)
            and isinstance(skip, nn.Linear) and callable(getattr(decoder, "hidden", None))):
        return None
    with torch.no_grad():
        # a residual whose output layer is zero (e.g. frozen at its PCA initialisation)
        # makes the decoder linear: phi(z) = z
        linear = not bool(net[-1].weight.any())
        weight = (skip.weight if linear else torch.cat([skip.weight, net[-1].weight], dim=1))
        weight = weight.double().cpu().numpy()
        bias = (skip.bias + net[-1].bias).double().cpu().numpy()
        z = torch.randn(4, skip.in_features, generator=torch.Generator().manual_seed(0))
        z = z.to(skip.weight.device, skip.weight.dtype)
        mean = decoder(z)[0]
    n_out = weight.shape[0]
    out = AffineDecoder(decoder, weight, bias, linear)
    phi = out.features(z).double().cpu().numpy()
    expected = mean.reshape(4, n_out).double().cpu().numpy()
    if not np.allclose(phi @ weight.T + bias, expected, atol=_CHECK_TOLERANCE,
                       rtol=_CHECK_TOLERANCE):
        return None
    return out


class OmnibusTables:
    """Per-window tables of the whole-output statistics (computed once per model).

    Parameters
    ----------
    decoder : AffineDecoder
        The cross-modal decoder.
    mu0 : torch.Tensor
        ``(N, L)`` unmasked posterior means of the windows.
    targets : numpy.ndarray
        ``(N, F)`` observed outputs of the windows, in the decoder's flattened output
        order.
    window_runs : numpy.ndarray | None
        ``(N,)`` run of every window (the circles of the shift null); None: one run.
    chunk : int
        Windows per block (bounds the ``(chunk, F)`` temporaries).
    """

    def __init__(self, decoder: AffineDecoder, mu0: torch.Tensor, targets: np.ndarray,
                 window_runs: np.ndarray | None = None, *, chunk: int = 256) -> None:
        self.decoder = decoder
        self.n_outputs = decoder.weight.shape[0]
        phi0 = decoder.features(mu0).double().cpu().numpy()

        def mean(start: int) -> np.ndarray:  # unmasked predictive means of one block
            return phi0[start : start + chunk] @ decoder.weight.T + decoder.bias

        n = len(targets)
        sse = np.zeros(self.n_outputs)
        for s in range(0, n, chunk):
            y = np.asarray(targets[s : s + chunk], dtype=np.float64)
            sse += ((y - mean(s)) ** 2).sum(axis=0)
        self.variance = calibrated_variance(sse, n)
        wp = decoder.weight / self.variance[:, None]  # V^-1 W, (F, P)
        a = decoder.weight.T @ wp
        p = wp.shape[1]
        # W' V^-1 y and W' V^-1 m0 of every window (rho = their difference)
        self.y_proj, self.m0_proj = np.empty((n, p)), np.empty((n, p))
        for s in range(0, n, chunk):
            self.y_proj[s : s + chunk] = np.asarray(targets[s : s + chunk],
                                                    dtype=np.float64) @ wp
            self.m0_proj[s : s + chunk] = mean(s) @ wp
        # Whitening: with A = U S U' (range of A, which holds every rho), s = M' dphi with
        # M = U S^1/2 gives dphi' A dphi = |s|^2 and dphi' rho = s . (M^+ rho)
        # (M^+ = S^-1/2 U', a partial isometry of V^-1/2 (y - m0): no amplification).
        evals, evecs = np.linalg.eigh(a)
        keep = evals > max(float(evals.max(initial=0.0)), 1e-300) * 1e-10
        u, root = evecs[:, keep], np.sqrt(evals[keep])
        proj, pinv = u * root, u / root  # M and M^+', (P, r)
        run_mean = _run_means(self.y_proj, window_runs)  # W' V^-1 ybar_r of each window
        #: circular-shift null of the whitened, run-centred outputs (one group of r)
        self.shift = CircularShiftNull(((self.y_proj - run_mean) @ pinv)[:, None, :],
                                       window_runs)
        # per-occurrence work runs in the forward pass's precision (float32, or float64
        # for a float64 model) on the model's device: one product gives the quadratic
        # form, one gather both residuals
        dev, dtype = decoder.module.skip.weight.device, decoder.module.skip.weight.dtype
        dtype = torch.promote_types(dtype, torch.float32)
        self.phi0 = torch.as_tensor(phi0, dtype=dtype, device=dev)
        self._proj = torch.as_tensor(proj, dtype=dtype, device=dev)
        self._rho = torch.as_tensor(np.stack([(self.y_proj - self.m0_proj) @ pinv,
                                              (run_mean - self.m0_proj) @ pinv], axis=1),
                                    dtype=dtype, device=dev)

    def occurrences(self, mu1: torch.Tensor, win: np.ndarray) -> dict[str, np.ndarray]:
        """Per-occurrence statistics of masked posteriors ``mu1`` in windows ``win``.

        Returns
        -------
        dict
            ``(n,)`` arrays: ``q`` (``sum_f d_f^2 / v_f``), ``dll`` (log-likelihood change
            summed over outputs), ``null_mean`` (its mean under the circular-shift null);
            ``s`` ``(n, r)`` whitened feature change (the coefficients of the null
            variance, see :meth:`null_sd`) and ``dphi`` ``(n, P)`` tensor (null draws).
        """
        win_t = torch.as_tensor(win, device=self.phi0.device)
        with torch.no_grad():
            dphi = self.decoder.features(mu1) - self.phi0[win_t]
            s = dphi @ self._proj
            s2 = s * s
            q = s2.sum(dim=1).double().cpu().numpy()
            # dphi' rho (residual), dphi' rho_bar (null mean)
            lin = torch.bmm(self._rho[win_t], s[:, :, None])[:, :, 0].double().cpu().numpy()
        return {"q": q, "dll": lin[:, 0] - 0.5 * q, "null_mean": lin[:, 1] - 0.5 * q,
                "s": s.double().cpu().numpy(), "dphi": dphi}

    def null_sd(self, s: np.ndarray, win: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """``(U,)`` exact SD over circular shifts of each unit's ``-mean(dll)``."""
        var = self.shift.variance(s[:, None, :], win, starts)[:, 0]
        return np.sqrt(np.maximum(var, 0.0)) / np.diff(starts)

    def null_draws(self, dphi: torch.Tensor, q: np.ndarray, win: np.ndarray,
                   starts: np.ndarray, n_null: int, rng: np.random.Generator) -> np.ndarray:
        """``(n_null, U)`` null draws of ``-mean(dll)``: each occurrence scored against the
        output of its window shifted circularly within the run (one random shift per run
        and draw)."""
        dphi = dphi.double().cpu().numpy()
        out = np.empty((n_null, len(starts) - 1))
        base = (dphi * self.m0_proj[win]).sum(axis=1) + 0.5 * q
        shifted = self.shift.classes[0][1].shifted(win, rng, n_null)
        for k, j in enumerate(shifted):
            dll = (dphi * self.y_proj[j]).sum(axis=1) - base
            out[k] = -segment_mean(dll, starts)
        return out


def _run_means(values: np.ndarray, window_runs: np.ndarray | None) -> np.ndarray:
    """Mean of ``values`` over the windows of each run, broadcast back to every window."""
    if window_runs is None:
        return np.broadcast_to(values.mean(axis=0), values.shape).copy()
    codes = np.unique(np.asarray(window_runs), return_inverse=True)[1].ravel()
    sums = np.zeros((codes.max() + 1, values.shape[1]))
    np.add.at(sums, codes, values)
    return (sums / np.bincount(codes)[:, None])[codes]


def calibrated_variance(sse: np.ndarray, n: int) -> np.ndarray:
    """Mean squared error per output (floored at 1e-12 of the largest, and above 0)."""
    var = np.asarray(sse, dtype=np.float64) / max(n, 1)
    return np.maximum(var, max(float(var.max(initial=0.0)) * 1e-12, 1e-300))


def output_targets(data_eeg: np.ndarray, data_fmri: np.ndarray, kind: str) -> np.ndarray:
    """Observed cross-modal outputs in decoder order: voxels for masked EEG timestamps,
    the flattened ``(C, T)`` EEG window for masked voxels."""
    if kind == "eeg":
        return np.asarray(data_fmri)
    x = np.asarray(data_eeg)
    return x.reshape(len(x), -1)
