"""Datasets: one loader per on-disk format, chosen by name from `FORMATS`.

Every loader has the signature `(cfg: DataConfig, split: "train" | "test", seed: int)` and
returns a sequence of `Sample`s: (H, W, 3) uint8 RGB image, (H, W) uint8 {0, 1} mask, label,
path, with (H, W) = cfg.shape.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pitscope.config import DataConfig
from pitscope.data.bsdata import load_bsdata
from pitscope.data.dataset import AnomalyDataset, Record
from pitscope.data.folder import load_folder
from pitscope.data.imageio import photo_size
from pitscope.data.mvtec import load_mvtec
from pitscope.data.types import BadImageError, DatasetLayoutError, Sample, SampleSet
from pitscope.files import file_sha256

SPLITS = ("train", "test", "val")
log = logging.getLogger(__name__)


def load_synthetic(cfg: DataConfig, split: str, seed: int) -> SampleSet:
    """The built-in generated dataset (pitscope.data.synthetic), imported only when asked for."""
    from pitscope.data.synthetic import load_synthetic as load

    return load(cfg, split, seed)


FORMATS: dict[str, Callable[[DataConfig, str, int], SampleSet]] = {
    "bsdata": load_bsdata,
    "mvtec": load_mvtec,
    "folder": load_folder,
    "synthetic": load_synthetic,
}


def prepare_split_file(cfg) -> None:
    """BSData's seeded split is written beside the run's outputs (cfg.output_dir/split.json)
    unless cfg.data.split_file names one. Changes cfg in place."""
    if cfg.data.format == "bsdata" and cfg.data.split_file is None:
        cfg.data.split_file = str(Path(cfg.output_dir) / "split.json")


def build_dataset(cfg: DataConfig, split: str, seed: int) -> SampleSet:
    """The `split` ("train", "test" or "val") of the dataset `cfg.format` names; "val" exists only
    where the format holds validation images apart (bsdata with data.holdout=positions).

    Unreadable files are found only when decoded: call `.check()` on it before
    use to skip (or refuse) them as cfg.on_bad_file says.
    """
    if cfg.format not in FORMATS:
        raise ValueError(f"data.format: {cfg.format!r} is not one of {', '.join(FORMATS)}")
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    resolve_shape(cfg, seed)
    dataset = FORMATS[cfg.format](cfg, split, seed)
    if split == "train" and cfg.train_images is not None:
        dataset = fewer_training_images(dataset, cfg.train_images, cfg.split_seed)
    return dataset


def resolve_shape(cfg: DataConfig, seed: int) -> None:
    """With data.keep_aspect, set the images' shape from the training photos' median aspect ratio:
    the shorter side stays at cfg.image_size, the longer is that times the ratio, rounded to a
    multiple of 32 (the network's stride). An image_width already set is kept. Changes cfg in
    place, leaving keep_aspect false; `build_dataset` calls it first."""
    if not cfg.keep_aspect:
        return
    if cfg.image_width is not None:
        cfg.keep_aspect = False
        return
    if cfg.format == "synthetic":
        ratios = [cfg.synthetic.width / cfg.synthetic.height]
    else:
        square = dataclasses.replace(cfg, keep_aspect=False, image_width=None, cache=False)
        sizes = [photo_size(path) for path in FORMATS[cfg.format](square, "train", seed).paths]
        ratios = [w / h for w, h in (s for s in sizes if s is not None)]
        if not ratios:
            raise DatasetLayoutError(
                f"data.keep_aspect: no readable training photo to take the aspect ratio from ({cfg.format})"
            )
    ratio = float(np.median(ratios))
    side = cfg.image_size
    longer = max(side, 32 * int(side * max(ratio, 1 / ratio) / 32 + 0.5))  # halves round up
    cfg.image_size, cfg.image_width = (side, longer) if ratio >= 1 else (longer, side)
    cfg.keep_aspect = False
    log.info(
        "images at %d x %d: the training photos' median width / height is %.3g (data.keep_aspect)",
        *cfg.shape,
        ratio,
    )


def fewer_training_images(dataset, n: int, seed: int) -> AnomalyDataset:
    """A seeded random `n` of the dataset's images (data.train_images): how a model does with
    fewer defect-free photos. The same seed and n give the same photos, and a smaller n a subset
    of a larger one's."""
    if not isinstance(dataset, AnomalyDataset):
        raise ValueError("data.train_images: the synthetic data sets its size with data.synthetic.n_train")
    if not 1 <= n <= len(dataset):
        raise ValueError(f"data.train_images: {n} is not in 1..{len(dataset)} (the training images there are)")
    order = np.random.default_rng(seed).permutation(len(dataset))[:n]
    return AnomalyDataset(
        [dataset.records[i] for i in sorted(order)],
        size=dataset.size,
        on_bad_file=dataset.on_bad_file,
        cache=dataset.cache,
        name=dataset.name,
        has_masks=dataset.has_masks,
    )


def without_files(dataset: SampleSet, sha256s: set[str]) -> tuple[SampleSet, list[str]]:
    """The dataset less the images whose file's SHA-256 is in `sha256s` (e.g. the labelled photos
    that trained a model), and the paths left out. Datasets not read from files are kept whole."""
    if not sha256s or not isinstance(dataset, AnomalyDataset):
        return dataset, []
    keep: list[Record] = []
    left_out: list[Record] = []
    for record in dataset.records:
        (left_out if file_sha256(record.path) in sha256s else keep).append(record)
    if not left_out:
        return dataset, []
    subset = AnomalyDataset(
        keep,
        size=dataset.size,
        on_bad_file=dataset.on_bad_file,
        cache=dataset.cache,
        name=dataset.name,
        has_masks=dataset.has_masks,
    )
    return subset, [str(r.path) for r in left_out]


__all__ = [
    "FORMATS",
    "SPLITS",
    "AnomalyDataset",
    "BadImageError",
    "DatasetLayoutError",
    "Record",
    "Sample",
    "SampleSet",
    "build_dataset",
    "load_bsdata",
    "load_folder",
    "load_mvtec",
    "load_synthetic",
    "prepare_split_file",
]
