from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pitscope.config import DataConfig
from pitscope.data.folder import load_folder
from pitscope.data.types import DatasetLayoutError

BOXES = {"num_1": (0, 0, 4, 4), "num_100": (10, 2, 30, 30)}


def _tree(tmp_path: Path, write_image, write_mask) -> DataConfig:
    """good/ (3), test_ok/ (2), test_bad/ num_1.jpg + num_100.png, masks/ in both naming styles."""
    for i in range(3):
        write_image(tmp_path / "good" / f"{i}.png", seed=i)
    for i in range(2):
        write_image(tmp_path / "test_ok" / f"ok{i}.png", seed=10 + i)
    write_image(tmp_path / "test_bad" / "num_1.jpg", seed=20)
    write_image(tmp_path / "test_bad" / "num_100.png", seed=21)
    write_mask(tmp_path / "masks" / "num_1.png", box=BOXES["num_1"])
    write_mask(tmp_path / "masks" / "num_100_mask.png", box=BOXES["num_100"])
    return DataConfig(
        format="folder",
        root=str(tmp_path / "good"),
        test_normal_dir=str(tmp_path / "test_ok"),
        test_defect_dir=str(tmp_path / "test_bad"),
        mask_dir=str(tmp_path / "masks"),
        image_size=32,
    )


def test_train_is_the_root_folder(tmp_path, write_image, write_mask):
    train = load_folder(_tree(tmp_path, write_image, write_mask), "train", seed=0)
    assert train.describe() == {"total": 3, "normal": 3, "defective": 0}
    assert train[0].image.shape == (32, 32, 3)


def test_test_split_pairs_both_mask_names_by_exact_stem(tmp_path, write_image, write_mask):
    test = load_folder(_tree(tmp_path, write_image, write_mask), "test", seed=0)
    assert test.describe() == {"total": 4, "normal": 2, "defective": 2} and test.has_masks
    for sample in test:
        if sample.label == 0:
            assert sample.mask.sum() == 0
            continue
        x0, y0, x1, y1 = BOXES[Path(sample.path).stem]
        assert sample.mask.sum() == (x1 - x0) * (y1 - y0)


def test_without_mask_dir_masks_are_zero_and_flagged(tmp_path, write_image, write_mask):
    cfg = _tree(tmp_path, write_image, write_mask)
    cfg.mask_dir = None
    test = load_folder(cfg, "test", seed=0)
    assert not test.has_masks
    assert test.describe()["defective"] == 2 and all(s.mask.sum() == 0 for s in test)


def test_missing_and_orphan_masks_are_named(tmp_path, write_image, write_mask):
    cfg = _tree(tmp_path, write_image, write_mask)
    (tmp_path / "masks" / "num_100_mask.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"num_100\.png: defective image has no mask"):
        load_folder(cfg, "test", seed=0)
    write_mask(tmp_path / "masks" / "num_100_mask.png", box=(0, 0, 2, 2))
    write_mask(tmp_path / "masks" / "num_2.png", box=(0, 0, 2, 2))
    with pytest.raises(DatasetLayoutError, match=r"num_2\.png: mask belongs to no image"):
        load_folder(cfg, "test", seed=0)


def test_unset_test_folders_give_an_empty_test_split(tmp_path, write_image):
    write_image(tmp_path / "good" / "a.png")
    test = load_folder(DataConfig(format="folder", root=str(tmp_path / "good")), "test", seed=0)
    assert len(test) == 0 and test.has_masks


def test_configured_folder_that_does_not_exist_is_an_error(tmp_path, write_image):
    write_image(tmp_path / "good" / "a.png")
    cfg = DataConfig(format="folder", root=str(tmp_path / "good"), test_defect_dir=str(tmp_path / "typo"))
    with pytest.raises(DatasetLayoutError, match="test_defect_dir"):
        load_folder(cfg, "test", seed=0)


def test_empty_training_folder_is_an_error(tmp_path):
    (tmp_path / "good").mkdir()
    with pytest.raises(DatasetLayoutError, match="no training images"):
        load_folder(DataConfig(format="folder", root=str(tmp_path / "good")), "train", seed=0)


def test_bad_files_in_a_folder_are_skipped_by_check(tmp_path, write_image, bad_files):
    folder = bad_files["text"].parent  # holds the four unreadable files
    write_image(folder / "fine.png")
    train = load_folder(DataConfig(format="folder", root=str(folder)), "train", seed=0)
    assert len(train) == 5
    with pytest.warns(UserWarning, match="skipped 4 unreadable"):
        skipped = train.check(progress=False)
    assert len(skipped) == 4 and [Path(p).name for p in train.paths] == ["fine.png"]


def test_fewer_training_images_are_a_seeded_nested_subset(tmp_path):
    from pitscope.config import load_config
    from pitscope.data import build_dataset

    good = tmp_path / "good"
    good.mkdir()
    for i in range(10):
        Image.fromarray(np.full((40, 40, 3), 20 * i, np.uint8)).save(good / f"{i:02d}.png")

    def names(n, seed=0):
        cfg = load_config(
            None, ["data.format=folder", f"data.root={good}", f"data.train_images={n}", f"data.split_seed={seed}"]
        )
        return [r.path.name for r in build_dataset(cfg.data, "train", 0).records]

    assert len(names(4)) == 4 and names(4) == names(4)
    assert set(names(4)) <= set(names(7)) and names(10) == sorted(p.name for p in good.iterdir())
    assert names(4, seed=1) != names(4)
    with pytest.raises(ValueError, match="data.train_images: 11 is not in 1..10"):
        names(11)
