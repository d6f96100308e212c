"""2-D gradient (Perlin) noise and the binary Perlin masks that shape PasteNoise defects.

PasteNoise (SPEC section 3, paper eq. 3) follows DRAEM: a Perlin noise image whose lattice
resolution on each axis is a power of two drawn at random, optionally rotated, binarised at a
threshold. Low resolutions give large smooth blobs, high ones small ragged specks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pitscope.augment.regions import random_blob

# How often an empty binary map is redrawn before falling back to a random ellipse.
MAX_TRIES = 32


def _fade(t: np.ndarray) -> np.ndarray:
    """Quintic fade 6t^5 - 15t^4 + 10t^3: zero first and second derivatives at 0 and 1."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Classic 2-D gradient noise of `shape` (H, W) with `res` (ry, rx) lattice cells per axis.

    Random unit gradients sit on a (ry + 1, rx + 1) lattice spread over the image, so pixel
    (i, j) lies at lattice coordinates (i * ry / H, j * rx / W). Each pixel is evaluated at
    its own coordinates, so H and W need not be multiples of ry and rx (equivalent to computing
    on a padded grid and cropping, without the padding). The value is zero at every lattice
    point and is scaled by sqrt(2) so that it spans about [-1, 1].

    Returns: (H, W) float32.
    """
    height, width = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if height < 1 or width < 1 or ry < 1 or rx < 1:
        raise ValueError(f"perlin_noise: shape {shape} and res {res} must be positive")
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (ry+1, rx+1, 2): (gy, gx)

    # Integer products then one division: lattice points land on exact integers.
    y = (np.arange(height) * ry) / height  # (H,) in [0, ry)
    x = (np.arange(width) * rx) / width  # (W,) in [0, rx)
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]  # (H, 1), (1, W)

    grad_y, grad_x = np.ascontiguousarray(gradients[..., 0]), np.ascontiguousarray(gradients[..., 1])

    def corner(dy: int, dx: int) -> np.ndarray:
        # columns first on the small lattice, then whole rows: far cheaper than a per-pixel gather
        gy = grad_y[:, ix + dx][iy + dy]  # (ry+1, W) -> (H, W)
        gx = grad_x[:, ix + dx][iy + dy]
        return gy * (fy - dy) + gx * (fx - dx)  # (H, W)

    ty, tx = _fade(fy), _fade(fx)
    c00, c10 = corner(0, 0), corner(1, 0)
    top = c00 + tx * (corner(0, 1) - c00)
    bottom = c10 + tx * (corner(1, 1) - c10)
    return (np.sqrt(2.0) * (top + ty * (bottom - top))).astype(np.float32)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    scales: Sequence[int] = (1, 2, 4, 8, 16, 32),
    threshold: float = 0.5,
    rotate: bool = True,
) -> np.ndarray:
    """A non-empty binary Perlin map of `shape` (H, W), as DRAEM draws them.

    The lattice resolution of each axis is drawn independently from `scales`; with `rotate`
    the noise is turned by an angle from U[-90, 90) degrees (scipy.ndimage.rotate, reflect
    mode, same shape); pixels above `threshold` are set. Coarse scales with a high threshold are
    often empty: such a map is redrawn up to MAX_TRIES times, then replaced by a random ellipse
    so that the caller always receives a positive.

    Returns: (H, W) bool, at least one pixel set.
    """
    if len(scales) == 0:
        raise ValueError("perlin_mask: scales must name at least one lattice resolution")
    for _ in range(MAX_TRIES):
        res = (int(rng.choice(scales)), int(rng.choice(scales)))
        noise = perlin_noise(shape, res, rng)
        if rotate:
            angle = rng.uniform(-90.0, 90.0)
            noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="reflect")
        mask = noise > threshold
        if mask.any():
            return mask
    return random_blob(shape, rng)
