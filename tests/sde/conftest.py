"""Shared by the SDE tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tensors here are small (≤ 8000 numbers): intra-op threads only add synchronization, and on a
    # machine whose cores are busy they cost ~100× (measured: torch.sin on 2000 doubles, 3 ms with two
    # threads against 24 µs with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
