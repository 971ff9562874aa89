"""Per-modality PCA share-out of VAE-1's latent (``[model] latent_min_share``)."""

from __future__ import annotations

import numpy as np

from bids_app.models.evaluate import fit_block_pca


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 60
    eeg = rng.standard_normal((n, 4, 3)) @ np.diag([5.0, 3.0, 2.0])  # large eigenvalues
    fmri = 0.1 * rng.standard_normal((n, 30))
    return {"eeg": eeg.astype(np.float32), "fmri": fmri.astype(np.float32)}


def test_min_components_guarantees_each_modality_a_share():
    arrays, idx = _arrays(), np.arange(60)
    free = fit_block_pca(arrays, idx, 8)
    assert len(free["fmri"]["rows"]) < 4  # the eigenvalue share-out starves the fMRI
    fair = fit_block_pca(arrays, idx, 8, min_components=4)
    assert len(fair["fmri"]["rows"]) == 4 and len(fair["eeg"]["rows"]) == 4
    rows = np.sort(np.concatenate([fair["eeg"]["rows"], fair["fmri"]["rows"]]))
    np.testing.assert_array_equal(rows, np.arange(8))
    # the EEG keeps its leading components, the fMRI gets its own leading ones
    np.testing.assert_allclose(np.abs(fair["eeg"]["components"]),
                               np.abs(free["eeg"]["components"][:4]), atol=1e-8)
    assert fair["fmri"]["components"].shape == (4, 30)
    assert np.all(np.asarray(fair["owner"])[fair["fmri"]["rows"]] == "fmri")
