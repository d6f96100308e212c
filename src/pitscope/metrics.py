"""Detection and localisation metrics (SPEC section 1): small pure functions over numpy.

Image-level metrics take labels (N,) in {0, 1} (1 = defective) and scores (N,), higher = more
anomalous. Pixel-level metrics take ground-truth masks (N, H, W) (non-zero = defect) and anomaly
maps (N, H, W) of the same size. ROC and precision-recall come from scikit-learn; only AUPRO and
the AUROC's DeLong standard error, which no well-kept library offers, are written here (each
checked in tests against its definition and cases worked by hand).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

# 8-connectivity for the defect regions of AUPRO.
_EIGHT = np.ones((3, 3), dtype=bool)


def _pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten masks and maps to (N*H*W,) bool labels and float32 scores (float32 halves the
    memory of sklearn's sort on tens of millions of pixels)."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    return masks.reshape(-1) > 0, maps.reshape(-1).astype(np.float32, copy=False)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image scores."""
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores)))


def auroc_interval(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """DeLong's standard error of the image AUROC and a normal-approximation interval around it.

    DeLong, DeLong & Clarke-Pearson (1988), computed through mid-ranks (Sun & Xu 2014): with the
    m defective scores X and the n defect-free scores Y, each X_i's share of Y below it
    (ties count half) and each Y_j's share of X above it are the structural components V10 and
    V01; AUROC = mean(V10) and Var(AUROC) = var(V10) / m + var(V01) / n (sample variances).
    Returns {"auroc", "se", "low", "high", "level"}; the interval is auroc -/+ z * se, clipped
    to [0, 1]. It says how much an AUROC measured on this many images can move by chance.
    """
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be two (N,) arrays")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x, y = scores[labels], scores[~labels]
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 defective and 2 defect-free images, got {m} and {n}")
    ranks = stats.rankdata(np.concatenate([x, y]))  # mid-ranks: ties share the mean rank
    v10 = (ranks[:m] - stats.rankdata(x)) / n  # Y below each X_i, as a share of n
    v01 = 1.0 - (ranks[m:] - stats.rankdata(y)) / m  # X above each Y_j, as a share of m
    auroc = float(v10.mean())
    se = float(np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n))
    z = float(stats.norm.ppf(0.5 + level / 2))
    return {"auroc": auroc, "se": se, "low": max(0.0, auroc - z * se), "high": min(1.0, auroc + z * se), "level": level}


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Area under the ROC curve over all pixels of all images, computed exactly (no subsampling)."""
    return float(roc_auc_score(*_pixels(masks, maps)))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, sklearn's step-wise sum)."""
    return float(average_precision_score(np.asarray(labels), np.asarray(scores)))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The best F1 over all thresholds, and the threshold reaching it (score >= threshold flags)."""
    precision, recall, thresholds = precision_recall_curve(np.asarray(labels), np.asarray(scores))
    # The last point (precision 1, recall 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-region overlap curve at every distinct map value, exactly.

    A threshold t flags the pixels with map >= t. FPR(t) is the flagged fraction of all
    defect-free pixels (mask == 0, in every image); PRO(t) is the mean over the defect regions
    (8-connected components of each image's mask) of each region's flagged fraction.
    Both are cumulative sums over the pixels sorted by decreasing score: a defect pixel adds
    1 / (number of regions x its region's size) to PRO, a normal pixel 1 / (normal pixels) to
    FPR. Returns (fpr, pro), each starting at (0, 0) and ending at (1, 1), non-decreasing;
    tied scores form one point.
    """
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"expected masks and maps of one shape (N, H, W), got {masks.shape} and {maps.shape}")
    weights = np.zeros(masks.shape, dtype=np.float64)  # 1 / region size on defect pixels
    n_regions = 0
    for i, mask in enumerate(masks):
        regions, count = ndimage.label(mask > 0, structure=_EIGHT)
        if count:
            size = np.bincount(regions.ravel())  # size[0] counts the background
            weights[i] = np.where(regions > 0, 1.0 / size[regions], 0.0)
            n_regions += count
    normal = masks.reshape(-1) == 0
    n_normal = int(normal.sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError("the PRO curve needs at least one defect region and one defect-free pixel")
    scores = maps.reshape(-1).astype(np.float32, copy=False)
    order = np.argsort(-scores)
    sorted_scores = scores[order]
    # The last pixel of each run of equal scores closes that threshold's point.
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    pro = np.cumsum(weights.reshape(-1)[order])[ends] / n_regions
    fpr = np.cumsum(normal[order])[ends] / n_normal
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], np.minimum(pro, 1.0)])


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve for FPR in [0, max_fpr], divided by max_fpr (perfect = 1).

    Exact: every distinct map value is a threshold (`pro_curve`, one sort and two cumulative
    sums, no threshold grid). The curve is linear between its points (the trapezoidal rule)
    and is cut at max_fpr by linear interpolation. A constant map traces the diagonal and
    scores max_fpr / 2.
    """
    fpr, pro = pro_curve(masks, maps)
    inside = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < max_fpr:
        x0, y0, x1, y1 = fpr[inside - 1], pro[inside - 1], fpr[inside], pro[inside]
        x = np.append(x, max_fpr)
        y = np.append(y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    area = np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)
    return float(area / max_fpr)


def evaluate_all(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    max_fpr: float = 0.3,
) -> dict[str, float | None]:
    """Every metric of a test set, keyed by name.

    labels, scores: (N,) image labels and scores. masks, maps: (N, H, W) or None.
    Returns image_auroc, image_ap, image_f1_max, pixel_auroc, pixel_ap, pixel_f1_max, aupro;
    the pixel-level ones are None when there are no masks or maps, or no defect pixel at all.
    """
    result: dict[str, float | None] = {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "image_f1_max": f1_max(labels, scores)[0],
        "pixel_auroc": None,
        "pixel_ap": None,
        "pixel_f1_max": None,
        "aupro": None,
    }
    if masks is None or maps is None or not np.any(np.asarray(masks)):
        return result
    truth, flat = _pixels(masks, maps)
    result["pixel_auroc"] = float(roc_auc_score(truth, flat))
    result["pixel_ap"] = float(average_precision_score(truth, flat))
    result["pixel_f1_max"] = f1_max(truth, flat)[0]
    result["aupro"] = aupro(masks, maps, max_fpr=max_fpr)
    return result


def region_metrics(labels: np.ndarray, masks: np.ndarray, regions: np.ndarray) -> dict[str, float | None]:
    """How the predicted regions (what a user sees) match the truth.

    labels: (N,) image labels. masks: (N, H, W) truth, non-zero = defect. regions: (N, H, W)
    bool predicted regions. Returns:
      pixel_f1: F1 of region pixels against defect pixels, pooled over all images;
      iou_median, iou_q1, iou_q3: per defective image, |region & truth| / |region | truth|;
      normal_area_median, normal_area_p99: the region's share of each defect-free image;
      area_within_2x: share of defective images whose region area is within a factor of two of
        the true area (a defective image with no region counts as outside).
    Entries without images to measure are None.
    """
    labels = np.asarray(labels).astype(bool)
    truth, region = np.asarray(masks) > 0, np.asarray(regions, dtype=bool)
    if truth.shape != region.shape or truth.ndim != 3 or labels.shape != truth.shape[:1]:
        raise ValueError(
            f"expected labels (N,), masks and regions (N, H, W); got {labels.shape}, {truth.shape}, {region.shape}"
        )
    hits = int((truth & region).sum())
    flagged, actual = int(region.sum()), int(truth.sum())
    result: dict[str, float | None] = {
        "pixel_f1": 2 * hits / (flagged + actual) if flagged + actual else None,
        "iou_median": None,
        "iou_q1": None,
        "iou_q3": None,
        "normal_area_median": None,
        "normal_area_p99": None,
        "area_within_2x": None,
    }
    defective = labels & truth.reshape(len(labels), -1).any(axis=1)
    if defective.any():
        t, r = truth[defective], region[defective]
        inter = (t & r).sum(axis=(1, 2))
        union = (t | r).sum(axis=(1, 2))
        iou = inter / union
        result.update(
            iou_median=float(np.median(iou)), iou_q1=float(np.quantile(iou, 0.25)), iou_q3=float(np.quantile(iou, 0.75))
        )
        true_area, area = t.sum(axis=(1, 2)), r.sum(axis=(1, 2))
        result["area_within_2x"] = float(np.mean((area >= true_area / 2) & (area <= 2 * true_area)))
    if (~labels).any():
        share = region[~labels].mean(axis=(1, 2))
        result.update(normal_area_median=float(np.median(share)), normal_area_p99=float(np.quantile(share, 0.99)))
    return result
