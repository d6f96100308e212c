import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label

from pitscope.augment.regions import check_image, ellipse_distance_sq, largest_region, random_blob


def test_largest_region_matches_skimage_on_random_masks():
    rng = np.random.default_rng(0)
    for density in (0.2, 0.4, 0.55):
        for _ in range(5):
            mask = rng.random((40, 50)) < density
            region = largest_region(mask)
            reference = label(mask, connectivity=2)
            expected = np.bincount(reference.ravel())[1:].max()
            assert region.dtype == bool
            assert region.sum() == expected
            assert not (region & ~mask).any()
            # One 8-connected component.
            assert ndimage.label(region, structure=np.ones((3, 3)))[1] == 1


def test_largest_region_uses_eight_connectivity():
    mask = np.zeros((6, 6), dtype=bool)
    mask[[0, 1, 2, 3], [0, 1, 2, 3]] = True  # a diagonal line: one region of 4
    mask[5, 0] = mask[5, 1] = True
    np.testing.assert_array_equal(largest_region(mask), np.eye(6, dtype=bool) & (np.arange(6) < 4))


def test_largest_region_of_empty_is_empty():
    assert not largest_region(np.zeros((8, 9), dtype=bool)).any()
    assert largest_region(np.zeros((8, 9), dtype=bool)).shape == (8, 9)


def test_random_blob_is_never_empty():
    for seed in range(20):
        blob = random_blob((16, 24), np.random.default_rng(seed))
        assert blob.shape == (16, 24) and blob.any() and not blob.all()


def test_check_image_accepts_rgb_uint8():
    check_image(np.zeros((4, 4, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8), [[0]]]
)
def test_check_image_rejects_other_arrays(bad):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        check_image(bad)


def test_ellipse_distance_sq_closed_form():
    # Semi-axes 2 (rows) and 4 (columns) at (5, 6): (dy / 2)^2 + (dx / 4)^2.
    d = ellipse_distance_sq((11, 13), (5, 6), (2.0, 4.0), 0.0)
    dy, dx = np.mgrid[0:11, 0:13]
    np.testing.assert_allclose(d, ((dy - 5) / 2.0) ** 2 + ((dx - 6) / 4.0) ** 2)
    assert d[5, 6] == 0.0 and d[7, 6] == 1.0 and d[5, 10] == 1.0
    # A quarter turn swaps which axis runs along the rows.
    turned = ellipse_distance_sq((11, 13), (5, 6), (2.0, 4.0), np.pi / 2)
    assert turned[5, 8] == pytest.approx(1.0) and turned[9, 6] == pytest.approx(1.0)
