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
* under the permuted-windows null (``y`` replaced by the output of a random window of the
  pool), ``E[dll] = dphi' rho_bar - dphi' A dphi / 2`` with ``rho_bar = W' V^-1 (ybar - m0)``
  and ``Var[dll] = dphi' B dphi`` with ``B = W' V^-1 Cov(y) V^-1 W`` (the full covariance of
  the pool's output vectors, which only enters through this ``P x P`` matrix).

These are exactly the sums over outputs that per-output occlusion computes, at a cost of
``O(P^2)`` per masked (unit, window) instead of ``O(F P)``: the output layer never runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

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
        """``phi(z) = [z, h(z)]``, or ``z`` for a linear decoder (``(B, P)``, float32, on
        the decoder's device)."""
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
        z = z.to(skip.weight.device)
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
        ``(N, F)`` observed outputs of the windows (the permutation pool), in the
        decoder's flattened output order.
    chunk : int
        Windows per block (bounds the ``(chunk, F)`` temporaries).
    """

    def __init__(self, decoder: AffineDecoder, mu0: torch.Tensor, targets: np.ndarray,
                 *, chunk: int = 256) -> None:
        self.decoder = decoder
        self.n_outputs = decoder.weight.shape[0]
        phi0 = decoder.features(mu0).double().cpu().numpy()

        def mean(start: int) -> np.ndarray:  # unmasked predictive means of one block
            return phi0[start : start + chunk] @ decoder.weight.T + decoder.bias

        n = len(targets)
        ybar, sse = np.zeros(self.n_outputs), np.zeros(self.n_outputs)
        for s in range(0, n, chunk):
            y = np.asarray(targets[s : s + chunk], dtype=np.float64)
            ybar += y.sum(axis=0)
            sse += ((y - mean(s)) ** 2).sum(axis=0)
        ybar /= max(n, 1)
        self.variance = calibrated_variance(sse, n)
        wp = decoder.weight / self.variance[:, None]  # V^-1 W, (F, P)
        a = decoder.weight.T @ wp
        p = wp.shape[1]
        # W' V^-1 y and W' V^-1 m0 of every window (rho = their difference)
        self.y_proj, self.m0_proj = np.empty((n, p)), np.empty((n, p))
        gram = np.zeros((p, p))
        for s in range(0, n, chunk):
            y = np.asarray(targets[s : s + chunk], dtype=np.float64)
            m0 = mean(s)
            self.y_proj[s : s + chunk] = y @ wp
            self.m0_proj[s : s + chunk] = m0 @ wp
            g = (y - ybar) @ wp
            gram += g.T @ g
        b = gram / max(n, 1)
        # Joint diagonalisation: with A = U S U' (range of A; B's range lies inside it),
        # s = M' dphi, M = U S^1/2 Q and Q' (S^-1/2 U' B U S^-1/2) Q = diag(lam), gives
        # dphi' A dphi = |s|^2, dphi' B dphi = sum(lam s^2) and dphi' rho = s . (M^+ rho)
        # (M^+ = Q' S^-1/2 U', a partial isometry of V^-1/2 (y - m0): no amplification).
        evals, evecs = np.linalg.eigh(a)
        keep = evals > max(float(evals.max(initial=0.0)), 1e-300) * 1e-10
        u, root = evecs[:, keep], np.sqrt(evals[keep])
        b_white = (u / root).T @ b @ (u / root)
        lam, q = np.linalg.eigh(0.5 * (b_white + b_white.T))
        proj = (u * root) @ q  # M, (P, r)
        pinv = (u / root) @ q  # M^+', (P, r)
        # per-occurrence work runs in float32 on the model's device (the forward pass's
        # precision): one product gives both quadratic forms, one gather both residuals
        dev = decoder.module.skip.weight.device
        self._phi0 = torch.as_tensor(phi0, dtype=torch.float32, device=dev)
        self._proj = torch.as_tensor(proj, dtype=torch.float32, device=dev)
        self._lam = torch.as_tensor(np.maximum(lam, 0.0), dtype=torch.float32, device=dev)
        self._rho = torch.as_tensor(np.stack([(self.y_proj - self.m0_proj) @ pinv,
                                              (ybar @ wp - self.m0_proj) @ pinv], axis=1),
                                    dtype=torch.float32, device=dev)

    def occurrences(self, mu1: torch.Tensor, win: np.ndarray) -> dict[str, np.ndarray]:
        """Per-occurrence statistics of masked posteriors ``mu1`` in windows ``win``.

        Returns
        -------
        dict
            ``(n,)`` arrays: ``q`` (``sum_f d_f^2 / v_f``), ``dll`` (log-likelihood change
            summed over outputs), ``null_mean`` and ``null_var`` (its moments under the
            permuted-windows null); and ``dphi`` ``(n, P)`` tensor (for null draws).
        """
        win_t = torch.as_tensor(win, device=self._phi0.device)
        with torch.no_grad():
            dphi = self.decoder.features(mu1) - self._phi0[win_t]
            s = dphi @ self._proj
            s2 = s * s
            q, var = torch.stack([s2.sum(dim=1), s2 @ self._lam]).double().cpu().numpy()
            # dphi' rho (residual), dphi' rho_bar (null mean)
            lin = torch.bmm(self._rho[win_t], s[:, :, None])[:, :, 0].double().cpu().numpy()
        return {"q": q, "dll": lin[:, 0] - 0.5 * q, "null_mean": lin[:, 1] - 0.5 * q,
                "null_var": var, "dphi": dphi}

    def null_draws(self, dphi: torch.Tensor, q: np.ndarray, win: np.ndarray,
                   starts: np.ndarray, n_null: int, rng: np.random.Generator) -> np.ndarray:
        """``(n_null, U)`` null draws of ``-mean(dll)``: each occurrence scored against the
        output of a randomly drawn window of the pool."""
        from bids_app.masking.statistics import segment_mean

        dphi = dphi.double().cpu().numpy()
        out = np.empty((n_null, len(starts) - 1))
        base = (dphi * self.m0_proj[win]).sum(axis=1) + 0.5 * q
        for k in range(n_null):
            j = rng.integers(0, len(self.y_proj), size=len(win))
            dll = (dphi * self.y_proj[j]).sum(axis=1) - base
            out[k] = -segment_mean(dll, starts)
        return out


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
