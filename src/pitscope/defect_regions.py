"""Predicted defect regions: the anomaly map above the pixel threshold, as connected components.

A region is an 8-connected component of `anomaly_map > pixel_threshold`. Components smaller than
`min_fraction` of the image are dropped: a single hot pixel or a thin rim of an edge says less
than a pit does, and counting them inflates the predicted area on defect-free photos. With a
`core` above 0 each kept component shrinks to its pixels at or above `core` times its own peak
(never below the threshold): a map's blob is wider than the defect under it, and its core is
where the defect is. With `at_least_one`, a map that keeps no component shows the region around
its highest pixel: the pixels connected to it at or above `core` (or, with no core, half) times
that peak, whatever the threshold; with `peak_max` above 0 that region covers at most that share
of the image (its level rises towards the peak until it fits; the peak's pixel always stays, and
the size floor `min_fraction` does not apply to it). Areas are given in the map's own pixels and as a fraction of
the image, so they compare across sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
REGIONS_ON = ("all", "defective", "defective_peak")  # score.regions_on, see `regions_shown`
PEAK_SHARE = 0.5  # with at_least_one and no core: the peak's region keeps its pixels at or above half the peak
# the score.* settings that draw regions from a map and the thresholds (no scorer depends on them)
REGION_SETTINGS = ("min_region_fraction", "regions_on", "region_core", "peak_region_max")


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
    peak_max: float = 0.0,
) -> tuple[np.ndarray, int]:
    """(H, W) int32 component labels (0 = background, 1..n the kept regions) and n.

    Components of fewer than `min_fraction * H * W` pixels are dropped (a component at least that
    size is kept). With `core` in (0, 1], region i keeps only its pixels at or above
    max(pixel_threshold, core * peak_i) (its peak always stays; a region's core may fall into
    pieces, which keep its label). NaN map values never count. With `at_least_one`, when no
    component is kept, label 1 is the component of `amap >= share * peak` around the map's
    highest pixel (share: `core`, or `PEAK_SHARE` with no core), none when the peak is not above 0,
    at most `peak_max` of the image when that is above 0 (`peak_region`).
    """
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map: expected (H, W), got {amap.shape}")
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction: expected a value in [0, 1), got {min_fraction}")
    if not 0.0 <= core <= 1.0:
        raise ValueError(f"core: expected a value in [0, 1], got {core}")
    if not 0.0 <= peak_max <= 1.0:
        raise ValueError(f"peak_max: expected a value in [0, 1], got {peak_max}")
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
        return peak_region(amap, core or PEAK_SHARE, peak_max)
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


def peak_region(amap: np.ndarray, share: float, peak_max: float = 0.0) -> tuple[np.ndarray, int]:
    """(H, W) int32 labels with the component of `amap >= share * peak` that holds the map's
    highest finite pixel as label 1, and 1; all zeros and 0 when no finite value is above 0.

    With `peak_max` in (0, 1] the component covers at most max(1, floor(peak_max * H * W)) pixels:
    when it is larger, its level is the lowest value of its own pixels at which the component
    around the peak fits (a higher level only takes pixels away, so the search is a bisection)."""
    top = highest_pixel(amap)
    if top is None or not top[2] > 0.0:
        return np.zeros(amap.shape, dtype=np.int32), 0
    y, x, peak = top
    finite = np.where(np.isfinite(amap), amap, -np.inf)
    components, _ = ndimage.label(finite >= np.float32(share * peak), structure=EIGHT)
    region = components == components[y, x]
    limit = max(1, int(peak_max * amap.size))
    if peak_max > 0.0 and int(region.sum()) > limit:
        region = _fitted_peak_region(finite, region, (y, x), limit)
    return region.astype(np.int32), 1


def _fitted_peak_region(finite: np.ndarray, region: np.ndarray, top: tuple[int, int], limit: int) -> np.ndarray:
    """The component around `top` of `finite >= level` inside `region`, at the lowest level among
    the region's own values where it has at most `limit` pixels; the peak's pixel alone when even
    the pixels at the peak's value are more than `limit`."""
    box = ndimage.find_objects(region.astype(np.int32), max_label=1)[0]
    inside = np.where(region[box], finite[box], -np.inf)
    y, x = top[0] - box[0].start, top[1] - box[1].start
    levels = np.unique(inside[region[box]])  # ascending; the last is the peak's value

    def around(level: float) -> np.ndarray:
        components, _ = ndimage.label(inside >= level, structure=EIGHT)
        return components == components[y, x]

    lo, hi = 0, len(levels) - 1  # the lowest index that fits (or the last: pixels tying at the peak, below)
    while lo < hi:
        mid = (lo + hi) // 2
        if int(around(levels[mid]).sum()) <= limit:
            hi = mid
        else:
            lo = mid + 1
    fitted = np.zeros_like(region)
    kept = around(levels[lo])
    if int(kept.sum()) > limit:  # more pixels than the limit tie at the peak's value: the peak alone
        kept = np.zeros_like(kept)
        kept[y, x] = True
    fitted[box] = kept
    return fitted


def region_mask(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    min_fraction: float = 0.0,
    core: float = 0.0,
    at_least_one: bool = False,
    peak_max: float = 0.0,
) -> np.ndarray:
    """(H, W) bool: the pixels of the kept regions of `label_regions`."""
    return label_regions(anomaly_map, pixel_threshold, min_fraction, core, at_least_one, peak_max)[0] > 0


def find_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    min_fraction: float = 0.0,
    core: float = 0.0,
    at_least_one: bool = False,
    peak_max: float = 0.0,
) -> list[Region]:
    """The kept regions of `label_regions`, largest first (ties by position)."""
    return describe_regions(anomaly_map, pixel_threshold, min_fraction, core, at_least_one, peak_max)[1]


def describe_regions(
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    min_fraction: float = 0.0,
    core: float = 0.0,
    at_least_one: bool = False,
    peak_max: float = 0.0,
) -> tuple[np.ndarray, list[Region]]:
    """(`region_mask`, `find_regions`) from one labelling of the map."""
    amap = np.asarray(anomaly_map, dtype=np.float32)
    labels, count = label_regions(amap, pixel_threshold, min_fraction, core, at_least_one, peak_max)
    regions = []
    for index, box in enumerate(ndimage.find_objects(labels, max_label=count), start=1):
        inside = labels[box] == index
        area = int(inside.sum())
        ys, xs = box
        regions.append(
            Region(area, area / amap.size, (xs.start, ys.start, xs.stop, ys.stop), float(amap[box][inside].max()))
        )
    return labels > 0, sorted(regions, key=lambda r: (-r.area_px, r.box[1], r.box[0]))
