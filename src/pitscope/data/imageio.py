"""Decode image and mask files into plain numpy arrays, refusing any file that is not fully readable.

Every file is decoded completely (`Image.load()`), and truncated files are never tolerated
(`ImageFile.LOAD_TRUNCATED_IMAGES` stays False), so a half-written JPEG is reported as a
`BadImageError` here instead of turning into a grey band in a training image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pitscope.data.types import BadImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Pillow's modes holding one channel wider than 8 bits; read as if they span 0..65535.
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ORIENTATION = 0x0112  # the EXIF tag of how the photo is turned


def is_image_file(path: str | Path) -> bool:
    """True for a name ending in one of IMAGE_SUFFIXES (any case) that is not hidden (`.name`)."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside `folder` (not its subfolders), sorted by name.

    Hidden files (such as macOS `._name.png` companions) are left out. A missing folder is a
    FileNotFoundError naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def photo_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of the image file as it is shown (EXIF orientation applied), read from its
    header without decoding; None when the file cannot be read."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            turned = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if turned else (width, height)


def _decode(path: str | Path) -> Image.Image:
    """Open and fully decode `path`, applying its EXIF orientation; BadImageError if impossible."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(str(path), "file does not exist")
    if path.stat().st_size == 0:
        raise BadImageError(str(path), "file is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow reports unknown formats, truncation and corrupt streams as OSError subclasses,
        # some corrupt headers as SyntaxError/ValueError.
        raise BadImageError(str(path), f"cannot decode: {exc}") from exc


def _to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any Pillow mode; wide greyscale is scaled from 0..65535 to 0..255."""
    if image.mode in _WIDE_GREY_MODES:
        # Pillow's own convert("L") clips 16-bit values at 255 instead of scaling them.
        wide = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
        grey = np.round(wide / 257.0).astype(np.uint8)  # (H, W), 65535 -> 255
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")  # grey, palette, RGBA (alpha dropped), CMYK, ...
    return np.array(image, dtype=np.uint8)


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image or an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).

    Arrays may be uint8 or uint16 (scaled by 1/257); a fourth channel (alpha) is dropped.
    Anything else is a ValueError saying what was given.
    """
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float64) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 or uint16 array, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape[:2]:
        raise ValueError(f"expected an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def read_image(path: str | Path) -> np.ndarray:
    """Read any Pillow-readable image as (H, W, 3) uint8 RGB.

    Greyscale is repeated over the three channels, alpha is dropped, palettes are expanded,
    16-bit (and 32-bit integer or float) greyscale is read as spanning 0..65535 and scaled to
    0..255, and the EXIF orientation is applied so H and W are as the camera meant them.
    Raises BadImageError(path, reason) for a missing, empty, truncated, corrupt or non-image file.
    """
    return _to_rgb(_decode(path))


def input_to_rgb(image: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image given as a path (`read_image`), a PIL image or an array
    (`to_rgb_array`): what `Detector.predict` accepts."""
    return read_image(image) if isinstance(image, (str, Path)) else to_rgb_array(image)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a defect mask as (H, W) uint8 in {0, 1}: every nonzero pixel is defective.

    For colour masks a pixel is defective when any colour channel is nonzero (alpha is ignored);
    palette masks are judged by their colours, not their palette indices.
    Raises BadImageError like `read_image`.
    """
    image = _decode(path)
    if image.mode in ("1", "L") or image.mode in _WIDE_GREY_MODES:
        values = np.asarray(image)  # (H, W)
    else:
        values = np.any(np.asarray(image.convert("RGB")), axis=2)  # (H, W) bool
    return (values != 0).astype(np.uint8)
