"""Group models: aligned windows, stimulus features, VAE-1 / VAE-2 and their training.

Modules
-------
windows
    One EEG-fMRI sample per BOLD volume, memory-mapped storage, splits by run/subject.
stimulus
    Video decoding (PyAV) and interpretable / learned stimulus features per window.
layers
    Gaussian encoders/decoders, product of experts, likelihood and KL terms.
vae
    ``MultimodalVAE`` (VAE-1) and ``StimulusVAE`` (VAE-2) with product-of-experts fusion.
train
    ``fit`` (single process or torchrun); re-exports inference and evaluation.
feed
    How windows reach the device: host reads (CPU), GPU-resident float16, or prefetch.
inference
    ``predict``, ``model_bytes`` and ``load_model`` (model files).
evaluate
    Held-out evaluation: explained variance against PCA, permutation nulls.
distributed
    ``python -m bids_app.models.distributed``: torchrun entry point for group training.
"""

from bids_app.models.vae import (
    GaussianDecoder,
    ModalityEncoder,
    MultimodalVAE,
    StimulusVAE,
    build_model,
    product_of_experts,
)

__all__ = [
    "GaussianDecoder",
    "ModalityEncoder",
    "MultimodalVAE",
    "StimulusVAE",
    "build_model",
    "product_of_experts",
]
