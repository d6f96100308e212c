"""Feature masks of the pixel branch: the paper's MSCM (eq. 6-7), its CAM (eq. 8), and the
table 9 alternatives (no mask, dropout, a random rectangle).

Every mask maps (B, C, H, W) -> (B, C, H, W), so `build_mask` can swap one for another.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) draws from `generator` (on its own device) or torch's global RNG, moved to `device`."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


class MaskedSplitConv(nn.Module):
    """Masked split convolution module, MSCM (paper eq. 6-7, fig. 5).

    Zero-pad the input by d (plus k-1, see below) on every side, cut four windows anchored at the
    four corners of the padded map (top-left, top-right, bottom-left, bottom-right), convolve
    each with its own k x k kernel, sum, and apply the gate (sigmoid, eq. 7).

    The window anchored at a corner is the input shifted by d towards that corner, so the output
    at (i, j) reads only the input at row offsets +-[d, d+k-1] and column offsets +-[d, d+k-1]:
    the centre pixel and the cross |di| < d or |dj| < d around it are never seen, and the
    module must predict a masked feature from its context. With k = 1 (the default) this is the
    paper's module: pad by d, four h x w windows, 1x1 convolutions, computed as one 2 x 2
    convolution with dilation 2d that sums the same four products. With k > 1 the
    four k x k sub-kernels sit at the corners of a (2d + 2k - 1)-wide kernel, as in SSPCAB
    (Ristea et al. 2022; their default k=1, dilation=1 is this module with d=2).

    SSPCAB gates the sum with a ReLU; the paper (eq. 7) uses a sigmoid, which is the default
    here (`gate_layer=nn.ReLU` gives SSPCAB's choice).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 1,
        dilation: int = 2,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        if dilation < 1:
            raise ValueError(f"dilation must be at least 1 (0 would let a pixel see itself), got {dilation}")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be at least 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.dilation = dilation
        # One kernel per corner window: top-left, top-right, bottom-left, bottom-right.
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, kernel_size) for _ in range(4))
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        if self.kernel_size == 1:
            return self.gate(self._dilated(x))
        return self.gate(self._windows(x))

    def _dilated(self, x: torch.Tensor) -> torch.Tensor:
        """The four 1 x 1 corner kernels as one 2 x 2 kernel with dilation 2d: the same sum in one
        convolution, without cutting (and, in the backward pass, re-assembling) four windows."""
        d = self.dilation
        convs = cast(list[nn.Conv2d], list(self.convs))
        weight = torch.stack([conv.weight[:, :, 0, 0] for conv in convs], dim=-1)  # (C, C, 4)
        weight = weight.reshape(*weight.shape[:2], 2, 2)  # [[top-left, top-right], [bottom-left, bottom-right]]
        bias = torch.stack([cast(torch.Tensor, conv.bias) for conv in convs]).sum(0)  # (C,)
        return nn.functional.conv2d(x, weight, bias, padding=d, dilation=2 * d)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the four corner-window convolutions, before the gate."""
        k, d = self.kernel_size, self.dilation
        pad = d + k - 1
        padded = nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2pad, W + 2pad)
        h, w = x.shape[-2] + k - 1, x.shape[-1] + k - 1  # window size; a valid k x k conv gives (H, W)
        far = 2 * d + k - 1  # start of the bottom/right windows in the padded map
        windows = (
            padded[..., :h, :w],  # top-left: reads the input at offsets (-d-k+1..-d, -d-k+1..-d)
            padded[..., :h, far:],  # top-right
            padded[..., far:, :w],  # bottom-left
            padded[..., far:, far:],  # bottom-right: offsets (d..d+k-1, d..d+k-1)
        )
        return sum(conv(window) for conv, window in zip(self.convs, windows))  # (B, C, H, W)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention, the paper's CAM (eq. 8, fig. 6).

    s = gate(W2 act(W1 avgpool(x))), output x * s: one weight per channel, with the hidden width
    C / reduction (at least 1). Activation and gate are arguments, as in timm's SE layer.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be at least 1, got {reduction}")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)  # W1: C -> C/r
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels)  # W2: C/r -> C
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W), each channel rescaled by its weight in (0, 1)."""
        z = x.mean(dim=(2, 3))  # squeeze: (B, C)
        s = self.gate(self.fc2(self.act(self.fc1(z))))  # excitation: (B, C)
        return x * s[:, :, None, None]  # reweight: (B, C, 1, 1) broadcast over (H, W)


class NoMask(nn.Identity):
    """Table 9 "No": the features pass unmasked."""


class FeatureDropout(nn.Module):
    """Table 9 "Dropout": each feature element is zeroed with probability p during training.

    The kept elements are scaled by 1/(1-p), as torch's dropout does; identity in eval mode.
    Draws from `generator` when one is given, else from torch's global RNG.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = _uniform(tuple(x.shape), self.generator, x.device) >= self.p  # (B, C, H, W)
        return x * keep / (1.0 - self.p)


class RectangleMask(nn.Module):
    """Table 9 "Mask": during training, zero one random rectangle per sample, `ratio` of the area.

    The rectangle covers every channel; its aspect ratio is log-uniform within the range that
    lets it fit (sides up to H and W), its place uniform. The kept features are not rescaled.
    Identity in eval mode. Draws from `generator` when one is given, else torch's global RNG.
    """

    def __init__(self, ratio: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
        self.ratio = ratio
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        if not self.training or self.ratio == 0.0:
            return x
        b, _, h, w = x.shape
        u = _uniform((3, b), self.generator, x.device)  # aspect, top, left draws: (3, B)
        side = math.sqrt(self.ratio)
        # aspect a in [side, 1/side], so rect_h = h*side*a <= h and rect_w ~ w*side/a <= w;
        # rect_w is taken from the rounded rect_h so the area stays ratio*h*w within one column.
        aspect = torch.exp(math.log(side) * (1.0 - 2.0 * u[0]))  # (B,)
        rect_h = torch.round(h * side * aspect).clamp(0, h)  # (B,)
        rect_w = torch.round(self.ratio * h * w / rect_h).clamp(0, w)  # (B,); rect_h = 0 gives w, area 0
        top = torch.floor(u[1] * (h - rect_h + 1))  # (B,)
        left = torch.floor(u[2] * (w - rect_w + 1))  # (B,)
        rows = torch.arange(h, device=x.device)[None, :, None]  # (1, H, 1)
        cols = torch.arange(w, device=x.device)[None, None, :]  # (1, 1, W)
        inside_rows = (rows >= top[:, None, None]) & (rows < (top + rect_h)[:, None, None])  # (B, H, 1)
        inside_cols = (cols >= left[:, None, None]) & (cols < (left + rect_w)[:, None, None])  # (B, 1, W)
        keep = ~(inside_rows & inside_cols)  # (B, H, W)
        return x * keep[:, None]  # (B, 1, H, W) broadcast over channels


# name -> builder(channels, dilation); table 9's choices, with their paper settings.
MASKS: dict[str, Callable[[int, int], nn.Module]] = {
    "none": lambda channels, dilation: NoMask(),
    "dropout": lambda channels, dilation: FeatureDropout(p=0.5),
    "rectangle": lambda channels, dilation: RectangleMask(ratio=0.5),
    "mscm": lambda channels, dilation: MaskedSplitConv(channels, dilation=dilation),
}


def build_mask(name: str, channels: int, dilation: int = 2) -> nn.Module:
    """The mask called `name` for a (B, channels, H, W) feature map; ValueError lists the names."""
    if name not in MASKS:
        raise ValueError(f"unknown mask type {name!r}; valid: {', '.join(MASKS)}")
    return MASKS[name](channels, dilation)
