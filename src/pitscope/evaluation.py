"""Scoring a test split and writing its metrics (JSON), per-image scores (CSV) and a table."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pitscope.data.types import Sample
from pitscope.inference import Detector
from pitscope.metrics import auroc_interval, evaluate_all

# BSData, table 3 of the paper: the numbers to beat (AUROC in %).
PAPER_BSDATA = {"image_auroc": 97.42, "pixel_auroc": 94.57}

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max", "pixel_f1_max")


def evaluate(
    detector: Detector, dataset: Sequence[Sample], out_dir: str | Path | None = None, progress: bool = True
) -> dict:
    """Score every test image, compute every metric, and write them under out_dir if given.

    Returns {"metrics": {...}, "image_auroc_interval": {...} or None, "counts": {...},
    "threshold": t, "at_threshold": {...}, "seconds": s}. Pixel metrics are None when the dataset
    has no masks or no defect pixel. The interval (DeLong's standard error, 95%) needs at least 2
    images of each kind.
    """
    if len(dataset) == 0:
        raise ValueError("the test split holds no images")
    labels = np.asarray(dataset.labels)
    if labels.min() == labels.max():
        raise ValueError("the test split needs both defect-free and defective images to measure AUROC")
    t0 = time.perf_counter()
    scores, maps = detector.score_dataset(dataset, progress=progress)
    has_masks = getattr(dataset, "has_masks", True)
    masks = np.stack([dataset[i].mask for i in range(len(dataset))]) if has_masks else None
    metrics = evaluate_all(labels, scores, masks, maps if has_masks else None)
    threshold = float(detector.threshold)
    decisions = scores > threshold
    result = {
        "metrics": metrics,
        "image_auroc_interval": auroc_interval(labels, scores) if min(labels.sum(), (labels == 0).sum()) >= 2 else None,
        "counts": {"images": int(len(labels)), "normal": int((labels == 0).sum()), "defective": int(labels.sum())},
        "threshold": threshold,
        "at_threshold": {
            "true_positive_rate": float(decisions[labels == 1].mean()),
            "false_positive_rate": float(decisions[labels == 0].mean()),
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        with (out / "scores.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "score", "is_defective"])
            for path, label, score, flag in zip(dataset.paths, labels, scores, decisions):
                writer.writerow([path, int(label), f"{score:.6g}", int(flag)])
    return result


def format_table(result: dict, dataset_format: str | None = None) -> str:
    """The metrics as a terminal table, in %, with the paper's BSData numbers beside ours."""
    paper = PAPER_BSDATA if dataset_format == "bsdata" else {}
    lines = [f"{'metric':<14} {'pitscope':>9}" + (f" {'paper':>7}" if paper else "")]
    for name in METRIC_NAMES:
        value = result["metrics"].get(name)
        text = "n/a" if value is None else f"{100 * value:.2f}"
        lines.append(f"{name:<14} {text:>9}" + (f" {paper[name]:>7.2f}" if name in paper else ""))
    counts = result["counts"]
    lines.append(
        f"threshold {result['threshold']:.4g}: TPR {100 * result['at_threshold']['true_positive_rate']:.1f}%, "
        f"FPR {100 * result['at_threshold']['false_positive_rate']:.1f}% "
        f"on {counts['normal']} normal + {counts['defective']} defective images"
    )
    interval = result.get("image_auroc_interval")
    if interval:
        lines.append(
            f"image_auroc {100 * interval['level']:.0f}% interval {100 * interval['low']:.2f}-{100 * interval['high']:.2f} "
            f"(DeLong standard error {100 * interval['se']:.2f}): the range chance alone spans on this many images"
        )
    return "\n".join(lines)
