"""Overlay and heatmap pictures: colours land only where they should."""

import numpy as np
import pytest
from matplotlib import colormaps

from pitscope.visualize import GREEN, RED, boundary, heatmap, overlay

H, W = 40, 60


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(20, 200, size=(H, W, 3), dtype=np.uint8)


def square_map(top, left, size, value=5.0):
    """A (H, W) map of zeros with a size x size square of `value`."""
    amap = np.zeros((H, W), dtype=np.float32)
    amap[top : top + size, left : left + size] = value
    return amap


def changed(a, b):
    return (a != b).any(axis=2)  # (H, W) bool


def is_colour(picture, colour):
    return (picture == np.array(colour, np.uint8)).all(axis=2)  # (H, W) bool


def test_boundary_is_the_region_minus_its_erosion():
    region = np.zeros((11, 11), bool)
    region[3:8, 3:8] = True  # a 5 x 5 square
    edge = boundary(region)
    assert edge.sum() == 16 and not edge[4:7, 4:7].any() and (edge <= region).all()
    assert boundary(region, width=2).sum() == 24
    corner = np.zeros((6, 6), bool)
    corner[:3, :3] = True  # touches the image border: outlined there too
    assert boundary(corner).sum() == 9 - 1
    assert not boundary(np.zeros((5, 5), bool)).any()


def test_overlay_paints_red_only_inside_the_predicted_region(image):
    amap = square_map(10, 20, 12)
    out = overlay(image, amap, pixel_threshold=1.0)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    region = amap > 1.0
    assert (changed(out, image) <= region).all()
    edge = boundary(region)
    assert is_colour(out, RED)[edge].all()
    inside = region & ~edge
    # The fill is a blend: redder than before, still showing the image (not solid red).
    assert (out[inside][:, 0].astype(int) >= image[inside][:, 0]).all()
    assert (out[inside][:, 1:].astype(int) <= image[inside][:, 1:]).all()
    assert not is_colour(out, RED)[inside].any()
    assert image[0, 0, 0] == overlay(image, amap, 1.0)[0, 0, 0]  # the input is not modified


def test_overlay_outlines_the_ground_truth_in_green(image):
    amap = square_map(5, 5, 10)
    mask = np.zeros((H, W), np.uint8)
    mask[20:35, 30:50] = 1
    out = overlay(image, amap, pixel_threshold=1.0, mask=mask)
    region, truth_edge = amap > 1.0, boundary(mask > 0)
    green = is_colour(out, GREEN)
    assert (green == truth_edge).all()
    assert (changed(out, image) <= (region | truth_edge)).all()
    assert (out[(mask > 0) & ~truth_edge] == image[(mask > 0) & ~truth_edge]).all()  # no fill for the truth


def test_green_is_drawn_over_red_where_they_meet(image):
    amap = square_map(10, 10, 20)
    mask = (amap > 0).astype(np.uint8)  # the truth is exactly the predicted region
    out = overlay(image, amap, 1.0, mask=mask)
    edge = boundary(mask > 0)
    assert is_colour(out, GREEN)[edge].all() and not is_colour(out, RED)[edge].any()


def test_empty_region_leaves_the_image_unchanged(image):
    amap = np.random.default_rng(1).random((H, W)).astype(np.float32)
    assert np.array_equal(overlay(image, amap, pixel_threshold=2.0), image)
    nan_map = np.full((H, W), np.nan, np.float32)
    assert np.array_equal(overlay(image, nan_map, pixel_threshold=0.0), image)
    mask = np.zeros((H, W), np.uint8)
    mask[5:9, 5:9] = 1
    out = overlay(image, amap, 2.0, mask=mask)
    assert (changed(out, image) == boundary(mask > 0)).all()


def test_outlines_thicken_on_large_images():
    big = np.zeros((900, 900, 3), np.uint8)
    amap = np.zeros((900, 900), np.float32)
    amap[100:300, 100:300] = 1
    out = overlay(big, amap, 0.5)
    assert is_colour(out, RED)[200, 100:103].all()  # 3 px at 900 px
    assert not is_colour(out, RED)[200, 103]


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((H, W, 3), np.float32), np.zeros((H, W)), 0.5), "uint8"),
        ((np.zeros((H, W), np.uint8), np.zeros((H, W)), 0.5), r"\(H, W, 3\)"),
        ((np.zeros((H, W, 3), np.uint8), np.zeros((W, H)), 0.5), "anomaly_map"),
    ],
)
def test_overlay_refuses_mismatched_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        overlay(*args)
    with pytest.raises(ValueError, match="mask"):
        overlay(np.zeros((H, W, 3), np.uint8), np.zeros((H, W)), 0.5, mask=np.zeros((H, W + 1)))


def test_heatmap_spans_the_colour_map():
    amap = np.linspace(0.0, 3.0, H * W, dtype=np.float32).reshape(H, W)
    out = heatmap(amap)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    jet = colormaps["jet"]
    assert tuple(out[0, 0]) == tuple(jet(0.0, bytes=True)[:3])
    assert tuple(out[-1, -1]) == tuple(jet(1.0, bytes=True)[:3])
    clipped = heatmap(amap, vmin=1.0, vmax=2.0)
    assert (clipped[amap <= 1.0] == jet(0.0, bytes=True)[:3]).all()
    assert (clipped[amap >= 2.0] == jet(1.0, bytes=True)[:3]).all()
    magma = heatmap(amap, cmap="magma")
    assert tuple(magma[-1, -1]) == tuple(colormaps["magma"](1.0, bytes=True)[:3])


def test_heatmap_of_a_flat_or_nan_map_takes_the_lowest_colour():
    low = np.array(colormaps["jet"](0.0, bytes=True)[:3])
    assert (heatmap(np.full((4, 5), 2.0)) == low).all()
    amap = np.arange(20, dtype=np.float32).reshape(4, 5)
    amap[1, 1] = np.nan
    out = heatmap(amap)
    assert (out[1, 1] == low).all() and (out[-1, -1] != low).any()


def test_heatmap_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        heatmap(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="not_a_map"):
        heatmap(np.zeros((2, 3)), cmap="not_a_map")
