"""Scoring a test split and writing its metrics (JSON), per-image scores (CSV) and a table."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
import torch

from pitscope.config import Config
from pitscope.data import without_files
from pitscope.data.bsdata import bsdata_root, type_groups
from pitscope.data.types import DatasetLayoutError, Sample, SampleSet
from pitscope.defect_regions import region_mask, regions_shown
from pitscope.metrics import auroc_interval, evaluate_all, region_metrics
from pitscope.scoring import shown_maps

log = logging.getLogger(__name__)

# BSData, table 3 of the paper: the numbers to beat (AUROC in %).
PAPER_BSDATA = {"image_auroc": 97.42, "pixel_auroc": 94.57}

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max", "pixel_f1_max")
REGION_NAMES = ("pixel_f1", "iou_median", "iou_q1", "iou_q3", "normal_area_median", "normal_area_p99", "area_within_2x")


def kind_groups(paths: Sequence[str], labels: np.ndarray) -> dict[str, np.ndarray]:
    """The defective images of each defect kind, as (N,) bool over `paths`, the kind being the
    name of the folder that holds the image (MVTec's `test/<kind>/`, the synthetic data's
    `pitting`, `scratch`, `stain`); {} when the defective images share one folder."""
    defective = np.asarray(labels) == 1
    kinds = np.array([PurePosixPath(str(p).replace("\\", "/")).parent.name for p in paths])
    names = sorted(set(kinds[defective]))
    return {f"kind {name}": defective & (kinds == name) for name in names} if len(names) > 1 else {}


class DatasetScorer(Protocol):
    """What `evaluate` uses of a `Detector`: its config, its thresholds and `score_dataset`."""

    @property
    def cfg(self) -> Config: ...

    @property
    def threshold(self) -> torch.Tensor: ...

    @property
    def pixel_threshold(self) -> torch.Tensor: ...

    def score_dataset(self, dataset: Sequence[Sample], progress: bool = True) -> tuple[np.ndarray, np.ndarray]: ...


def predicted_regions(
    maps: np.ndarray,
    decisions: np.ndarray,
    pixel_threshold: float,
    min_fraction: float,
    regions_on: str,
    core: float = 0.0,
    peak_max: float = 0.0,
) -> np.ndarray:
    """(N, H, W) bool: the predicted region of each map, as `Prediction.defect_region` draws it.

    maps: (N, H, W); decisions: (N,) bool image decisions (used when regions_on is "defective").
    """
    regions = np.zeros(np.shape(maps), dtype=bool)
    for i, amap in enumerate(maps):
        shown, at_least_one = regions_shown(regions_on, bool(decisions[i]))
        if shown:
            regions[i] = region_mask(amap, pixel_threshold, min_fraction, core, at_least_one, peak_max)
    return regions


def regions_at_settings(maps: np.ndarray, decisions: np.ndarray, pixel_threshold: float, score) -> np.ndarray:
    """`predicted_regions` at a model's region settings (`score`: its config's score section)."""
    return predicted_regions(
        maps,
        decisions,
        pixel_threshold,
        score.min_region_fraction,
        score.regions_on,
        score.region_core,
        score.peak_region_max,
    )


def subset_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    regions: np.ndarray | None,
) -> dict:
    """`evaluate_all` and, with masks, `region_metrics` of one set of images, merged in one dict."""
    metrics = evaluate_all(labels, scores, masks, maps)
    if masks is not None and regions is not None and np.any(masks):
        metrics.update(region_metrics(labels, masks, regions))
    return metrics


def _subsets(
    groups: dict[str, np.ndarray],
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None,
    maps: np.ndarray,
    regions: np.ndarray | None,
) -> dict:
    """{name: {"metrics", "counts"}}: each group's defective images measured with every
    defect-free one; a group left with a single kind of image is left out."""
    subsets = {}
    for name, member in groups.items():
        keep = (labels == 0) | np.asarray(member, dtype=bool)
        if labels[keep].min() != labels[keep].max():
            subsets[name] = {
                "metrics": subset_metrics(
                    labels[keep],
                    scores[keep],
                    None if masks is None else masks[keep],
                    None if masks is None else maps[keep],
                    None if regions is None else regions[keep],
                ),
                "counts": {"normal": int((labels[keep] == 0).sum()), "defective": int(labels[keep].sum())},
            }
    return subsets


def _result(
    metrics: dict,
    subsets: dict,
    labels: np.ndarray,
    scores: np.ndarray,
    decisions: np.ndarray,
    threshold: float,
    paths: list,
    left_out: int,
    t0: float,
) -> dict:
    """`evaluate`'s result dict (see there); "seconds" counts from `t0` to now."""
    result = {
        "metrics": metrics,
        "subsets": subsets,
        "image_auroc_interval": auroc_interval(labels, scores) if min(labels.sum(), (labels == 0).sum()) >= 2 else None,
        "counts": {
            "images": int(len(labels)),
            "normal": int((labels == 0).sum()),
            "defective": int(labels.sum()),
            "left_out_trained_on": left_out,
        },
        "threshold": threshold,
        "at_threshold": {
            "true_positive_rate": float(decisions[labels == 1].mean()),
            "false_positive_rate": float(decisions[labels == 0].mean()),
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
    result["per_image"] = {
        "paths": paths,
        "labels": [int(v) for v in labels],
        "scores": [float(v) for v in scores],
        "is_defective": [bool(v) for v in decisions],
    }
    return result


def evaluate(
    detector: DatasetScorer,
    dataset: SampleSet,
    *,
    progress: bool = True,
    groups: dict[str, np.ndarray] | None = None,
) -> dict:
    """Score every test image and compute every metric; `write_evaluation` writes the result.

    Returns {"metrics": {...}, "subsets": {...}, "image_auroc_interval": {...} or None,
    "counts": {...}, "threshold": t, "at_threshold": {...}, "seconds": s, "per_image": {"paths",
    "labels", "scores", "is_defective"}}. "metrics" holds
    METRIC_NAMES and, with masks, REGION_NAMES (the predicted regions at the stored pixel
    threshold, `predicted_regions`). The pixel metrics rank the map shown
    (`pitscope.scoring.shown_maps`), the regions are cut from the map before it. Pixel metrics are None when the dataset has no masks or no
    defect pixel. groups: {name: (N,) bool}; each names a subset of the defective images,
    measured with every defect-free image into "subsets"[name] ({"metrics", "counts"}); for
    BSData they default to its two ball-screw types (`bsdata.type_groups`), elsewhere to the
    defect kinds when the defective images lie in more than one folder (`kind_groups`).
    The interval (DeLong's standard error, 95%) needs at least 2 images of each kind.
    """
    metadata = getattr(detector, "metadata", {})
    trained_on = {d["sha256"] for d in (*metadata.get("labelled_defects", []), *metadata.get("references", []))}
    dataset, left_out = without_files(dataset, trained_on)  # a photo the model learned from measures nothing
    for path in left_out:
        log.info("left out of the measurement: %s (a labelled or reference photo the model learned from)", path)
    if len(dataset) == 0:
        raise ValueError("the test split holds no images")
    labels = np.asarray(dataset.labels)
    if labels.min() == labels.max():
        raise ValueError("the test split needs both defect-free and defective images to measure AUROC")
    t0 = time.perf_counter()
    scores, maps = detector.score_dataset(dataset, progress=progress)
    if groups is None and detector.cfg.data.format == "bsdata" and len(getattr(dataset, "paths", ())) == len(labels):
        try:
            groups = type_groups(list(dataset.paths), labels, bsdata_root(detector.cfg.data.root))
        except (FileNotFoundError, DatasetLayoutError) as exc:  # no image_data.json: no rows by screw type
            log.warning("no subsets by ball-screw type: %s", exc)
    if groups is None and detector.cfg.data.format != "bsdata" and len(getattr(dataset, "paths", ())) == len(labels):
        groups = kind_groups(list(dataset.paths), labels)
    has_masks = getattr(dataset, "has_masks", True)
    masks = np.stack([dataset[i].mask for i in range(len(dataset))]) if has_masks else None
    threshold = float(detector.threshold)
    decisions = scores > threshold
    regions = None
    if has_masks:
        regions = regions_at_settings(maps, decisions, float(detector.pixel_threshold), detector.cfg.score)
    shown = shown_maps(maps, detector.cfg.score)  # the pixel metrics rank the map shown
    metrics = subset_metrics(labels, scores, masks, shown if has_masks else None, regions)
    subsets = _subsets(groups or {}, labels, scores, masks, shown, regions)
    return _result(metrics, subsets, labels, scores, decisions, threshold, list(dataset.paths), len(left_out), t0)


def write_evaluation(result: dict, out_dir: str | Path) -> Path:
    """Write `evaluate`'s result under out_dir: metrics.json (all but the per-image rows) and
    scores.csv (path, label, score, is_defective per image). Returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k != "per_image"}, indent=2))
    rows = result["per_image"]
    with (out / "scores.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "score", "is_defective"])
        for path, label, score, flag in zip(rows["paths"], rows["labels"], rows["scores"], rows["is_defective"]):
            writer.writerow([path, label, f"{score:.6g}", int(flag)])
    return out


def format_table(result: dict, dataset_format: str | None = None) -> str:
    """The metrics as a terminal table, in %, with the paper's BSData numbers beside ours."""
    paper = PAPER_BSDATA if dataset_format == "bsdata" else {}
    lines = [f"{'metric':<14} {'pitscope':>9}" + (f" {'paper':>7}" if paper else "")]
    for name in METRIC_NAMES:
        value = result["metrics"].get(name)
        text = "n/a" if value is None else f"{100 * value:.2f}"
        lines.append(f"{name:<14} {text:>9}" + (f" {paper[name]:>7.2f}" if name in paper else ""))
    regions = [name for name in REGION_NAMES if result["metrics"].get(name) is not None]
    if regions:
        lines.append(
            "predicted regions at the stored pixel threshold: "
            + ", ".join(f"{name} {result['metrics'][name]:.3f}" for name in regions)
        )
    for name, subset in result.get("subsets", {}).items():
        m = subset["metrics"]
        lines.append(
            f"{name} ({subset['counts']['defective']} defective): "
            + ", ".join(
                f"{key} {100 * m[key]:.2f}"
                for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
                if m.get(key) is not None
            )
        )
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
