"""Shared test helpers: a tiny model honouring the (logits, Features) contract, and small configs."""

from __future__ import annotations

import torch
from torch import nn

import pytest

from oracle_kd.models.features import Features


class TinyNet(nn.Module):
    """conv → BN → ReLU → pool → fc: small enough for hand-checkable equation tests."""

    def __init__(self, num_classes: int = 5, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor):
        f = torch.relu(self.bn(self.conv(x)))
        pooled = f.mean(dim=(2, 3))
        return self.fc(pooled), Features(stages=[f], blocks=[f], pooled=pooled)


@pytest.fixture
def tiny_net():
    def make(num_classes: int = 5, in_channels: int = 1, seed: int = 0) -> TinyNet:
        torch.manual_seed(seed)
        return TinyNet(num_classes, in_channels)

    return make
