"""What the group models stage hands to masking, the figures and the group report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bids_app.models.train import TrainResult
from bids_app.models.windows import WindowSet


@dataclass
class ModelsResult:
    """Everything the group level learned; input of masking and the group report.

    Attributes
    ----------
    windows : WindowSet
        All windows (memory-mapped), with ``stimulus`` z-scored features.
    splits : dict of str to numpy.ndarray
        ``train``/``val``/``test`` window indices of VAE-1 (by run or subject).
    stimulus_splits : dict of str to numpy.ndarray
        The same folds restricted to windows with a stimulus (VAE-2).
    features : dict of str to pandas.DataFrame
        Video features per task (before alignment), ``time`` column in s from video start.
    vae1, vae2 : MultimodalVAE | StimulusVAE | None
        Trained models (None when not trainable, e.g. no stimulus windows for VAE-2).
    training : dict of str to TrainResult
        Training outcomes per model.
    metrics : dict
        Held-out evaluation (explained variance vs PCA, cross-modal prediction, stimulus
        prediction vs permutation null).
    paths : dict of str to Path
        Written model files and sidecars.
    figures : dict of str to Path
        Written figures.
    """

    windows: WindowSet
    splits: dict[str, np.ndarray]
    stimulus_splits: dict[str, np.ndarray]
    features: dict[str, Any]
    vae1: Any
    vae2: Any
    training: dict[str, TrainResult] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
