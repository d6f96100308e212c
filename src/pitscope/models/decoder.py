"""HOG decoder h (paper table 2): regresses a feature map to the 3780-value HOG vector.

Table 2 at 256 px, reading conv2_x (layer1, (B, 64, 64, 64)):

    conv 3x3, 64 -> 32   -> max pool 2 -> (B, 32, 32, 32)
    conv 3x3, 32 -> 16   -> max pool 2 -> (B, 16, 16, 16)
    flatten              -> (B, 4096)
    linear 4096 -> 3780  -> (B, 3780)

Choices the table leaves open:
- each convolution is followed by BatchNorm and ReLU (table 2 lists only conv and pool). The
  ReLU makes the two convolutions more than one linear map; the BatchNorm recentres the input,
  which after the MSCM sigmoid and the CAM gate is all positive, and keeps the head stable at
  the paper's SGD learning rate of 0.03, like every convolution of the backbone.
  `norm_layer=None` drops it.
- an adaptive average pool to 16 x 16 before the flatten, so the linear layer always reads
  4096 values whatever the input size or the backbone stage (layer1 at 128 px, layer2, ...).
  At 256 px on layer1 the map is already 16 x 16 and the pool is the identity.
- the max pools round up (`ceil_mode`), so maps smaller than 4 x 4 (layer4 at 64 px) still
  pass; on even sizes, every size at 256 px, this changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

GRID = 16  # spatial side before the flatten: 16 channels x 16 x 16 = 4096
HIDDEN = (32, 16)  # channels of the two convolutions


def _block(in_channels: int, out_channels: int, norm_layer: Callable[[int], nn.Module] | None) -> nn.Sequential:
    """conv 3x3 (same size) -> [norm] -> ReLU -> max pool 2: (B, in, H, W) -> (B, out, H/2, W/2)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(out_channels))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
    return nn.Sequential(*layers)


class HogDecoder(nn.Module):
    """(B, in_channels, H, W) -> (B, out_features); table 2 when H = W = 64 and in_channels = 64."""

    def __init__(
        self,
        in_channels: int = 64,
        out_features: int = 3780,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ):
        super().__init__()
        self.block1 = _block(in_channels, HIDDEN[0], norm_layer)
        self.block2 = _block(HIDDEN[0], HIDDEN[1], norm_layer)
        self.pool = nn.AdaptiveAvgPool2d(GRID)
        self.linear = nn.Linear(HIDDEN[1] * GRID * GRID, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, out_features)."""
        x = self.block1(x)  # (B, 32, H/2, W/2)
        x = self.block2(x)  # (B, 16, H/4, W/4)
        x = self.pool(x)  # (B, 16, 16, 16)
        return self.linear(x.flatten(1))  # (B, 4096) -> (B, out_features)
