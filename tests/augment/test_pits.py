import numpy as np
import pytest
from scipy import ndimage

from pitscope.augment.pits import PIT_COUNT, PIT_DEPTH, PIT_RADIUS, RIM, pit_specks, speck_weight


def _uniform(value=200, size=256):
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_speck_weight_closed_form():
    # Circle of radius 2 at (10, 10): full depth to 1.5 px, half at 2 px, none from 2.5 px on.
    w = speck_weight((21, 21), (10, 10), (2.0, 2.0), 0.0)
    assert w.dtype == np.float32 and w.shape == (21, 21)
    assert w[10, 10] == 1.0
    assert w[10, 11] == 1.0  # distance 0.5
    assert w[10, 12] == pytest.approx(0.5)  # distance 1: on the ellipse
    assert w[12, 10] == pytest.approx(0.5)
    assert w[10, 13] == 0.0  # distance 1.5 > 1 + RIM / 2
    assert w[10, 15] == 0.0
    assert ((w >= 0) & (w <= 1)).all()


def test_speck_weight_turn_swaps_the_axes():
    # Semi-axes (1, 3): unturned, 3 px along the columns; turned a quarter, 3 px along the rows.
    flat = speck_weight((21, 21), (10, 10), (1.0, 3.0), 0.0)
    turned = speck_weight((21, 21), (10, 10), (1.0, 3.0), np.pi / 2)
    assert flat[10, 13] == pytest.approx(0.5) and flat[13, 10] == 0.0
    assert turned[13, 10] == pytest.approx(0.5) and turned[10, 13] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(turned, flat.T, atol=1e-6)


def test_specks_darken_only_inside_the_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 255, size=(64, 80, 3), dtype=np.uint8)
    for seed in range(20):
        out, mask = pit_specks(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == (64, 80) and mask.dtype == np.uint8 and mask.any()
        np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
        assert (out <= image).all()  # never brighter
        assert (out[mask == 1] < image[mask == 1]).any()


def test_depth_count_and_size_at_256():
    image = _uniform(200)
    largest = 3.0 * (1 + RIM / 2)  # the widest a speck's mask reaches, in px
    for seed in range(30):
        out, mask = pit_specks(image, np.random.default_rng(seed))
        # The centre pixel of each speck gets its full depth; the deepest sets the darkest pixel.
        darkest = int(out.min())
        assert 200 * (1 - PIT_DEPTH[1]) - 1 <= darkest <= 200 * (1 - PIT_DEPTH[0]) + 1
        labels, regions = ndimage.label(mask, structure=np.ones((3, 3)))
        assert 1 <= regions <= PIT_COUNT[1]
        # Small: at most three of the largest ellipse, with a pixel of slack around each.
        assert mask.sum() <= PIT_COUNT[1] * np.pi * (largest + 1) ** 2
        # A speck spans at most 2 * largest + 1 px; a region is at most three merged specks.
        for region in ndimage.find_objects(labels):
            assert all(s.stop - s.start <= PIT_COUNT[1] * (2 * largest + 1) for s in region)


def test_sizes_scale_with_the_image():
    def mean_area(size):
        return np.mean([pit_specks(_uniform(size=size), np.random.default_rng(s))[1].sum() for s in range(60)])

    ratio = mean_area(512) / mean_area(256)
    assert 3.0 < ratio < 5.0  # area goes with the square of the scale


def test_smallest_speck_still_marks_its_centre():
    # Semi-axes at the low end still give the centre pixel full weight.
    w = speck_weight((5, 5), (2, 2), (PIT_RADIUS[0], PIT_RADIUS[0]), 0.3)
    assert w[2, 2] == 1.0


def test_deterministic_and_tiny_images():
    image = np.random.default_rng(1).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    a = pit_specks(image, np.random.default_rng(5))
    b = pit_specks(image, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    out, mask = pit_specks(_uniform(100, size=1), np.random.default_rng(0))
    assert mask.tolist() == [[1]] and out[0, 0, 0] < 100


def test_bad_image_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        pit_specks(np.zeros((8, 8), dtype=np.uint8), np.random.default_rng(0))


def test_windowed_specks_equal_full_image_weights():
    # pit_specks computes each weight in a window around its speck; the full-image formula agrees.
    image = _uniform(180, size=40)
    for seed in range(10):
        out, mask = pit_specks(image, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        darkening = np.zeros((40, 40), dtype=np.float32)
        for _ in range(int(rng.integers(PIT_COUNT[0], PIT_COUNT[1] + 1))):
            centre = (int(rng.integers(0, 40)), int(rng.integers(0, 40)))
            radii = (rng.uniform(*PIT_RADIUS) * 40 / 256, rng.uniform(*PIT_RADIUS) * 40 / 256)
            weight = speck_weight((40, 40), centre, radii, rng.uniform(0.0, np.pi))
            darkening = np.maximum(darkening, rng.uniform(*PIT_DEPTH) * weight)
        np.testing.assert_array_equal(mask, (darkening > 0).astype(np.uint8))
        expected = np.clip(np.rint(180 * (1.0 - darkening)), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(out[..., 0], expected)
