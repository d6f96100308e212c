"""What the detector says about one image: its score, its map, its decision and its regions."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pitscope.defect_regions import Region, describe_regions, highest_pixel, regions_shown


class Prediction(NamedTuple):
    """What the detector says about one image (`Detector.predict` returns a list for a batch).

    score: the image's anomaly score (a Mahalanobis distance, or with score.image_features
        layer1+layer4 a sum of standardised ones; higher = more anomalous).
    anomaly_map: (H, W) float32 per-pixel anomaly scores, as shown and ranked (with
        `score.map_background_window` its broad background removed, with `score.map_sharpen_window`
        each blob narrowed towards its peak).
    is_defective: score > threshold.
    threshold: the image threshold used.
    pixel_threshold: values of `cut_map` above it form candidate defect regions.
    min_region_fraction: candidate regions smaller than this share of the image are dropped.
    regions_on: "all": every image shows its regions; "defective": only images decided defective;
        "defective_peak": only those, each with at least the region around its map's peak.
    region_core: each region keeps its pixels at or above this share of its own peak (0: all of it).
    peak_region_max: the peak's region ("defective_peak") covers at most this share of the image, its
        peak pixel at least (0: no bound).
    region_map: (H, W) float32, the map the regions are cut from when it is not anomaly_map (the map
        before those steps, or with `score.regions_after_background` after the first); None: anomaly_map.
    """

    score: float
    anomaly_map: np.ndarray
    is_defective: bool
    threshold: float
    pixel_threshold: float
    min_region_fraction: float = 0.0
    regions_on: str = "all"
    region_core: float = 0.0
    peak_region_max: float = 0.0
    region_map: np.ndarray | None = None

    @property
    def _shows_regions(self) -> tuple[bool, bool]:
        return regions_shown(self.regions_on, bool(self.is_defective))

    @property
    def defect_region(self) -> np.ndarray:
        """(H, W) bool: the predicted defect region that overlays, the service and wear curves show
        (the connected components of `cut_map` > pixel_threshold of at least min_region_fraction
        of the image, each cut to its core (region_core); none on an image passed as defect-free
        when regions_on is "defective" or "defective_peak", at least the peak's region on an image
        decided defective with "defective_peak", at most peak_region_max of the image when above 0)."""
        return self.outline()[0]

    @property
    def regions(self) -> list[Region]:
        """The predicted defect regions, largest first (`pitscope.defect_regions.Region`)."""
        return self.outline()[1]

    def peak(self) -> dict | None:
        """Where `cut_map` is highest (the map the pixel threshold applies to; the map shown, narrowed,
        peaks at or beside it unless its background step lowered that blob): {"x", "y", "value"},
        x across and y down in the map's pixels (the first such pixel in row order); None when the map has no finite value. On a photo
        decided defective with no region it says where to look."""
        top = highest_pixel(np.asarray(self.cut_map, dtype=np.float32))
        if top is None:
            return None
        y, x, value = top
        return {"x": x, "y": y, "value": value}

    @property
    def cut_map(self) -> np.ndarray:
        """(H, W): the map the regions are cut from (region_map, or anomaly_map when that is None)."""
        return self.anomaly_map if self.region_map is None else self.region_map

    def outline(self) -> tuple[np.ndarray, list[Region]]:
        """(defect_region, regions) from one labelling of `cut_map`."""
        shown, at_least_one = self._shows_regions
        if not shown:
            return np.zeros(np.shape(self.anomaly_map), dtype=bool), []
        return describe_regions(
            self.cut_map,
            self.pixel_threshold,
            self.min_region_fraction,
            self.region_core,
            at_least_one,
            self.peak_region_max,
        )
