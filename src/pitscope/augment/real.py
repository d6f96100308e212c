"""Real defects as pseudo-defects: a marked defect cut from a labelled photo, jittered, pasted.

The cutouts come from `pitscope.data.labelled.defect_cutouts`, already at the training size;
`paste_cutout` gives each paste its own size, turn and brightness so that a handful of marked
pits yields many different training defects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from pitscope.augment.cutpaste import _paste
from pitscope.augment.regions import check_image
from pitscope.data.labelled import Cutout

SCALE = (0.8, 1.25)  # size factor range
BRIGHTNESS = 0.15  # pixel values times 1 + U[-b, b]


def _scaled(cutout: Cutout, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """The cutout resized by `factor` (sides rounded, at least 1 px): bilinear image, mask bilinear >= 0.5.

    Should shrinking leave no mask pixel, the pixel with the largest mask weight is kept, so a
    paste always marks something. Returns (image (h', w', 3) uint8, mask (h', w') bool).
    """
    h, w = cutout.mask.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))  # PIL's (width, height)
    if size == (w, h):
        return cutout.image, cutout.mask
    image = np.asarray(Image.fromarray(cutout.image).resize(size, Image.Resampling.BILINEAR))
    weights = np.asarray(
        Image.fromarray(cutout.mask.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    )
    keep = weights >= 0.5
    if not keep.any():
        keep = weights == weights.max()
    return image, keep


def _fit(patch: np.ndarray, keep: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop a patch larger than (height, width) to its mask's bounding box, then to a window of
    at most (height, width) around its middle mask pixel, so that some mask pixel always stays."""
    if keep.shape[0] <= height and keep.shape[1] <= width:
        return patch, keep
    rows, cols = np.nonzero(keep)
    patch = patch[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    keep = keep[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    rows, cols = np.nonzero(keep)
    row, col = rows[rows.size // 2], cols[cols.size // 2]  # a mask pixel (row-major middle)
    h, w = min(keep.shape[0], height), min(keep.shape[1], width)
    top = int(np.clip(row - h // 2, 0, keep.shape[0] - h))
    left = int(np.clip(col - w // 2, 0, keep.shape[1] - w))
    return patch[top : top + h, left : left + w], keep[top : top + h, left : left + w]


def paste_cutout(
    image: np.ndarray,
    rng: np.random.Generator,
    cutouts: Sequence[Cutout],
    scale: tuple[float, float] = SCALE,
    rotate: bool = True,
    brightness: float = BRIGHTNESS,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste one real defect, chosen uniformly from `cutouts`, onto `image` (H, W, 3) uint8.

    The cutout is resized by a factor from U[scale] (`_scaled`), turned by k * 90 degrees
    (k uniform in 0..3) and mirrored left-right with probability 0.5 when `rotate`, its pixel
    values multiplied by 1 + U[-brightness, brightness], and pasted at a uniform position where
    it lies wholly inside the image (cropped first if larger than the image). Only the cutout's
    mask pixels replace the image's; the input is left unchanged. Draws in that order from `rng`.

    Returns: (image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1} = the replaced pixels).
    """
    check_image(image)
    if not cutouts:
        raise ValueError("cutouts: need at least one cutout to paste")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale: expected 0 < low <= high, got {tuple(scale)}")
    if not 0 <= brightness < 1:
        raise ValueError(f"brightness: expected 0 <= brightness < 1, got {brightness}")
    cutout = cutouts[int(rng.integers(len(cutouts)))]
    patch, keep = _scaled(cutout, float(rng.uniform(scale[0], scale[1])))  # (h, w, 3), (h, w)
    if rotate:
        turns = int(rng.integers(4))
        patch, keep = np.rot90(patch, turns), np.rot90(keep, turns)
        if rng.random() < 0.5:
            patch, keep = patch[:, ::-1], keep[:, ::-1]
    gain = 1.0 + rng.uniform(-brightness, brightness)
    patch = np.clip(np.rint(patch.astype(np.float32) * gain), 0, 255).astype(np.uint8)
    patch, keep = _fit(patch, keep, image.shape[0], image.shape[1])
    return _paste(image, patch, keep, rng)
