"""Plain folders of images: the simplest way to bring your own parts.

    cfg.root             defect-free training images
    cfg.test_normal_dir  defect-free test images (label 0), optional
    cfg.test_defect_dir  defective test images (label 1), optional
    cfg.mask_dir         masks of the defective images, optional; `<stem>.<ext>` or
                         `<stem>_mask.<ext>` for the image `<stem>.<any ext>`, paired by exact stem
Only files directly inside each folder are read. Without a mask_dir the defective images get
all-zero masks and the test dataset has `has_masks = False`: image metrics work, pixel
metrics do not. With a mask_dir every defective image needs exactly one mask, and every mask
an image.
"""

from __future__ import annotations

from pathlib import Path

from pitscope.config import DataConfig
from pitscope.data.dataset import AnomalyDataset, Record, pair_masks
from pitscope.data.imageio import IMAGE_SUFFIXES, list_images
from pitscope.data.types import DatasetLayoutError

MASK_SUFFIXES = ("", "_mask")


def _images(folder: str, key: str) -> list[Path]:
    """The images in a configured folder; a configured folder that does not exist is an error."""
    if not Path(folder).is_dir():
        raise DatasetLayoutError(f"{folder}: data.{key} is not a folder")
    return list_images(folder)


def load_folder(cfg: DataConfig, split: str, seed: int) -> AnomalyDataset:
    """The "train" split (cfg.root) or the "test" split (cfg.test_normal_dir, cfg.test_defect_dir).

    Test folders left unset give an empty test split. `seed` is unused (the folders fix the
    split) and kept for the common loader signature.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: {split!r} is not one of train, test (this format holds no validation images apart)")
    if cfg.root is None:
        raise ValueError("data.root: must be set to the folder of defect-free images for format 'folder'")
    has_masks = True
    if split == "train":
        records = [Record(image, 0) for image in _images(cfg.root, "root")]
        if not records:
            raise DatasetLayoutError(f"{cfg.root}: no training images (looked for {' '.join(IMAGE_SUFFIXES)})")
    else:
        normal = _images(cfg.test_normal_dir, "test_normal_dir") if cfg.test_normal_dir else []
        defect = _images(cfg.test_defect_dir, "test_defect_dir") if cfg.test_defect_dir else []
        records = [Record(image, 0) for image in normal]
        if cfg.mask_dir is not None:
            pairs = pair_masks(defect, _images(cfg.mask_dir, "mask_dir"), MASK_SUFFIXES)
            records += [Record(image, 1, mask_path=pairs[image]) for image in defect]
        else:
            records += [Record(image, 1) for image in defect]
            has_masks = not defect
    return AnomalyDataset(
        records,
        size=cfg.shape,
        on_bad_file=cfg.on_bad_file,
        cache=cfg.cache,
        name=f"folder-{split}",
        has_masks=has_masks,
    )
