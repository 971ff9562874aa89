"""Worker processes of the participant level do not oversubscribe the cores."""

from __future__ import annotations

import multiprocessing

import pytest


def _limited_info(n_threads: int) -> tuple[list[int], str, int]:
    import os

    import numpy as np
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from bids_app.utils import limit_threads

    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS loaded
    threadpool_limits(n_threads + 1)  # as a worker inherits them from a many-core parent
    torch.set_num_threads(n_threads + 1)
    os.environ["OMP_NUM_THREADS"] = str(n_threads + 1)
    assert torch.get_num_threads() == n_threads + 1
    limit_threads(n_threads)
    return ([p["num_threads"] for p in threadpool_info()], os.environ["OMP_NUM_THREADS"],
            torch.get_num_threads())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_limit_worker_threads_in_a_forked_worker():
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pools, env, torch_threads = pool.apply(_limited_info, (1,))
    assert pools and all(n == 1 for n in pools)
    assert env == "1" and torch_threads == 1
