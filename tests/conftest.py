"""Test-session set-up shared by every test file.

setup.cfg runs the suite in two pytest-xdist workers. A worker's torch, and every process it starts, gets the cores
divided by the number of workers as its threads (``OMP_NUM_THREADS``, which the bundles' ``num_threads`` default
follows): more threads than free cores makes every thread wait (docs/performance.md, "Threads on a shared CPU").
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers is None:  # the controller, or a run without workers (-n 0)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One torch thread for the test: on tiny tensors on a busy 2-core machine, thread hand-offs cost more than the
    work (up to 10 ms per op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
