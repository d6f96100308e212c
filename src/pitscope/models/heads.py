"""Image-branch heads: the MLP projector g and the classifier W (paper eq. 1-2).

The paper says both "two fully connected layers, hidden 512" and "a 3-layer MLP projection
head"; the reading taken (SPEC section 4): `layers` blocks of FC -> BN -> ReLU, 512 wide, then
the classifier W as the last fully connected layer, as in CutPaste's projection head.
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """g: (B, in_dim) -> (B, out_dim), `layers` x (Linear -> BatchNorm1d -> ReLU).

    out_dim is `hidden`, or `in_dim` when layers = 0 (the projector is then the identity).
    """

    def __init__(self, in_dim: int = 512, hidden: int = 512, layers: int = 2):
        super().__init__()
        if layers < 0:
            raise ValueError(f"layers must be at least 0, got {layers}")
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            dim = hidden
        self.mlp = nn.Sequential(*blocks)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_dim) -> (B, out_dim)."""
        return self.mlp(x)


class Classifier(nn.Module):
    """W: (B, dim) -> logits (B,) when n_classes = 1 (binary, for BCE), else (B, n_classes)."""

    def __init__(self, dim: int = 512, n_classes: int = 1):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}")
        self.linear = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, dim) -> (B,) or (B, n_classes)."""
        logits = self.linear(x)  # (B, n_classes)
        return logits.squeeze(1) if logits.shape[1] == 1 else logits
