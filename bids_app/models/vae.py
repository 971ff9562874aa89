"""Multimodal variational autoencoders: the cognitive basis of EEG-fMRI windows.

Two models share one structure (see docs/developer.md, "Models"):

* :class:`MultimodalVAE` (VAE-1) encodes an EEG window ``(B, C, T)`` and/or an fMRI volume
  ``(B, V)`` into a shared Gaussian latent and decodes both modalities.
* :class:`StimulusVAE` (VAE-2) uses the same encoders and fusion and decodes the stimulus
  features ``(B, F)`` shown during the window.

Each modality has its own encoder (:class:`ModalityEncoder`): a linear input layer on the
flattened input (``self.input``; EEG flattened channel-major, index ``c * T + t``), then a
non-linear body returning the Gaussian expert ``(mu, logvar)``. The experts are fused by a
product of Gaussians together with a unit Gaussian prior expert (Wu & Goodman 2018), so
that any subset of modalities, including a single one, infers the latent. Decoders are
Gaussian (:class:`GaussianDecoder`) and return ``(mean, logvar)``.

Training maximises a modality-balanced ELBO evaluated for the joint posterior and for
each single-modality posterior (the MVAE sub-sampling objective), so that EEG alone
predicts fMRI and fMRI alone predicts EEG.

References
----------
Wu M, Goodman N (2018). Multimodal generative models for scalable weakly-supervised
learning. NeurIPS 31.
Kingma DP, Welling M (2014). Auto-encoding variational Bayes. ICLR.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bids_app.models.layers import (  # noqa: F401 (public re-exports)
    LOGVAR_RANGE,
    GaussianDecoder,
    ModalityEncoder,
    gaussian_nll,
    kl_standard_normal,
    product_of_experts,
)


class _FusedVAE(nn.Module):
    """Shared encoders + product-of-experts fusion of VAE-1 and VAE-2."""

    kind = "base"

    def __init__(
        self,
        eeg_shape: tuple[int, int],
        n_voxels: int,
        *,
        latent_dim: int = 16,
        hidden_dim: int = 256,
        beta: float = 1.0,
        n_layers: int = 1,
        dropout: float = 0.1,
        cross_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.cross_weight = float(cross_weight)
        self.eeg_shape = (int(eeg_shape[0]), int(eeg_shape[1]))
        self.n_voxels = int(n_voxels)
        self.latent_dim = int(latent_dim)
        self.hidden_dim = int(hidden_dim)
        self.beta = float(beta)
        self.n_layers = int(n_layers)
        self.dropout = float(dropout)
        kw = {"n_layers": n_layers, "dropout": dropout}
        self.eeg_encoder = ModalityEncoder(self.eeg_shape, hidden_dim, latent_dim, **kw)
        self.fmri_encoder = ModalityEncoder((self.n_voxels,), hidden_dim, latent_dim, **kw)

    def architecture(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) to rebuild the model."""
        return {
            "kind": self.kind,
            "eeg_shape": list(self.eeg_shape),
            "n_voxels": self.n_voxels,
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "beta": self.beta,
            "n_layers": self.n_layers,
            "dropout": self.dropout,
            "cross_weight": self.cross_weight,
            "fusion": "poe",
        }

    def experts(
        self, x_eeg: torch.Tensor | None = None, x_fmri: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Gaussian experts of the given modalities (EEG first)."""
        out = []
        if x_eeg is not None:
            out.append(self.eeg_encoder(x_eeg))
        if x_fmri is not None:
            out.append(self.fmri_encoder(x_fmri))
        return out

    def encode(
        self, x_eeg: torch.Tensor | None = None, x_fmri: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mu, logvar)`` of the latent given any subset of the modalities.

        Parameters
        ----------
        x_eeg : torch.Tensor | None
            EEG windows ``(B, C, T)``.
        x_fmri : torch.Tensor | None
            fMRI volumes ``(B, V)``.

        Returns
        -------
        mu, logvar : torch.Tensor
            ``(B, latent_dim)``; the prior when both inputs are None is not allowed.
        """
        if x_eeg is None and x_fmri is None:
            raise ValueError("encode() needs x_eeg, x_fmri or both.")
        like = x_eeg if x_eeg is not None else x_fmri
        return product_of_experts(self.experts(x_eeg, x_fmri), self.latent_dim, like)

    def fuse(self, experts: list[tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mu, logvar)`` from precomputed experts (product with the prior).

        Parameters
        ----------
        experts : list of (mu, logvar)
            Gaussian experts, each ``(B, latent_dim)``, as returned by :meth:`experts`.

        Returns
        -------
        mu, logvar : torch.Tensor
            ``(B, latent_dim)``.
        """
        return product_of_experts(experts, self.latent_dim, experts[0][0])

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Sample ``z`` in training mode, return ``mu`` in evaluation mode."""
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def _subsets(
        self, x_eeg: torch.Tensor, x_fmri: torch.Tensor
    ) -> list[tuple[str, float, tuple[torch.Tensor, torch.Tensor]]]:
        """Joint and single-modality posteriors, computing each expert once."""
        e_eeg, e_fmri = self.eeg_encoder(x_eeg), self.fmri_encoder(x_fmri)
        poe = product_of_experts
        return [
            ("joint", 1.0, poe([e_eeg, e_fmri], self.latent_dim, x_eeg)),
            ("eeg", self.cross_weight, poe([e_eeg], self.latent_dim, x_eeg)),
            ("fmri", self.cross_weight, poe([e_fmri], self.latent_dim, x_eeg)),
        ]

    @property
    def _norm(self) -> float:
        return 1.0 + 2.0 * self.cross_weight


class MultimodalVAE(_FusedVAE):
    """VAE-1: EEG window + fMRI volume -> shared latent -> EEG window + fMRI volume.

    Parameters
    ----------
    eeg_shape : tuple of int
        ``(C, T)``: channels and timestamps of one EEG window.
    n_voxels : int
        ``V``: voxels of the group brain mask.
    latent_dim : int
        Size of the latent (the "cognitive basis").
    hidden_dim : int
        Width of hidden layers.
    beta : float
        Weight of the KL term.
    n_layers : int
        Hidden layers of encoder bodies (decoders have ``n_layers + 1``).
    dropout : float
        Dropout in encoder bodies.
    decoder_variance : {"shared", "element", "fixed"}
        Variance of the Gaussian decoders (see :class:`GaussianDecoder`).
    eeg_decoder_rank : int
        Rank of the EEG decoder's non-linear residual (``rank`` of
        :class:`GaussianDecoder`; 0: full).

    Notes
    -----
    The loss per sample is, for each posterior q in {joint, EEG-only, fMRI-only},
    ``sum_m w_m NLL_m(x_m | z ~ q) + beta * KL(q || N(0, I))`` with modality weights
    ``w_m = D / D_m`` (``D`` the mean dimensionality of the two modalities), so both
    modalities count equally whatever their sizes; the single-modality terms are
    weighted by ``cross_weight`` (the ``cross_weight`` keyword, default 1) relative to
    the joint term, and the sum is divided by ``1 + 2 * cross_weight``.
    """

    kind = "vae1"

    def __init__(
        self,
        eeg_shape: tuple[int, int],
        n_voxels: int,
        *,
        decoder_variance: str = "shared",
        eeg_decoder_rank: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(eeg_shape, n_voxels, **kwargs)
        self.decoder_variance = str(decoder_variance)
        self.eeg_decoder_rank = int(eeg_decoder_rank)
        dec = {"n_layers": self.n_layers + 1, "variance": self.decoder_variance}
        self.eeg_decoder = GaussianDecoder(self.latent_dim, self.hidden_dim, self.eeg_shape,
                                           rank=self.eeg_decoder_rank, **dec)  # fmt: skip
        self.fmri_decoder = GaussianDecoder(
            self.latent_dim, self.hidden_dim, (self.n_voxels,), **dec
        )
        d_eeg, d_fmri = math.prod(self.eeg_shape), self.n_voxels
        mean_d = 0.5 * (d_eeg + d_fmri)
        self.weights = {"eeg": mean_d / d_eeg, "fmri": mean_d / d_fmri}

    def architecture(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) to rebuild the model."""
        return {**super().architecture(), "decoder_variance": self.decoder_variance,
                "eeg_decoder_rank": self.eeg_decoder_rank}  # fmt: skip

    def decode_eeg(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EEG window distribution ``(mean, logvar)``, each ``(B, C, T)``."""
        return self.eeg_decoder(z)

    def decode_fmri(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fMRI volume distribution ``(mean, logvar)``, each ``(B, V)``."""
        return self.fmri_decoder(z)

    def forward(
        self, x_eeg: torch.Tensor | None = None, x_fmri: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode the given modalities, decode both (``z = mu`` in evaluation mode)."""
        mu, logvar = self.encode(x_eeg, x_fmri)
        z = self.reparameterize(mu, logvar)
        eeg_mean, eeg_logvar = self.decode_eeg(z)
        fmri_mean, fmri_logvar = self.decode_fmri(z)
        return {
            "mu": mu,
            "logvar": logvar,
            "eeg_mean": eeg_mean,
            "eeg_logvar": eeg_logvar,
            "fmri_mean": fmri_mean,
            "fmri_logvar": fmri_logvar,
        }

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean negative ELBO of a batch (``{"eeg", "fmri"}``) and its parts."""
        x_eeg, x_fmri = batch["eeg"], batch["fmri"]
        total = x_eeg.new_zeros(())
        parts: dict[str, float] = {}
        for name, weight, (mu, logvar) in self._subsets(x_eeg, x_fmri):
            if weight == 0:
                continue
            z = self.reparameterize(mu, logvar)
            nll_e = gaussian_nll(x_eeg, *self.decode_eeg(z)).mean() * self.weights["eeg"]
            nll_f = gaussian_nll(x_fmri, *self.decode_fmri(z)).mean() * self.weights["fmri"]
            kl = kl_standard_normal(mu, logvar).mean()
            total = total + weight * (nll_e + nll_f + self.beta * kl)
            parts[f"{name}_nll_eeg"] = float(nll_e.detach())
            parts[f"{name}_nll_fmri"] = float(nll_f.detach())
            parts[f"{name}_kl"] = float(kl.detach())
        return total / self._norm, parts


class StimulusVAE(_FusedVAE):
    """VAE-2: EEG window + fMRI volume -> shared latent -> stimulus features.

    Parameters
    ----------
    eeg_shape : tuple of int
        ``(C, T)``.
    n_voxels : int
        ``V``.
    n_features : int
        ``F``: stimulus features per window.
    feature_names : sequence of str, optional
        Names of the features (kept in the architecture).
    **kwargs
        ``latent_dim``, ``hidden_dim``, ``beta``, ``n_layers``, ``dropout`` as in
        :class:`MultimodalVAE`.

    Notes
    -----
    The loss is the negative ELBO of the stimulus features for the joint and the two
    single-modality posteriors (a conditional VAE whose recognition model sees the brain
    data only), weighted as in :class:`MultimodalVAE`. Features that are NaN (not
    observed in a window, e.g. video features in the checker task) are left out of the
    likelihood.
    """

    kind = "vae2"

    def __init__(
        self,
        eeg_shape: tuple[int, int],
        n_voxels: int,
        n_features: int,
        *,
        feature_names: tuple[str, ...] | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(eeg_shape, n_voxels, **kwargs)
        self.n_features = int(n_features)
        self.feature_names = tuple(feature_names or (f"f{i}" for i in range(n_features)))
        self.stimulus_decoder = GaussianDecoder(
            self.latent_dim,
            self.hidden_dim,
            (self.n_features,),
            n_layers=self.n_layers + 1,
            variance="element",
        )

    def architecture(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) to rebuild the model."""
        arch = super().architecture()
        arch.update(n_features=self.n_features, feature_names=list(self.feature_names))
        return arch

    def decode_stimulus(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stimulus feature distribution ``(mean, logvar)``, each ``(B, F)``."""
        return self.stimulus_decoder(z)

    def forward(
        self, x_eeg: torch.Tensor | None = None, x_fmri: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode the given modalities and decode the stimulus features."""
        mu, logvar = self.encode(x_eeg, x_fmri)
        z = self.reparameterize(mu, logvar)
        mean, var = self.decode_stimulus(z)
        return {"mu": mu, "logvar": logvar, "stimulus_mean": mean, "stimulus_logvar": var}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean negative ELBO of a batch (``{"eeg", "fmri", "stimulus"}``) and its parts."""
        y = batch["stimulus"]
        total = y.new_zeros(())
        parts: dict[str, float] = {}
        observed = torch.isfinite(y)
        y = torch.where(observed, y, torch.zeros_like(y))
        for name, weight, (mu, logvar) in self._subsets(batch["eeg"], batch["fmri"]):
            if weight == 0:
                continue
            z = self.reparameterize(mu, logvar)
            mean, var = self.decode_stimulus(z)
            nll = (gaussian_nll(y, mean, var, observed)).mean()
            kl = kl_standard_normal(mu, logvar).mean()
            total = total + weight * (nll + self.beta * kl)
            parts[f"{name}_nll_stimulus"] = float(nll.detach())
            parts[f"{name}_kl"] = float(kl.detach())
        return total / self._norm, parts


def build_model(architecture: dict[str, Any]) -> MultimodalVAE | StimulusVAE:
    """Rebuild a model from :meth:`architecture` output (weights not loaded)."""
    arch = dict(architecture)
    kind = arch.pop("kind")
    arch.pop("fusion", None)
    eeg_shape, n_voxels = tuple(arch.pop("eeg_shape")), arch.pop("n_voxels")
    if kind == "vae1":
        return MultimodalVAE(eeg_shape, n_voxels, **arch)
    if kind == "vae2":
        return StimulusVAE(eeg_shape, n_voxels, arch.pop("n_features"), **arch)
    raise ValueError(f"Unknown model kind {kind!r}; expected 'vae1' or 'vae2'.")
