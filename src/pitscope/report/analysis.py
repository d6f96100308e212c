"""The report's numbers: curves thinned for drawing, the pixel sample, the gallery's picks, the
training log and the per-category means."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from pitscope.data.types import Sample
from pitscope.evaluation import METRIC_NAMES
from pitscope.inference import Detector
from pitscope.metrics import pro_curve

CURVE_POINTS = 500  # most points stored and drawn per curve
PIXELS_PER_CLASS = 200_000  # pixel ROC/PR plots: most sampled pixels per class (defect, normal)
SAMPLE_SEED = 0  # seeds the pixel sample and the gallery's sample of correct decisions
MAX_FPR = 0.3  # AUPRO's integration limit (pitscope.metrics.aupro's default)
HISTOGRAM_BINS = 30
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")  # every other category is an object


class _ScoresKept:
    """The detector as `evaluate` sees it (score_dataset, cfg and the thresholds), keeping the
    scores and maps it returns so the report draws from the very arrays the metrics came from (the
    regions cut from them, the pixel metrics ranking `pitscope.scoring.shown_maps` of them)."""

    def __init__(self, detector: Detector):
        self.detector = detector
        self.cfg = detector.cfg
        self.threshold = detector.threshold
        self.pixel_threshold = detector.pixel_threshold
        self.scores: np.ndarray | None = None
        self.maps: np.ndarray | None = None

    def score_dataset(self, dataset: Sequence[Sample], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        self.scores, self.maps = self.detector.score_dataset(dataset, progress=progress)
        return self.scores, self.maps


def thin_curve(x: np.ndarray, y: np.ndarray, n: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most n points of the curve (x, y), evenly spaced along its length, both ends kept."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size <= n:
        return x, y
    length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    index = np.searchsorted(length, np.linspace(0.0, length[-1], n))
    index[0], index[-1] = 0, x.size - 1
    index = np.unique(index)
    return x[index], y[index]


def pixel_sample(
    masks: np.ndarray, maps: np.ndarray, per_class: int = PIXELS_PER_CLASS, seed: int = SAMPLE_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """A weighted sample of pixels for drawing pixel-level ROC and PR curves (never for metrics).

    masks, maps: (N, H, W). Each class (defect, normal) keeps all its pixels if it has at most
    `per_class`, else a seeded uniform sample of `per_class`; each kept pixel weighs
    (class pixels / kept pixels). Returns (truth (M,) bool, values (M,) float32, weights (M,),
    {"defect": [kept, total], "normal": [kept, total]}).
    """
    truth = np.asarray(masks).reshape(-1) > 0
    values = np.asarray(maps).reshape(-1)
    rng = np.random.default_rng(seed)
    kept, weights, counts = [], [], {}
    for name, cls in (("defect", True), ("normal", False)):
        index = np.flatnonzero(truth == cls)
        total = int(index.size)
        if total > per_class:
            index = np.sort(rng.choice(index, size=per_class, replace=False))
        kept.append(index)
        weights.append(np.full(index.size, total / max(index.size, 1)))
        counts[name] = [int(index.size), total]
    index = np.concatenate(kept)
    return truth[index], values[index], np.concatenate(weights), counts


def _roc(truth, values, weights=None) -> dict:
    fpr, tpr, _ = roc_curve(truth, values, sample_weight=weights)
    fpr, tpr = thin_curve(fpr, tpr)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _pr(truth, values, weights=None) -> dict:
    precision, recall, _ = precision_recall_curve(truth, values, sample_weight=weights)
    recall, precision = thin_curve(recall, precision)
    return {"recall": recall.tolist(), "precision": precision.tolist()}


def _pro(masks: np.ndarray, maps: np.ndarray) -> dict:
    """The exact PRO curve up to FPR = MAX_FPR (and the first point past it), thinned."""
    fpr, pro = pro_curve(masks, maps)
    inside = int(np.searchsorted(fpr, MAX_FPR, side="right"))
    fpr, pro = thin_curve(fpr[: inside + 1], pro[: inside + 1])
    return {"fpr": fpr.tolist(), "pro": pro.tolist(), "max_fpr": MAX_FPR}


def pick_gallery(labels: np.ndarray, scores: np.ndarray, threshold: float, k: int, seed: int = SAMPLE_SEED) -> dict:
    """Indices of the images the gallery shows, at most k per group.

    false_positives: defect-free images with score > threshold, highest score first.
    false_negatives: defective images with score <= threshold, lowest score first.
    correct: a seeded sample of true positives (about half) and true negatives, highest first.
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    flagged = scores > threshold
    fp = np.flatnonzero((labels == 0) & flagged)
    fn = np.flatnonzero((labels == 1) & ~flagged)
    tp = np.flatnonzero((labels == 1) & flagged)
    tn = np.flatnonzero((labels == 0) & ~flagged)
    n_tp = min(tp.size, max(k - tn.size, (k + 1) // 2))
    n_tn = min(tn.size, k - n_tp)
    rng = np.random.default_rng(seed)
    correct = np.concatenate([rng.choice(tp, n_tp, replace=False), rng.choice(tn, n_tn, replace=False)])
    return {
        "false_positives": fp[np.argsort(-scores[fp], kind="stable")][:k].tolist(),
        "false_negatives": fn[np.argsort(scores[fn], kind="stable")][:k].tolist(),
        "correct": correct[np.argsort(-scores[correct], kind="stable")].astype(int).tolist(),
    }


def read_train_log(path: Path) -> dict[str, list[float]] | None:
    """The columns of a train_log.csv as floats, one value per step (the last row of a step
    wins, as a resumed run logs again), sorted by step; None without a readable file.
    Columns with no value in any row are left out."""
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_step: dict[float, dict] = {}
    for row in rows:
        try:
            by_step[float(row["step"])] = row
        except (KeyError, TypeError, ValueError):
            continue
    if not by_step:
        return None
    ordered = [by_step[s] for s in sorted(by_step)]
    columns = {}
    for name in ordered[0]:
        values = [_float(row.get(name)) for row in ordered]
        if any(v is not None for v in values):
            columns[name] = [math.nan if v is None else v for v in values]
    return columns


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def category_means(metrics: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Mean of each metric per group of categories, as the paper's tables 4 and 5.

    metrics: {category: {metric: value or None}}. Groups: "textures" (MVTEC_TEXTURES) and
    "objects" (every other category), both only when both have categories, and "all". A
    category without a metric (None) is left out of that metric's mean; None if none has it.
    """
    textures = [c for c in metrics if c in MVTEC_TEXTURES]
    objects = [c for c in metrics if c not in MVTEC_TEXTURES]
    groups = {"textures": textures, "objects": objects} if textures and objects else {}
    groups["all"] = list(metrics)
    means: dict[str, dict[str, float | None]] = {}
    for group, names in groups.items():
        means[group] = {}
        for metric in METRIC_NAMES:
            values = [value for c in names if (value := metrics[c].get(metric)) is not None]
            means[group][metric] = float(np.mean(values)) if values else None
    return means
