"""The report's pictures: the curves, the score histogram and the training curves as PNG data
URIs, and the gallery's four-panel tiles."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from pitscope.report.analysis import MAX_FPR
from pitscope.visualize import GREEN, boundary, heatmap, overlay

NORMAL_COLOUR, DEFECT_COLOUR, PIXEL_COLOUR = "#1f77b4", "#d62728", "#ff7f0e"


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
    ax.plot(
        curves["image_roc"]["fpr"],
        curves["image_roc"]["tpr"],
        c=NORMAL_COLOUR,
        label=f"image (AUROC {_pct(metrics['image_auroc'])})",
    )
    ax.plot(at_threshold["false_positive_rate"], at_threshold["true_positive_rate"], "o", c=NORMAL_COLOUR, ms=6)
    if "pixel_roc" in curves:
        ax.plot(
            curves["pixel_roc"]["fpr"],
            curves["pixel_roc"]["tpr"],
            c=PIXEL_COLOUR,
            label=f"pixel (AUROC {_pct(metrics['pixel_auroc'])})",
        )
        if pixel_at_threshold is not None:
            ax.plot(
                pixel_at_threshold["false_positive_rate"],
                pixel_at_threshold["true_positive_rate"],
                "o",
                c=PIXEL_COLOUR,
                ms=6,
            )
    ax.set(
        title="ROC (dots: the thresholds)",
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=9)

    ax = axes[1]
    ax.plot(
        curves["image_pr"]["recall"],
        curves["image_pr"]["precision"],
        c=NORMAL_COLOUR,
        label=f"image (AP {_pct(metrics['image_ap'])})",
    )
    if "pixel_pr" in curves:
        ax.plot(
            curves["pixel_pr"]["recall"],
            curves["pixel_pr"]["precision"],
            c=PIXEL_COLOUR,
            label=f"pixel (AP {_pct(metrics['pixel_ap'])})",
        )
    ax.set(title="precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=9)

    if "pro" in curves:
        ax = axes[2]
        fpr, pro = curves["pro"]["fpr"], curves["pro"]["pro"]
        ax.plot(fpr, pro, c=PIXEL_COLOUR, label=f"AUPRO {_pct(metrics['aupro'])}")
        ax.fill_between(fpr, pro, color=PIXEL_COLOUR, alpha=0.15)
        ax.set(
            title="per-region overlap",
            xlabel="false positive rate (pixels)",
            ylabel="mean region overlap",
            xlim=(0, MAX_FPR),
            ylim=(0, 1.01),
        )
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
    ax.set(xlabel="image score", ylabel="images")
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
    image: np.ndarray,
    mask: np.ndarray,
    anomaly_map: np.ndarray,
    pixel_threshold: float,
    vmin: float,
    vmax: float,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """One gallery row as (H, 4W + 3*gap, 3) uint8: the input, the ground truth (green fill and
    outline), the predicted region (red, with the ground truth's green outline for comparison)
    and the heatmap on the report's shared scale [vmin, vmax]."""
    marked = np.asarray(mask) != 0
    truth = image.copy()
    if marked.any():
        truth[marked] = np.round(0.65 * image[marked] + 0.35 * np.array(GREEN, np.float32)).astype(np.uint8)
        truth[boundary(marked)] = GREEN
    panels = [
        image,
        truth,
        overlay(image, anomaly_map, pixel_threshold, mask, region=region),
        heatmap(anomaly_map, vmin, vmax),
    ]
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2], gap, panels[3]], axis=1)
