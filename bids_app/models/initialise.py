"""Probabilistic-PCA initialisation of VAE-1.

A VAE with linear encoders and decoders and a Gaussian likelihood is probabilistic PCA
(Tipping & Bishop 1999). :func:`init_from_pca` sets the linear paths of
:class:`~bids_app.models.vae.MultimodalVAE` to a PCA of the training windows and the
non-linear residuals to zero, so training starts from the PCA solution: the joint
posterior mean is the standardised PCA score and the decoders' means are the PCA
reconstruction. Training (with early stopping on held-out runs, the initial weights
being a candidate) then adds the non-linear part.

Two PCAs are available:

* ``"joint"``: the modality-balanced PCA of the concatenated windows (the baseline of
  :func:`~bids_app.models.evaluate.evaluate_vae1`). Every latent dimension mixes EEG and
  fMRI, so each expert holds a partial score.
* ``"block"``: per-modality PCA, the latent dimensions shared out by balanced eigenvalue
  (:func:`~bids_app.models.evaluate.fit_block_pca`). Each dimension is owned by one
  modality's expert; the other expert starts with a vague opinion (precision
  ``other_precision``, mean 0) about it, which training sharpens where that modality is
  informative (EEG power -> BOLD). This is the structure a product of experts expresses
  and a PCA of the concatenation cannot: the reconstruction of one modality never
  carries the other modality's noise. A subspace-limited EEG decoder
  (``eeg_decoder_rank``) adds a non-linear code of the EEG in its own dimensions (a
  rhythm's amplitude and phase form a ring, which a linear code needs two dimensions for).

References
----------
Tipping ME, Bishop CM (1999). Probabilistic principal component analysis. J R Stat Soc B
61:611-622.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from bids_app.models.evaluate import fit_block_pca, fit_pca_baseline
from bids_app.models.vae import GaussianDecoder, ModalityEncoder, MultimodalVAE

logger = logging.getLogger(__name__)

MODES = ("joint", "block")


def _zero_last(net: nn.Sequential) -> None:
    last = [m for m in net if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


def _set_encoder(
    enc: ModalityEncoder,
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    gain: np.ndarray,
    logvar: np.ndarray,
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
        head.skip.weight[:n_lat, :n_lat] = torch.diag(torch.as_tensor(gain, dtype=torch.float32))
        head.skip.bias[n_lat:] = torch.as_tensor(logvar, dtype=torch.float32)
    _zero_last(head.net)


def _set_decoder(dec: GaussianDecoder, weight: np.ndarray, bias: np.ndarray) -> None:
    """Linear path of a decoder: ``mean = weight @ z + bias``; zero non-linear residual."""
    with torch.no_grad():
        dec.skip.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        dec.skip.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    _zero_last(dec.net)


def _set_expert_inputs(enc: ModalityEncoder, n_lat: int, sub: dict[str, np.ndarray]) -> None:
    """Give an expert's non-linear residual the modality's leading principal scores.

    ``sub`` holds ``weight`` (K, D_m) and ``bias`` (K,) of the standardised scores of the
    ``K`` leading components. The encoder's pre-activation rows ``n_lat : n_lat + K`` get
    the scores and rows ``n_lat + K : n_lat + 2K`` their negatives (the residual sees
    ``gelu(s)`` and ``gelu(-s)``, which keep the sign: ``s = gelu(s) - gelu(-s)``); the
    other rows are zero, instead of random projections of the whole input.
    """
    k = sub["weight"].shape[0]
    weight = torch.as_tensor(sub["weight"], dtype=torch.float32)
    bias = torch.as_tensor(sub["bias"], dtype=torch.float32)
    with torch.no_grad():
        enc.input.weight[n_lat:].zero_()
        enc.input.bias[n_lat:].zero_()
        for sign, start in ((1.0, n_lat), (-1.0, n_lat + k)):
            enc.input.weight[start : start + k] = sign * weight
            enc.input.bias[start : start + k] = sign * bias


def _set_own_paths(model: MultimodalVAE, n_lat: int, part: dict[str, np.ndarray]) -> None:
    """Non-linear paths of the EEG's own reconstruction in its leading PCA subspace.

    The EEG expert's residual may change the means of every latent dimension (the EEG's
    own ones too); the EEG decoder's residual reads the EEG's dimensions only (so the
    EEG expert gains nothing by carrying EEG information in the fMRI dimensions), and its
    output layer maps ``rank`` standardised scores onto the leading components (frozen).
    """
    enc, dec = model.eeg_encoder, model.eeg_decoder
    # fewer training windows than the rank give fewer components: the rest map to zero
    loading = part["subspace"]["loading"][:, : dec.rank]
    basis = dec.net[-1]
    with torch.no_grad():
        enc.body.net_mask[:n_lat] = 1.0
        dec.net_mask.copy_(torch.as_tensor(part["own"], dtype=torch.float32))
        basis.weight.zero_()
        basis.weight[:, : loading.shape[1]] = torch.as_tensor(loading, dtype=torch.float32)
        basis.bias.zero_()
    _zero_last(dec.net[:-1])
    enc.body.net.requires_grad_(True)
    dec.net.requires_grad_(True)
    basis.requires_grad_(False)


def _linear_parts(
    arrays: Mapping[str, np.ndarray], idx: np.ndarray, n_lat: int, mode: str, seed: int,
    max_windows: int, n_leading: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Per modality: ``weight`` (L, D_m), ``bias`` (L,) of the unscaled partial scores,
    ``loading`` (D_m, L) and ``offset`` (D_m,) of the reconstruction, ``own`` (L,) bool;
    in block mode with ``n_leading`` also ``subspace``: ``weight`` (K, D_m) and ``bias``
    (K,) of the standardised scores of the K leading components, ``loading`` (D_m, K) of
    the reconstruction from them."""
    if mode == "joint":
        pca = fit_pca_baseline(arrays, idx, n_lat, seed=seed, max_windows=max_windows)
        comp, mean, scale, d = pca["components"], pca["mean"], pca["scale"], pca["d_eeg"]
        slices = {"eeg": slice(0, d), "fmri": slice(d, None)}
        parts = {}
        for name, sl in slices.items():
            c_m, s_m, m_m = comp[:, sl], scale[sl], mean[sl]
            parts[name] = {"weight": c_m * s_m, "bias": -(c_m @ m_m),
                           "loading": c_m.T / s_m[:, None], "offset": m_m / s_m,
                           "own": np.ones(n_lat, bool)}  # fmt: skip
        return parts
    pca = fit_block_pca(arrays, idx, n_lat, seed=seed, max_windows=max_windows,
                        n_leading=n_leading)  # fmt: skip
    parts = {}
    for name in ("eeg", "fmri"):
        bp = pca[name]
        c, rows, s, m = bp["components"], bp["rows"], bp["scale"], bp["mean"]
        d_m = c.shape[1]
        weight, bias = np.zeros((n_lat, d_m)), np.zeros(n_lat)
        loading = np.zeros((d_m, n_lat))
        weight[rows], bias[rows], loading[:, rows] = c * s, -(c @ m), c.T / s
        parts[name] = {"weight": weight, "bias": bias, "loading": loading, "offset": m / s,
                       "own": np.isin(np.arange(n_lat), rows)}  # fmt: skip
        if n_leading:
            lead, lsd = bp["leading"], np.maximum(bp["leading_sd"], 1e-12)
            parts[name]["subspace"] = {"weight": lead * s / lsd[:, None],
                                       "bias": -(lead @ m) / lsd,
                                       "loading": lead.T * lsd[None, :] / s}  # fmt: skip
    return parts


def init_from_pca(
    model: MultimodalVAE,
    arrays: Mapping[str, np.ndarray],
    train_idx: np.ndarray,
    *,
    mode: str = "joint",
    seed: int = 0,
    expert_precision: float = 10.0,
    other_precision: float = 0.01,
    freeze_linear: bool = False,
    cross_experts: tuple[str, ...] | None = None,
    expert_inputs: int = 0,
    max_windows: int = 2000,
) -> MultimodalVAE:
    """Initialise the linear paths of VAE-1 from a PCA of the training windows.

    Parameters
    ----------
    model : MultimodalVAE
        Model to initialise (modified in place and returned).
    arrays : mapping
        ``"eeg"`` ``(N, C, T)`` and ``"fmri"`` ``(N, V)``.
    train_idx : numpy.ndarray
        Training windows (at most ``max_windows`` of them are used).
    mode : {"joint", "block"}
        PCA of the concatenated windows, or per-modality PCA with modality-owned latent
        dimensions (see the module notes).
    seed : int
        Seeds the choice of windows.
    expert_precision : float
        Initial precision of an expert about the dimensions it holds; the experts' means
        are scaled so that the joint posterior mean (product with the prior) equals the
        standardised PCA score.
    other_precision : float
        ``"block"`` only: initial precision of an expert about the other modality's
        dimensions (mean 0).
    freeze_linear : bool
        Keep the PCA paths fixed during training (``requires_grad=False`` on the
        encoders' ``input`` and linear ``skip`` layers and the decoders' ``skip``), so
        that training only adds the non-linear residuals and adjusts the variances.
    cross_experts : tuple of str, optional
        ``"block"`` only. When given, the non-linear residual of the encoder of each
        modality listed (``"eeg"``, ``"fmri"``) may change only its means of the other
        modality's dimensions (and its log-variances); the residuals of the other
        encoders and of both decoders are zero and frozen. Training then learns what a
        modality says about the other (e.g. EEG power -> BOLD) without refitting each
        modality's PCA to the training runs. None leaves every residual free. When
        ``"eeg"`` is listed and the model has ``eeg_decoder_rank > 0``, the EEG's own
        reconstruction also gets non-linear paths: the EEG expert's residual may move
        every mean, and the EEG decoder's residual (reading the EEG's dimensions only)
        writes into the ``eeg_decoder_rank`` leading EEG components (a frozen output
        layer); they start at zero, so the model still starts as the PCA.
    expert_inputs : int
        With ``cross_experts``: the non-linear residual of each expert listed reads the
        standardised scores of its modality's ``expert_inputs`` leading principal
        components (and their negatives) instead of random projections of the whole
        input (rows ``latent_dim`` to ``latent_dim + 2 * expert_inputs`` of the
        encoder's input layer; the other rows are zeroed). 0 keeps the random
        projections. Reduced (with a warning) to what ``hidden_dim`` holds.
    max_windows : int
        Windows used by the PCA.

    Returns
    -------
    MultimodalVAE
        ``model``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    names = set(cross_experts or ())
    if cross_experts is not None and (mode != "block" or not names <= {"eeg", "fmri"}):
        raise ValueError("cross_experts needs mode 'block' and names among 'eeg', 'fmri'.")
    n_lat = model.latent_dim
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(np.asarray(train_idx))[:max_windows])
    n_inputs = int(expert_inputs) if cross_experts else 0
    own_rank = int(getattr(model, "eeg_decoder_rank", 0)) if "eeg" in names else 0
    room = (min(model.eeg_encoder.input.out_features, model.fmri_encoder.input.out_features)
            - n_lat) // 2  # fmt: skip
    if n_inputs > room:
        logger.warning("expert_inputs %d does not fit hidden_dim %d with latent_dim %d; "
                       "using %d.", n_inputs, model.hidden_dim, n_lat, max(room, 0))  # fmt: skip
        n_inputs = max(room, 0)
    parts = _linear_parts(arrays, idx, n_lat, mode, seed, max_windows,
                          n_leading=max(n_inputs, own_rank))  # fmt: skip
    # standard deviation of each latent's score over the training windows
    score = sum(
        np.asarray(arrays[n][idx], dtype=np.float64).reshape(len(idx), -1) @ p["weight"].T
        + p["bias"]
        for n, p in parts.items()
    )
    sd = np.sqrt(np.maximum(score.var(0), 1e-12))
    p_hi, p_lo = float(expert_precision), float(other_precision)
    prec = {n: np.where(p["own"], p_hi, p_lo) for n, p in parts.items()}
    joint = 1.0 + sum(prec.values())
    for name, enc, dec in (
        ("eeg", model.eeg_encoder, model.eeg_decoder),
        ("fmri", model.fmri_encoder, model.fmri_decoder),
    ):
        p = parts[name]
        gain = np.where(p["own"], joint / prec[name], 0.0)
        _set_encoder(enc, p["weight"] / sd[:, None], p["bias"] / sd, gain=gain,
                     logvar=-np.log(prec[name]))  # fmt: skip
        _set_decoder(dec, p["loading"] * sd[None, :], p["offset"])
        if freeze_linear:
            for layer in (enc.input, enc.body.skip, dec.skip):
                layer.requires_grad_(False)
        if cross_experts is not None:
            mask = enc.body.net_mask
            with torch.no_grad():
                mask[:n_lat] = torch.as_tensor(~p["own"], dtype=torch.float32)
                if name not in cross_experts:
                    mask.zero_()
            if name not in cross_experts:
                enc.body.net.requires_grad_(False)
            dec.net.requires_grad_(False)
    for name in names if n_inputs else ():
        enc = model.eeg_encoder if name == "eeg" else model.fmri_encoder
        sub = parts[name]["subspace"]
        _set_expert_inputs(enc, n_lat, {k: v[:n_inputs] for k, v in sub.items() if k != "loading"})
    if own_rank:
        _set_own_paths(model, n_lat, parts["eeg"])
    owners = {n: int(p["own"].sum()) for n, p in parts.items()}
    logger.info("VAE-1 initialised from the %s PCA of %d windows (latent dims held: %s)",
                mode, len(idx), owners)  # fmt: skip
    return model


__all__ = ["MODES", "calibrate_experts", "init_from_pca", "select_own_paths"]


def _val_loss(model: MultimodalVAE, arrays: Mapping[str, np.ndarray], idx: np.ndarray,
              batch_size: int) -> float:  # fmt: skip
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            b = np.sort(idx[s : s + batch_size])
            batch = {k: torch.from_numpy(np.asarray(arrays[k][b], dtype=np.float32))
                     for k in ("eeg", "fmri")}  # fmt: skip
            total += float(model.loss(batch)[0]) * len(b)
    return total / max(len(idx), 1)


def _linear_dims(enc: ModalityEncoder, n_lat: int) -> torch.Tensor:
    """Latent dimensions whose mean the expert's linear path gives (its own dimensions
    after a block initialisation)."""
    return enc.body.skip.weight[:n_lat].abs().sum(dim=1) > 0


def _residual_only_dims(enc: ModalityEncoder, n_lat: int) -> torch.Tensor:
    """Latent dimensions whose mean the expert gets from its non-linear residual alone
    (the other modality's dimensions after a block initialisation)."""
    return (enc.body.net_mask[:n_lat] > 0) & ~_linear_dims(enc, n_lat)


def calibrate_experts(
    model: MultimodalVAE,
    arrays: Mapping[str, np.ndarray],
    val_idx: np.ndarray,
    *,
    offsets: tuple[float, ...] = tuple(np.arange(0.0, 8.01, 0.5)),
    batch_size: int = 256,
) -> dict[str, float]:
    """Temper the experts' learned confidence on validation windows (after training).

    An expert's log-variances of the latent dimensions whose means come from its
    non-linear residual alone (with ``cross_experts``: the other modality's dimensions)
    are learned on the training runs and tend to be over-confident on new
    runs, which in the product of experts pulls the joint posterior toward that expert.
    For each such expert in turn, a constant added to those log-variances (0 included, so
    the validation loss cannot get worse) is chosen from ``offsets`` by the validation
    loss of :meth:`MultimodalVAE.loss` (eval mode), like temperature scaling of a
    classifier (Guo et al. 2017).

    Parameters
    ----------
    model : MultimodalVAE
        Trained model (modified in place: ``body.logvar_offset`` of its encoders).
    arrays : mapping
        ``"eeg"`` and ``"fmri"`` windows.
    val_idx : numpy.ndarray
        Validation windows (not the test windows).
    offsets : tuple of float
        Candidate offsets (non-negative: the calibration only lowers confidence).
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    dict of str to float
        The chosen offset per calibrated expert (``"eeg"``, ``"fmri"``).
    """
    model.eval()
    val_idx = np.asarray(val_idx, dtype=np.int64)
    chosen: dict[str, float] = {}
    n_lat = model.latent_dim
    for name, enc in (("eeg", model.eeg_encoder), ("fmri", model.fmri_encoder)):
        dims = _residual_only_dims(enc, n_lat)
        if not bool(dims.any()):
            continue
        losses = []
        for off in offsets:
            with torch.no_grad():
                enc.body.logvar_offset.copy_(float(off) * dims.float())
            losses.append(_val_loss(model, arrays, val_idx, batch_size))
        best = float(offsets[int(np.argmin(losses))])
        with torch.no_grad():
            enc.body.logvar_offset.copy_(best * dims.float())
        chosen[name] = best
        logger.info("%s expert: log-variance offset %.1f (validation loss %.4g -> %.4g)",
                    name, best, losses[0], min(losses))  # fmt: skip
    return chosen



def select_own_paths(
    model: MultimodalVAE,
    arrays: Mapping[str, np.ndarray],
    val_idx: np.ndarray,
    *,
    batch_size: int = 256,
) -> dict[str, float | bool]:
    """Keep the EEG's own non-linear paths only if they lower the validation loss.

    The non-linear EEG code (``eeg_decoder_rank``) can fit the training runs without
    carrying over to new ones, and the early stopping cannot tell: its validation loss
    also rewards the EEG expert's opinion about the fMRI, which improves meanwhile. This
    compares the validation loss with the EEG's own non-linear paths (the expert
    residual's means of the EEG dimensions and the decoder residual) on and off, and
    switches them off, leaving the PCA paths, unless they lower it. The cross-modal
    opinions are kept either way.

    Parameters
    ----------
    model : MultimodalVAE
        Trained model (modified in place when the paths are switched off).
    arrays : mapping
        ``"eeg"`` and ``"fmri"`` windows.
    val_idx : numpy.ndarray
        Validation windows (not the test windows).
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    dict
        ``kept`` (bool), ``val_loss_with`` and ``val_loss_without``; empty when the model
        has no EEG own paths.
    """
    n_lat = model.latent_dim
    head, basis = model.eeg_encoder.body, model.eeg_decoder.net[-1]
    own = _linear_dims(model.eeg_encoder, n_lat)
    if not (getattr(model, "eeg_decoder_rank", 0) and bool(head.net_mask[:n_lat][own].any())):
        return {}
    model.eval()
    val_idx = np.asarray(val_idx, dtype=np.int64)
    with_paths = _val_loss(model, arrays, val_idx, batch_size)
    saved_mask, saved_basis = head.net_mask.clone(), basis.weight.detach().clone()
    with torch.no_grad():
        head.net_mask[:n_lat][own] = 0.0
        basis.weight.zero_()
    without = _val_loss(model, arrays, val_idx, batch_size)
    kept = with_paths < without
    if kept:
        with torch.no_grad():
            head.net_mask.copy_(saved_mask)
            basis.weight.copy_(saved_basis)
    logger.info("EEG non-linear code %s (validation loss %.6g with, %.6g without)",
                "kept" if kept else "switched off", with_paths, without)  # fmt: skip
    return {"kept": bool(kept), "val_loss_with": with_paths, "val_loss_without": without}
