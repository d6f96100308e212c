"""SSPCAB, the self-supervised predictive convolutional attentive block (Ristea et al., CVPR 2022).

The table 3 baseline "SSPCAB" of the paper: CutPaste with this block added to its network and
the block's own reconstruction loss added to the classifier's.

The block is the same maths as the paper's MSCM + CAM (`pitscope.models.mscm`), with SSPCAB's
settings: four 1 x 1 sub-kernels at the corners of a receptive field whose centre is hidden,
summed and gated by a ReLU (MSCM: sigmoid), then squeeze-and-excitation with reduction 8
(CAM: 16). SSPCAB counts its dilation from the edge of the hidden centre pixel, MSCM from the
centre itself, so SSPCAB's dilation d is MSCM's d + 1: its default d = 1 reads the input two
pixels away in each diagonal direction.

Placement: as its authors do for CutPaste, the block replaces the penultimate convolutional
layer of the network: the first 3 x 3 convolution of ResNet-18's last basic block (layer4[-1]),
512 -> 512 channels at H/32 x W/32. The block's residual connection stays around it, so where the
map is too small for the block to see anything but padding (a 64 px CutPaste crop gives a 2 x 2
map; the block reads two positions away), the stage still passes its input on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet

from pitscope.models.backbone import Backbone
from pitscope.models.mscm import ChannelAttention, MaskedSplitConv

KERNEL_SIZE = 1  # SSPCAB's k'
DILATION = 1  # SSPCAB's d: gap between the hidden centre and the sub-kernels
REDUCTION = 8  # SSPCAB's squeeze-and-excitation ratio r


class SSPCAB(nn.Module):
    """Masked convolution (centre hidden, ReLU) then channel attention: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(
        self, channels: int, kernel_size: int = KERNEL_SIZE, dilation: int = DILATION, reduction: int = REDUCTION
    ):
        super().__init__()
        if dilation < 0:
            raise ValueError(f"dilation must be at least 0, got {dilation}")
        self.masked = MaskedSplitConv(channels, kernel_size=kernel_size, dilation=dilation + 1, gate_layer=nn.ReLU)
        self.attention = ChannelAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W): each position predicted from its context alone."""
        return self.attention(self.masked(x))


def insert_sspcab(backbone: Backbone | ResNet) -> SSPCAB:
    """Replace the first convolution of the last basic block of `backbone` (a `Backbone` or
    torchvision ResNet) with an SSPCAB block of as many channels; returns the block."""
    last = backbone.layer4[-1]
    conv = last.conv1
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != conv.out_channels or conv.stride != (1, 1):
        raise ValueError(f"cannot replace {conv} by SSPCAB: it must keep channels and resolution")
    block = SSPCAB(conv.out_channels)
    last.conv1 = block
    return block


def reconstruction_loss(block_input: torch.Tensor, block_output: torch.Tensor) -> torch.Tensor:
    """SSPCAB's self-supervised loss: mean squared error between the block's output and input.

    Both (B, C, H, W); gradients flow into both, as in the authors' code, so the features
    before the block also learn to be predictable from their context.
    """
    return F.mse_loss(block_output.float(), block_input.float())
