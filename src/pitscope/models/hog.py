"""The pixel branch's regression targets (SPEC section 4): a batched torch HOG, and resized RGB.

`hog_features` is the classic pedestrian-window HOG of Dalal and Triggs, 3780 values per image,
computed with exactly the conventions of `skimage.feature.hog(image, orientations=9,
pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm='L2-Hys')` on the 128 x 64 grey
window, but batched in torch so it runs wherever the images already are (CPU or GPU).
`rgb_target` is the table 6 ablation's alternative target, sized so the same 3780-output
decoder serves both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

WINDOW = (128, 64)  # (height, width) of the pedestrian window
ORIENTATIONS = 9  # unsigned bins of 20 degrees over [0, 180)
CELL = 8  # pixels per cell side
BLOCK = 2  # cells per block side
EPS = 1e-5  # skimage's L2-Hys epsilon
CLIP = 0.2  # L2-Hys clipping value
HOG_DIM = 3780  # 15 x 7 blocks x (2 x 2 cells x 9 bins)
RGB_SIZE = (35, 36)  # 3 x 35 x 36 = 3780, the same length as the HOG target

# ITU-R 601 luma weights, as skimage.color.rgb2gray.
_LUMA = (0.2125, 0.7154, 0.0721)


def hog_window(images: Tensor) -> Tensor:
    """The grey 128 x 64 window that HOG is computed on.

    images: (B, 3, H, W) RGB or (B, 1, H, W) grey, any float scale.
    Returns (B, 128, 64) in the input dtype. Grey is 0.2125 R + 0.7154 G + 0.0721 B (as
    skimage's rgb2gray). The resize is `F.interpolate(mode="bilinear", antialias=True,
    align_corners=False)`: antialiasing averages over the source pixels a downscaled pixel
    covers (like PIL's bilinear resize), so fine texture is not aliased into false gradients;
    an image already 128 x 64 is returned unchanged.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 3:
        weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
        grey = torch.einsum("bchw,c->bhw", images, weights).unsqueeze(1)  # (B, 1, H, W)
    else:
        grey = images
    if tuple(grey.shape[-2:]) != WINDOW:
        grey = F.interpolate(grey, size=WINDOW, mode="bilinear", align_corners=False, antialias=True)
    return grey[:, 0]  # (B, 128, 64)


def _cell_histograms(grey: Tensor) -> Tensor:
    """Magnitude-weighted orientation histograms of 8 x 8 cells, as skimage computes them.

    grey: (B, H, W) with H, W multiples of 8. Returns (B, H/8, W/8, 9).
    Gradients are central differences `x[i+1] - x[i-1]` (not halved) in the interior and zero on
    the outermost rows (for the row gradient) and columns (for the column gradient). Each pixel
    votes its gradient magnitude into exactly one bin (hard binning, no interpolation): bin i
    holds orientations in [20 i, 20 (i + 1)) degrees, orientation = atan2(g_row, g_col) mod 180.
    A cell's histogram is the sum of its votes divided by the 64 pixels of the cell.
    """
    g_row = torch.zeros_like(grey)
    g_row[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]
    g_col = torch.zeros_like(grey)
    g_col[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
    magnitude = torch.hypot(g_col, g_row)
    orientation = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)  # [0, 180]
    # Count the bin edges passed rather than dividing by 20, so values on an edge land in the
    # same bin as in skimage's comparisons; `x mod 180` can round up to 180.0, which skimage's
    # half-open bins drop, and so do we.
    edges = torch.arange(1, ORIENTATIONS, dtype=grey.dtype, device=grey.device) * (180.0 / ORIENTATIONS)
    bins = (orientation.unsqueeze(-1) >= edges).sum(-1)  # (B, H, W) in 0..8
    votes = magnitude * (orientation < 180.0)  # (B, H, W)
    b, h, w = grey.shape
    hc, wc = h // CELL, w // CELL
    rows = torch.arange(h, device=grey.device) // CELL
    cols = torch.arange(w, device=grey.device) // CELL
    cell = (torch.arange(b, device=grey.device)[:, None, None] * hc + rows[:, None]) * wc + cols  # (B, H, W)
    hist = grey.new_zeros(b * hc * wc * ORIENTATIONS)
    hist.index_add_(0, (cell * ORIENTATIONS + bins).reshape(-1), votes.reshape(-1))
    return hist.reshape(b, hc, wc, ORIENTATIONS) / (CELL * CELL)  # (B, H/8, W/8, 9)


def _normalised_blocks(hist: Tensor) -> Tensor:
    """L2-Hys normalised 2 x 2-cell blocks at a stride of one cell, flattened as skimage does.

    hist: (B, Hc, Wc, 9). Returns (B, (Hc-1) * (Wc-1) * 2 * 2 * 9), ordered block row, block
    column, cell row within the block, cell column within the block, orientation.
    """
    blocks = hist.unfold(1, BLOCK, 1).unfold(2, BLOCK, 1)  # (B, Hb, Wb, 9, 2, 2)
    blocks = blocks.permute(0, 1, 2, 4, 5, 3).flatten(3)  # (B, Hb, Wb, 36)
    blocks = blocks / torch.sqrt((blocks**2).sum(-1, keepdim=True) + EPS**2)
    blocks = blocks.clamp(max=CLIP)
    blocks = blocks / torch.sqrt((blocks**2).sum(-1, keepdim=True) + EPS**2)
    return blocks.flatten(1)


@torch.no_grad()
def hog_features(images: Tensor, compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """HOG of the 128 x 64 grey window of each image: the pixel branch's target.

    images: (B, 3, H, W) RGB or (B, 1, H, W) grey in [0, 1] (for ImageNet-normalised input use
    `hog_target`). Returns (B, 3780) in the input dtype, equal (to rounding) to
    `skimage.feature.hog(hog_window(images)[i] in float64, orientations=9, pixels_per_cell=(8, 8),
    cells_per_block=(2, 2), block_norm='L2-Hys')` for every image i.
    The window (grey conversion and resize) is computed in the images' own dtype; everything
    from the gradients on runs in `compute_dtype` (float64 by default, as skimage does for a
    float64 image): in float32 a pixel whose angle lies within rounding of a bin edge may change
    bin between devices or libraries, which is harmless for training but breaks exact agreement.
    """
    grey = hog_window(images).to(compute_dtype)
    return _normalised_blocks(_cell_histograms(grey)).to(images.dtype)


def unnormalise(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Undo per-channel normalisation: (B, C, H, W) * std + mean, with mean and std of length C."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return images * std + mean


def hog_target(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """`hog_features` of normalised network input: (B, 3, H, W) -> (B, 3780).

    The images are first brought back to [0, 1] with the normalisation's mean and std, so the
    target is the HOG of the picture itself (eq. 5), independent of the input normalisation.
    """
    return hog_features(unnormalise(images, mean, std))


@torch.no_grad()
def rgb_target(images: Tensor, size: tuple[int, int] = RGB_SIZE) -> Tensor:
    """The RGB target of the table 6 ablation: the image shrunk by area averaging, flattened.

    images: (B, 3, H, W), taken as given (normalised input stays normalised).
    Returns (B, 3 * size[0] * size[1]). The default 35 x 36 gives 3 x 35 x 36 = 3780 values,
    the length of the HOG target, so one decoder with a 3780-wide output layer serves both
    targets and the ablation changes nothing but the target.
    """
    pooled = F.adaptive_avg_pool2d(images, size)  # (B, 3, size[0], size[1])
    return pooled.flatten(1)
