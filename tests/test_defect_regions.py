"""Predicted defect regions: components, the size filter, boxes and peaks, checked against
scikit-image's regionprops; Prediction's region follows the model's settings."""

import numpy as np
import pytest
from skimage.measure import label as sk_label
from skimage.measure import regionprops

from pitscope.defect_regions import find_regions, label_regions, region_mask
from pitscope.inference import Prediction


def two_blobs() -> np.ndarray:
    """A 20 x 30 map: a 2 x 2 blob (peak 5) and a 4 x 5 blob (peak 9), 0 elsewhere."""
    amap = np.zeros((20, 30), np.float32)
    amap[2:4, 3:5] = 5.0
    amap[10:14, 20:25] = 2.0
    amap[11, 22] = 9.0
    return amap


def test_regions_match_scikit_image_regionprops():
    rng = np.random.default_rng(0)
    amap = rng.random((40, 50)).astype(np.float32)
    ours = find_regions(amap, 0.8)
    theirs = regionprops(sk_label(amap > 0.8, connectivity=2), intensity_image=amap)

    def key(r):
        return (r[0], r[1])  # (area, box) pairs, order-free

    expected = sorted(((p.area, (p.bbox[1], p.bbox[0], p.bbox[3], p.bbox[2])) for p in theirs), key=key)
    assert sorted(((r.area_px, r.box) for r in ours), key=key) == expected
    assert sorted(r.peak for r in ours) == pytest.approx(sorted(float(p.intensity_max) for p in theirs))
    assert [r.area_px for r in ours] == sorted((r.area_px for r in ours), reverse=True)


def test_small_regions_are_dropped_and_fractions_are_of_the_whole_map():
    amap = two_blobs()
    every = find_regions(amap, 1.0)
    assert [(r.area_px, r.box, r.peak) for r in every] == [(20, (20, 10, 25, 14), 9.0), (4, (3, 2, 5, 4), 5.0)]
    assert every[0].fraction == pytest.approx(20 / 600)
    kept = find_regions(amap, 1.0, min_fraction=5 / 600)  # 5 pixels: the 2 x 2 blob goes
    assert [r.area_px for r in kept] == [20]
    assert find_regions(amap, 1.0, min_fraction=4 / 600)[1].area_px == 4  # exactly the minimum stays
    mask = region_mask(amap, 1.0, min_fraction=5 / 600)
    assert mask.sum() == 20 and not mask[2:4, 3:5].any()
    labels, count = label_regions(amap, 1.0, 5 / 600)
    assert count == 1 and set(np.unique(labels)) == {0, 1}


def test_diagonal_neighbours_join_and_nan_never_counts():
    amap = np.zeros((6, 6), np.float32)
    amap[1, 1] = amap[2, 2] = 3.0  # touching at a corner: one region under 8-connectivity
    amap[4, 4] = np.nan
    assert [r.area_px for r in find_regions(amap, 1.0)] == [2]
    with pytest.raises(ValueError, match="min_fraction"):
        find_regions(amap, 1.0, min_fraction=1.0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        find_regions(amap[None], 1.0)


def test_prediction_region_follows_size_filter_and_decision():
    amap = two_blobs()
    plain = Prediction(1.0, amap, False, 2.0, 1.0)
    assert plain.defect_region.sum() == 24 and len(plain.regions) == 2
    filtered = plain._replace(min_region_fraction=5 / 600)
    assert filtered.defect_region.sum() == 20 and len(filtered.regions) == 1
    gated = plain._replace(regions_on="defective")  # passed as defect-free: no region shown
    assert not gated.defect_region.any() and gated.regions == []
    assert gated._replace(is_defective=True).defect_region.sum() == 24


def test_prediction_peak_is_the_highest_finite_map_value():
    amap = np.zeros((6, 9), np.float32)
    amap[4, 7] = 3.0
    amap[1, 2] = np.nan  # never counts
    peak = Prediction(1.0, amap, True, 0.5, 5.0).peak()  # no region above 5, the peak still says where
    assert peak == {"x": 7, "y": 4, "value": 3.0}
    amap[0, 1] = 3.0  # a tie: the first in row order
    assert Prediction(1.0, amap, True, 0.5, 5.0).peak() == {"x": 1, "y": 0, "value": 3.0}
    assert Prediction(1.0, np.full((2, 2), np.nan, np.float32), True, 0.5, 5.0).peak() is None


def test_region_core_keeps_each_region_near_its_own_peak():
    amap = two_blobs()  # blob A: 2 x 2 at 5 (peak 5); blob B: 4 x 5 at 2 with one pixel at 9
    amap[3, 4] = 4.0  # blob A's corner pixel sits at 0.8 of its peak
    whole = region_mask(amap, 1.0)
    assert whole.sum() == 24
    cored = label_regions(amap, 1.0, core=0.5)[0]
    # A keeps its pixels >= 2.5 (all four), B only its peak (2 < 4.5): labels are kept, not renumbered
    assert (cored > 0).sum() == 5 and cored[11, 22] > 0 and cored[10, 20] == 0
    assert set(np.unique(cored)) == {0, 1, 2}
    assert region_mask(amap, 1.0, core=0.9).sum() == 4  # A's three 5s and B's 9; A's 4.0 < 4.5
    assert region_mask(amap, 1.0, core=1.0).sum() == 4  # every pixel at its region's peak
    assert region_mask(amap, 4.5, core=0.1).sum() == region_mask(amap, 4.5).sum()  # never below the threshold
    regions = find_regions(amap, 1.0, core=0.5)
    assert [(r.area_px, r.box) for r in regions] == [(4, (3, 2, 5, 4)), (1, (22, 11, 23, 12))]
    assert region_mask(amap, 1.0, min_fraction=5 / 600, core=0.5).sum() == 1  # the size filter acts first
    with pytest.raises(ValueError, match="core"):
        region_mask(amap, 1.0, core=1.5)


def test_prediction_and_evaluation_cut_regions_to_their_core():
    from pitscope.evaluation import predicted_regions

    amap = two_blobs()
    p = Prediction(1.0, amap, True, 0.5, 1.0, 0.0, "all", 0.5)
    assert p.defect_region.sum() == 5 and [r.area_px for r in p.regions] == [4, 1]
    drawn = predicted_regions(amap[None], np.array([True]), 1.0, 0.0, "all", 0.5)
    np.testing.assert_array_equal(drawn[0], p.defect_region)


def test_at_least_one_shows_the_peaks_region_when_nothing_passes():
    amap = two_blobs()  # peaks 5 (blob A) and 9 (blob B, one pixel over a 4 x 5 plateau at 2)
    amap[12, 22] = 6.0  # below B's peak, connected to it, at 2/3 of it
    assert label_regions(amap, 10.0)[1] == 0  # nothing above 10
    labels, count = label_regions(amap, 10.0, core=0.6, at_least_one=True)
    assert count == 1 and set(np.unique(labels)) == {0, 1}
    # B's pixels at or above 0.6 x 9 = 5.4: the peak and the 6 below it; A's 5s are under 5.4
    assert np.argwhere(labels).tolist() == [[11, 22], [12, 22]]
    half = region_mask(amap, 10.0, at_least_one=True)  # no core: half the peak, 4.5; A (5) is apart
    assert np.argwhere(half).tolist() == [[11, 22], [12, 22]]
    amap[2, 5:22] = 5.0
    amap[3:11, 21] = 5.0  # a bridge at 5 from A to B's peak (touching it at a corner)
    joined = region_mask(amap, 10.0, at_least_one=True)
    components = sk_label(amap >= 4.5, connectivity=2)
    np.testing.assert_array_equal(joined, components == components[11, 22])
    assert joined[2:4, 3:5].all() and joined.sum() == 4 + 17 + 8 + 2
    # when a region passes, at_least_one changes nothing
    np.testing.assert_array_equal(region_mask(amap, 1.0, 0.0, 0.5, True), region_mask(amap, 1.0, 0.0, 0.5))
    # the size filter drops every region: the peak's region still shows
    assert region_mask(two_blobs(), 1.0, min_fraction=0.5, core=0.5, at_least_one=True).sum() == 1
    # a map with nothing above 0, or nothing finite, has no peak region
    assert label_regions(np.zeros((4, 4), np.float32), 1.0, at_least_one=True)[1] == 0
    assert label_regions(np.full((4, 4), np.nan, np.float32), 1.0, at_least_one=True)[1] == 0


def test_defective_peak_shows_the_peak_only_on_photos_decided_defective():
    from pitscope.evaluation import predicted_regions

    amap = two_blobs()
    passed = Prediction(1.0, amap, False, 2.0, 10.0, 0.0, "defective_peak", 0.7)
    assert not passed.defect_region.any() and passed.regions == []
    flagged = passed._replace(is_defective=True)
    assert [(r.area_px, r.box, r.peak) for r in flagged.regions] == [(1, (22, 11, 23, 12), 9.0)]
    assert not flagged._replace(regions_on="defective").defect_region.any()  # the threshold alone: nothing
    drawn = predicted_regions(np.stack([amap, amap]), np.array([False, True]), 10.0, 0.0, "defective_peak", 0.7)
    assert not drawn[0].any()
    np.testing.assert_array_equal(drawn[1], flagged.defect_region)
    with pytest.raises(ValueError, match="regions_on"):
        passed._replace(regions_on="peak").outline()


def brute_force_peak_region(amap: np.ndarray, share: float, limit: int) -> np.ndarray:
    """The component around the highest pixel of amap >= level, at the lowest level (of share x
    peak and the values above it) where it has at most `limit` pixels, by trying every level."""
    y, x = np.unravel_index(int(amap.argmax()), amap.shape)
    for level in np.unique(amap[amap >= np.float32(share * amap[y, x])]):  # ascending
        components = sk_label(amap >= level, connectivity=2)
        region = components == components[y, x]
        if region.sum() <= limit:
            return region
    raise AssertionError("the peak's own level always fits")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_peak_region_bound_matches_trying_every_level(seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    amap = ndimage.gaussian_filter(rng.random((40, 60)), 3).astype(np.float32)  # broad, flat hills
    amap -= amap.min() - 0.01
    unbounded = region_mask(amap, 10.0, core=0.7, at_least_one=True)
    assert unbounded.sum() > 40  # the peak's region at 0.7 of the peak is wide on this map
    for peak_max in (0.02, 0.005, 0.001, 1e-6):
        limit = max(1, int(peak_max * amap.size))
        bounded = region_mask(amap, 10.0, core=0.7, at_least_one=True, peak_max=peak_max)
        np.testing.assert_array_equal(bounded, brute_force_peak_region(amap, 0.7, limit))
        assert 1 <= bounded.sum() <= limit and not (bounded & ~unbounded).any()
        assert bounded[np.unravel_index(int(amap.argmax()), amap.shape)]
    # a bound the region already fits changes nothing; 0 is no bound
    np.testing.assert_array_equal(region_mask(amap, 10.0, 0.0, 0.7, True, peak_max=1.0), unbounded)
    np.testing.assert_array_equal(region_mask(amap, 10.0, 0.0, 0.7, True, peak_max=0.0), unbounded)


def test_peak_region_bound_leaves_regions_above_the_threshold_alone():
    amap = two_blobs()  # blob B: a 4 x 5 plateau at 2 around a peak of 9
    over = region_mask(amap, 1.0, at_least_one=True, peak_max=1e-3)  # regions pass the threshold
    np.testing.assert_array_equal(over, region_mask(amap, 1.0))
    flat = np.full((10, 10), 3.0, np.float32)  # every pixel ties with the peak: the peak alone
    assert np.argwhere(region_mask(flat, 5.0, core=0.5, at_least_one=True, peak_max=0.05)).tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="peak_max"):
        region_mask(amap, 1.0, peak_max=1.5)


def test_prediction_and_evaluation_bound_the_peaks_region():
    from pitscope.evaluation import predicted_regions

    amap = two_blobs()
    amap[10:14, 20:25] = 8.0  # the plateau at 8 of 9: the peak's region at core 0.7 is all 20 pixels
    amap[11, 22] = 9.0
    amap[12, 22] = 8.5
    flagged = Prediction(1.0, amap, True, 2.0, 10.0, 0.0, "defective_peak", 0.7)
    assert flagged.defect_region.sum() == 20
    bounded = flagged._replace(peak_region_max=3 / amap.size)  # 3 pixels at most: the 9 and the 8.5
    assert np.argwhere(bounded.defect_region).tolist() == [[11, 22], [12, 22]]
    assert [(r.area_px, r.peak) for r in bounded.regions] == [(2, 9.0)]
    drawn = predicted_regions(amap[None], np.array([True]), 10.0, 0.0, "defective_peak", 0.7, 3 / amap.size)
    np.testing.assert_array_equal(drawn[0], bounded.defect_region)


def test_peak_region_bound_edges():
    # a peak of 9 over a ring: 3 pixels at 8 (the region at 8 has exactly 4 pixels), 6 more at 7
    amap = np.zeros((12, 12), np.float32)
    amap[5, 5] = 9.0
    amap[5, 6] = amap[6, 5] = amap[6, 6] = 8.0
    amap[4, 4:7] = amap[5, 4] = amap[6, 4] = amap[7, 5] = 7.0
    size = amap.size  # 144
    at = {k: region_mask(amap, 20.0, core=0.7, at_least_one=True, peak_max=k / size) for k in (4, 9, 10)}
    assert at[4].sum() == 4 and at[4][5:7, 5:7].all()  # exactly the limit fits
    assert at[9].sum() == 4  # the region at 7 holds 10 pixels: one too many
    assert at[10].sum() == 10
    # the limit is floor(peak_max * H * W) pixels, never fewer than 1: 3.99 pixels allow 3, so the peak alone
    assert np.argwhere(region_mask(amap, 20.0, core=0.7, at_least_one=True, peak_max=3.99 / size)).tolist() == [[5, 5]]
    assert region_mask(amap, 20.0, core=0.7, at_least_one=True, peak_max=1e-9).sum() == 1
    # NaN and -inf beside the peak never join the region
    holes = amap.copy()
    holes[5, 6], holes[4, 5] = np.nan, -np.inf
    bounded = region_mask(holes, 20.0, core=0.7, at_least_one=True, peak_max=3 / size)
    assert np.argwhere(bounded).tolist() == [[5, 5], [6, 5], [6, 6]]
    # a plateau tying at the peak, larger than the limit, away from the corner: its first pixel alone
    plateau = np.zeros((12, 12), np.float32)
    plateau[6:9, 3:7] = 5.0
    assert np.argwhere(region_mask(plateau, 20.0, core=0.5, at_least_one=True, peak_max=4 / size)).tolist() == [[6, 3]]
