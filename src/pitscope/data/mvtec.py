"""MVTec AD and datasets laid out like it.

Layout:
    <root>/<category>/train/good/*                      defect-free training images
    <root>/<category>/test/good/*                       defect-free test images
    <root>/<category>/test/<defect>/<stem>.<ext>        defective test images
    <root>/<category>/ground_truth/<defect>/<stem>_mask.<ext>
Images may have any size, be grey or RGB, and be .png, .jpg, ... (see IMAGE_SUFFIXES).
Masks are paired with images by exact stem; `ground_truth/good`, if present, is not read
(defect-free masks are all zero by definition).
"""

from __future__ import annotations

from pathlib import Path

from pitscope.config import DataConfig
from pitscope.data.dataset import AnomalyDataset, Record, pair_masks
from pitscope.data.imageio import list_images
from pitscope.data.types import DatasetLayoutError

NORMAL_DIR = "good"
MASK_SUFFIX = "_mask"


def mvtec_categories(root: str | Path) -> list[str]:
    """The sorted category names under `root`: its subfolders that hold `train/good`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MVTec root {root} does not exist")
    return sorted(p.name for p in root.iterdir() if (p / "train" / NORMAL_DIR).is_dir())


def _category_dir(cfg: DataConfig) -> Path:
    """<root>/<category>, or a ValueError that lists the categories found under root."""
    if cfg.root is None:
        raise ValueError("data.root: must be set to the MVTec AD folder for format 'mvtec'")
    root = Path(cfg.root)
    categories = mvtec_categories(root)
    listing = ", ".join(categories) if categories else f"none found (no */train/{NORMAL_DIR} under {root})"
    if cfg.category is None:
        raise ValueError(f"data.category: must be set for format 'mvtec'; categories: {listing}")
    if cfg.category not in categories:
        raise ValueError(f"data.category: {cfg.category!r} is not a category of {root}; categories: {listing}")
    return root / cfg.category


def _test_records(category: Path) -> list[Record]:
    """Every test image: `good` as label 0, every other folder as label 1 with its paired mask."""
    test, truth = category / "test", category / "ground_truth"
    if not test.is_dir():
        raise DatasetLayoutError(f"{test}: test folder missing")
    defects = sorted(p.name for p in test.iterdir() if p.is_dir())
    records = []
    for defect in defects:
        images = list_images(test / defect)
        if defect == NORMAL_DIR:
            records += [Record(image, 0) for image in images]
            continue
        masks = list_images(truth / defect) if (truth / defect).is_dir() else []
        pairs = pair_masks(images, masks, (MASK_SUFFIX,))
        records += [Record(image, 1, mask_path=pairs[image]) for image in images]
    if truth.is_dir():
        for folder in sorted(p for p in truth.iterdir() if p.is_dir() and p.name not in (NORMAL_DIR, *defects)):
            orphans = list_images(folder)
            if orphans:
                raise DatasetLayoutError(
                    f"{orphans[0]}: mask belongs to no image (there is no folder {test / folder.name})"
                )
    return records


def load_mvtec(cfg: DataConfig, split: str, seed: int) -> AnomalyDataset:
    """One category's "train" (train/good) or "test" (test/*) split as an AnomalyDataset.

    `seed` is unused (the split is fixed by the folders) and kept for the common loader signature.
    Raises DatasetLayoutError naming the file for a defective image without a mask or a mask
    without an image.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: {split!r} is not one of train, test (this format holds no validation images apart)")
    category = _category_dir(cfg)
    if split == "train":
        records = [Record(image, 0) for image in list_images(category / "train" / NORMAL_DIR)]
        if not records:
            raise DatasetLayoutError(f"{category / 'train' / NORMAL_DIR}: no training images")
    else:
        records = _test_records(category)
    return AnomalyDataset(
        records,
        size=cfg.shape,
        on_bad_file=cfg.on_bad_file,
        cache=cfg.cache,
        name=f"mvtec-{category.name}-{split}",
    )
