"""Segmentation head: predicts where a pseudo-defect was pasted (SPEC 5b, the DRAEM recipe).

The paper's abstract says the pixel-level representation is learned "by segmenting the noise
patch". This head reads several backbone stages, brings them to the first stage's resolution,
and predicts one logit per position:

    stages (B, C_i, h_i, w_i) -> bilinear to (h, w) -> concat (B, sum C_i, h, w)
    -> conv 3x3 -> BN -> ReLU -> conv 3x3 -> BN -> ReLU -> conv 1x1 -> (B, h, w) logits

Trained with a focal loss against the pseudo-defect masks (all zero for normal images); at test
time sigmoid(logits), upsampled to the input, is an anomaly map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationHead(nn.Module):
    """Logits (B, h, w) at the resolution of the first of `stages` from a backbone feature dict."""

    def __init__(self, channels: dict[str, int], stages: list[str], hidden: int = 128):
        super().__init__()
        missing = [s for s in stages if s not in channels]
        if missing or not stages:
            raise ValueError(f"segmentation stages {stages!r}: valid stages are {', '.join(channels)}")
        self.stages = list(stages)
        in_channels = sum(channels[s] for s in stages)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden // 2, 1, 1),
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        maps = [features[s] for s in self.stages]
        size = maps[0].shape[-2:]
        x = torch.cat(
            [
                m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps
            ],
            dim=1,
        )  # (B, sum C_i, h, w)
        return self.body(x)[:, 0]  # (B, h, w)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.75) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over pixels. logits, target: (B, H, W).

    The pasted region is a few percent of the image; the focal term keeps the easy background
    from drowning it, alpha weighs the defect class.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * target + (1 - p) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * (1 - p_true) ** gamma * bce).mean()
