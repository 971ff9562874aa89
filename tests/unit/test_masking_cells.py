"""Masking work cells: any split of the cells over shards gives the same bytes (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_app.io.masking_parts import read_parts, write_part
from bids_app.masking import occlusion_effects
from bids_app.masking.shards import Cell, CellRunner, ShardSpec, parse_shard
from bids_app.models.vae import MultimodalVAE, StimulusVAE

FIELDS = ("units", "n_windows", "smd", "kl", "dll", "p", "z", "q", "ci_low", "ci_high")


def _same(a, b) -> bool:
    return all((getattr(a, f) is None and getattr(b, f) is None)
               or np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in FIELDS)


@pytest.fixture(scope="module")
def problem():
    from test_masking import C, F, T, V, _train, planted_run

    rng = np.random.default_rng(1)
    train, _ = planted_run(300, rng)
    test, _ = planted_run(100, rng)
    torch.manual_seed(0)
    kw = {"latent_dim": 4, "hidden_dim": 32, "dropout": 0.0, "beta": 0.1}
    return test, (_train(MultimodalVAE((C, T), V, **kw), train, steps=300),
                  _train(StimulusVAE((C, T), V, F, **kw), train, steps=100))


@pytest.mark.parametrize("pvalue", ["gaussian", "permutation"])
@pytest.mark.parametrize("cross_outputs", ["significant", "all"])
def test_shards_merge_to_one_process(problem, tmp_path, pvalue, cross_outputs):
    test, models = problem
    for model in models:
        for kind in ("eeg", "fmri"):
            kw = dict(kind=kind, n_null=30, n_boot=20, seed=3, pvalue=pvalue,
                      cross_outputs=cross_outputs, batch_size=64)
            whole = occlusion_effects(model, test, cells=CellRunner(3, 5), **kw)
            if (cross_outputs, pvalue) == ("significant", "gaussian") and model is models[0]:
                assert 0 < len(whole[-1].units) < len(whole[0].units)  # a real selection
            key = {"format": 1, "config": f"{kind}{pvalue}{cross_outputs}"}
            folder = tmp_path / f"{kind}-{id(model)}"
            for k in (1, 2, 3):
                runner = CellRunner(3, 5, shard=ShardSpec(k, 3))
                occlusion_effects(model, test, cells=runner, **kw)
                write_part(folder, ShardSpec(k, 3), runner.computed, key)
            stored = read_parts(folder, key)
            n_stored = len(stored)
            merged = CellRunner(3, 5, stored=stored)
            result = occlusion_effects(model, test, cells=merged, **kw)
            assert merged.reused == n_stored >= 3 and not stored  # every cell used once
            assert len(result) == len(whole) and all(map(_same, whole, result))


def test_cell_seeds_and_dealing():
    cells = [Cell(k, m, p, b) for k in ("eeg", "fmri") for m in ("vae1", "vae2")
             for p in ("screen", "outputs") for b in range(7)]
    assert len({c.id for c in cells}) == len(cells)
    draws = {c.rng(0).integers(0, 2**62) for c in cells}
    assert len(draws) == len(cells)  # every cell has its own stream
    assert cells[0].rng(0).integers(0, 2**62) != cells[0].rng(1).integers(0, 2**62)
    for n in (1, 2, 5):
        owners = [[k for k in range(1, n + 1) if ShardSpec(k, n).owns(c)] for c in cells]
        assert all(len(o) == 1 for o in owners)  # each cell in exactly one shard
    assert parse_shard(" 2/4 ") == ShardSpec(2, 4)
    for bad in ("3/2", "0/2", "1/0", "-1/2", "1/2/3", "a/b", ""):
        with pytest.raises(ValueError, match="must be K/N"):
            parse_shard(bad)


@pytest.mark.parametrize("kind", ["eeg", "fmri"])
def test_cells_compute_what_one_pass_computes(problem, kind):
    """Without random numbers (Gaussian p, no bootstrap), cells = the one-pass path."""
    test, (vae1, _) = problem
    kw = dict(kind=kind, n_boot=0, seed=3, cross_outputs="significant", batch_size=64)
    one = occlusion_effects(vae1, test, **kw)
    cells = occlusion_effects(vae1, test, cells=CellRunner(3, 7), **kw)
    assert [e.head for e in one] == [e.head for e in cells] == ["cross", "latent",
                                                                "cross_outputs"]
    for a, b in zip(one, cells):
        assert np.array_equal(a.units, b.units) and np.array_equal(a.n_windows, b.n_windows)
        for f in ("smd", "kl", "dll", "p", "q"):
            np.testing.assert_allclose(getattr(b, f), getattr(a, f), rtol=1e-6, atol=1e-12)
