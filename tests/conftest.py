"""Shared test helpers. tests/fixtures/ holds importable helpers: writers of datasets in their real on-disk
formats, the tiny model, and the tiny oracle-teacher setting."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))

from tiny_net import TinyNet  # noqa: E402  (needs the path above)


@pytest.fixture
def tiny_net():
    def make(num_classes: int = 5, in_channels: int = 1, seed: int = 0) -> TinyNet:
        torch.manual_seed(seed)
        return TinyNet(num_classes, in_channels)

    return make
