"""Texture sources for PasteNoise's I_e: images unrelated to the inspected parts (SPEC section 3).

DRAEM draws I_e from the DTD texture set; nothing can be downloaded at test time, so there are
two sources with one method, `sample(rng, (H, W)) -> (H, W, 3) uint8`:
`FolderTextures` reads a user-given folder (DTD or anything), `ProceduralTextures` draws
vivid synthetic textures and needs no files.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from pitscope.augment.perlin import perlin_noise
from pitscope.data.imageio import IMAGE_SUFFIXES, is_image_file, read_image


class TextureSource(Protocol):
    """Anything that draws an (H, W, 3) uint8 texture of a given (H, W) from a Generator."""

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray: ...


Field = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def _normalise(values: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1]; a constant array becomes all zeros."""
    low, high = values.min(), values.max()
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _fractal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Fractal noise: 3-5 octaves of Perlin noise, each twice as fine and half as strong. (H, W) in [0, 1]."""
    base = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    total = np.zeros(shape, dtype=np.float64)
    for octave in range(int(rng.integers(3, 6))):
        res = (min(base[0] << octave, shape[0]), min(base[1] << octave, shape[1]))
        total += 0.5**octave * perlin_noise(shape, res, rng)
    return _normalise(total)


def _stripes(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Parallel stripes at a random angle, period and phase, smooth or hard-edged. (H, W) in [0, 1]."""
    theta = rng.uniform(0.0, np.pi)
    period = rng.uniform(3.0, max(4.0, min(shape) / 3.0))
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    wave = np.sin(2.0 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period + rng.uniform(0.0, 2.0 * np.pi))
    if rng.random() < 0.5:
        wave = np.sign(wave)
    return 0.5 + 0.5 * wave


def _blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A sum of 3-12 Gaussian blobs of random place and size. (H, W) in [0, 1]."""
    n = int(rng.integers(3, 13))
    centres = rng.uniform(0.0, 1.0, size=(n, 2)) * np.array(shape)  # (n, 2) as (y, x)
    sigmas = rng.uniform(0.03, 0.2, size=n) * min(shape)  # (n,)
    y = np.arange(shape[0])[None, :, None] - centres[:, 0, None, None]  # (n, H, 1)
    x = np.arange(shape[1])[None, None, :] - centres[:, 1, None, None]  # (n, 1, W)
    total = np.exp(-(y**2 + x**2) / (2.0 * sigmas[:, None, None] ** 2)).sum(axis=0)  # (H, W)
    return _normalise(total)


def _gradient(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A linear ramp along a random direction, or a radial one around a random centre. (H, W) in [0, 1]."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    if rng.random() < 0.5:
        theta = rng.uniform(0.0, 2.0 * np.pi)
        ramp = x * np.cos(theta) + y * np.sin(theta)
    else:
        cy, cx = rng.uniform(0.0, shape[0]), rng.uniform(0.0, shape[1])
        ramp = np.hypot(y - cy, x - cx)
    return _normalise(ramp)


FIELDS: dict[str, Field] = {"fractal": _fractal, "stripes": _stripes, "blobs": _blobs, "gradient": _gradient}


def _colourise(field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a (H, W) field in [0, 1] through a random palette of 2-4 vivid colours.

    Returns: (H, W, 3) float in [0, 255].
    """
    n = int(rng.integers(2, 5))
    palette = np.array(
        [colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0)) for _ in range(n)]
    )  # (n, 3) in [0, 1]
    stops = np.linspace(0.0, 1.0, n)
    return 255.0 * np.stack([np.interp(field, stops, palette[:, c]) for c in range(3)], axis=-1)


class ProceduralTextures:
    """Built-in textures: coloured fractal noise, stripes, blobs and gradients, mixed at random.

    One or two layers, each a random field of FIELDS through its own vivid palette; two layers
    are blended through a smooth fractal weight so that both show.
    """

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        """A texture of `shape` (H, W). Returns (H, W, 3) uint8."""
        shape = (int(shape[0]), int(shape[1]))
        names = rng.choice(list(FIELDS), size=int(rng.integers(1, 3)), replace=False)
        layers = [_colourise(FIELDS[str(name)](rng, shape), rng) for name in names]
        out = layers[0]
        if len(layers) == 2:
            weight = _fractal(rng, shape)[..., None]  # (H, W, 1)
            out = (1.0 - weight) * layers[0] + weight * layers[1]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return "ProceduralTextures()"


class FolderTextures:
    """Textures read from the image files under `folder` (searched recursively, sorted by path).

    Each sample is a random file, a random crop of 50-100% of the largest window with the
    target aspect ratio, resized to the target size: no distortion, some variety of scale.
    A file that cannot be decoded raises pitscope.data.types.BadImageError naming it.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"texture folder {self.folder} does not exist")
        self.files = sorted(p for p in self.folder.rglob("*") if p.is_file() and is_image_file(p))
        if not self.files:
            raise FileNotFoundError(f"texture folder {self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def sample(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        """A texture of `shape` (H, W). Returns (H, W, 3) uint8."""
        height, width = int(shape[0]), int(shape[1])
        source = read_image(self.files[int(rng.integers(len(self.files)))])  # (h, w, 3) uint8
        src_h, src_w = source.shape[:2]
        fit = min(src_h / height, src_w / width)  # largest window of the target aspect ratio
        scale = fit * rng.uniform(0.5, 1.0)
        crop_h = int(np.clip(round(height * scale), 1, src_h))
        crop_w = int(np.clip(round(width * scale), 1, src_w))
        top = int(rng.integers(0, src_h - crop_h + 1))
        left = int(rng.integers(0, src_w - crop_w + 1))
        crop = Image.fromarray(source[top : top + crop_h, left : left + crop_w])
        return np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8).copy()

    def __repr__(self) -> str:
        return f"FolderTextures({str(self.folder)!r}, {len(self.files)} images)"


def make_texture_source(texture_dir: str | Path | None) -> ProceduralTextures | FolderTextures:
    """The texture source an `AugmentConfig.texture_dir` asks for: None means procedural."""
    return ProceduralTextures() if texture_dir is None else FolderTextures(texture_dir)
