"""Shared, session-scoped test data: the simulated tiny NATVIEW release and its BIDS form.

Fixtures (each built once per test session, read-only for tests):

- ``tiny_release``: NATVIEW-shaped raw release (``scale="tiny"``, seed 0) with the planted
  truth in ``sourcedata/simulation/``;
- ``tiny_bids``: ``tiny_release`` converted to BIDS by ``convert_natview``;
- ``tiny_null_bids``: the null variant (no planted coupling), converted to BIDS.

Tests must not write into these folders; copy them (``shutil.copytree``) when needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# property tests draw the same examples on every run (a CI failure can be replayed)
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated tiny NATVIEW release (natview layout, seed 0)."""
    from bids_app.simulate.dataset import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("tiny") / "release", scale="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_bids(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_release`` converted to a valid BIDS dataset."""
    from bids_app.natview.convert import convert_natview

    out = tmp_path_factory.mktemp("tiny_bids") / "bids"
    convert_natview(tiny_release, out)
    return out


@pytest.fixture(scope="session")
def tiny_null_bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Null variant of the tiny dataset (no stimulus -> source -> BOLD links), as BIDS."""
    from bids_app.simulate.dataset import simulate_dataset

    out = tmp_path_factory.mktemp("tiny_null") / "bids"
    return simulate_dataset(out, scale="tiny", layout="bids", null=True, seed=0)
