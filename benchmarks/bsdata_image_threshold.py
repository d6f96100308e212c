"""The image threshold's quantile, chosen on BSData's validation positions (never the test photos).

    python benchmarks/bsdata_image_threshold.py runs/localisation/crops/crop_seed0/model.pt

The model must be trained with `data.holdout=positions`, so that the validation positions'
photos never trained it. Its image threshold is a quantile of its training images' scores
(`score.threshold_quantile` of the scores named in its calibration record); the record keeps
those scores' quantiles on a grid (`score_quantiles`). A model saved without them is fitted again
with its own settings first (saved beside it as `<stem>_refit.pt`, reused by a later run while
it is newer than the model). Every
photo of the validation positions is then scored once, and for each quantile of the grid the
threshold it gives is applied: recall on the pitting photos, false-positive rate on the
defect-free ones, precision and F1. The quantile chosen is the lowest whose false-positive rate
on these photos stays within --max-fpr. Results: benchmarks/results/<name>.json and .md with the
command, commit and machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bsdata_cpu import provenance, write_result  # this folder is on sys.path when run as a script
from bsdata_localisation import check_model

from pitscope.benchmark import commit, machine
from pitscope.calibration import decision_rates
from pitscope.data import build_dataset
from pitscope.inference import Detector


def with_quantiles(path: Path) -> tuple[Detector, Path]:
    """The model, fitted again with its own settings when its record has no score quantiles."""
    detector = Detector.load(path)
    check_model(detector, path)
    if "score_quantiles" in detector.metadata.get("calibration", {}):
        return detector, path
    again = path.with_name(f"{path.stem}_refit.pt")
    if again.is_file() and again.stat().st_mtime > path.stat().st_mtime:
        return Detector.load(again), again
    refit = Detector(detector.cfg, detector.n_kinds, net=detector.net)
    refit.metadata = {k: v for k, v in detector.metadata.items() if k != "calibration"}
    refit.fit(build_dataset(detector.cfg.data, "train", detector.cfg.seed), progress=True)
    refit.save(again)
    return refit, again


def at_thresholds(scores: np.ndarray, labels: np.ndarray, grid: dict[str, float]) -> list[dict]:
    """Recall, false-positive rate, precision and F1 of `scores > threshold` at each grid threshold."""
    rows = []
    for quantile, threshold in grid.items():
        at = decision_rates(labels, scores, threshold)
        fpr = float((scores[labels == 0] > threshold).mean())
        rows.append(
            {
                "quantile": float(quantile),
                "threshold": round(threshold, 4),
                "recall": round(at["recall"], 4),
                "false_positive_rate": round(fpr, 4),
                "precision": round(at["precision"], 4),
                "f1": round(at["f1"], 4),
            }
        )
    return rows


def chosen(rows: list[dict], max_fpr: float) -> dict | None:
    """The lowest quantile whose false-positive rate is within max_fpr (None when none is)."""
    within = [r for r in rows if r["false_positive_rate"] <= max_fpr]
    return min(within, key=lambda r: r["quantile"]) if within else None


def markdown(record: dict) -> str:
    lines = [
        "# The image threshold's quantile on BSData's validation positions",
        "",
        provenance(record),
        "",
        f"Command: `{record['command']}`",
        "",
        f"Model: `{record['model']}` (scores' quantiles from `{record['scored_with']}`); "
        f"{record['photos']['normal']} defect-free and {record['photos']['defective']} pitting photos "
        f"of the validation positions; the model's own quantile: {record['model_quantile']:g}.",
        "",
        "| quantile | threshold | recall | false-positive rate | precision | F1 |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['quantile']:g} | {r['threshold']} | {r['recall']} | {r['false_positive_rate']} "
            f"| {r['precision']} | {r['f1']} |"
        )
    pick = record["chosen"]
    lines += [
        "",
        f"Chosen (the lowest quantile with a false-positive rate within {record['max_fpr']:g}): "
        + (f"{pick['quantile']:g}." if pick else "none of the grid."),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--max-fpr", type=float, default=0.05, help="false-positive rate allowed (default 0.05)")
    parser.add_argument("--name", default="bsdata_image_threshold_validation")
    args = parser.parse_args()
    torch.manual_seed(0)
    detector, scored_with = with_quantiles(args.model)
    cfg = detector.cfg
    val = build_dataset(cfg.data, "val", cfg.seed)
    scores, _ = detector.score_dataset(val, progress=True)
    labels = np.asarray(val.labels)
    record = detector.metadata["calibration"]
    rows = at_thresholds(np.asarray(scores), labels, record["score_quantiles"])
    result = {
        "command": "python benchmarks/bsdata_image_threshold.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": str(args.model),
        "scored_with": str(scored_with),
        "model_quantile": record["quantile"],
        "photos": {"normal": int((labels == 0).sum()), "defective": int((labels == 1).sum())},
        "max_fpr": args.max_fpr,
        "rows": rows,
        "chosen": chosen(rows, args.max_fpr),
    }
    write_result(args.name, result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
