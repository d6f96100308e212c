"""Pixel regions of binary masks, and the image contract every pseudo-defect generator checks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 8-connectivity: diagonal neighbours belong to the same region.
_EIGHT = np.ones((3, 3), dtype=bool)


def check_image(image: np.ndarray, name: str = "image") -> None:
    """Raise ValueError unless `image` is an (H, W, 3) uint8 RGB array."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{name}: expected an (H, W, 3) uint8 array, got shape {shape} dtype {dtype}")


def largest_region(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected component of `mask` (H, W); ties go to the first label.

    Returns: (H, W) bool; all False when `mask` is empty.
    """
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    if count == 0:
        return np.zeros(labels.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]  # (count,) pixels per label 1..count
    return labels == int(np.argmax(sizes)) + 1


def random_blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random rotated ellipse inside `shape` (H, W), semi-axes 5-20% of the side (>= 1 px).

    The fallback when random masks keep coming out empty or tiny: the centre pixel is always
    set, so the result is never empty.

    Returns: (H, W) bool.
    """
    height, width = int(shape[0]), int(shape[1])
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    ay = max(1.0, rng.uniform(0.05, 0.2) * height)
    ax = max(1.0, rng.uniform(0.05, 0.2) * width)
    theta = rng.uniform(0.0, np.pi)
    return ellipse_distance_sq((height, width), (cy, cx), (ay, ax), theta) <= 1.0


def ellipse_distance_sq(
    shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], theta: float
) -> np.ndarray:
    """Squared normalised distance of every pixel of `shape` (H, W) from an ellipse's centre.

    The ellipse has semi-axes `radii` (along rows, along columns before the turn) and is turned
    by `theta` radians; the result is 1 on its boundary, below 1 inside.

    Returns: (H, W) float64.
    """
    y = np.arange(shape[0])[:, None] - centre[0]  # (H, 1)
    x = np.arange(shape[1])[None, :] - centre[1]  # (1, W)
    u = y * np.cos(theta) + x * np.sin(theta)  # (H, W) along the first axis of the ellipse
    v = -y * np.sin(theta) + x * np.cos(theta)
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2
