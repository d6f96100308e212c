"""Photos with marked real defects, and the defects cut out of them for pasting during training.

Layout of a labelled folder (photos directly inside it, read in name order):
    <folder>/<stem>.<png|jpg|...>               a photo with at least one marked defect
    <folder>/masks/<stem>.<png|jpg|...>         its mask (or `<stem>_mask.<...>`, as the folder format)
    <folder>/<stem>.json                        or a labelme file of "Pitting" polygons
    <folder>/label/<stem>.json                  or one where BSData keeps it
The first of these found is the photo's mask. A mask is 0 on sound surface and one other value
on defects (255, 1, True or one colour); anything else is refused, since a blurred or
multi-class mask would paste the wrong pixels.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pitscope.data.bsdata import read_polygons
from pitscope.data.dataset import ON_BAD_FILE, rasterise_polygons
from pitscope.data.folder import MASK_SUFFIXES
from pitscope.data.imageio import _decode, list_images, read_image
from pitscope.data.types import BadImageError, DatasetLayoutError
from pitscope.tensors import Shape, as_shape, resize_image

logger = logging.getLogger(__name__)

MASK_DIR = "masks"
LABEL_DIR = "label"
# 8-connectivity: pixels touching at a corner are one defect.
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class LabelledDefect:
    """One photo with its marked defects, at the photo's native size.

    path:   the photo file.
    sha256: hex digest of the photo file's bytes (names the photo in benchmark records).
    image:  (H, W, 3) uint8 RGB.
    mask:   (H, W) bool, True on defect pixels; never empty.
    """

    path: Path
    sha256: str
    image: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Cutout:
    """One connected defect cut out of a photo resized to the training size.

    image:  (h, w, 3) uint8, the defect's bounding box plus a margin of surrounding surface.
    mask:   (h, w) bool, True on this defect's pixels only.
    source: index of its `LabelledDefect` in the list given to `defect_cutouts`.
    """

    image: np.ndarray
    mask: np.ndarray
    source: int


class _BadFile(Exception):
    """A photo or mask that cannot be used; the message names the file."""


def _refuse(message: str, on_bad_file: str) -> None:
    """Skip (log a warning) or raise DatasetLayoutError, as `on_bad_file` says."""
    if on_bad_file == "error":
        raise DatasetLayoutError(message)
    logger.warning("skipped bad file: %s", message)


def _owners(mask: Path, stems: dict[str, list[Path]]) -> list[Path]:
    """The photos whose stem plus one of MASK_SUFFIXES is the stem of `mask`."""
    return [
        photo
        for suffix in MASK_SUFFIXES
        if mask.stem.endswith(suffix)
        for photo in stems.get(mask.stem.removesuffix(suffix), [])
    ]


def _labelme_files(folder: Path) -> list[Path]:
    """The visible `.json` files directly in `folder` (none when it does not exist), sorted."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".json" and not p.name.startswith(".")
    )


def _pair(folder: Path, photos: list[Path]) -> tuple[dict[Path, Path], list[str]]:
    """Each photo's mask file (the first found), and a message for every photo or mask left unpaired.

    Pairing is by exact stem. A photo sharing its stem with another photo, a photo with two masks
    in masks/, and a mask fitting photos of two stems are refused rather than guessed.
    """
    stems: dict[str, list[Path]] = {}
    for photo in photos:
        stems.setdefault(photo.stem, []).append(photo)
    problems = []
    in_mask_dir: dict[Path, list[Path]] = {}
    mask_dir = folder / MASK_DIR
    for mask in list_images(mask_dir) if mask_dir.is_dir() else []:
        owners = _owners(mask, stems)
        if not owners:
            names = " or ".join(f"{mask.stem.removesuffix(s)}.*" for s in MASK_SUFFIXES if mask.stem.endswith(s))
            problems.append(f"{mask}: mask belongs to no photo (no photo {names} in {folder})")
        elif len({owner.stem for owner in owners}) > 1:
            problems.append(f"{mask}: mask fits more than one photo: {', '.join(p.name for p in owners)}")
        elif len(owners) == 1:  # several owners of one stem: those photos are refused below
            in_mask_dir.setdefault(owners[0], []).append(mask)
    for label in _labelme_files(folder) + _labelme_files(folder / LABEL_DIR):
        if label.stem not in stems:
            problems.append(f"{label}: labelme file belongs to no photo (no photo {label.stem}.* in {folder})")
    sources = {}
    for photo in photos:
        stem = photo.stem
        if len(stems[stem]) > 1:
            problems.append(
                f"{photo}: {len(stems[stem])} photos share the stem {stem!r}, so their masks cannot be told apart"
            )
            continue
        masks = in_mask_dir.get(photo, [])
        if len(masks) > 1:
            problems.append(f"{photo}: more than one mask fits: {', '.join(map(str, masks))}")
            continue
        found = masks + [p for p in (folder / f"{stem}.json", folder / LABEL_DIR / f"{stem}.json") if p.is_file()]
        if not found:
            looked = [f"{MASK_DIR}/{stem}{s}.<png|jpg|...>" for s in MASK_SUFFIXES]
            problems.append(
                f"{photo}: photo has no mask (looked for {', '.join(looked)}, {stem}.json, {LABEL_DIR}/{stem}.json)"
            )
            continue
        sources[photo] = found[0]
        for unused in found[1:]:
            logger.warning("%s: not used: %s takes its mask from %s", unused, photo.name, found[0])
    return sources, problems


def _read_binary_mask(path: Path) -> np.ndarray:
    """A mask file as (H, W) bool; _BadFile unless it holds 0 and at most one other value.

    Single-channel files are judged by their stored values (also 16-bit), others by their
    RGB colours (alpha ignored, palettes by colour, as `read_mask` does).
    """
    try:
        decoded = _decode(path)
    except BadImageError as exc:
        raise _BadFile(str(exc)) from exc
    if len(decoded.getbands()) == 1 and decoded.mode != "P":
        values = np.asarray(decoded)  # (H, W) stored values
    else:
        rgb = np.asarray(decoded.convert("RGB")).astype(np.uint32)  # (H, W, 3)
        values = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # (H, W) one integer per colour
    distinct = np.unique(values)
    if distinct.size > 2 or (distinct.size == 2 and 0 not in distinct):
        hint = " (JPEG compression blurs masks: save them as PNG)" if path.suffix.lower() in (".jpg", ".jpeg") else ""
        raise _BadFile(
            f"{path}: mask is not binary: it holds {distinct.size} distinct values where 0 and one "
            f"other value are expected{hint}"
        )
    return values != 0


def _read_labelme(path: Path, height: int, width: int) -> np.ndarray:
    """A labelme file's "Pitting" polygons filled at (height, width) as bool; _BadFile if unreadable."""
    try:
        polygons = read_polygons(path)
    except DatasetLayoutError as exc:
        raise _BadFile(str(exc)) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _BadFile(f"{path}: not a readable labelme file: {exc}") from exc
    return rasterise_polygons(polygons, height, width).astype(bool)


def _load(photo: Path, source: Path) -> LabelledDefect:
    """Read one photo and its mask file; _BadFile naming the file at fault."""
    try:
        digest = hashlib.sha256(photo.read_bytes()).hexdigest()
        image = read_image(photo)  # (H, W, 3)
    except (OSError, BadImageError) as exc:
        raise _BadFile(str(exc) if isinstance(exc, BadImageError) else f"{photo}: cannot read: {exc}") from exc
    height, width = image.shape[:2]
    if source.suffix.lower() == ".json":
        mask = _read_labelme(source, height, width)
    else:
        mask = _read_binary_mask(source)
        if mask.shape != (height, width):
            raise _BadFile(
                f"{source}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its photo {photo.name} "
                f"is {width}x{height}"
            )
    if not mask.any():
        raise _BadFile(f"{source}: marks no defect pixel of {photo.name}")
    return LabelledDefect(path=photo, sha256=digest, image=image, mask=mask)


def load_labelled_defects(folder: str | Path, on_bad_file: str = "skip") -> list[LabelledDefect]:
    """Every labelled photo of `folder` with its mask, at native size, in photo name order.

    Bad input (a photo without a mask, a mask without a photo, a mask of another size than its
    photo, an empty or non-binary mask, an unreadable photo, mask or labelme file, a labelme
    file with other labels than "Pitting") is, as `on_bad_file` says, skipped with a warning on
    the `pitscope.data.labelled` logger ("skip") or raised as DatasetLayoutError ("error"); the
    message names the file. A missing folder is a FileNotFoundError; a folder left without any
    usable photo is a DatasetLayoutError whatever `on_bad_file` says.
    """
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file: {on_bad_file!r} is not one of {', '.join(ON_BAD_FILE)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"labelled defect folder {folder} does not exist")
    photos = list_images(folder)
    sources, problems = _pair(folder, photos)
    for message in problems:
        _refuse(message, on_bad_file)
    defects = []
    for photo, source in sources.items():
        try:
            defects.append(_load(photo, source))
        except _BadFile as exc:
            _refuse(str(exc), on_bad_file)
    if not defects:
        raise DatasetLayoutError(
            f"{folder}: no usable labelled photo among its {len(photos)} photos "
            f"(each needs a mask in {MASK_DIR}/, a <stem>.json or a {LABEL_DIR}/<stem>.json)"
        )
    return defects


def _resize_mask(mask: np.ndarray, size: Shape) -> np.ndarray:
    """(H, W) bool -> bool of `size` (a side or (height, width)): bilinear as the photo, then > 0.5.

    A pixel is defective when more than half of its resampled value comes from defect pixels,
    so the mask follows the resized photo's colours; a defect narrower than about half a pixel
    at the new size vanishes, where nearest sampling would keep or drop it by where it lies.
    """
    height, width = as_shape(size)
    weights = Image.fromarray(mask.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(weights) > 0.5


def defect_cutouts(defects: Sequence[LabelledDefect], image_size: Shape, margin: int = 2) -> list[Cutout]:
    """One `Cutout` per 8-connected defect of each photo, resized as training resizes it.

    Each photo is resized to `image_size` (a side or (height, width)) by `resize_image`, its mask by
    `_resize_mask` (bilinear, > 0.5); each connected component of the resized mask is cropped to
    its bounding box plus `margin` pixels on every side (clipped to the image). Defects that
    vanish at this size are dropped, with a warning for a photo that loses all of them;
    DatasetLayoutError naming the photos when none is left.
    """
    height, width = as_shape(image_size)
    if min(height, width) < 1:
        raise ValueError(f"image_size: must be positive, got {image_size}")
    if margin < 0:
        raise ValueError(f"margin: must be 0 or more, got {margin}")
    cutouts = []
    for index, defect in enumerate(defects):
        image = resize_image(defect.image, (height, width))  # (H, W, 3)
        labels, count = ndimage.label(_resize_mask(defect.mask, (height, width)), structure=_EIGHT)  # (H, W)
        if count == 0:
            logger.warning("%s: every marked defect vanishes at %dx%d", defect.path, width, height)
        for component, box in enumerate(ndimage.find_objects(labels), start=1):
            rows = slice(max(box[0].start - margin, 0), min(box[0].stop + margin, height))
            cols = slice(max(box[1].start - margin, 0), min(box[1].stop + margin, width))
            cutouts.append(Cutout(image=image[rows, cols].copy(), mask=labels[rows, cols] == component, source=index))
    if not cutouts:
        names = ", ".join(str(d.path) for d in defects) or "none given"
        raise DatasetLayoutError(f"no marked defect is left at {width}x{height} in the photos: {names}")
    return cutouts


def count_distinct_defects(defects: Sequence[LabelledDefect]) -> int:
    """How many distinct defects the photos hold: 8-connected components of the native-size masks."""
    return sum(int(ndimage.label(defect.mask, structure=_EIGHT)[1]) for defect in defects)
