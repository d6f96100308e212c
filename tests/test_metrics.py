"""Metrics: sklearn agreement, perfect and inverted scores, hand-computed AUPRO cases, a slow AUPRO."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from pitscope.metrics import (
    aupro,
    auroc_interval,
    average_precision,
    evaluate_all,
    f1_max,
    image_auroc,
    pixel_auroc,
    pro_curve,
)


def _one_region():
    """Two 8 x 8 images; the second has a 2 x 4 defect (8 pixels)."""
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[1, 2:4, 2:6] = 1
    return masks


def test_perfect_and_inverted_scores():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.7, 0.9])
    assert image_auroc(labels, scores) == 1.0
    assert image_auroc(labels, -scores) == 0.0
    assert average_precision(labels, scores) == 1.0
    assert f1_max(labels, scores) == (1.0, 0.5)
    masks = _one_region()
    assert pixel_auroc(masks, masks.astype(float)) == 1.0
    assert pixel_auroc(masks, -masks.astype(float)) == 0.0
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, -masks.astype(float)) == pytest.approx(0.0)


def test_agreement_with_sklearn_and_brute_force_f1():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.normal(size=60) + labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores))
    best = max((2 * np.sum(labels[scores >= t]) / (np.sum(scores >= t) + labels.sum()), t) for t in scores)
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(best[0]) and threshold == best[1]
    masks = rng.random((3, 10, 12)) < 0.2
    maps = (rng.random((3, 10, 12)) + masks).astype(np.float32)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_aupro_of_constant_map_is_half_max_fpr():
    # One threshold: the curve is the diagonal from (0, 0) to (1, 1); area 0.3^2 / 2 over 0.3.
    masks = _one_region()
    assert aupro(masks, np.full(masks.shape, 0.5)) == pytest.approx(0.15)
    assert aupro(masks, np.full(masks.shape, 0.5), max_fpr=1.0) == pytest.approx(0.5)


def test_aupro_half_region_above_all_normal_pixels():
    masks = _one_region()
    maps = np.full(masks.shape, 0.5)  # normal pixels
    maps[1, 2, 2:6] = 1.0  # half the region above every normal pixel
    maps[1, 3, 2:6] = 0.0  # the other half below
    # Curve (0, 0) -> (0, 0.5) -> (1, 0.5) -> (1, 1): PRO is 0.5 on [0, 0.3].
    assert aupro(masks, maps) == pytest.approx(0.5)
    maps[1, 3, 2:6] = 0.5  # the other half tied with the normal pixels
    # Curve (0, 0.5) -> (1, 1): PRO = 0.5 + 0.5 FPR; (0.15 + 0.25 * 0.09) / 0.3 = 0.575.
    assert aupro(masks, maps) == pytest.approx(0.575)


def test_regions_are_eight_connected():
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = 1  # one region by a diagonal touch
    masks[0, 5:7, 5:7] = 1  # a second region
    maps = np.full(masks.shape, 0.5)
    maps[0, 0, 0] = 1.0
    maps[0, 1, 1] = 0.0
    maps[0, 5:7, 5:7] = 1.0
    # Regions overlap 1/2 and 1 at FPR 0: PRO 0.75 until FPR 1 (with 4-connectivity: 2/3).
    assert aupro(masks, maps) == pytest.approx(0.75)


def _slow_aupro(masks, maps, max_fpr):
    """Loop over every distinct threshold with whole-map comparisons; integrate segment by segment."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        for r in range(1, count + 1):
            region = np.zeros(masks.shape, dtype=bool)
            region[i] = labelled == r
            regions.append(region)
    normal = masks == 0
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        flagged = maps >= t
        points.append((flagged[normal].mean(), np.mean([flagged[r].mean() for r in regions])))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_matches_slow_reference(seed, max_fpr):
    rng = np.random.default_rng(seed)
    masks = ndimage.binary_dilation(rng.random((4, 12, 12)) < 0.04, iterations=1).astype(np.uint8)
    masks[0] = 0  # one defect-free image
    # Quantised scores give ties inside and across regions and normal pixels.
    maps = np.round(rng.random(masks.shape) * 6 + 3 * masks * rng.random(masks.shape)) / 6
    assert aupro(masks, maps, max_fpr) == pytest.approx(_slow_aupro(masks, maps, max_fpr), abs=1e-12)


def test_pro_curve_ends_and_errors():
    masks = _one_region()
    fpr, pro = pro_curve(masks, np.random.default_rng(1).random(masks.shape))
    assert (fpr[0], pro[0], fpr[-1], pro[-1]) == (0.0, 0.0, 1.0, pytest.approx(1.0))
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    with pytest.raises(ValueError, match="defect region"):
        aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))


def test_evaluate_all():
    masks = _one_region()
    maps = masks + np.random.default_rng(2).random(masks.shape) * 0.1
    labels, scores = np.array([0, 1]), np.array([0.2, 0.8])
    result = evaluate_all(labels, scores, masks, maps)
    assert set(result) == {
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "aupro",
    }
    assert all(value == pytest.approx(1.0) for value in result.values())
    image_only = evaluate_all(labels, scores)
    assert image_only["image_auroc"] == 1.0
    assert all(image_only[k] is None for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"))


def _delong_by_definition(labels, scores):
    """DeLong's variance straight from its definition: the m x n kernel psi(X_i, Y_j)."""
    x, y = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), np.sqrt(v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(y))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_interval_matches_the_definition_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.7).astype(int)
    scores = np.round(rng.normal(size=300) + 1.5 * labels, 1)  # rounded: many ties
    result = auroc_interval(labels, scores)
    auroc, se = _delong_by_definition(labels, scores)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["auroc"] == pytest.approx(auroc, abs=1e-12)
    assert result["se"] == pytest.approx(se, rel=1e-10)
    assert result["low"] == pytest.approx(result["auroc"] - 1.959964 * se, abs=1e-6)
    assert result["high"] == pytest.approx(result["auroc"] + 1.959964 * se, abs=1e-6)


def test_auroc_interval_by_hand():
    # X = {1, 2}, Y = {0, 1.5}: V10 = (1/2, 1), V01 = (1, 1/2), AUROC 3/4,
    # Var = var(V10)/2 + var(V01)/2 = 1/8 / 2 + 1/8 / 2 = 1/8.
    result = auroc_interval(np.array([1, 1, 0, 0]), np.array([1.0, 2.0, 0.0, 1.5]), level=0.9)
    assert result["auroc"] == 0.75
    assert result["se"] == pytest.approx(np.sqrt(1 / 8))
    assert result["low"] == pytest.approx(0.75 - 1.644854 * np.sqrt(1 / 8))
    assert result["high"] == 1.0  # clipped: 0.75 + 1.645 * 0.354 > 1
    assert result["level"] == 0.9


def test_auroc_interval_of_separated_scores_is_a_point():
    result = auroc_interval(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert (result["auroc"], result["se"], result["low"], result["high"]) == (1.0, 0.0, 1.0, 1.0)


def test_auroc_interval_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 2 defective"):
        auroc_interval(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="two"):
        auroc_interval(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        auroc_interval(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(ValueError, match="level"):
        auroc_interval(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4]), level=1.0)


def test_region_metrics_by_hand():
    from pitscope.metrics import region_metrics

    labels = np.array([1, 1, 0, 0])
    masks = np.zeros((4, 10, 10), np.uint8)
    regions = np.zeros((4, 10, 10), bool)
    masks[0, :2, :5] = 1  # 10 true pixels; predicted 5 of them and 5 more: IoU 5 / 15
    regions[0, :1, :10] = True
    masks[1, 5:9, 5:9] = 1  # 16 true pixels; predicted exactly: IoU 1
    regions[1, 5:9, 5:9] = True
    regions[2, 0, :3] = True  # 3 % of a defect-free image
    result = region_metrics(labels, masks, regions)
    hits, flagged, actual = 5 + 16, 10 + 16 + 3, 10 + 16
    assert result["pixel_f1"] == pytest.approx(2 * hits / (flagged + actual))
    assert result["iou_median"] == pytest.approx((1 / 3 + 1) / 2)
    assert result["iou_q1"] == pytest.approx(1 / 3 + 0.25 * (2 / 3))
    assert result["normal_area_median"] == pytest.approx(0.015)
    assert result["normal_area_p99"] == pytest.approx(0.03 * 0.99)
    assert result["area_within_2x"] == 1.0  # 10 vs 10 and 16 vs 16
    regions[0] = False  # a missed defect: IoU 0, area outside 2x
    result = region_metrics(labels, masks, regions)
    assert result["iou_median"] == pytest.approx(0.5) and result["area_within_2x"] == 0.5
    only_normal = region_metrics(np.zeros(2, int), np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool))
    assert only_normal["iou_median"] is None and only_normal["pixel_f1"] is None
    with pytest.raises(ValueError, match="expected labels"):
        region_metrics(labels, masks, regions[:, :5])
