"""Engine test setup: the repository root on ``sys.path`` (``tests/`` has no ``__init__.py``) and one intra-op
thread per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """On a shared 2-core machine, OpenMP's spinning barriers make small ops 10-20x slower whenever another process
    holds a core (a resnet18 forward at batch 1 went from 55 ms to 930 ms). These tests check numbers, not speed, and
    the suite drops from ~2 min to ~40 s under such load."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
