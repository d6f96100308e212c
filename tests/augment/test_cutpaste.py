import numpy as np
import pytest
from scipy import ndimage

from pitscope.augment.cutpaste import color_jitter, normal_patch, scar_patch

GENERATORS = [scar_patch, normal_patch]


def _image(shape=(64, 64), seed=0):
    # A smooth random colour field: every patch differs from where it lands.
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(float)
    field = ndimage.zoom(coarse, (shape[0] / 4, shape[1] / 4, 1), order=1)
    return np.clip(field, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("generate", GENERATORS)
def test_changes_stay_inside_a_nonempty_mask(generate):
    image = _image()
    for seed in range(10):
        out, mask = generate(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8 and mask.max() == 1
        outside = mask == 0
        np.testing.assert_array_equal(out[outside], image[outside])


@pytest.mark.parametrize("generate", GENERATORS)
def test_deterministic_and_ignores_the_global_rng(generate):
    image = _image(seed=1)
    np.random.seed(0)
    a = generate(image, np.random.default_rng(5))
    np.random.seed(1)
    b = generate(image, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], generate(image, np.random.default_rng(6))[1])


@pytest.mark.parametrize("generate", GENERATORS)
def test_input_is_not_modified(generate):
    image = _image(seed=2)
    before = image.copy()
    generate(image, np.random.default_rng(0))
    np.testing.assert_array_equal(image, before)


def test_normal_patch_area_and_aspect():
    image = _image((100, 100))
    for seed in range(30):
        _, mask = normal_patch(image, np.random.default_rng(seed))
        rows, cols = np.nonzero(mask)
        h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert mask.sum() == h * w  # one upright rectangle
        assert 0.015 <= h * w / 100**2 <= 0.16
        assert 0.25 <= w / h <= 4.0


def test_scar_size_at_256_and_rotation():
    image = _image((256, 256))
    areas, squareness = [], []
    for seed in range(30):
        _, mask = scar_patch(image, np.random.default_rng(seed))
        areas.append(mask.sum())
        rows, cols = np.nonzero(mask)
        squareness.append(mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1)))
        assert ndimage.label(mask)[1] == 1
    # 2-16 px by 10-25 px.
    assert 15 <= min(areas) and max(areas) <= 16 * 25 * 1.1
    # Some scars are turned, so they fill less than their bounding box.
    assert min(squareness) < 0.8


def test_scar_scales_with_image_size():
    small = [scar_patch(_image((32, 32)), np.random.default_rng(s))[1].sum() for s in range(20)]
    large = [scar_patch(_image((256, 256)), np.random.default_rng(s))[1].sum() for s in range(20)]
    assert np.mean(small) * 20 < np.mean(large)
    assert min(small) >= 1


def test_tiny_image_still_gets_a_patch():
    image = _image((8, 8))
    for generate in GENERATORS:
        out, mask = generate(image, np.random.default_rng(0))
        assert mask.any() and out.shape == (8, 8, 3)


def test_color_jitter_is_small():
    patch = _image((16, 16), seed=3)
    jittered = color_jitter(patch, np.random.default_rng(0))
    assert jittered.shape == patch.shape and jittered.dtype == np.uint8
    assert np.abs(jittered.astype(int) - patch).mean() < 40
