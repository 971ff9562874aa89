"""Probabilistic-PCA initialisation of VAE-1.

A VAE with linear encoders and decoders and a Gaussian likelihood is probabilistic PCA
(Tipping & Bishop 1999). :func:`init_from_pca` sets the linear paths of
:class:`~bids_app.models.vae.MultimodalVAE` to the modality-balanced PCA of the training
windows (the baseline of :func:`~bids_app.models.evaluate.evaluate_vae1`) and the
non-linear residuals to zero, so training starts from the PCA solution: the joint
posterior mean is the standardised PCA score and the decoders' means are the PCA
reconstruction. Training (with early stopping on held-out runs) then adds the
non-linear part.

References
----------
Tipping ME, Bishop CM (1999). Probabilistic principal component analysis. J R Stat Soc B
61:611-622.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from bids_app.models.evaluate import fit_pca_baseline
from bids_app.models.vae import GaussianDecoder, ModalityEncoder, MultimodalVAE

logger = logging.getLogger(__name__)


def _zero_last(net: nn.Sequential) -> None:
    last = [m for m in net if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


def _set_encoder(
    enc: ModalityEncoder, weight: np.ndarray, bias: np.ndarray, *, gain: float, logvar: float
) -> None:
    """Linear path of an encoder: ``mu = gain * (weight @ x + bias)``, constant logvar."""
    n_lat = weight.shape[0]
    if enc.input.out_features < n_lat:
        raise ValueError(
            f"PCA initialisation needs hidden_dim >= latent_dim ({n_lat}), "
            f"got {enc.input.out_features}."
        )
    head = enc.body
    with torch.no_grad():
        enc.input.weight[:n_lat] = torch.as_tensor(weight, dtype=torch.float32)
        enc.input.bias[:n_lat] = torch.as_tensor(bias, dtype=torch.float32)
        head.skip.weight.zero_()
        head.skip.bias.zero_()
        head.skip.weight[:n_lat, :n_lat] = gain * torch.eye(n_lat)
        head.skip.bias[n_lat:] = logvar
    _zero_last(head.net)


def _set_decoder(dec: GaussianDecoder, weight: np.ndarray, bias: np.ndarray) -> None:
    """Linear path of a decoder: ``mean = weight @ z + bias``; zero non-linear residual."""
    with torch.no_grad():
        dec.skip.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        dec.skip.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    _zero_last(dec.net)


def init_from_pca(
    model: MultimodalVAE,
    arrays: Mapping[str, np.ndarray],
    train_idx: np.ndarray,
    *,
    seed: int = 0,
    expert_precision: float = 10.0,
    max_windows: int = 2000,
) -> MultimodalVAE:
    """Initialise the linear paths of VAE-1 from the balanced PCA of the training windows.

    Parameters
    ----------
    model : MultimodalVAE
        Model to initialise (modified in place and returned).
    arrays : mapping
        ``"eeg"`` ``(N, C, T)`` and ``"fmri"`` ``(N, V)``.
    train_idx : numpy.ndarray
        Training windows (at most ``max_windows`` of them are used).
    seed : int
        Seeds the choice of windows.
    expert_precision : float
        Initial precision of each expert; the experts' means are scaled so that the
        joint posterior mean (product with the prior) equals the standardised PCA score.
    max_windows : int
        Windows used by the PCA.

    Returns
    -------
    MultimodalVAE
        ``model``.
    """
    n_lat = model.latent_dim
    pca = fit_pca_baseline(arrays, train_idx, n_lat, seed=seed, max_windows=max_windows)
    comp, mean, scale, d = pca["components"], pca["mean"], pca["scale"], pca["d_eeg"]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(np.asarray(train_idx))[:max_windows])
    x = np.hstack([arrays["eeg"][idx].reshape(len(idx), -1), arrays["fmri"][idx]])
    sd = np.sqrt(np.maximum(((x * scale - mean) @ comp.T).var(0), 1e-12))  # score SDs
    p = float(expert_precision)
    gain, logvar = (1.0 + 2.0 * p) / p, -math.log(p)
    for enc, dec, sl in (
        (model.eeg_encoder, model.eeg_decoder, slice(0, d)),
        (model.fmri_encoder, model.fmri_decoder, slice(d, None)),
    ):
        c_m, s_m, m_m = comp[:, sl], scale[sl], mean[sl]
        _set_encoder(enc, c_m * s_m / sd[:, None], -(c_m @ m_m) / sd, gain=gain, logvar=logvar)
        _set_decoder(dec, (c_m * sd[:, None]).T / s_m[:, None], m_m / s_m)
    logger.info("VAE-1 initialised from the balanced PCA of %d windows", len(idx))
    return model
