"""The built-in synthetic ball-screw dataset: determinism, splits, masks, looks, folder tree."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pitscope.config import DataConfig, SyntheticConfig, load_config
from pitscope.data.synthetic import SyntheticDataset, add_pitting, load_synthetic, render_surface, write_synthetic_tree
from pitscope.data.types import Sample

H, W = 80, 200


def small_config(image_size: int = 64) -> DataConfig:
    synthetic = SyntheticConfig(n_train=4, n_test_normal=2, n_test_defect=3, height=H, width=W)
    return DataConfig(image_size=image_size, synthetic=synthetic)


def test_same_seed_same_pixels_different_seed_different():
    a = SyntheticDataset(2, 2, H, W, seed=5)
    b = SyntheticDataset(2, 2, H, W, seed=5)
    c = SyntheticDataset(2, 2, H, W, seed=6)
    for i in range(4):
        np.testing.assert_array_equal(a[i].image, b[i].image)
        np.testing.assert_array_equal(a[i].mask, b[i].mask)
        assert not np.array_equal(a[i].image, c[i].image)


def test_item_depends_only_on_seed_and_index():
    ordered = SyntheticDataset(1, 2, H, W, seed=3)
    alone = SyntheticDataset(1, 2, H, W, seed=3)
    last = alone[-1]  # drawn first, without the others
    np.testing.assert_array_equal(last.image, ordered[2].image)
    assert alone[2] is last  # cached


def test_check_renders_every_image_on_threads_as_one_by_one():
    threaded = SyntheticDataset(5, 4, H, W, seed=7)
    first = threaded[2]  # rendered before: kept, not drawn again
    assert threaded.check(progress=False) == []
    assert sorted(threaded._cache) == list(range(9)) and threaded[2] is first
    serial = SyntheticDataset(5, 4, H, W, seed=7)
    for i in range(9):
        np.testing.assert_array_equal(threaded[i].image, serial._make(i).image)
        np.testing.assert_array_equal(threaded[i].mask, serial._make(i).mask)


def test_render_surface_does_not_touch_global_rng():
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    render_surface(np.random.default_rng(1), H, W)
    add_pitting(render_surface(np.random.default_rng(2), H, W), np.random.default_rng(3))
    assert np.random.random() == before


def test_splits_counts_labels_and_distinct_streams():
    cfg = small_config()
    train, test = load_synthetic(cfg, "train", seed=0), load_synthetic(cfg, "test", seed=0)
    assert train.describe() == {"total": 4, "normal": 4, "defective": 0}
    assert test.describe() == {"total": 5, "normal": 2, "defective": 3}
    assert train.labels.tolist() == [0, 0, 0, 0]
    assert test.labels.tolist() == [0, 0, 1, 1, 1]
    assert [s.label for s in test] == test.labels.tolist()
    assert test.paths[0] == "synthetic://test/normal/0000"
    assert test.paths[2] == "synthetic://test/pitting/0000"
    assert [s.path for s in test] == test.paths
    assert not np.array_equal(train[0].image, test[0].image)
    assert test.has_masks and test.check(progress=False) == []
    val = load_synthetic(cfg, "val", seed=0)  # as large as test, on its own stream
    assert val.labels.tolist() == test.labels.tolist() and val.paths[0] == "synthetic://val/normal/0000"
    assert not np.array_equal(val[0].image, test[0].image)
    with pytest.raises(ValueError, match="train"):
        load_synthetic(cfg, "holdout", seed=0)


def test_masks_nonempty_for_defective_empty_for_normal():
    data = SyntheticDataset(3, 4, H, W, seed=1)
    for sample in data:
        assert isinstance(sample, Sample)
        assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (H, W) and sample.mask.dtype == np.uint8
        assert set(np.unique(sample.mask)) <= {0, 1}
        assert (sample.mask.sum() > 0) == bool(sample.label)


def test_resize_to_size():
    sample = load_synthetic(small_config(image_size=48), "test", seed=2)[-1]
    assert sample.image.shape == (48, 48, 3)
    assert sample.mask.shape == (48, 48)
    assert set(np.unique(sample.mask)) == {0, 1}


@pytest.mark.parametrize("seed", range(4))
def test_add_pitting_changes_only_the_mask_and_darkens(seed):
    image = render_surface(np.random.default_rng([seed, 0]), 2 * H, 2 * W)
    out, mask = add_pitting(image, np.random.default_rng([seed, 1]))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.dtype == np.uint8 and mask.sum() > 0
    changed = np.any(out != image, axis=2)
    assert not np.any(changed & (mask == 0))  # nothing outside the mask moved
    assert changed[mask == 1].mean() > 0.9  # and the mask is (almost) all changed
    pits = mask.astype(bool)
    ring = ndimage.binary_dilation(pits, iterations=4) & ~pits
    gray = out.astype(float).mean(axis=2)
    assert gray[pits].mean() < 0.85 * gray[ring].mean()
    assert gray[pits].mean() < 0.7 * image.astype(float).mean(axis=2)[pits].mean()


def test_pit_size_follows_image_width():
    sizes = []
    for seed in range(6):
        image = render_surface(np.random.default_rng(seed), 2 * H, 2 * W)
        _, mask = add_pitting(image, np.random.default_rng(seed + 100), n_pits=(1, 1))
        cols = np.flatnonzero(mask.any(axis=0))
        sizes.append((cols[-1] - cols[0] + 1) / (2 * W))
    assert 0.01 <= np.median(sizes) <= 0.12


@pytest.mark.parametrize("seed", range(3))
def test_image_statistics_plausible(seed):
    image = render_surface(np.random.default_rng(seed), H, W).astype(float)
    assert image.std() > 10  # not flat
    assert 40 < image.mean() < 210
    assert (image >= 255).mean() < 0.01 and (image <= 0).mean() < 0.01  # not saturated


@pytest.mark.parametrize("seed", range(3))
def test_threads_are_periodic(seed):
    """Once each column's mean is removed, the spectrum peaks at the thread frequency."""
    gray = render_surface(np.random.default_rng(seed), 2 * H, 2 * W).astype(float).mean(axis=2)
    spectrum = np.abs(np.fft.rfft2(gray - gray.mean(axis=0, keepdims=True)))  # (2H, W + 1)
    ky, kx = np.unravel_index(spectrum.argmax(), spectrum.shape)
    ky = min(ky, 2 * H - ky)
    assert 2 <= ky <= 6 and kx <= 3  # 2-6 threads across the height, running near-horizontally
    assert spectrum.max() > 100 * np.median(spectrum)


def test_write_synthetic_tree_layout_matches_dataset(tmp_path):
    root = write_synthetic_tree(tmp_path, n_train=2, n_test_normal=1, n_test_defect=2, seed=4, height=H, width=W)
    assert root == tmp_path / "synthetic"
    stems = {d: sorted(p.stem for p in (root / d).glob("*.png")) for d in ("train/good", "test/good", "test/pitting")}
    assert stems == {"train/good": ["0000", "0001"], "test/good": ["0000"], "test/pitting": ["0000", "0001"]}
    masks = sorted(p.name for p in (root / "ground_truth" / "pitting").glob("*.png"))
    assert masks == [f"{s}_mask.png" for s in stems["test/pitting"]]

    cfg = DataConfig(synthetic=SyntheticConfig(n_train=2, n_test_normal=1, n_test_defect=2, height=H, width=W))
    test = load_synthetic(cfg, "test", seed=4)
    native = SyntheticDataset(1, 2, H, W, seed=test.seed)
    written = np.asarray(Image.open(root / "test" / "pitting" / "0001.png"))
    np.testing.assert_array_equal(written, native[2].image)
    mask = np.asarray(Image.open(root / "ground_truth" / "pitting" / "0001_mask.png"))
    np.testing.assert_array_equal(mask, native[2].mask * 255)


@pytest.mark.parametrize("kind", ["scratch", "stain"])
def test_other_defect_kinds_change_only_their_mask(kind):
    from pitscope.data.synthetic import DEFECTS, render_surface

    for seed in range(4):
        image = render_surface(np.random.default_rng(seed), 100, 250)
        out, mask = DEFECTS[kind](image, np.random.default_rng(100 + seed))
        again, mask_again = DEFECTS[kind](image, np.random.default_rng(100 + seed))
        assert np.array_equal(out, again) and np.array_equal(mask, mask_again)  # a function of the generator
        assert mask.dtype == np.uint8 and mask.any()
        changed = np.any(out != image, axis=2)
        assert not (changed & (mask == 0)).any()  # nothing outside the mask moves
        assert out[mask > 0].mean() < image[mask > 0].mean()  # darker inside
        share = mask.mean()
        assert (share < 0.05) if kind == "scratch" else (0.01 < share < 0.6), share


def test_defect_kinds_are_drawn_in_turn_and_named_in_the_paths():
    cfg = DataConfig(
        format="synthetic",
        image_size=64,
        synthetic=SyntheticConfig(n_train=2, n_test_normal=1, n_test_defect=3, defects=["pit", "scratch", "stain"]),
    )
    test = load_synthetic(cfg, "test", seed=0)
    assert [p.split("/")[-2] for p in test.paths] == ["normal", "pitting", "scratch", "stain"]
    assert all(test[i].mask.any() for i in range(1, 4))
    with pytest.raises(ValueError, match="data.synthetic.defects"):
        load_config(None, ["data.synthetic.defects=[pit,dent]"])
