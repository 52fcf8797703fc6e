"""The suite's parallel workers (pytest-xdist, addopts -n) split the cores between them."""

from __future__ import annotations

import os

import pytest

from tests.conftest import pytest_xdist_auto_num_workers, usable_cores, worker_threads

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("cores, workers, threads", [
    (2, 2, 1), (2, 1, 2), (8, 2, 4), (8, 3, 2), (2, 4, 1), (1, 1, 1), (4, 0, 4)])
def test_each_worker_gets_its_share_of_the_cores(cores, workers, threads):
    assert worker_threads(cores, workers) == threads


def test_this_workers_torch_uses_its_share():
    """Under xdist the worker's torch reads the OMP_NUM_THREADS the conftest set (or the one
    given), so two workers on two cores take one thread each, not two that fight."""
    import torch

    cores = usable_cores()
    if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
        assert "OMP_NUM_THREADS" in os.environ
    want = min(int(os.environ.get("OMP_NUM_THREADS", cores)), cores)
    assert torch.get_num_threads() == want


def test_auto_starts_a_worker_per_core_this_process_may_use_at_most_four():
    cores = usable_cores()
    assert pytest_xdist_auto_num_workers(None) == min(4, cores)
