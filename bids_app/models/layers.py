"""Building blocks of the VAEs: Gaussian encoders/decoders, product of experts, losses.

See :mod:`bids_app.models.vae` for the models and docs/developer.md ("Models") for the
structure that masking relies on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOGVAR_RANGE: tuple[float, float] = (-8.0, 6.0)
_LOG_2PI = math.log(2.0 * math.pi)


def _mlp(n_in: int, hidden: int, n_out: int, *, n_layers: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.GELU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class _GaussianHead(nn.Module):
    """Non-linear body of an encoder: pre-activation ``h`` -> ``(mu, logvar)``.

    ``out = skip(h) + net(gelu(h)) * net_mask``: a linear path plus a non-linear
    residual, so a linear (PCA-like) encoder is the easy solution and non-linearities are
    learned on top; the ``net_mask`` buffer (ones unless an initialisation sets it) says
    which outputs the residual may change and ``logvar_offset`` (zeros unless a
    calibration sets it) is added to the log-variances. No normalisation layer: the
    scale of the input (e.g. EEG power) is information.
    """

    def __init__(self, hidden: int, latent: int, *, n_layers: int, dropout: float) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.skip = nn.Linear(hidden, 2 * latent)
        self.net = _mlp(hidden, hidden, 2 * latent, n_layers=n_layers, dropout=dropout)
        self.latent = latent
        # which outputs (means, then log-variances) the non-linear residual may change
        self.register_buffer("net_mask", torch.ones(2 * latent))
        # added to the log-variances (calibration of the expert's confidence after training)
        self.register_buffer("logvar_offset", torch.zeros(latent))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.skip(h)
        if self.training or bool(self.net_mask.any()):  # a masked-out residual adds 0
            out = out + self.net(self.act(h)) * self.net_mask
        mu, logvar = out[..., : self.latent], out[..., self.latent :] + self.logvar_offset
        return mu, logvar.clamp(*LOGVAR_RANGE)


class ModalityEncoder(nn.Module):
    """Encoder of one modality into a Gaussian expert over the latent.

    Parameters
    ----------
    in_shape : tuple of int
        Shape of one sample without the batch axis: ``(C, T)`` for EEG, ``(V,)`` for fMRI.
    hidden_dim : int
        Width of the hidden layers.
    latent_dim : int
        Number of latent dimensions.
    n_layers : int
        Hidden layers of the body after the linear input layer.
    dropout : float
        Dropout probability in the body.

    Attributes
    ----------
    input : torch.nn.Linear
        Linear map of the flattened input (``prod(in_shape)`` -> ``hidden_dim``). Masking
        relies on it being linear and applied first.
    body : torch.nn.Module
        Maps the pre-activation ``input(x)`` to ``(mu, logvar)``.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        hidden_dim: int,
        latent_dim: int,
        *,
        n_layers: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.in_features = math.prod(self.in_shape)
        self.input = nn.Linear(self.in_features, hidden_dim)
        self.body = _GaussianHead(hidden_dim, latent_dim, n_layers=n_layers, dropout=dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the expert ``(mu, logvar)`` of a batch ``x`` of shape ``(B, *in_shape)``."""
        return self.body(self.input(x.reshape(x.shape[0], -1)))


class GaussianDecoder(nn.Module):
    """Decoder from the latent to a diagonal Gaussian over one modality.

    The mean is ``skip(z) + mlp(z)`` (a linear map plus a non-linear residual); the
    log-variance is one learned value per
    output element (homoscedastic), so the predictive distribution of an element changes
    through its mean only.

    Parameters
    ----------
    latent_dim : int
        Number of latent dimensions.
    hidden_dim : int
        Width of the hidden layers.
    out_shape : tuple of int
        Shape of one output sample without the batch axis.
    n_layers : int
        Number of hidden layers.
    dropout : float
        Dropout probability.
    variance : {"shared", "element", "fixed"}
        One learned variance for all outputs, one per output element, or a fixed unit
        variance (the likelihood is then a squared error, as PCA's, and a modality that
        is hard to predict is not down-weighted).
    rank : int
        0: the residual MLP ends in a linear layer to every output. ``rank > 0``: it ends
        in ``rank`` values that a final linear layer (``net[-1]``, e.g. fixed to the
        leading principal axes of the modality) maps to the outputs, so the non-linear
        residual lives in a ``rank``-dimensional subspace and has few parameters.

    Attributes
    ----------
    net_mask : torch.Tensor
        Buffer: which latent dimensions the residual reads (ones unless an
        initialisation sets it).
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int,
        out_shape: tuple[int, ...],
        *,
        n_layers: int = 2,
        dropout: float = 0.0,
        variance: str = "shared",
        rank: int = 0,
    ) -> None:
        super().__init__()
        if variance not in ("shared", "element", "fixed"):
            raise ValueError(
                f"variance must be 'shared', 'element' or 'fixed', got {variance!r}."
            )
        self.out_shape = tuple(int(s) for s in out_shape)
        n_out = math.prod(self.out_shape)
        self.skip = nn.Linear(latent_dim, n_out)
        self.rank = int(rank)
        width = self.rank or n_out
        self.net = _mlp(latent_dim, hidden_dim, width, n_layers=n_layers, dropout=dropout)
        if self.rank:
            self.net.append(nn.Linear(self.rank, n_out))
        self.logvar = nn.Parameter(
            torch.zeros(n_out if variance == "element" else 1), requires_grad=variance != "fixed"
        )
        self.register_buffer("net_mask", torch.ones(latent_dim))

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        """Input of the residual's output layer ``net[-1]``.

        The mean is ``skip(z) + net[-1](hidden(z))``: affine in ``[z, hidden(z)]``.
        """
        return self.net[:-1](z * self.net_mask)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, logvar)``, each of shape ``(B, *out_shape)``."""
        residual = self.net[-1](self.hidden(z))
        mean = (self.skip(z) + residual).reshape(z.shape[0], *self.out_shape)
        logvar = self.logvar.clamp(*LOGVAR_RANGE)
        if logvar.numel() > 1:
            logvar = logvar.reshape(self.out_shape)
        return mean, logvar.expand_as(mean)


def product_of_experts(
    experts: list[tuple[torch.Tensor, torch.Tensor]], latent_dim: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse Gaussian experts and a unit Gaussian prior expert into one posterior.

    Parameters
    ----------
    experts : list of (mu, logvar)
        Experts, each of shape ``(B, L)``. May be empty (the prior is returned).
    latent_dim : int
        ``L``.
    like : torch.Tensor
        Tensor whose batch size, dtype and device the prior takes when ``experts`` is empty.

    Returns
    -------
    mu, logvar : torch.Tensor
        The product's mean and log-variance, ``(B, L)``.
    """
    batch = like.shape[0]
    # at least float32 (half precision under autocast), float64 for a float64 model
    dtype = torch.promote_types(like.dtype, torch.float32)
    precision = torch.ones(batch, latent_dim, dtype=dtype, device=like.device)
    weighted = torch.zeros_like(precision)
    for mu, logvar in experts:
        p = torch.exp(-logvar.to(dtype))
        precision = precision + p
        weighted = weighted + mu.to(dtype) * p
    return weighted / precision, -torch.log(precision)


def gaussian_nll(
    x: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    observed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative log-likelihood of ``x`` under a diagonal Gaussian, summed per sample.

    ``observed`` (boolean, like ``x``) restricts the sum to observed elements. Computed in
    float32 even under mixed precision.
    """
    x, mean, logvar = x.float(), mean.float(), logvar.float()
    nll = 0.5 * (logvar + (x - mean) ** 2 * torch.exp(-logvar) + _LOG_2PI)
    if observed is not None:
        nll = nll * observed
    return nll.reshape(nll.shape[0], -1).sum(dim=1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mu, exp(logvar))`` from ``N(0, I)``, summed per sample."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (torch.exp(logvar) + mu**2 - 1.0 - logvar).sum(dim=1)
