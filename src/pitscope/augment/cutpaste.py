"""CutPaste pseudo-defects (Li et al. 2021; SPEC section 3): a patch of the image pasted elsewhere in it.

`scar_patch` pastes a thin rotated rectangle, `normal_patch` a larger upright one. Both cut the
patch from the image itself and give it a small colour jitter, as the CutPaste reference code
does, so that a patch pasted onto similar surroundings still differs from them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from pitscope.augment.regions import check_image

# Scar sizes in pixels at 256 x 256 (CutPaste); other sizes scale by sqrt(H * W) / 256.
SCAR_WIDTH = (2.0, 16.0)
SCAR_HEIGHT = (10.0, 25.0)
SCAR_ROTATION = (-45.0, 45.0)
NORMAL_AREA = (0.02, 0.15)
NORMAL_ASPECT = (0.3, 3.3)
# Colour jitter: factors from U[1 - j, 1 + j] for brightness, contrast, saturation; hue shift U[-j, j] of a turn.
JITTER = 0.1


def color_jitter(patch: np.ndarray, rng: np.random.Generator, amount: float = JITTER) -> np.ndarray:
    """Small random change of brightness, contrast, saturation and hue of a (h, w, 3) uint8 patch."""
    img = Image.fromarray(patch)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(1.0 - amount, 1.0 + amount))
    hsv = np.array(img.convert("HSV"))  # (h, w, 3) uint8, hue in 0..255 = one turn
    shift = int(round(rng.uniform(-amount, amount) * 256))
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
    return np.asarray(Image.frombytes("HSV", img.size, hsv.tobytes()).convert("RGB"))


def _paste(
    image: np.ndarray, patch: np.ndarray, keep: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the `keep` pixels of `patch` (h, w, 3) at a random place where it fits entirely.

    Returns: (image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1} of the pasted pixels).
    """
    height, width = image.shape[:2]
    h, w = keep.shape
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    out = image.copy()
    mask = np.zeros((height, width), dtype=np.uint8)
    window = out[top : top + h, left : left + w]  # a view: writes go to `out`
    window[keep] = patch[keep]
    mask[top : top + h, left : left + w] = keep
    return out, mask


def _cut(image: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) copy of the image from a random place."""
    height, width = image.shape[:2]
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return image[top : top + h, left : left + w].copy()


def scar_patch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste scar: a thin rectangle cut from `image` (H, W, 3) uint8, jittered, rotated, pasted.

    Width from U[2, 16] px and height from U[10, 25] px at 256 x 256, scaled by sqrt(H * W) / 256
    (at least 1 px, at most the image); rotation from U[-45, 45] degrees, the patch and its
    rectangle turned together (nearest neighbour, expanded canvas) so the mask is exactly the
    pasted pixels.

    Returns: (image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1}).
    """
    check_image(image)
    height, width = image.shape[:2]
    scale = np.sqrt(height * width) / 256.0
    w = int(np.clip(round(rng.uniform(*SCAR_WIDTH) * scale), 1, width))
    h = int(np.clip(round(rng.uniform(*SCAR_HEIGHT) * scale), 1, height))
    patch = color_jitter(_cut(image, h, w, rng), rng)
    rgba = np.dstack([patch, np.full((h, w), 255, dtype=np.uint8)])  # (h, w, 4)
    turned = np.asarray(Image.fromarray(rgba).rotate(rng.uniform(*SCAR_ROTATION), expand=True))
    # Crop the turned patch to the image if it does not fit (only on images of a few pixels).
    turned = turned[:height, :width]
    return _paste(image, turned[..., :3], turned[..., 3] > 0, rng)


def normal_patch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CutPaste normal: a rectangle of 2-15% of the image area, cut at one place, pasted at another.

    Aspect ratio (width / height) log-uniform in [0.3, 3.3]; sides at least 1 px, at most the
    image; the patch gets the same small colour jitter as the scar.

    Returns: (image (H, W, 3) uint8, mask (H, W) uint8 in {0, 1} = the pasted rectangle).
    """
    check_image(image)
    height, width = image.shape[:2]
    area = rng.uniform(*NORMAL_AREA) * height * width
    aspect = np.exp(rng.uniform(np.log(NORMAL_ASPECT[0]), np.log(NORMAL_ASPECT[1])))
    w = int(np.clip(round(np.sqrt(area * aspect)), 1, width))
    h = int(np.clip(round(np.sqrt(area / aspect)), 1, height))
    patch = color_jitter(_cut(image, h, w, rng), rng)
    return _paste(image, patch, np.ones((h, w), dtype=bool), rng)
