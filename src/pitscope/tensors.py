"""Conversions between uint8 images and the network's normalised tensors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm


class HasImage(Protocol):
    """Anything with an (H, W, 3) uint8 `image`, as a `pitscope.data.types.Sample`."""

    @property
    def image(self) -> np.ndarray: ...


# ImageNet statistics (SPEC section 2), used whatever the backbone's initialisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ImageNet-normalised."""
    x = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).astype(np.float32, order="C"))  # (3, H, W), a copy
    return x.div_(255.0).sub_(_MEAN).div_(_STD)  # in place: the same values as (x / 255 - mean) / std


def images_to_batch(images: list[np.ndarray]) -> torch.Tensor:
    """A list of same-size (H, W, 3) uint8 images -> (B, 3, H, W) normalised."""
    return torch.stack([image_to_tensor(im) for im in images])


def iterate_batches(
    dataset: Sequence[HasImage], indices: Sequence[int], batch_size: int, desc: str, progress: bool
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, normalised images (B, 3, H, W)) over dataset[indices] with a progress bar."""
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = list(indices[start : start + batch_size])
        yield chunk, images_to_batch([dataset[i].image for i in chunk])


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised -> (B, 3, H, W) in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * std + mean).clamp_(0.0, 1.0)


# An image size: one side (a square) or (height, width).
Shape = int | tuple[int, int]


def as_shape(size: Shape) -> tuple[int, int]:
    """An image size as (height, width): an int is a square of that side."""
    if isinstance(size, (tuple, list)):
        height, width = size
        return int(height), int(width)
    return int(size), int(size)


def resize_image(image: np.ndarray, size: Shape) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 of `size`, bilinear, as the datasets resize."""
    height, width = as_shape(size)
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: Shape) -> np.ndarray:
    """(H, W) uint8 mask -> (height, width) of `size`, nearest, as the datasets resize masks."""
    height, width = as_shape(size)
    if mask.shape[:2] == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
