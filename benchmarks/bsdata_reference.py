"""A position's own reference photos: BSData's validation positions scored unseen and seen.

    python benchmarks/bsdata_reference.py runs/seeds/bf16_seed0/model.pt runs/shape/crop_seed0/model.pt \\
        --references 10 --name bsdata_reference_validation

The test positions of `data.holdout=positions` are seen positions: the paper's split trains on
defect-free photos of every one of them. The validation positions are unseen: none of their
photos trains the network or its scorers. This benchmark scores the validation positions both
ways, on the same photos:
- unseen: the model as saved;
- seen: the scorers fitted again with the model's own settings on its training photos plus the
  earliest `--references` defect-free photos of each validation position, by capture time
  (`pitscope refit --references`), as a user adds a new camera position's first good photos
  without training again.
The reference photos are not scored; every other validation photo is, in both rows. The network
is the same in both rows: only the Gaussians and the thresholds see the references. For each row:
the image AUROC of the model's image score and of the map maximum, the maps' pixel AUROC, pixel
AP, AUPRO and F1-max, and the regions at the model's stored settings (pixel F1, IoU, the area on
defect-free photos). Results go to benchmarks/results/<name>.json and .md with the command,
commit and machine. Validation photos only: nothing here scores the test split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from bsdata_cpu import provenance, save_models  # this folder is on sys.path when run as a script

from pitscope.data import build_dataset
from pitscope.data.bsdata import bsdata_root, position_files, read_positions
from pitscope.data.dataset import AnomalyDataset
from pitscope.data.sequences import capture_time
from pitscope.evaluation import regions_at_settings
from pitscope.fitting import refit
from pitscope.inference import Detector
from pitscope.metrics import evaluate_all, region_metrics
from pitscope.scoring import shown_maps


def reference_names(val: AnomalyDataset, root: Path, per_position: int, positions: list[str] | None = None) -> set[str]:
    """The earliest `per_position` defect-free photos of `val` of each of `positions` (default: the
    validation positions of the position split), by capture time."""
    names = read_positions()["validation"] if positions is None else positions
    by_name = {key[0]: set(files) for key, files in position_files(root).items()}
    normal = {Path(r.path).name for r in val.records if r.label == 0}
    chosen: set[str] = set()
    for name in names:
        own = sorted(normal & by_name[name], key=lambda f: (capture_time(f), f))
        if len(own) <= per_position:
            raise SystemExit(f"position {name}: {len(own)} defect-free photos, not more than --references")
        chosen.update(own[:per_position])
    return chosen


def measure(detector: Detector, judged: AnomalyDataset) -> dict:
    """Image and map metrics of the judged photos, and the regions at the model's stored settings."""
    scores, maps = detector.score_dataset(judged, progress=True)
    labels = np.asarray(judged.labels)
    masks = np.stack([judged[i].mask for i in range(len(judged))])
    pixel = evaluate_all(labels, scores, masks, shown_maps(maps, detector.cfg.score))  # the map shown
    decisions = scores > float(detector.threshold)
    regions = regions_at_settings(maps, decisions, float(detector.pixel_threshold), detector.cfg.score)
    map_max = evaluate_all(labels, maps.reshape(len(maps), -1).max(axis=1))
    normal = labels == 0
    return {
        "image_auroc": pixel["image_auroc"],
        "map_max_auroc": map_max["image_auroc"],
        **{k: pixel[k] for k in ("pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max")},
        "flagged_defect_free": float(decisions[normal].mean()),
        "flagged_pitting": float(decisions[~normal].mean()),
        **region_metrics(labels, masks, regions),
    }


SETTINGS = ("neighbourhood", "smoothing_sigma", "map_normalisation", "image_features", "threshold_quantile")


def score_model(path: Path, per_position: int, cache: Path | None = None) -> dict:
    """One model's record; kept in `cache` (keyed by the model file's path, size and time, and
    per_position) so that a later run with more models scores only the new ones."""
    if cache is not None:
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{per_position}".encode()).hexdigest()
        hit = cache / f"{key[:16]}.json"
        if hit.is_file():
            return json.loads(hit.read_text())
        record = score_model(path, per_position)
        cache.mkdir(parents=True, exist_ok=True)
        hit.write_text(json.dumps(record))
        return record
    saved = Detector.load(path).eval()
    cfg = saved.cfg
    if cfg.data.holdout != "positions":
        raise SystemExit(f"{path}: trained without data.holdout=positions; its validation photos may have trained it")
    train = build_dataset(cfg.data, "train", cfg.seed)
    val = build_dataset(cfg.data, "val", cfg.seed)
    references = reference_names(val, bsdata_root(cfg.data.root), per_position)
    kept = [r for r in val.records if Path(r.path).name not in references]
    extra = [r for r in val.records if Path(r.path).name in references]
    judged = AnomalyDataset(kept, size=val.size, on_bad_file=val.on_bad_file, name="bsdata-val-judged")
    t0 = time.perf_counter()
    unseen = measure(saved, judged)
    seen_detector = refit(saved, cfg, path, progress=True, references=[r.path for r in extra])
    seen = measure(seen_detector.eval(), judged)
    labels = np.asarray(judged.labels)
    return {
        "model": str(path),
        "seed": cfg.seed,
        "epochs": saved.metadata.get("training", {}).get("epochs"),
        "precision": cfg.train.precision,
        "score": {k: getattr(cfg.score, k) for k in SETTINGS},
        "unseen": unseen,
        "seen": seen,
        "counts": {
            "references": len(extra),
            "training": len(train),
            "judged_normal": int((labels == 0).sum()),
            "judged_defective": int(labels.sum()),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


COLUMNS = (
    ("image AUROC", "image_auroc"),
    ("map max AUROC", "map_max_auroc"),
    ("pixel AUROC", "pixel_auroc"),
    ("pixel AP", "pixel_ap"),
    ("AUPRO", "aupro"),
    ("pixel F1", "pixel_f1"),
    ("IoU median", "iou_median"),
    ("defect-free area p99", "normal_area_p99"),
    ("defect-free flagged", "flagged_defect_free"),
    ("pitting flagged", "flagged_pitting"),
)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def write_markdown(record: dict, path: Path) -> None:
    first = record["models"][0]["counts"]
    lines = [
        "# BSData's validation positions, unseen and seen",
        "",
        provenance(record),
        "",
        f"Command: `{record['invocation']}`",
        "",
        f"Judged: {first['judged_normal']} defect-free and {first['judged_defective']} pitting photos of the "
        f"validation positions. Seen: the scorers fitted again on the {first['training']} training photos plus "
        f"{first['references']} reference photos (each validation position's earliest defect-free photos); the "
        "network is the same. Percent; regions at each model's stored settings.",
        "",
        *(
            [
                "The models' scoring settings differ: "
                + "; ".join(f"{m['model']}: {m['score']}" for m in record["models"])
                + ".",
                "",
            ]
            if len({json.dumps(m["score"], sort_keys=True) for m in record["models"]}) > 1
            else [f"Scoring settings: {record['models'][0]['score']}.", ""]
        ),
        "| model | positions | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for m in record["models"]:
        label = f"{m['model']} (seed {m['seed']}, {m['precision']}, {m['epochs']} epochs)"
        for row in ("unseen", "seen"):
            lines.append(f"| {label} | {row} | " + " | ".join(pct(m[row].get(k)) for _, k in COLUMNS) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="model.pt files trained with data.holdout=positions")
    parser.add_argument("--references", type=int, default=10, help="reference photos per validation position")
    parser.add_argument("--cache", type=Path, default=Path("runs/reference_cache"), help="per-model records kept here")
    parser.add_argument(
        "--name", default="bsdata_reference_validation", help="result file name under benchmarks/results/"
    )
    args = parser.parse_args()
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        parser.error(f"no such model: {', '.join(missing)}")
    if args.references < 1:
        parser.error("--references: at least 1")
    jobs = [(path, lambda p=path: score_model(p, args.references, args.cache)) for path in args.models]
    save_models("bsdata_reference", args.name, write_markdown, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
