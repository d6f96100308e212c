"""Predicted defect regions: the anomaly map above the pixel threshold, as connected components.

A region is an 8-connected component of `anomaly_map > pixel_threshold`. Components smaller than
`min_fraction` of the image are dropped: a single hot pixel or a thin rim of an edge says less
than a pit does, and counting them inflates the predicted area on defect-free photos. With a
`core` above 0 each kept component shrinks to its pixels at or above `core` times its own peak
(never below the threshold): a map's blob is wider than the defect under it, and its core is
where the defect is. With `at_least_one`, a map that keeps no component shows the region around
its highest pixel: the pixels connected to it at or above `core` (or, with no core, half) times
that peak, whatever the threshold. Areas are given in the map's own pixels and as a fraction of
the image, so they compare across sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
REGIONS_ON = ("all", "defective", "defective_peak")  # score.regions_on, see `regions_shown`
PEAK_SHARE = 0.5  # with at_least_one and no core: the peak's region keeps its pixels at or above half the peak


@dataclass(frozen=True)
class Region:
    """One predicted defect region.

    area_px:  pixels in the region, at the map's size.
    fraction: area_px / (H x W).
    box:      (x0, y0, x1, y1), x1 and y1 exclusive, in the map's pixels.
    peak:     the largest anomaly value inside.
    """

    area_px: int
    fraction: float
    box: tuple[int, int, int, int]
    peak: float

    def to_dict(self) -> dict:
        return {**asdict(self), "box": list(self.box)}


def label_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    min_fraction: float = 0.0,
    core: float = 0.0,
    at_least_one: bool = False,
) -> tuple[np.ndarray, int]:
    """(H, W) int32 component labels (0 = background, 1..n the kept regions) and n.

    Components of fewer than `min_fraction * H * W` pixels are dropped (a component at least that
    size is kept). With `core` in (0, 1], region i keeps only its pixels at or above
    max(pixel_threshold, core * peak_i) (its peak always stays; a region's core may fall into
    pieces, which keep its label). NaN map values never count. With `at_least_one`, when no
    component is kept, label 1 is the component of `amap >= share * peak` around the map's
    highest pixel (share: `core`, or `PEAK_SHARE` with no core), none when the peak is not above 0.
    """
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map: expected (H, W), got {amap.shape}")
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction: expected a value in [0, 1), got {min_fraction}")
    if not 0.0 <= core <= 1.0:
        raise ValueError(f"core: expected a value in [0, 1], got {core}")
    labels, count = ndimage.label(amap > pixel_threshold, structure=EIGHT)  # (H, W)
    labels = labels.astype(np.int32)
    if count and min_fraction > 0.0:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)  # sizes[0]: background
        keep = sizes >= min_fraction * amap.size
        keep[0] = False
        new_ids = np.zeros(count + 1, dtype=np.int32)
        new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels, count = new_ids[labels], int(keep.sum())
    if count and core > 0.0:
        peaks = np.asarray(ndimage.maximum(amap, labels, index=np.arange(1, count + 1)), dtype=np.float32)
        cut = np.minimum(np.maximum(core * peaks, np.float32(pixel_threshold)), peaks)  # the peak always stays
        cut = np.concatenate([[np.inf], cut]).astype(np.float32)  # label 0, the background, never passes
        labels = np.where(amap >= cut[labels], labels, 0).astype(np.int32)
    if not count and at_least_one:
        return peak_region(amap, core or PEAK_SHARE)
    return labels, int(count)


def regions_shown(regions_on: str, is_defective: bool) -> tuple[bool, bool]:
    """(whether an image shows regions, whether it shows at least the peak's) for
    `score.regions_on`: "all" (every image), "defective" (images decided defective) or
    "defective_peak" (images decided defective, each with at least the region around its peak)."""
    if regions_on not in REGIONS_ON:
        raise ValueError(f"regions_on: expected one of {REGIONS_ON}, got {regions_on!r}")
    shown = regions_on == "all" or bool(is_defective)
    return shown, shown and regions_on == "defective_peak"


def highest_pixel(amap: np.ndarray) -> tuple[int, int, float] | None:
    """(y, x, value) of the map's highest finite pixel (the first in row order on a tie); None when
    no value is finite."""
    finite = np.where(np.isfinite(amap), amap, -np.inf)
    if not np.isfinite(finite).any():
        return None
    y, x = np.unravel_index(int(finite.argmax()), finite.shape)
    return int(y), int(x), float(finite[y, x])


def peak_region(amap: np.ndarray, share: float) -> tuple[np.ndarray, int]:
    """(H, W) int32 labels with the component of `amap >= share * peak` that holds the map's
    highest finite pixel as label 1, and 1; all zeros and 0 when no finite value is above 0."""
    top = highest_pixel(amap)
    if top is None or not top[2] > 0.0:
        return np.zeros(amap.shape, dtype=np.int32), 0
    y, x, peak = top
    finite = np.where(np.isfinite(amap), amap, -np.inf)
    components, _ = ndimage.label(finite >= np.float32(share * peak), structure=EIGHT)
    return (components == components[y, x]).astype(np.int32), 1


def region_mask(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    min_fraction: float = 0.0,
    core: float = 0.0,
    at_least_one: bool = False,
) -> np.ndarray:
    """(H, W) bool: the pixels of the kept regions of `label_regions`."""
    return label_regions(anomaly_map, pixel_threshold, min_fraction, core, at_least_one)[0] > 0


def find_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    min_fraction: float = 0.0,
    core: float = 0.0,
    at_least_one: bool = False,
) -> list[Region]:
    """The kept regions of `label_regions`, largest first (ties by position)."""
    return describe_regions(anomaly_map, pixel_threshold, min_fraction, core, at_least_one)[1]


def describe_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    min_fraction: float = 0.0,
    core: float = 0.0,
    at_least_one: bool = False,
) -> tuple[np.ndarray, list[Region]]:
    """(`region_mask`, `find_regions`) from one labelling of the map."""
    amap = np.asarray(anomaly_map, dtype=np.float32)
    labels, count = label_regions(amap, pixel_threshold, min_fraction, core, at_least_one)
    regions = []
    for index, box in enumerate(ndimage.find_objects(labels, max_label=count), start=1):
        inside = labels[box] == index
        area = int(inside.sum())
        ys, xs = box
        regions.append(
            Region(area, area / amap.size, (xs.start, ys.start, xs.stop, ys.stop), float(amap[box][inside].max()))
        )
    return labels > 0, sorted(regions, key=lambda r: (-r.area_px, r.box[1], r.box[0]))
