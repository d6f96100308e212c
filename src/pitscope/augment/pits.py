"""Pit pseudo-defects: a few small dark specks, the size of the smallest pits on a ball screw.

PasteNoise and CutPaste scars cover hundreds of pixels at 256 x 256; the pits a model most
often misses on BSData cover a handful (0.006-0.05% of the image). `pit_specks` darkens one to
three soft-edged ellipses of that size so that the pseudo-defect task also asks the network to
notice them.
"""

from __future__ import annotations

import numpy as np

from pitscope.augment.regions import check_image, ellipse_distance_sq

# Pit sizes in pixels at 256 x 256; other sizes scale by sqrt(H * W) / 256.
PIT_COUNT = (1, 3)  # specks per image, inclusive
PIT_RADIUS = (0.7, 3.0)  # semi-axes of each ellipse
PIT_DEPTH = (0.35, 0.85)  # share of the brightness taken away at the centre
# Soft rim in units of the ellipse's radius: full depth up to 1 - RIM / 2, none beyond 1 + RIM / 2.
RIM = 0.5


def speck_weight(
    shape: tuple[int, int], centre: tuple[int, int], radii: tuple[float, float], theta: float
) -> np.ndarray:
    """How much of a speck's depth each pixel gets: 1 inside, a linear rim, 0 outside.

    `centre` is a pixel (row, col), so the weight there is always 1; `radii` are the semi-axes
    (rows, cols before turning by `theta` radians) in pixels.

    Returns: (H, W) float32 in [0, 1].
    """
    distance = np.sqrt(ellipse_distance_sq(shape, centre, radii, theta))  # 1 on the ellipse
    return np.clip((1.0 + RIM / 2 - distance) / RIM, 0.0, 1.0).astype(np.float32)


def pit_specks(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Darken 1-3 small soft ellipses of `image` (H, W, 3) uint8 at random places.

    Each speck has semi-axes from U[0.7, 3] px at 256 x 256 (scaled by sqrt(H * W) / 256), a
    random turn, and a depth from U[0.35, 0.85]: a pixel with weight w (speck_weight) becomes
    I * (1 - depth * w), every channel alike, so a speck is never brighter than the surface.
    Overlapping specks take the larger weight. The mask is every pixel with a weight above 0,
    so pixels outside it are the input's, bit for bit.

    Returns: (image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1}).
    """
    check_image(image)
    height, width = image.shape[:2]
    scale = np.sqrt(height * width) / 256.0
    darkening = np.zeros((height, width), dtype=np.float32)  # depth * weight, the largest over specks
    for _ in range(int(rng.integers(PIT_COUNT[0], PIT_COUNT[1] + 1))):
        centre = (int(rng.integers(0, height)), int(rng.integers(0, width)))
        radii = (rng.uniform(*PIT_RADIUS) * scale, rng.uniform(*PIT_RADIUS) * scale)
        theta = rng.uniform(0.0, np.pi)
        # The weight is 0 beyond (1 + RIM / 2) * the larger semi-axis: compute it in that window only.
        reach = int(np.ceil(max(radii) * (1.0 + RIM / 2))) + 1
        top, left = max(centre[0] - reach, 0), max(centre[1] - reach, 0)
        bottom, right = min(centre[0] + reach + 1, height), min(centre[1] + reach + 1, width)
        weight = speck_weight((bottom - top, right - left), (centre[0] - top, centre[1] - left), radii, theta)
        window = darkening[top:bottom, left:right]  # a view: writes go to `darkening`
        np.maximum(window, rng.uniform(*PIT_DEPTH) * weight, out=window)
    out = image.astype(np.float32) * (1.0 - darkening[..., None])
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    mask = darkening > 0
    return np.where(mask[..., None], out, image), mask.astype(np.uint8)
