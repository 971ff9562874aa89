"""Inference with trained VAEs and their model files (``group/models/*.pt``)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bids_app.models.vae import MultimodalVAE, StimulusVAE, build_model

Model = MultimodalVAE | StimulusVAE


def state_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copy of ``model.state_dict()`` on CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.no_grad()
def predict(
    model: Model,
    arrays: Mapping[str, np.ndarray],
    idx: np.ndarray,
    *,
    inputs: Sequence[str] = ("eeg", "fmri"),
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` (eval mode, ``z = mu``) for windows ``idx`` given ``inputs``.

    Parameters
    ----------
    model : MultimodalVAE | StimulusVAE
        Trained model (on CPU).
    arrays : mapping
        As in :func:`fit`.
    idx : numpy.ndarray
        Window indices (output order follows ``idx``).
    inputs : sequence of str
        Modalities given to the encoder: any non-empty subset of ``("eeg", "fmri")``.
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    dict of str to numpy.ndarray
        The model's ``forward`` outputs (``mu``, ``eeg_mean``, ``stimulus_mean`` ...).
    """
    model.eval()
    idx = np.asarray(idx, dtype=np.int64)
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        x = {
            k: torch.from_numpy(np.ascontiguousarray(arrays[k][b], dtype=np.float32))
            for k in inputs
        }
        out = model(x_eeg=x.get("eeg"), x_fmri=x.get("fmri"))
        for k, v in out.items():
            chunks.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


def model_bytes(model: Model, metadata: Mapping[str, Any] | None = None) -> bytes:
    """Serialise a model (architecture + weights + metadata) for ``group/models/*.pt``."""
    buffer = io.BytesIO()
    torch.save(
        {
            "architecture": model.architecture(),
            "state_dict": state_cpu(model),
            "metadata": dict(metadata or {}),
        },
        buffer,
    )
    return buffer.getvalue()


def load_model(path: Path | str) -> Model:
    """Load a model written with :func:`model_bytes` (CPU, eval mode).

    Parameters
    ----------
    path : Path | str
        A ``vae1.pt`` or ``vae2.pt`` file.

    Returns
    -------
    MultimodalVAE | StimulusVAE
        The model, with ``model.metadata`` set to the stored metadata.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(state["architecture"])
    # files written before the encoders had the net_mask / logvar_offset buffers keep the
    # freshly built defaults (ones / zeros): exactly the behaviour they were trained with
    defaults = {k: v for k, v in model.state_dict().items()
                if k.endswith((".net_mask", ".logvar_offset"))}  # fmt: skip
    model.load_state_dict({**defaults, **state["state_dict"]})
    model.metadata = state.get("metadata", {})
    return model.eval()
