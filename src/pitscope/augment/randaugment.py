"""RandAugment over the six ops PasteNoise applies to its texture image (paper section III-A).

Each op maps an (H, W, 3) uint8 RGB array and a numpy Generator to a new (H, W, 3) uint8 array,
drawing its own strength from the Generator. Strengths are wide on purpose: the result is a
texture to paste, not a training image to keep realistic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from pitscope.augment.regions import check_image

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def autocontrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stretch each channel to the full 0-255 range, clipping a random 0-2% at each end."""
    cutoff = rng.uniform(0.0, 2.0)
    return np.asarray(ImageOps.autocontrast(Image.fromarray(image), cutoff=cutoff))


def posterize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep 2-6 high bits of each channel."""
    bits = int(rng.integers(2, 7))
    return np.asarray(ImageOps.posterize(Image.fromarray(image), bits))


def solarize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Invert every channel value above a threshold drawn from [32, 192]."""
    threshold = int(rng.integers(32, 193))
    return np.asarray(ImageOps.solarize(Image.fromarray(image), threshold))


def sharpness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (factor < 1) or sharpen (factor > 1) with a factor from U[0.1, 1.9]."""
    return np.asarray(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(rng.uniform(0.1, 1.9)))


def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale brightness by a factor from U[0.1, 1.9]."""
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(image)).enhance(rng.uniform(0.1, 1.9)))


def color(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale saturation by a factor from U[0.1, 1.9] (0 would be grey)."""
    return np.asarray(ImageEnhance.Color(Image.fromarray(image)).enhance(rng.uniform(0.1, 1.9)))


OPS: dict[str, Op] = {
    "autocontrast": autocontrast,
    "posterize": posterize,
    "solarize": solarize,
    "sharpness": sharpness,
    "brightness": brightness,
    "color": color,
}


def choose_ops(rng: np.random.Generator, n_ops: int = 3) -> list[str]:
    """Names of `n_ops` distinct ops from OPS, in the random order they will be applied."""
    if not 0 <= n_ops <= len(OPS):
        raise ValueError(f"n_ops must lie in [0, {len(OPS)}] (ops: {', '.join(OPS)}), got {n_ops}")
    return [str(name) for name in rng.choice(list(OPS), size=n_ops, replace=False)]


def rand_augment(image: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply `n_ops` distinct ops of OPS to `image` (H, W, 3) uint8, in random order.

    Draws the names with `choose_ops`, then each op's strength, from the same `rng`.
    Returns: (H, W, 3) uint8, a new array.
    """
    check_image(image)
    out = image.copy()
    for name in choose_ops(rng, n_ops):
        out = OPS[name](out, rng)
    return np.array(out, dtype=np.uint8)
