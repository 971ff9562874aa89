"""A small but real group level for the masking-shard tests, run by ``python masking_group.py``.

``models`` builds the windows of one planted run (feature onsets drive EEG timestamps and
voxels, as in ``tests/unit/test_masking.py``) and trains a small VAE-1 and VAE-2 on
another; the real masking stage then masks them. The weights are rounded to float16
values after training so that every process (pytest, spawned torchrun ranks) holds the
very same models whatever its BLAS threads did in training; masking itself runs on them
unchanged.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import torch

C, T, S, V, F = 4, 10, 2, 12, 2
PATTERN = np.array([[1.0, 0.6, 0.0, -0.6], [0.0, -0.6, 1.0, 0.6]])


def _zscore(x: np.ndarray, axis) -> np.ndarray:
    return (x - x.mean(axis, keepdims=True)) / x.std(axis, keepdims=True)


def planted_windows(n_windows: int, rng: np.random.Generator):
    """EEG ``(n, C, T)``, fMRI ``(n, V)`` and stimulus ``(n, F)`` windows of one run."""
    a = (n_windows - 1) * S + T
    onsets = (rng.random((F, a)) < 0.05) * (1.0 + rng.random((F, a)))
    drive = np.zeros((F, a))
    drive[:, 1:] += onsets[:, :-1]
    drive[:, 2:] += 0.6 * onsets[:, :-2]
    eeg = 0.2 * rng.standard_normal((C, a)) + PATTERN.T @ drive
    idx = np.arange(n_windows)[:, None] * S + np.arange(T)[None]
    y = drive[:, idx].sum(axis=2).T
    fmri = 0.3 * rng.standard_normal((n_windows, V))
    fmri[:, :4] += y[:, [0]]
    fmri[:, 4:8] += y[:, [1]]
    return (_zscore(eeg[:, idx].transpose(1, 0, 2), (0, 2)).astype(np.float32),
            _zscore(fmri, 0).astype(np.float32), _zscore(y, 0).astype(np.float32))


def _train(model, eeg, fmri, stim, steps: int = 100):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    batch = {"eeg": torch.as_tensor(eeg), "fmri": torch.as_tensor(fmri),
             "stimulus": torch.as_tensor(stim)}
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = model.loss(batch)
        loss.backward()
        opt.step()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model.eval()


def models(output_dir, config, writer):
    """Windows of a held-out planted run and VAE-1/VAE-2 trained on another run.

    Like the real models stage under torchrun, ranks other than 0 return None.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    from bids_app.models.vae import MultimodalVAE, StimulusVAE
    from bids_app.models.windows import WindowSet
    from bids_app.workflows.models_result import ModelsResult

    rng = np.random.default_rng(1)
    train = planted_windows(300, rng)
    eeg, fmri, stim = planted_windows(100, rng)
    kw = {"latent_dim": 4, "hidden_dim": 32, "dropout": 0.0, "beta": 0.1}
    torch.manual_seed(0)
    vae1 = _train(MultimodalVAE((C, T), V, **kw), *train)
    vae2 = _train(StimulusVAE((C, T), V, F, **kw), *train)
    n, sfreq = len(eeg), 25.0
    meta = pd.DataFrame({"subject": "01", "session": "01", "task": "tp", "run": "01",
                         "volume": np.arange(n), "time_s": (np.arange(n) * S + T) / sfreq,
                         "has_stimulus": True})
    ijk = np.stack(np.unravel_index(np.arange(V), (3, 2, 2)), axis=1) + 1
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -9.0
    windows = WindowSet(eeg, fmri, meta, [f"E{c}" for c in range(C)], sfreq, ijk, affine,
                        (5, 4, 4), stimulus=stim, feature_names=["luminance", "motion"])
    return ModelsResult(windows, {}, {}, {}, vae1, vae2)


if __name__ == "__main__":
    import masking_group  # the stage's name in checkpoint keys: as under pytest

    from bids_app.cli import main
    from bids_app.workflows import group

    group.STAGES.update(models=masking_group.models, group_report=None)
    sys.exit(main(sys.argv[1:]))
