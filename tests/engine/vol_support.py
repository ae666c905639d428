"""Small 3-D networks for volume tests (no downloads): a conv-BN-ReLU CNN with a GAP→linear head."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet3d(nn.Module):
    """conv3d-BN-ReLU → conv3d(stride 2)-ReLU → GAP → linear; ``features`` is the CAM layer (post-ReLU)."""

    def __init__(self, classes: int = 4, width: int = 6, in_ch: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(in_ch, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(inplace=True),
            nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_net3d(classes: int = 4, seed: int = 0, in_ch: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyNet3d(classes, in_ch=in_ch)
    bn = model.features[1]
    g = torch.Generator().manual_seed(seed)
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return model
