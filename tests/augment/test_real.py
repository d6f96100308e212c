import numpy as np
import pytest

from pitscope.augment.real import paste_cutout
from pitscope.data.labelled import Cutout


def _background(shape=(48, 64), value=120):
    return np.full((*shape, 3), value, dtype=np.uint8)


def _cutout(size=(10, 10), value=230, source=0, ring=False):
    """A bright square cutout whose mask is all of it (or, with ring, all but a 1 px margin)."""
    mask = np.ones(size, dtype=bool)
    if ring:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = False
    return Cutout(image=np.full((*size, 3), value, dtype=np.uint8), mask=mask, source=source)


def test_mask_is_exactly_where_the_image_changed():
    image = _background()
    cutouts = [_cutout(), _cutout((6, 14), ring=True)]
    for seed in range(20):
        out, mask = paste_cutout(image, np.random.default_rng(seed), cutouts)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        changed = (out != image).any(axis=2)
        np.testing.assert_array_equal(changed, mask == 1)


def test_deterministic_for_a_seeded_rng_and_input_unchanged():
    image = _background()
    before = image.copy()
    cutouts = [_cutout(), _cutout((4, 12), value=20)]
    a = paste_cutout(image, np.random.default_rng(3), cutouts)
    b = paste_cutout(image, np.random.default_rng(3), cutouts)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(image, before)
    others = [paste_cutout(image, np.random.default_rng(seed), cutouts)[1] for seed in range(4, 8)]
    assert any(not np.array_equal(a[1], other) for other in others)


def test_scale_range_bounds_the_pasted_area():
    image = _background((64, 64))
    cutouts = [_cutout((10, 10))]
    areas = {int(paste_cutout(image, np.random.default_rng(seed), cutouts)[1].sum()) for seed in range(40)}
    # sides round(10 * f) for f in [0.8, 1.25]: 8 .. 12 (12.5 rounds to 12)
    assert areas <= {side * side for side in range(8, 13)} and len(areas) > 2
    exact = paste_cutout(image, np.random.default_rng(0), cutouts, scale=(1.0, 1.0))[1]
    assert exact.sum() == 100


def test_brightness_scales_the_pasted_pixels():
    image = _background()
    out, mask = paste_cutout(image, np.random.default_rng(1), [_cutout(value=200)], brightness=0.15)
    pasted = out[mask == 1]
    assert pasted.min() == pasted.max()  # one gain for the whole cutout
    assert 170 <= pasted.min() <= 230
    out, mask = paste_cutout(image, np.random.default_rng(1), [_cutout(value=200)], brightness=0.0, rotate=False)
    assert (out[mask == 1] == 200).all()


def test_rotation_turns_the_cutout():
    image = _background((64, 64))
    cutouts = [_cutout((4, 12))]
    shapes = set()
    for seed in range(20):
        rows, cols = np.nonzero(paste_cutout(image, np.random.default_rng(seed), cutouts, scale=(1, 1))[1])
        shapes.add((int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1))
    assert shapes == {(4, 12), (12, 4)}
    for seed in range(10):
        rows, cols = np.nonzero(
            paste_cutout(image, np.random.default_rng(seed), cutouts, scale=(1, 1), rotate=False)[1]
        )
        assert (np.ptp(rows) + 1, np.ptp(cols) + 1) == (4, 12)


def test_a_cutout_larger_than_the_image_is_clipped_and_stays_inside():
    image = _background((8, 8))
    out, mask = paste_cutout(image, np.random.default_rng(0), [_cutout((20, 30), ring=True)])
    assert mask.shape == (8, 8) and mask.sum() > 0
    np.testing.assert_array_equal((out != image).any(axis=2), mask == 1)


def test_a_cutout_shrunk_below_a_pixel_still_pastes_one():
    thin = Cutout(image=np.full((3, 3, 3), 250, dtype=np.uint8), mask=np.eye(3, dtype=bool), source=0)
    _, mask = paste_cutout(_background(), np.random.default_rng(0), [thin], scale=(0.3, 0.3))
    assert mask.sum() >= 1


def test_bad_arguments_are_refused():
    image = _background()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="cutouts"):
        paste_cutout(image, rng, [])
    with pytest.raises(ValueError, match="scale"):
        paste_cutout(image, rng, [_cutout()], scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="brightness"):
        paste_cutout(image, rng, [_cutout()], brightness=1.5)
    with pytest.raises(ValueError, match="image"):
        paste_cutout(image[..., 0], rng, [_cutout()])


def test_scaled_mask_keeps_pixels_at_least_half_defect():
    # A 4 x 4 mask in a 10 x 10 cutout doubled: bilinear weights >= 0.5 give exactly 8 x 8.
    mask = np.zeros((10, 10), dtype=bool)
    mask[3:7, 3:7] = True
    cutout = Cutout(image=np.full((10, 10, 3), 240, dtype=np.uint8), mask=mask, source=0)
    _, pasted = paste_cutout(_background((40, 40)), np.random.default_rng(0), [cutout], scale=(2, 2))
    rows, cols = np.nonzero(pasted)
    assert pasted.sum() == 64 and np.ptp(rows) == np.ptp(cols) == 7
