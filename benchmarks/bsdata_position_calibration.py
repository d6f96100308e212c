"""Thresholds for a camera position a network never saw: each position calibrated on its own first photos.

    python benchmarks/bsdata_position_calibration.py runs/cross30/fold*/model.pt            # choose (validation)
    python benchmarks/bsdata_position_calibration.py runs/cross30/fold*/model.pt --test \\
        --first 10 --quantiles model --test-name bsdata_position_calibration_test             # measure once

The models are trained with `data.holdout=positions`, so no validation position trained them;
with `data.position_fold` (the cross-position protocol) neither did the fold's test positions.
A network's stored thresholds come from its own training photos. Here each unseen position gets
its own, as `pitscope calibrate MODEL GOOD_DIR` gives them from that position's earliest
defect-free photos by capture time (the first `K` of them): the image threshold is a quantile of
their image scores, the pixel threshold a quantile of their maps (`score.pixel_threshold_from`).
Quantiles "model" are the model's own (`score.threshold_quantile`,
`score.pixel_threshold_quantile`); "max" takes the largest of the K.

Without --test the validation positions are judged, every compared setting on the same photos:
each position's photos except its first `max(--firsts)` defect-free ones. Rows: the stored
thresholds, then each K and quantile rule. The rule that chooses, fixed before any row was seen:
the highest regions' pixel F1 (mean over the models) among the rows that flag at most 10% of the
defect-free photos with a defect-free area p99 of at most 1% of the photo; if no row qualifies,
the row that flags the fewest defect-free photos.

With --test each model judges its fold's positions (`positions.measured` of its split) with the
given K and quantile rule only, beside its stored thresholds on the same photos; each model's
look is appended to benchmarks/results/bsdata_test_looks.jsonl. Results go to
benchmarks/results/<name>.json and .md with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from bsdata_cpu import provenance  # this folder is on sys.path when run as a script

from pitscope.benchmark import commit, machine
from pitscope.benchmark.provenance import TEST_LOOKS, config_hash
from pitscope.calibration import calibrate
from pitscope.data import build_dataset
from pitscope.data.bsdata import bsdata_root, position_files, read_positions, read_split
from pitscope.data.dataset import AnomalyDataset
from pitscope.data.sequences import capture_time
from pitscope.evaluation import regions_at_settings
from pitscope.inference import Detector
from pitscope.metrics import evaluate_all, region_metrics
from pitscope.scoring import pixel_threshold_of, shown_maps

RESULTS = Path(__file__).parent / "results"
QUANTILE_RULES = ("model", "max")
FLAGGED_AT_MOST, AREA_P99_AT_MOST = 0.10, 0.01


def first_photos(records, files: set[str], k: int) -> list:
    """The first k defect-free records among `files` (file names), by capture time."""
    own = sorted(
        (r for r in records if r.label == 0 and Path(r.path).name in files), key=lambda r: capture_time(r.path)
    )
    if len(own) <= k:
        raise SystemExit(f"a position has {len(own)} defect-free photos, not more than {k}")
    return own[:k]


def quantiles(detector: Detector, rule: str) -> tuple[float, float]:
    """(image quantile, pixel quantile) of a quantile rule."""
    if rule == "max":
        return 1.0, 1.0
    return detector.cfg.score.threshold_quantile, detector.cfg.score.pixel_threshold_quantile


def position_thresholds(detector: Detector, ref_scores, ref_maps, rule: str) -> tuple[float, float]:
    """The thresholds `pitscope calibrate` derives from a position's reference photos' scores and maps."""
    q, pq = quantiles(detector, rule)
    return float(np.quantile(ref_scores.astype(np.float64), q)), pixel_threshold_of(
        ref_maps, pq, detector.cfg.score.pixel_threshold_from
    )


def measure(labels, masks, scores, maps, image_thresholds, pixel_thresholds, score_cfg) -> dict:
    """Decisions and regions with per-photo thresholds, and their metrics (fractions)."""
    decisions = scores > image_thresholds
    regions = np.zeros(maps.shape, dtype=bool)
    for t in np.unique(pixel_thresholds):
        mine = pixel_thresholds == t
        regions[mine] = regions_at_settings(maps[mine], decisions[mine], float(t), score_cfg)
    normal = labels == 0
    return {
        "flagged_defect_free": float(decisions[normal].mean()),
        "flagged_pitting": float(decisions[~normal].mean()),
        **region_metrics(labels, masks, regions),
    }


def measured_positions(path: Path, cfg) -> list[str]:
    """The test positions a cross-position model never saw (its split's `positions.measured`)."""
    split_file = cfg.data.split_file
    split = read_split(Path(split_file)) if split_file and Path(split_file).is_file() else {}
    if "measured" not in split.get("positions", {}):
        raise SystemExit(f"{path}: not a cross-position model (no data.position_fold): its test positions trained it")
    return split["positions"]["measured"]


def score_model(path: Path, test: bool, firsts: list[int], rules: list[str]) -> dict:
    """One model: its stored thresholds and each (K, rule) on the judged photos of the validation
    positions, or (test) of the test positions it never saw."""
    detector = Detector.load(path).eval()
    cfg = detector.cfg
    if cfg.data.holdout != "positions":
        raise SystemExit(f"{path}: trained without data.holdout=positions; its validation photos may have trained it")
    positions = measured_positions(path, cfg) if test else read_positions(cfg.data.positions_file)["validation"]
    data = build_dataset(cfg.data, "test" if test else "val", cfg.seed)
    by_name = {key[0]: set(files) for key, files in position_files(bsdata_root(cfg.data.root)).items()}
    k_max = max(firsts)
    refs = {name: first_photos(data.records, by_name[name], k_max) for name in positions}
    ref_names = {Path(r.path).name for rs in refs.values() for r in rs}
    judged_records = [
        r
        for r in data.records
        if Path(r.path).name not in ref_names and any(Path(r.path).name in by_name[n] for n in positions)
    ]
    judged = AnomalyDataset(judged_records, size=data.size, on_bad_file=data.on_bad_file, name="judged")
    ref_set = AnomalyDataset([r for n in positions for r in refs[n]], size=data.size, on_bad_file=data.on_bad_file)
    t0 = time.perf_counter()
    scores, maps = detector.score_dataset(judged, progress=True)
    ref_scores, ref_maps = detector.score_dataset(ref_set, progress=True)
    labels = np.asarray(judged.labels)
    masks = np.stack([judged[i].mask for i in range(len(judged))]) > 0
    # AnomalyDataset keeps its records sorted by path: read positions and ranks back from it
    position_of = np.array([next(n for n in positions if Path(r.path).name in by_name[n]) for r in judged.records])
    rank = {Path(r.path).name: i for n in positions for i, r in enumerate(refs[n])}
    ref_position = np.array([next(n for n in positions if Path(r.path).name in by_name[n]) for r in ref_set.records])
    ref_rank = np.array([rank[Path(r.path).name] for r in ref_set.records])
    pixel = evaluate_all(labels, scores, masks, shown_maps(maps, detector.cfg.score))  # the map shown
    rows = [
        {
            "setting": "stored",
            **measure(
                labels,
                masks,
                scores,
                maps,
                np.full(len(labels), float(detector.threshold)),
                np.full(len(labels), float(detector.pixel_threshold)),
                cfg.score,
            ),
        }
    ]
    checked = None
    for k in firsts:
        for rule in rules:
            image_t, pixel_t = np.zeros(len(labels)), np.zeros(len(labels))
            per_position = {}
            for name in positions:
                mine = (ref_position == name) & (ref_rank < k)
                t, pt = position_thresholds(detector, ref_scores[mine], ref_maps[mine], rule)
                image_t[position_of == name], pixel_t[position_of == name] = t, pt
                per_position[name] = {"threshold": t, "pixel_threshold": pt}
            if checked is None:  # the product's own path gives the same thresholds
                name = positions[0]
                q, pq = quantiles(detector, rule)
                result = calibrate(
                    detector, [r.path for r in refs[name][:k]], quantile=q, pixel_quantile=pq, progress=False
                )
                expected = per_position[name]
                if not (
                    np.isclose(result["threshold"], expected["threshold"], rtol=1e-5)
                    and np.isclose(result["pixel_threshold"], expected["pixel_threshold"], rtol=1e-5)
                ):
                    raise SystemExit(f"calibrate gave {result} against {expected}")
                checked = {"position": name, "first": k, "rule": rule}
            rows.append(
                {
                    "setting": f"first {k}, {rule}",
                    "first": k,
                    "rule": rule,
                    "per_position": per_position,
                    **measure(labels, masks, scores, maps, image_t, pixel_t, cfg.score),
                }
            )
    return {
        "model": str(path),
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "position_fold": cfg.data.position_fold,
        "positions": positions,
        "judged": {"defect_free": int((labels == 0).sum()), "pitting": int(labels.sum())},
        "references_per_position": k_max,
        "calibrate_checked": checked,
        "stored_thresholds": {
            "threshold": float(detector.threshold),
            "pixel_threshold": float(detector.pixel_threshold),
        },
        "quantiles": {rule: quantiles(detector, rule) for rule in QUANTILE_RULES},
        "maps": {k: pixel[k] for k in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max")},
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def mean_rows(models: list[dict]) -> list[dict]:
    """Each setting's metrics, the mean over the models (None where a model has none)."""
    out = []
    for i, row in enumerate(models[0]["rows"]):
        mean = {"setting": row["setting"]}
        for key, value in row.items():
            if isinstance(value, float) or value is None:
                values = [m["rows"][i][key] for m in models if m["rows"][i][key] is not None]
                mean[key] = float(np.mean(values)) if values else None
        out.append(mean)
    return out


def choose(rows: list[dict]) -> str:
    """The rule of the module docstring over the mean rows: the chosen setting's name."""
    ok = [
        r
        for r in rows
        if r["flagged_defect_free"] <= FLAGGED_AT_MOST and (r["normal_area_p99"] or 0.0) <= AREA_P99_AT_MOST
    ]
    if ok:
        return max(ok, key=lambda r: r["pixel_f1"] or 0.0)["setting"]
    return min(rows, key=lambda r: r["flagged_defect_free"])["setting"]


COLUMNS = (
    ("defect-free flagged", "flagged_defect_free"),
    ("pitting flagged", "flagged_pitting"),
    ("regions' pixel F1", "pixel_f1"),
    ("IoU median", "iou_median"),
    ("IoU q3", "iou_q3"),
    ("defect-free area p99", "normal_area_p99"),
    ("area within 2x", "area_within_2x"),
)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def write_markdown(record: dict, path: Path) -> None:
    test = record["test"]
    lines = [
        "# BSData: thresholds calibrated on each unseen position's first photos"
        + (" (test positions, scored once)" if test else " (validation positions)"),
        "",
        provenance(record),
        "",
        f"Command: `{record['invocation']}`",
        "",
        "Per model, the photos judged (those left after each position's first "
        f"{record['models'][0]['references_per_position']} defect-free photos) and its maps' metrics "
        "(thresholds do not move them):",
        "",
        "| model | positions | defect-free, pitting judged | image AUROC | pixel AUROC | pixel AP | AUPRO |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in record["models"]:
        lines.append(
            f"| {m['model']} | {len(m['positions'])} | {m['judged']['defect_free']}, {m['judged']['pitting']} | "
            + " | ".join(pct(m["maps"][k]) for k in ("image_auroc", "pixel_auroc", "pixel_ap", "aupro"))
            + " |"
        )
    lines += [
        "",
        "| thresholds | model | " + " | ".join(n for n, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for i, row in enumerate(record["mean_rows"]):
        name = row["setting"] + (" **(chosen)**" if row["setting"] == record.get("chosen") else "")
        lines.append(f"| {name} | mean | " + " | ".join(pct(row.get(k)) for _, k in COLUMNS) + " |")
        for m in record["models"]:
            r = m["rows"][i]
            lines.append(f"| | fold {m['position_fold']} | " + " | ".join(pct(r.get(k)) for _, k in COLUMNS) + " |")
    lines += [
        "",
        'Percent. "stored": the thresholds the network set on its own training photos. "first K, model": each '
        "position's thresholds from its first K defect-free photos at the model's quantiles (image "
        f"{record['models'][0]['quantiles']['model'][0]}, pixel {record['models'][0]['quantiles']['model'][1]} of "
        'the maps\' maxima); "max": their largest score and map maximum. Regions as the model draws them (its '
        "minimum size, core cut, regions only on photos decided defective). "
        + (
            f"Chosen by the rule fixed beforehand (highest regions' pixel F1 among rows flagging at most "
            f"{FLAGGED_AT_MOST:.0%} of the defect-free photos with an area p99 of at most {AREA_P99_AT_MOST:.0%}): "
            f"{record['chosen']}."
            if not test
            else "Scored once."
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="model.pt files trained with data.holdout=positions")
    parser.add_argument("--firsts", type=int, nargs="+", default=[5, 10, 20], help="K values compared (choosing)")
    parser.add_argument("--quantiles", nargs="+", default=list(QUANTILE_RULES), choices=QUANTILE_RULES)
    parser.add_argument("--test", action="store_true", help="judge each model's fold positions, once")
    parser.add_argument("--first", type=int, help="with --test: the chosen K")
    parser.add_argument("--name", default="bsdata_position_calibration_validation")
    parser.add_argument("--test-name", default="bsdata_position_calibration_test")
    args = parser.parse_args()
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        parser.error(f"no such model: {', '.join(missing)}")
    if args.test and (args.first is None or len(args.quantiles) != 1):
        parser.error("--test measures one setting: give --first K and one --quantiles rule")
    firsts = [args.first] if args.test else args.firsts
    if min(firsts) < 1:
        parser.error("K: at least 1")
    models = []
    for path in args.models:
        model = score_model(path, args.test, firsts, args.quantiles)
        models.append(model)
        print(f"{path}: {model['seconds']} s", file=sys.stderr)
    record = {
        "benchmark": "bsdata_position_calibration",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join(["python", *sys.argv]),
        "test": args.test,
        "models": models,
        "mean_rows": mean_rows(models),
    }
    if not args.test:
        record["chosen"] = choose(record["mean_rows"])
    record = json.loads(json.dumps(record).replace(f"{Path(__file__).resolve().parents[1]}/", ""))
    name = args.test_name if args.test else args.name
    RESULTS.mkdir(exist_ok=True)
    if args.test:
        with (RESULTS / TEST_LOOKS).open("a") as fh:
            for m in models:
                look = {
                    "commit": record["commit"],
                    "date": record["date"][:10],
                    "benchmark": "bsdata_position_calibration",
                    "model": m["model"],
                    "config_hash": m["config_hash"],
                    "setting": m["rows"][1]["setting"],
                    "maps": m["maps"],
                    "rows": {r["setting"]: {k: r[k] for _, k in COLUMNS} for r in m["rows"]},
                }
                fh.write(json.dumps(look) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    write_markdown(record, RESULTS / f"{name}.md")
    print((RESULTS / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
