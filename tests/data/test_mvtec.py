from pathlib import Path

import numpy as np
import pytest

from pitscope.config import DataConfig
from pitscope.data.dataset import AnomalyDataset
from pitscope.data.mvtec import load_mvtec, mvtec_categories
from pitscope.data.types import DatasetLayoutError

# Each defective image gets a mask with its own box, so a swapped pairing shows.
BOXES = {"num_1": (0, 0, 4, 4), "num_10": (8, 8, 20, 12), "num_100": (10, 2, 30, 30)}


def _category(
    root: Path,
    name: str,
    write_image,
    write_mask,
    suffix: str = ".png",
    mode: str = "RGB",
    size: tuple[int, int] = (48, 40),
) -> Path:
    """<root>/<name> with 3 train images, 2 good test images and the BOXES images as 'crack'."""
    category = root / name
    for i in range(3):
        write_image(category / "train" / "good" / f"{i:03d}{suffix}", size=size, mode=mode, seed=i)
    for i in range(2):
        write_image(category / "test" / "good" / f"{i:03d}{suffix}", size=size, mode=mode, seed=10 + i)
    for stem, box in BOXES.items():
        write_image(category / "test" / "crack" / f"{stem}{suffix}", size=size, mode=mode, seed=20)
        write_mask(category / "ground_truth" / "crack" / f"{stem}_mask.png", box=box, size=size)
    return category


def _cfg(root: Path, category: str | None = "screw", size: int = 48) -> DataConfig:
    return DataConfig(format="mvtec", root=str(root), category=category, image_size=size)


def test_train_split_is_the_good_images(tmp_path, write_image, write_mask):
    _category(tmp_path, "screw", write_image, write_mask)
    train = load_mvtec(_cfg(tmp_path), "train", seed=0)
    assert len(train) == 3 and train.describe()["defective"] == 0
    assert all("train/good" in p for p in train.paths)


def test_test_split_pairs_masks_by_exact_stem(tmp_path, write_image, write_mask):
    _category(tmp_path, "screw", write_image, write_mask)
    test = AnomalyDataset(load_mvtec(_cfg(tmp_path), "test", seed=0).records, size=None)  # native masks
    assert test.describe() == {"total": 5, "normal": 2, "defective": 3}
    for sample in test:
        stem = Path(sample.path).stem
        if sample.label == 0:
            assert sample.mask.sum() == 0
            continue
        x0, y0, x1, y1 = BOXES[stem]
        assert sample.mask.sum() == (x1 - x0) * (y1 - y0), stem
        assert sample.mask[y0:y1, x0:x1].all()
        assert sample.image.shape == (40, 48, 3)


def test_resizes_any_size_to_image_size(tmp_path, write_image, write_mask):
    _category(tmp_path, "screw", write_image, write_mask, size=(50, 30))
    sample = load_mvtec(_cfg(tmp_path, size=32), "test", seed=0)[0]
    assert sample.image.shape == (32, 32, 3) and sample.mask.shape == (32, 32)


def test_jpg_greyscale_category(tmp_path, write_image, write_mask):
    _category(tmp_path, "tile", write_image, write_mask, suffix=".jpg", mode="L")
    test = load_mvtec(_cfg(tmp_path, "tile"), "test", seed=0)
    assert test.describe()["defective"] == 3
    assert all(p.endswith(".jpg") for p in test.paths)
    sample = test[0]  # test/crack/num_1.jpg
    assert sample.label == 1 and sample.image.shape == (48, 48, 3) and sample.mask.sum() > 0
    np.testing.assert_array_equal(sample.image[..., 0], sample.image[..., 1])


def test_defective_image_without_mask_is_named(tmp_path, write_image, write_mask):
    category = _category(tmp_path, "screw", write_image, write_mask)
    (category / "ground_truth" / "crack" / "num_10_mask.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"num_10\.png: defective image has no mask"):
        load_mvtec(_cfg(tmp_path), "test", seed=0)


def test_mask_without_image_is_named(tmp_path, write_image, write_mask):
    category = _category(tmp_path, "screw", write_image, write_mask)
    (category / "test" / "crack" / "num_100.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"num_100_mask\.png: mask belongs to no image"):
        load_mvtec(_cfg(tmp_path), "test", seed=0)


def test_masks_of_a_missing_defect_folder_are_named(tmp_path, write_image, write_mask):
    category = _category(tmp_path, "screw", write_image, write_mask)
    write_mask(category / "ground_truth" / "hole" / "000_mask.png", box=(0, 0, 2, 2))
    with pytest.raises(DatasetLayoutError, match=r"hole/000_mask\.png: mask belongs to no image"):
        load_mvtec(_cfg(tmp_path), "test", seed=0)


def test_category_must_be_given_and_exist(tmp_path, write_image, write_mask):
    for name in ("screw", "bottle"):
        _category(tmp_path, name, write_image, write_mask)
    (tmp_path / "license.txt").write_text("x")
    assert mvtec_categories(tmp_path) == ["bottle", "screw"]
    with pytest.raises(ValueError, match="data.category.*bottle, screw"):
        load_mvtec(_cfg(tmp_path, None), "train", seed=0)
    with pytest.raises(ValueError, match="'carpet' is not a category.*bottle, screw"):
        load_mvtec(_cfg(tmp_path, "carpet"), "train", seed=0)
    with pytest.raises(ValueError, match="data.root"):
        load_mvtec(DataConfig(format="mvtec", category="screw"), "train", seed=0)
