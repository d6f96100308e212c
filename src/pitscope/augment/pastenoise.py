"""PasteNoise (paper section III-A, eq. 3; SPEC section 3): a Perlin-shaped patch of foreign texture."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pitscope.augment.perlin import perlin_mask
from pitscope.augment.randaugment import rand_augment
from pitscope.augment.regions import check_image, largest_region, random_blob
from pitscope.augment.textures import TextureSource

# A region smaller than this fraction of the image is redrawn: it would hardly show.
MIN_AREA_FRACTION = 0.001
MAX_TRIES = 32


def noise_region(
    shape: tuple[int, int],
    rng: np.random.Generator,
    scales: Sequence[int] = (1, 2, 4, 8, 16, 32),
    threshold: float = 0.5,
    rotate: bool = True,
) -> np.ndarray:
    """The mask M of PasteNoise: the largest 8-connected region of a binary Perlin map.

    A region under MIN_AREA_FRACTION of the image is redrawn, up to MAX_TRIES times, then
    replaced by a random ellipse (regions.random_blob).
    Returns: (H, W) bool, never empty.
    """
    min_area = MIN_AREA_FRACTION * shape[0] * shape[1]
    for _ in range(MAX_TRIES):
        region = largest_region(perlin_mask(shape, rng, scales, threshold, rotate))
        if region.sum() >= min_area:
            return region
    return random_blob(shape, rng)


def paste_noise(
    image: np.ndarray,
    rng: np.random.Generator,
    textures: TextureSource,
    scales: Sequence[int] = (1, 2, 4, 8, 16, 32),
    threshold: float = 0.5,
    rotate: bool = True,
    alpha_range: tuple[float, float] = (0.5, 1.0),
    n_ops: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a noise patch onto `image` (H, W, 3) uint8, exactly as SPEC section 3.

    M = noise_region(...); I_e = rand_augment(textures.sample(rng, (H, W)), rng, n_ops);
    alpha ~ U[alpha_range]; I_s = (1 - M) * I + alpha * (M * I) + (1 - alpha) * (M * I_e),
    rounded to uint8. Pixels outside M are the input's, bit for bit.

    The mask returned is always the pasted region M, even when alpha is close to 1 and the
    patch barely shows: the label says where the texture went, not how visible it is (the
    paper's alpha range [0.5, 1] includes such faint patches on purpose).

    Returns: (I_s (H, W, 3) uint8, M (H, W) uint8 in {0, 1}).
    """
    check_image(image)
    shape = image.shape[:2]
    region = noise_region(shape, rng, scales, threshold, rotate)
    texture = rand_augment(textures.sample(rng, shape), rng, n_ops)
    alpha = rng.uniform(alpha_range[0], alpha_range[1])
    blended = alpha * image.astype(np.float32) + (1.0 - alpha) * texture.astype(np.float32)  # (H, W, 3)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out = np.where(region[..., None], blended, image)
    return out, region.astype(np.uint8)
