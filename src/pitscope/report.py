"""The evaluation report: where a model is right and where it is wrong, as one HTML page.

`build_report` scores a test split once, through `pitscope.evaluation.evaluate` (so every
number is the one `pitscope evaluate` prints), and writes two files to its output folder:

report.html  self-contained: pictures are data: URIs, the CSS is inline, there is no script and
             no font, style sheet or link outside the file, so it opens with no network. It holds
             the headline metrics (the paper's BSData numbers beside ours), ROC and
             precision-recall curves at image and pixel level, the per-region-overlap curve, the
             histogram of image scores with the threshold, a gallery of the worst false
             positives, the worst false negatives and a seeded sample of correct decisions
             (input | ground truth in green | predicted region in red | heatmap, as the paper's
             figures 7, 10 and 11), and the training curves of the run's train_log.csv.
report.json  the same numbers: metrics, counts, thresholds, confusion counts, curve points (at
             most CURVE_POINTS per curve), the histogram, every image's score, the gallery picks.

For a BSData model, `--wear DIR` adds the wear curves `pitscope wear` wrote to DIR (`wear.json`
and the plots of `sequences/`): the split, the alert rule, the overall figures, a row and a plot
per sequence.

`build_category_report` puts several runs (one per MVTec category) on one page, headed by the
per-category table of the paper's tables 4 and 5, with mean rows for textures, objects and all.

Pixel-level ROC and PR curves are drawn from a sample of pixels: every pixel of a class when it
has at most PIXELS_PER_CLASS, else a seeded uniform sample of that many, each sampled pixel
weighted by its class's inverse sampling rate so the drawn curves estimate the exact ones. The
areas printed beside them, and every metric of the report, are exact. The PRO curve is exact.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import precision_recall_curve, roc_curve

from pitscope import __version__
from pitscope.data.types import Sample
from pitscope.evaluation import METRIC_NAMES, PAPER_BSDATA, evaluate, predicted_regions
from pitscope.files import TRAIN_LOG, json_safe
from pitscope.inference import Detector
from pitscope.metrics import pro_curve
from pitscope.visualize import GREEN, boundary, heatmap, overlay

log = logging.getLogger(__name__)

CURVE_POINTS = 500  # most points stored and drawn per curve
PIXELS_PER_CLASS = 200_000  # pixel ROC/PR plots: most sampled pixels per class (defect, normal)
SAMPLE_SEED = 0  # seeds the pixel sample and the gallery's sample of correct decisions
MAX_FPR = 0.3  # AUPRO's integration limit (pitscope.metrics.aupro's default)
HISTOGRAM_BINS = 30
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")  # every other category is an object

METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": f"AUPRO (FPR ≤ {MAX_FPR:.0%})",
    "image_ap": "image AP",
    "pixel_ap": "pixel AP",
    "image_f1_max": "image F1-max",
    "pixel_f1_max": "pixel F1-max",
}
REGION_LABELS = {  # the predicted regions at the stored thresholds (evaluation.predicted_regions)
    "pixel_f1": ("pixel F1 of the predicted regions (%)", "pct"),
    "iou_median": ("IoU with the truth per defective image: median (%)", "pct"),
    "iou_q1": ("IoU: lower quartile (%)", "pct"),
    "iou_q3": ("IoU: upper quartile (%)", "pct"),
    "normal_area_median": ("predicted area on defect-free images: median (% of the image)", "pct"),
    "normal_area_p99": ("predicted area on defect-free images: 99th percentile (%)", "pct"),
    "area_within_2x": ("defective images whose predicted area is within 2x the true area (%)", "pct"),
}
SUBSET_LABELS = {"positions": "BSData's monitored positions only", "other_type": "BSData's other ball-screw type (KGT*) only"}
GALLERY_GROUPS = {
    "false_positives": "Worst false positives: defect-free images flagged, highest score first",
    "false_negatives": "Worst false negatives: defective images missed, lowest score first",
    "correct": "A sample of correct decisions (seeded), highest score first",
}
PANELS = ("input", "ground truth", "prediction", "heatmap")
NORMAL_COLOUR, DEFECT_COLOUR, PIXEL_COLOUR = "#1f77b4", "#d62728", "#ff7f0e"


class CategoryRun(NamedTuple):
    """One model and its test split in a per-category report (run_dir: where train_log.csv is)."""

    name: str
    detector: Detector
    dataset: Sequence[Sample]
    run_dir: Path | None = None


# -- numbers ---------------------------------------------------------------------------------
class _ScoresKept:
    """The detector as `evaluate` sees it (score_dataset, cfg and the thresholds), keeping the
    scores and maps it returns so the report draws from the very arrays the metrics came from."""

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
    means = {}
    for group, names in groups.items():
        means[group] = {}
        for metric in METRIC_NAMES:
            values = [metrics[c][metric] for c in names if metrics[c].get(metric) is not None]
            means[group][metric] = float(np.mean(values)) if values else None
    return means


# -- pictures --------------------------------------------------------------------------------
def _png_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _jpeg_uri(image: np.ndarray, quality: int = 85) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _plot_curves(curves: dict, metrics: dict, at_threshold: dict, pixel_at_threshold: dict | None) -> str:
    """ROC, precision-recall and (with masks) PRO curves side by side, as a PNG data URI."""
    n = 3 if "pro" in curves else 2
    fig = Figure(figsize=(4.3 * n, 4.0), layout="constrained")
    axes = fig.subplots(1, n)
    ax = axes[0]
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.plot(curves["image_roc"]["fpr"], curves["image_roc"]["tpr"], c=NORMAL_COLOUR,
            label=f"image (AUROC {_pct(metrics['image_auroc'])})")
    ax.plot(at_threshold["false_positive_rate"], at_threshold["true_positive_rate"], "o", c=NORMAL_COLOUR, ms=6)
    if "pixel_roc" in curves:
        ax.plot(curves["pixel_roc"]["fpr"], curves["pixel_roc"]["tpr"], c=PIXEL_COLOUR,
                label=f"pixel (AUROC {_pct(metrics['pixel_auroc'])})")
        if pixel_at_threshold is not None:
            ax.plot(pixel_at_threshold["false_positive_rate"], pixel_at_threshold["true_positive_rate"], "o",
                    c=PIXEL_COLOUR, ms=6)
    ax.set(title="ROC (dots: the thresholds)", xlabel="false positive rate", ylabel="true positive rate",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=9)

    ax = axes[1]
    ax.plot(curves["image_pr"]["recall"], curves["image_pr"]["precision"], c=NORMAL_COLOUR,
            label=f"image (AP {_pct(metrics['image_ap'])})")
    if "pixel_pr" in curves:
        ax.plot(curves["pixel_pr"]["recall"], curves["pixel_pr"]["precision"], c=PIXEL_COLOUR,
                label=f"pixel (AP {_pct(metrics['pixel_ap'])})")
    ax.set(title="precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=9)

    if "pro" in curves:
        ax = axes[2]
        fpr, pro = curves["pro"]["fpr"], curves["pro"]["pro"]
        ax.plot(fpr, pro, c=PIXEL_COLOUR, label=f"AUPRO {_pct(metrics['aupro'])}")
        ax.fill_between(fpr, pro, color=PIXEL_COLOUR, alpha=0.15)
        ax.set(title="per-region overlap", xlabel="false positive rate (pixels)", ylabel="mean region overlap",
               xlim=(0, MAX_FPR), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    return _png_uri(fig)


def _plot_histogram(histogram: dict, threshold: float) -> str:
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax = fig.subplots()
    edges = histogram["edges"]
    ax.stairs(histogram["normal"], edges, fill=True, alpha=0.55, color=NORMAL_COLOUR, label="defect-free")
    ax.stairs(histogram["defective"], edges, fill=True, alpha=0.55, color=DEFECT_COLOUR, label="defective")
    if math.isfinite(threshold):
        ax.axvline(threshold, c="black", ls="--", lw=1.5, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="image score (Mahalanobis distance)", ylabel="images")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    return _png_uri(fig)


def _plot_training(log: dict[str, list[float]]) -> str:
    losses = [name for name in ("loss", "ce", "mse", "seg") if name in log]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax_loss, ax_lr = fig.subplots(1, 2, width_ratios=(2, 1))
    steps = log["step"]
    for name in losses:
        ax_loss.plot(steps, log[name], label=name, lw=1.5 if name == "loss" else 1)
    ax_loss.set(title="losses", xlabel="step", yscale="log")
    ax_loss.legend(fontsize=9)
    if "lr" in log:
        ax_lr.plot(steps, log["lr"], c="grey")
    ax_lr.set(title="learning rate", xlabel="step")
    ax_lr.set_ylim(bottom=0)
    for ax in (ax_loss, ax_lr):
        ax.grid(alpha=0.3)
    return _png_uri(fig)


def heatmap_scale(maps: np.ndarray, pixel_threshold: float) -> tuple[float, float]:
    """The colour scale (vmin, vmax) every heatmap of a report shares.

    vmin: the 1st percentile of the map values (N, H, W). vmax puts the pixel threshold at two
    thirds of the scale (yellow-orange in jet), so red means well above it; without a finite
    pixel threshold above vmin, vmax is the 99th percentile. A strided sample of at most about
    a million values gives the percentiles. Anchoring on the threshold keeps a few extreme
    maps from turning every other heatmap blue.
    """
    values = np.asarray(maps).reshape(-1)
    values = values[:: max(1, values.size // 1_000_000)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low = float(np.percentile(values, 1))
    if math.isfinite(pixel_threshold) and pixel_threshold > low:
        return low, low + 1.5 * (pixel_threshold - low)
    return low, max(float(np.percentile(values, 99)), low + 1e-6)


def gallery_tile(
    image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float, vmin: float, vmax: float,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """One gallery row as (H, 4W + 3*gap, 3) uint8: the input, the ground truth (green fill and
    outline), the predicted region (red, with the ground truth's green outline for comparison)
    and the heatmap on the report's shared scale [vmin, vmax]."""
    region = np.asarray(mask) != 0
    truth = image.copy()
    if region.any():
        truth[region] = np.round(0.65 * image[region] + 0.35 * np.array(GREEN, np.float32)).astype(np.uint8)
        truth[boundary(region)] = GREEN
    panels = [image, truth, overlay(image, anomaly_map, pixel_threshold, mask, region=region), heatmap(anomaly_map, vmin, vmax)]
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2], gap, panels[3]], axis=1)


def _short_name(path: str) -> str:
    """The last two parts of a path (folder/file: MVTec's defect type, BSData's folder)."""
    return "/".join(PurePosixPath(str(path).replace("\\", "/")).parts[-2:])


# -- HTML ------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2329;background:#f5f6f8}
main{max-width:1240px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:1.55rem;margin:0 0 4px} h2{font-size:1.2rem;margin:0 0 10px} h3{font-size:1rem;margin:16px 0 8px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:14px 18px;margin:14px 0}
nav{font-size:.9rem;margin:6px 0 0} nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
.sub{color:#5a6570;font-size:.9rem} .note{color:#5a6570;font-size:.85rem;margin:6px 0 0}
table{border-collapse:collapse;font-size:.92rem} th,td{padding:4px 12px;border-bottom:1px solid #e4e7eb;text-align:right}
th:first-child,td:first-child{text-align:left;white-space:nowrap} thead th{background:#eef1f4}
tr.mean td{font-weight:600;background:#f7f8fa}
.row{display:flex;flex-wrap:wrap;gap:26px;align-items:flex-start}
img.plot{max-width:100%;height:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
figure.tile{margin:0;border:1px solid #dde1e6;border-radius:4px;padding:6px;background:#fafbfc}
figure.tile img{width:100%;height:auto;display:block;image-rendering:auto}
.panels{display:flex;font-size:.75rem;color:#5a6570} .panels span{flex:1;text-align:center}
figcaption{font-size:.82rem;margin-top:4px;overflow-wrap:anywhere}
.bad{color:#b3261e;font-weight:600} .good{color:#1e7b34;font-weight:600}
details{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:14px 0;padding:8px 14px}
details>summary{font-weight:600;cursor:pointer} details section{border:none;padding:6px 0;margin:6px 0}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _cell(key: str, value, kind: str) -> str:
    """A table cell showing `value` ("pct": %, 2 decimals; "num": 4 significant digits; "int"),
    with its exact value in data-value (the JSON's, so the page can be checked against it)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f'<td data-key="{_e(key)}" data-value="null">n/a</td>'
    text = {"pct": lambda v: f"{100 * v:.2f}", "num": lambda v: f"{v:.4g}", "int": lambda v: f"{int(v)}"}[kind](value)
    return f'<td data-key="{_e(key)}" data-value="{value!r}">{text}</td>'


def _metrics_section(record: dict, key: str) -> str:
    metrics, paper = record["metrics"], record["paper"]
    head = "<tr><th>metric</th><th>pitscope (%)</th>" + ("<th>paper (%)</th>" if paper else "") + "</tr>"
    rows = []
    for name in METRIC_NAMES:
        paper_cell = ""
        if paper:
            paper_cell = f"<td>{paper[name]:.2f}</td>" if name in paper else "<td>–</td>"
        rows.append(f"<tr><td>{_e(METRIC_LABELS[name])}</td>{_cell(name, metrics[name], 'pct')}{paper_cell}</tr>")
    for name, (label, kind) in REGION_LABELS.items():
        if metrics.get(name) is not None:
            rows.append(f"<tr><td>{_e(label)}</td>{_cell(name, metrics[name], kind)}"
                        + ("<td>–</td>" if paper else "") + "</tr>")
    for group, subset in (record.get("subsets") or {}).items():
        m = subset["metrics"]
        text = ", ".join(f"{METRIC_LABELS[k]} {100 * m[k]:.2f}" for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
                         if m.get(k) is not None)
        label = f"{SUBSET_LABELS.get(group, group)} ({subset['counts']['defective']} defective)"
        rows.append(f'<tr><td>{_e(label)}</td><td colspan="{2 if paper else 1}">{_e(text)}</td></tr>')
    c, at, pix = record["counts"], record["at_threshold"], record["pixel_at_threshold"]
    confusion = record["confusion"]
    interval = record.get("image_auroc_interval") or {}
    decisions = [
        ("image AUROC, 95% interval: from (%)", _cell("image_auroc_low", interval.get("low"), "pct")),
        ("to (%)", _cell("image_auroc_high", interval.get("high"), "pct")),
        ("image threshold", _cell("threshold", record["threshold"], "num")),
        ("true positive rate at it (%)", _cell("true_positive_rate", at["true_positive_rate"], "pct")),
        ("false positive rate at it (%)", _cell("false_positive_rate", at["false_positive_rate"], "pct")),
        ("pixel threshold", _cell("pixel_threshold", record["pixel_threshold"], "num")),
    ]
    if pix is not None:
        decisions += [
            ("defect pixels inside the predicted region (%)",
             _cell("pixel_true_positive_rate", pix["true_positive_rate"], "pct")),
            ("defect-free pixels inside it (%)", _cell("pixel_false_positive_rate", pix["false_positive_rate"], "pct")),
        ]
    counts = [("test images", _cell("images", c["images"], "int")),
              ("defect-free", _cell("normal", c["normal"], "int")),
              ("defective", _cell("defective", c["defective"], "int"))]
    counts += [(label, _cell(name, confusion[name], "int")) for name, label in (
        ("true_positives", "defective, flagged"), ("false_negatives", "defective, missed"),
        ("false_positives", "defect-free, flagged"), ("true_negatives", "defect-free, passed"))]

    def table(cls, rows_):
        body = "".join(f"<tr><td>{_e(a)}</td>{b}</tr>" for a, b in rows_)
        return f'<table class="{cls}"><tbody>{body}</tbody></table>'

    paper_note = (
        '<p class="note">paper: Wang et al., IEEE Access 2024, table 3 (BSData); '
        "it gives image and pixel AUROC only.</p>"
        if paper else ""
    )
    return (
        f'<section id="metrics{key}"><h2>Headline metrics</h2><div class="row">'
        f'<div><table class="metrics"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'
        f'<div>{table("decisions", decisions)}</div><div>{table("counts", counts)}</div></div>{paper_note}'
        '<p class="note">Metrics are exact over every image and every pixel (those of <code>pitscope evaluate</code>). '
        "The image AUROC's interval (DeLong's standard error) is how far it could move by chance on this many "
        "test images. "
        "An image is flagged when its score is above the image threshold; the predicted region is where the anomaly "
        "map is above the pixel threshold.</p></section>"
    )


def _curves_section(record: dict, key: str) -> str:
    curves = record["curves"]
    note = "No ground-truth masks: image-level curves only."
    if "pixel_sampling" in curves:
        s = curves["pixel_sampling"]
        note = (
            f"Pixel curves are drawn from {s['defect'][0]:,} of {s['defect'][1]:,} defect pixels and "
            f"{s['normal'][0]:,} of {s['normal'][1]:,} defect-free pixels (seeded sample, weighted to estimate the "
            "exact curves); the areas in the legends are exact. The per-region-overlap curve is exact, up to "
            f"a pixel false positive rate of {MAX_FPR:.0%}."
        )
    uri = _plot_curves(curves, record["metrics"], record["at_threshold"], record["pixel_at_threshold"])
    return (
        f'<section id="curves{key}"><h2>ROC, precision-recall and per-region-overlap curves</h2>'
        f'<img class="plot" src="{uri}" alt="ROC, precision-recall and PRO curves"><p class="note">{note}</p></section>'
    )


def _histogram_section(record: dict, key: str) -> str:
    uri = _plot_histogram(record["histogram"], record["threshold"] if record["threshold"] is not None else math.nan)
    return (
        f'<section id="histogram{key}"><h2>Image scores: defect-free vs defective</h2>'
        f'<img class="plot" src="{uri}" alt="histogram of image scores"></section>'
    )


def _gallery_section(tiles: dict[str, list[str]], scale: tuple[float, float], key: str) -> str:
    parts = [
        f'<section id="gallery{key}"><h2>Gallery</h2><p class="note">Each row: input | ground truth (green) | '
        "predicted region, map above the pixel threshold (red; green outline: ground truth) | anomaly map "
        f"(jet colours, one scale for every image: blue ≤ {scale[0]:.4g}, yellow-orange at the pixel threshold, "
        f"red ≥ {scale[1]:.4g}).</p>"
    ]
    for group, title in GALLERY_GROUPS.items():
        parts.append(f'<h3 id="gallery-{group.replace("_", "-")}{key}">{_e(title)}</h3>')
        if tiles[group]:
            parts.append('<div class="gallery">' + "".join(tiles[group]) + "</div>")
        else:
            empty = {"false_positives": "None: no defect-free image scored above the threshold.",
                     "false_negatives": "None: every defective image scored above the threshold.",
                     "correct": "None."}[group]
            parts.append(f'<p class="note">{empty}</p>')
    return "".join(parts) + "</section>"


def _tile_html(uri: str, path: str, label: int, score: float, threshold: float) -> str:
    flagged = score > threshold
    truth = "defective" if label else "defect-free"
    verdict = "flagged" if flagged else "passed"
    cls = "good" if bool(flagged) == bool(label) else "bad"
    return (
        f'<figure class="tile" data-path="{_e(path)}" data-score="{score!r}">'
        '<div class="panels">' + "".join(f"<span>{p}</span>" for p in PANELS) + "</div>"
        f'<img src="{uri}" alt="{_e(path)}"><figcaption><b title="{_e(path)}">{_e(_short_name(path))}</b> · '
        f'score <span class="score">{score:.4g}</span> (threshold {threshold:.4g}) · {truth}, '
        f'<span class="{cls}">{verdict}</span></figcaption></figure>'
    )


def _training_section(log_path: Path | None, log: dict | None, training: dict | None, key: str) -> str:
    parts = [f'<section id="training{key}"><h2>Training</h2>']
    if training:
        budget = " (stopped by its time budget)" if training.get("stopped_by_budget") else ""
        averaged = training.get("averaged_epochs") or []
        if averaged:
            budget += f"; weights averaged over epochs {averaged[0]}-{averaged[-1]}"
        parts.append(
            f'<p class="sub">{training.get("epochs", "?")} epochs, {training.get("steps", "?")} steps, '
            f'{training.get("minutes", "?")} minutes on {training.get("images", "?")} defect-free images{budget}.</p>'
        )
    if log is None:
        where = f"at {_e(log_path)}" if log_path is not None else "(no run folder given)"
        parts.append(f'<p class="note">No training log {where}.</p>')
    else:
        parts.append(f'<img class="plot" src="{_plot_training(log)}" alt="training curves">'
                     f'<p class="note">From {_e(log_path)} ({len(log["step"])} logged steps).</p>')
    return "".join(parts) + "</section>"


def _page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="#{_e(anchor)}">{_e(text)}</a>' for anchor, text in nav)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        f'<header><h1>{_e(title)}</h1><div class="sub">{subtitle}</div><nav>{links}</nav></header>'
        f"{body}</main></body></html>\n"
    )


def _subtitle(detector: Detector, dataset: Sequence[Sample]) -> str:
    data = detector.cfg.data
    parts = [f"{data.format} test split {getattr(dataset, 'name', '')}".strip()]
    parts += [f"root {data.root}"] if data.root else []
    parts += [f"category {data.category}"] if data.category else []
    parts += [f"{data.image_size} px", f"maps: {detector.cfg.score.pixel_method}", f"pitscope {__version__}",
              datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")]
    return _e(" · ".join(parts))


# -- one run ---------------------------------------------------------------------------------
def _analyse(
    detector: Detector,
    dataset: Sequence[Sample],
    run_dir: Path | None,
    progress: bool,
    gallery_size: int,
    eval_dir: Path | None = None,
    key: str = "",
) -> tuple[dict, str, dict]:
    """Score `dataset` once (through `evaluate`, which writes its files to eval_dir if given) and
    return (the report's numbers as a JSON-ready dict, its HTML sections with ids ending in `key`,
    evaluate's result)."""
    if gallery_size < 0:
        raise ValueError(f"gallery_size: must be >= 0, got {gallery_size}")
    kept = _ScoresKept(detector)
    result = evaluate(kept, dataset, eval_dir, progress=progress)
    scores, maps = kept.scores, kept.maps  # (N,), (N, H, W)
    labels = np.asarray(dataset.labels)
    threshold, pixel_threshold = result["threshold"], float(detector.pixel_threshold)
    masks = None
    if getattr(dataset, "has_masks", True) and result["metrics"]["pixel_auroc"] is not None:
        masks = np.stack([dataset[i].mask for i in range(len(dataset))])  # (N, H, W)

    flagged = scores > threshold
    confusion = {
        "true_positives": int(((labels == 1) & flagged).sum()),
        "false_negatives": int(((labels == 1) & ~flagged).sum()),
        "false_positives": int(((labels == 0) & flagged).sum()),
        "true_negatives": int(((labels == 0) & ~flagged).sum()),
    }
    curves = {"image_roc": _roc(labels, scores), "image_pr": _pr(labels, scores)}
    region = predicted_regions(maps, flagged, pixel_threshold, detector.cfg.score.min_region_fraction,
                               detector.cfg.score.regions_on)  # (N, H, W) bool, as the pages draw them
    pixel_at_threshold = None
    if masks is not None:
        truth, values, weights, counts = pixel_sample(masks, maps)
        curves.update(pixel_roc=_roc(truth, values, weights), pixel_pr=_pr(truth, values, weights),
                      pixel_sampling=counts, pro=_pro(masks, maps))
        defect = masks > 0
        pixel_at_threshold = {"true_positive_rate": float(region[defect].mean()),
                              "false_positive_rate": float(region[~defect].mean())}
    edges = np.histogram_bin_edges(scores, bins=HISTOGRAM_BINS)
    histogram = {
        "edges": edges.tolist(),
        "normal": np.histogram(scores[labels == 0], edges)[0].tolist(),
        "defective": np.histogram(scores[labels == 1], edges)[0].tolist(),
    }
    picks = pick_gallery(labels, scores, threshold, gallery_size)
    paths = list(dataset.paths)
    log_path = run_dir / TRAIN_LOG if run_dir is not None else None
    log = read_train_log(log_path) if log_path is not None else None
    record = json_safe({
        "dataset": {"format": detector.cfg.data.format, "name": getattr(dataset, "name", ""),
                    "root": detector.cfg.data.root, "category": detector.cfg.data.category,
                    "image_size": detector.cfg.data.image_size},
        "metrics": result["metrics"],
        "subsets": result.get("subsets", {}),
        "image_auroc_interval": result["image_auroc_interval"],
        "paper": dict(PAPER_BSDATA) if detector.cfg.data.format == "bsdata" else None,
        "counts": result["counts"],
        "threshold": threshold,
        "pixel_threshold": pixel_threshold,
        "at_threshold": result["at_threshold"],
        "pixel_at_threshold": pixel_at_threshold,
        "confusion": confusion,
        "seconds": result["seconds"],
        "curves": curves,
        "histogram": histogram,
        "images": [{"path": p, "label": int(lab), "score": float(s), "is_defective": bool(f)}
                   for p, lab, s, f in zip(paths, labels, scores, flagged)],
        "gallery": {group: [paths[i] for i in index] for group, index in picks.items()},
        "training": {"log": str(log_path) if log is not None else None, "metadata": detector.metadata.get("training")},
    })

    scale = heatmap_scale(maps, pixel_threshold)
    tiles = {}
    for group, index in picks.items():
        tiles[group] = []
        for i in index:
            sample = dataset[i]
            tile = gallery_tile(sample.image, sample.mask, maps[i], pixel_threshold, *scale, region=region[i])
            tiles[group].append(_tile_html(_jpeg_uri(tile), paths[i], int(labels[i]), float(scores[i]), threshold))
    body = (
        _metrics_section(record, key)
        + _curves_section(record, key)
        + _histogram_section(record, key)
        + _gallery_section(tiles, scale, key)
        + _training_section(log_path, log, detector.metadata.get("training"), key)
    )
    return record, body, result


SECTIONS = ("metrics", "curves", "histogram", "gallery", "training")  # ids of a one-run page, in order


def _write(out_dir: Path, page: str, record: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def read_wear(wear_dir: str | Path, data_format: str) -> dict:
    """The wear.json `pitscope wear` wrote in wear_dir, for a BSData model's report.

    Raises ValueError for another dataset (wear sequences are BSData's) and FileNotFoundError
    without the file."""
    if data_format != "bsdata":
        raise ValueError(f"wear curves are measured on BSData's sequences; this model's data is {data_format}")
    path = Path(wear_dir) / "wear.json"
    if not path.is_file():
        raise FileNotFoundError(f"no wear results at {path} (write them with pitscope wear MODEL... --out {wear_dir})")
    return json.loads(path.read_text())


def _days(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _wear_section(wear: dict, wear_dir: Path) -> str:
    """Wear curves (id="wear"): the split, the alert rule, the overall figures, one row per
    sequence and each sequence's plot (the PNGs of wear_dir/sequences/, inlined)."""
    o, a = wear["overall"], wear["overall"]["alert"]
    models = "; ".join(f"{_e(Path(m['model']).parent.name or m['model'])} ({m['training_images']} training images) "
                       f"measured {len(m['sequences'])}" for m in wear["split"]["models"])
    overlap = (f' <span class="bad">{o["trained_on_measured_images"]} measured images were training images.</span>'
               if o["trained_on_measured_images"] else " No model measured an image it trained on.")
    overall_rows = [
        ("sequences (with pitting)", f"{o['sequences']} ({o['with_pitting']})"),
        ("images", str(o["images"])),
        ("Spearman, mean over sequences (median; pooled over images)",
         "{} ({}; {})".format(*("n/a" if o["spearman"][k] is None else f"{o['spearman'][k]:.3f}"
                                for k in ("mean", "median", "pooled")))),
        ("mean absolute error (% of the surface)", "n/a" if o["mae"] is None else f"{100 * o['mae']:.3f}"),
        ("alerted sequences with pitting", f"{a['alerted']} of {o['with_pitting']} ({a['early']} early, "
                                           f"{a['late']} late)"),
        ("median alert lead (days)", _days(a["lead_days"]["median"])),
        ("false alerts / clean images", f"{a['false_alerts']} / {a['clean_images']}"),
        ("sequences without pitting alerted", f"{a['clean_sequences_alerted']} of {o['without_pitting']}"),
    ]
    head = ("<tr><th>sequence</th><th>images</th><th>first flagged (day)</th><th>first true pitting (day)</th>"
            "<th>growth, predicted / true (%-points a day)</th><th>Spearman</th><th>MAE (%)</th>"
            "<th>first alert (day)</th><th>lead (days)</th><th>false alerts</th></tr>")
    rows, plots = [], []
    for s in wear["sequences"]:
        growth = " / ".join("–" if g is None else f"{100 * g:.3f}"
                            for g in (s["growth_predicted_per_day"], s["growth_true_per_day"]))
        rows.append(
            f'<tr data-sequence="{_e(s["sequence"])}"><td>{_e(s["sequence"])}</td><td>{s["images"]}</td>'
            f'<td>{_days(s["first_flagged_days"])}</td><td>{_days(s["first_true_days"])}</td><td>{growth}</td>'
            f'{_cell("spearman", s["spearman"], "num")}<td>{100 * s["mae"]:.3f}</td>'
            f'<td>{_days(s["alert"]["first_alert_days"])}</td><td>{_days(s["alert"]["lead_days"])}</td>'
            f'<td>{s["alert"]["false_alerts"]} / {s["alert"]["clean_images"]}</td></tr>'
        )
        png = wear_dir / "sequences" / f"{s['sequence']}.png"
        if png.is_file():
            uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
            plots.append(f'<img class="plot" src="{uri}" alt="wear curve of {_e(s["sequence"])}">')
    table = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in overall_rows)
    return (
        '<section id="wear"><h2>Wear curves over BSData\'s sequences</h2>'
        f'<p class="sub">Split: each sequence measured by a model that did not train on its images: {models}.'
        f"{overlap}</p>"
        f'<p class="sub">Alert rule: {_e(wear["rule"]["text"])}.</p>'
        f'<table class="wear-overall"><tbody>{table}</tbody></table>'
        f'<h3>Per sequence</h3><table class="wear"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
        '<p class="note">Areas are fractions of the photograph (the predicted region: anomaly map above the pixel '
        "threshold; the true one: the pitting polygons). Days count from each sequence's first image. Lead: days "
        "from the first alert to the first true pitting (negative: the alert came after it). Clean images: those "
        "before the first true pitting; an alert there is false. From <code>"
        f"{_e(wear_dir / 'wear.json')}</code>.</p>" + "".join(plots) + "</section>"
    )


def _one_run(
    detector, dataset, out_dir, run_dir, progress, gallery_size, eval_dir=None, wear_dir=None
) -> tuple[dict, Path]:
    wear = read_wear(wear_dir, detector.cfg.data.format) if wear_dir is not None else None
    record, body, result = _analyse(detector, dataset, Path(run_dir) if run_dir else None, progress, gallery_size,
                                    eval_dir=eval_dir)
    sections = list(SECTIONS)
    if wear is not None:
        body += _wear_section(wear, Path(wear_dir))
        sections.append("wear")
        record["wear"] = {key: wear[key] for key in ("rule", "split", "overall", "sequences")}
    title = f"pitscope report: {detector.cfg.data.category or detector.cfg.data.format}"
    page = _page(title, _subtitle(detector, dataset), [(s, s) for s in sections], body)
    return result, _write(Path(out_dir), page, {"title": title, "version": __version__, **record})


def build_report(
    detector: Detector,
    dataset: Sequence[Sample],
    out_dir: str | Path,
    run_dir: str | Path | None = None,
    progress: bool = True,
    gallery_size: int = 6,
    wear_dir: str | Path | None = None,
) -> Path:
    """Score `dataset` with `detector` and write out_dir/report.html and out_dir/report.json.

    run_dir: the training run's folder; its train_log.csv gives the training curves (none
    drawn without it). gallery_size: most images per gallery group. wear_dir: the output folder
    of `pitscope wear` for a BSData model; adds the wear section (`read_wear`). Returns the
    HTML's path. Raises ValueError, as `evaluate` does, for a split without both classes.
    """
    return _one_run(detector, dataset, out_dir, run_dir, progress, gallery_size, wear_dir=wear_dir)[1]


def report_from_evaluation(
    detector: Detector,
    dataset: Sequence[Sample],
    out_dir: str | Path,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict, Path]:
    """`pitscope evaluate --report`: evaluate's files (metrics.json, scores.csv) in out_dir and
    the report in out_dir/report/, from one scoring pass. Returns (evaluate's result, report path)."""
    out_dir = Path(out_dir)
    return _one_run(detector, dataset, out_dir / "report", run_dir, progress, 6, eval_dir=out_dir)


# -- several runs (one per MVTec category) ---------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "category"


def category_table(metrics: Mapping[str, Mapping[str, float | None]], counts: Mapping[str, int] | None = None) -> str:
    """The per-category table (id="categories"): one row per category, in %, grouped into
    textures and objects with their mean rows when both are present, then the mean of all."""
    means = category_means(metrics)
    head = "<tr><th>category</th>" + "".join(f"<th>{_e(METRIC_LABELS[m])}</th>" for m in METRIC_NAMES)
    head += "<th>test images</th></tr>" if counts else "</tr>"

    def row(name, values, cls="", link=True):
        label = f'<a href="#category-{_slug(name)}">{_e(name)}</a>' if link else _e(name)
        cells = "".join(_cell(m, values.get(m), "pct") for m in METRIC_NAMES)
        if counts:
            cells += _cell("images", counts[name], "int") if link else "<td></td>"
        return f'<tr class="{cls}" data-category="{_e(name)}">' + f"<td>{label}</td>{cells}</tr>"

    rows = []
    if "textures" in means:
        for group in ("textures", "objects"):
            rows += [row(c, metrics[c]) for c in metrics if (c in MVTEC_TEXTURES) == (group == "textures")]
            rows.append(row(f"mean ({group})", means[group], "mean", link=False))
    else:
        rows += [row(c, metrics[c]) for c in metrics]
    rows.append(row("mean (all)", means["all"], "mean", link=False))
    return (
        '<section id="categories"><h2>Per category (%)</h2><table class="categories">'
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Means are plain averages over categories (textures: carpet, grid, leather, tile, wood; '
        "every other category counts as an object), as in the paper's tables 4 and 5.</p></section>"
    )


def build_category_report(
    runs: Iterable[CategoryRun], out_dir: str | Path, progress: bool = True, gallery_size: int = 6
) -> Path:
    """One page for several runs, one per category: the per-category table with mean rows,
    then each category's full report (metrics, curves, histogram, gallery, training) folded.

    runs may be a generator: each run is scored, drawn and let go before the next is loaded.
    Writes out_dir/report.html and out_dir/report.json ({"categories": {name: report numbers},
    "means": category_means(...)}). Returns the HTML's path.
    """
    records, bodies = {}, []
    for run in runs:
        if run.name in records:
            raise ValueError(f"category {run.name!r} given twice")
        key = f"-{_slug(run.name)}"
        record, body, _ = _analyse(run.detector, run.dataset, Path(run.run_dir) if run.run_dir else None,
                                progress, gallery_size, key=key)
        records[run.name] = record
        c, m = record["counts"], record["metrics"]
        bodies.append(
            f'<details id="category{key}"><summary>{_e(run.name)}: image AUROC {_pct(m["image_auroc"])}, '
            f'pixel AUROC {_pct(m["pixel_auroc"])} ({c["normal"]} defect-free + {c["defective"]} '
            f"defective images)</summary>{body}</details>"
        )
    if not records:
        raise ValueError("no run to report")
    metrics = {name: r["metrics"] for name, r in records.items()}
    table = category_table(metrics, {name: r["counts"]["images"] for name, r in records.items()})
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"pitscope report: {len(records)} categories"
    page = _page(title, _e(f"pitscope {__version__} · {generated}"), [("categories", "per category")],
                 table + '<h2 style="margin-top:22px">Each category (click to open)</h2>' + "".join(bodies))
    means = json_safe(category_means(metrics))
    record = {"title": title, "version": __version__, "categories": records, "means": means}
    return _write(Path(out_dir), page, record)


# -- runs from model files -------------------------------------------------------------------
def load_category_runs(models: Sequence[str], overrides: Sequence[str], progress: bool) -> Iterable[CategoryRun]:
    """Load each model and its test split in turn (lazily: one model in memory at a time)."""
    from pitscope.config import apply_overrides
    from pitscope.data import build_dataset, prepare_split_file

    seen: dict[str, int] = {}
    for model in models:
        detector = Detector.load(model)
        cfg = apply_overrides(detector.cfg, list(overrides))
        detector.cfg.data = cfg.data
        prepare_split_file(cfg)
        dataset = build_dataset(cfg.data, "test", cfg.seed)
        for path, reason in dataset.check(progress=progress):
            log.warning("skipped bad file: %s: %s", path, reason)
        name = cfg.data.category or Path(model).resolve().parent.name
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}-{seen[name]}"
        yield CategoryRun(name, detector, dataset, Path(model).parent)
