"""The demo's pictures: a few test images beside the regions a model predicts on them.

`overlay_pictures` draws, for the first defective and the first defect-free images of a split
(the first ones, not the best ones), the image and beside it the predicted region in red with the
ground truth outlined in green (`pitscope.visualize.overlay`), enlarged so that small pits show.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from PIL import Image

from pitscope.data.types import Sample
from pitscope.inference import Detector
from pitscope.visualize import overlay

GAP = 6  # white pixels between the two panels of a picture
MIN_SIDE = 256  # pictures are enlarged (by whole factors) until the image is at least this high


class Picture(NamedTuple):
    """One written picture and what the model said about its image."""

    path: Path
    image: str  # the dataset's path of the image
    label: int  # 0 defect-free, 1 defective (the ground truth)
    score: float
    is_defective: bool  # the model's decision at its threshold


def pick_pictured(labels: Sequence[int], n_defective: int, n_normal: int) -> list[int]:
    """Indices of the first n_defective defective images, then the first n_normal defect-free ones."""
    array = np.asarray(labels)
    return np.flatnonzero(array == 1)[:n_defective].tolist() + np.flatnonzero(array == 0)[:n_normal].tolist()


def picture_name(path: str) -> str:
    """A file name from a dataset path: its last folder and stem (`synthetic://test/pitting/0003`
    -> `pitting_0003.png`), with anything but letters, digits, `-` and `_` made `_`."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts[-2:]
    stem = "_".join([*parts[:-1], PurePosixPath(parts[-1]).stem]) if parts else "image"
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem) + ".png"


def overlay_pictures(
    detector: Detector, dataset: Sequence[Sample], out_dir: str | Path, n_defective: int = 4, n_normal: int = 2
) -> list[Picture]:
    """Write out_dir/NAME.png for the first n_defective defective and n_normal defect-free images.

    Each PNG is (zH, 2zW + GAP, 3): the image, enlarged z times (bicubic; z the smallest whole
    factor that makes it at least MIN_SIDE pixels high), and beside it the same image with the
    predicted region (`Prediction.defect_region` of the enlarged maps, bilinear) filled
    red and the ground-truth mask (nearest) outlined in green. Returns the pictures in that order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    picks = pick_pictured(getattr(dataset, "labels", [s.label for s in dataset]), n_defective, n_normal)
    samples = [dataset[i] for i in picks]
    predictions = detector.predict([s.image for s in samples]) if samples else []
    pictures = []
    for sample, prediction in zip(samples, predictions):
        h, w = sample.image.shape[:2]
        zoom = max(1, -(-MIN_SIDE // h))
        size = (w * zoom, h * zoom)
        image = np.asarray(Image.fromarray(sample.image).resize(size, Image.Resampling.BICUBIC))  # (zH, zW, 3)
        amap, cut = (
            np.asarray(Image.fromarray(m.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
            for m in (prediction.anomaly_map, prediction.cut_map)
        )
        mask = np.asarray(Image.fromarray(sample.mask).resize(size, Image.Resampling.NEAREST))
        region = prediction._replace(anomaly_map=amap, region_map=cut).defect_region  # (zH, zW) bool
        drawn = overlay(image, amap, prediction.pixel_threshold, mask if mask.any() else None, region=region)
        gap = np.full((size[1], GAP, 3), 255, dtype=np.uint8)
        path = out / picture_name(sample.path)
        Image.fromarray(np.concatenate([image, gap, drawn], axis=1)).save(path)
        pictures.append(
            Picture(path, sample.path, int(sample.label), float(prediction.score), bool(prediction.is_defective))
        )
    return pictures
