"""The on-disk dataset every format loader returns: a sorted list of records decoded on demand.

A loader (bsdata, mvtec, folder) only finds files and pairs them into `Record`s; decoding,
mask rasterisation, resizing, caching and the handling of unreadable files live here, once.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pitscope.data.imageio import read_image, read_mask
from pitscope.data.types import BadImageError, DatasetLayoutError, Sample, SampleSet
from pitscope.tensors import Shape, as_shape, resize_image, resize_mask

Point = tuple[float, float]
Polygon = tuple[Point, ...]

ON_BAD_FILE = ("skip", "error")


@dataclass(frozen=True)
class Record:
    """Where one sample lives on disk.

    path:      the image file.
    label:     0 defect-free, 1 defective.
    mask_path: a mask file of the image's size (nonzero = defective), or None.
    polygons:  defect outlines as ((x, y), ...) tuples in the image's own pixel coordinates
               (labelme annotations), or None. With neither mask_path nor polygons the mask
               is all zero.
    """

    path: Path
    label: int
    mask_path: Path | None = None
    polygons: tuple[Polygon, ...] | None = None


def rasterise_polygons(polygons: Iterable[Polygon], height: int, width: int) -> np.ndarray:
    """Fill polygons (x, y in pixels) into a (height, width) uint8 {0, 1} mask.

    Interior and outline pixels are both set, as labelme's own `shape_to_mask` does, so a
    thin polygon still marks at least its outline.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [(float(x), float(y)) for x, y in polygon]
        if len(points) >= 2:
            draw.polygon(points, fill=1, outline=1)
    return np.array(canvas, dtype=np.uint8)


def pair_masks(images: Sequence[Path], masks: Sequence[Path], mask_suffixes: Sequence[str]) -> dict[Path, Path]:
    """Pair every image with the one mask whose stem is exactly `<image stem><suffix>`.

    Pairing is by exact stem (never by sort order or substring), so `num_1` cannot take the
    mask of `num_100`. Raises DatasetLayoutError naming the file at fault for an image with no
    mask, an image with two candidate masks, or a mask that belongs to no image.
    Returns {image path: mask path} for every image.
    """
    by_stem: dict[str, list[Path]] = {}
    for image in images:
        for suffix in mask_suffixes:
            by_stem.setdefault(image.stem + suffix, []).append(image)
    pairs: dict[Path, list[Path]] = {image: [] for image in images}
    for mask in masks:
        owners = by_stem.get(mask.stem, [])
        if not owners:
            stems = [mask.stem.removesuffix(s) for s in mask_suffixes if mask.stem.endswith(s)]
            raise DatasetLayoutError(
                f"{mask}: mask belongs to no image (no image has the stem {' or '.join(map(repr, stems)) or '-'})"
            )
        if len(owners) > 1:
            raise DatasetLayoutError(f"{mask}: mask fits more than one image: {', '.join(map(str, owners))}")
        pairs[owners[0]].append(mask)
    result = {}
    for image, found in pairs.items():
        if not found:
            names = " or ".join(f"{image.stem}{s}.<png|jpg|...>" for s in mask_suffixes)
            raise DatasetLayoutError(f"{image}: defective image has no mask (looked for {names})")
        if len(found) > 1:
            raise DatasetLayoutError(f"{image}: more than one mask fits: {', '.join(map(str, found))}")
        result[image] = found[0]
    return result


def _resize(image: np.ndarray, mask: np.ndarray, size: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Resize (H, W, 3) image and (H, W) mask to `size` (a side or (height, width)): bilinear
    image, nearest mask."""
    return resize_image(image, size), resize_mask(mask, size)


class AnomalyDataset(SampleSet):
    """Images (and masks) of one split of one dataset, as `Sample`s.

    records:     where the files are; kept sorted by path so the order never depends on the
                 file system.
    size:        resize image and mask to (size, size), or to (height, width) for a pair, when
                 set; None keeps the native size.
    on_bad_file: "skip" lets `check()` drop unreadable files (and report them);
                 "error" makes `check()` raise the first BadImageError.
    cache:       keep decoded (and resized) samples in memory after the first access.
    name:        a label for progress bars and reports, e.g. "bsdata-test".
    has_masks:   False when defective images come without masks (pixel metrics unavailable);
                 their sample masks are then all zero.

    `self[i]` decodes on demand and raises BadImageError for an unreadable file: call
    `check()` once before training or evaluation to find such files up front.
    """

    def __init__(
        self,
        records: Iterable[Record],
        size: Shape | None = None,
        on_bad_file: str = "skip",
        cache: bool = True,
        name: str = "",
        has_masks: bool = True,
    ):
        if on_bad_file not in ON_BAD_FILE:
            raise ValueError(f"on_bad_file: {on_bad_file!r} is not one of {', '.join(ON_BAD_FILE)}")
        if size is not None and min(as_shape(size)) < 1:
            raise ValueError(f"size: must be positive or None, got {size}")
        self.records: list[Record] = sorted(records, key=lambda r: str(r.path))
        for first, second in zip(self.records, self.records[1:]):
            if first.path == second.path:
                raise DatasetLayoutError(f"{first.path}: listed twice in dataset {name!r}")
        self.size = size
        self.on_bad_file = on_bad_file
        self.cache = cache
        self.name = name
        self.has_masks = has_masks
        self._cache: dict[Path, Sample] = {}  # keyed by record.path

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        return self._sample(self.records[operator.index(index)])

    def __repr__(self) -> str:
        counts = self.describe()
        return (
            f"AnomalyDataset(name={self.name!r}, total={counts['total']}, normal={counts['normal']}, "
            f"defective={counts['defective']}, size={self.size})"
        )

    def _sample(self, record: Record) -> Sample:
        sample = self._cache.get(record.path)
        if sample is None:
            sample = self._load(record)
            if self.cache:
                self._cache[record.path] = sample
        return sample

    def _load(self, record: Record) -> Sample:
        image = read_image(record.path)  # (H, W, 3)
        height, width = image.shape[:2]
        if record.mask_path is not None:
            mask = read_mask(record.mask_path)  # (H', W')
            if mask.shape != (height, width):
                raise DatasetLayoutError(
                    f"{record.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                    f"{record.path} is {width}x{height}"
                )
        elif record.polygons is not None:
            mask = rasterise_polygons(record.polygons, height, width)
        else:
            mask = np.zeros((height, width), dtype=np.uint8)
        if self.size is not None:
            image, mask = _resize(image, mask, self.size)
        return Sample(image=image, mask=mask, label=int(record.label), path=str(record.path))

    def check(self, progress: bool = True) -> list[tuple[str, str]]:
        """Decode every sample once; deal with unreadable files as `on_bad_file` says.

        "skip": drop the records whose image or mask cannot be decoded, warn naming each file,
        and return [(path, reason), ...] of the dropped files (empty when all are fine).
        "error": raise the first BadImageError.
        With cache=True the decoded samples stay cached, so this costs no extra decoding later.
        A mask whose size differs from its image is a DatasetLayoutError either way.
        """
        bad: list[tuple[str, str]] = []
        bad_paths: set[Path] = set()
        bar = tqdm(
            self.records, desc=f"checking {self.name or 'dataset'}", unit="img", disable=None if progress else True
        )
        for record in bar:
            try:
                self._sample(record)
            except BadImageError as exc:
                if self.on_bad_file == "error":
                    raise
                bad.append((exc.path, exc.reason))
                bad_paths.add(record.path)
        if bad:
            self.records = [r for r in self.records if r.path not in bad_paths]
            lines = "\n".join(f"  {path}: {reason}" for path, reason in bad)
            warnings.warn(f"{self.name or 'dataset'}: skipped {len(bad)} unreadable file(s):\n{lines}", stacklevel=2)
        return bad

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels, 0 defect-free and 1 defective, in dataset order."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def paths(self) -> list[str]:
        """The image paths, in dataset order."""
        return [str(r.path) for r in self.records]


class JoinedSampleSet(SampleSet):
    """Sample sets one after another, as one: `self[i]` is the first set's samples, then the
    second's. Indices follow each part's own order (after `check()` drops a part's unreadable
    files, the later indices move up)."""

    def __init__(self, parts: Sequence[SampleSet], name: str = ""):
        if not parts:
            raise ValueError("JoinedSampleSet: needs at least one sample set")
        self.parts = list(parts)
        self.name = name
        self.has_masks = all(part.has_masks for part in self.parts)

    def _locate(self, index: int) -> tuple[SampleSet, int]:
        index = operator.index(index)
        if index < 0:
            index += len(self)
        for part in self.parts:
            if 0 <= index < len(part):
                return part, index
            index -= len(part)
        raise IndexError("JoinedSampleSet index out of range")

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        part, i = self._locate(index)
        return part[i]

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([part.labels for part in self.parts]).astype(np.int64)

    @property
    def paths(self) -> list[str]:
        return [path for part in self.parts for path in part.paths]

    def check(self, progress: bool = True) -> list[tuple[str, str]]:
        return [bad for part in self.parts for bad in part.check(progress)]
