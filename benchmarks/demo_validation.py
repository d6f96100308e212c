"""A preset's settings compared on the `val` split of its data (never its `test` split): the
synthetic data's own `val` stream, or, for a BSData model with `data.holdout=positions`, the
validation positions' photos.

    python benchmarks/demo_validation.py --name demo_validation_shape \\
        --variant "128x128=" --variant "80x200=data.image_size=80,data.image_width=200"
    python benchmarks/demo_validation.py --name demo_validation_scoring --refit runs/demo/model.pt \\
        --variant "as trained=" --variant "1024 images=data.synthetic.n_train=1024"

    python benchmarks/demo_validation.py --config surface --name surface_validation \\
        --set data.format=synthetic --set "data.synthetic.defects=[pit,scratch,stain]" \\
        --variant "as written=" --variant "warm-up=train.warmup_epochs=2"

Each --variant is NAME=OVERRIDES (comma-separated `section.key=value`, a list value in brackets
with its own commas, empty for the preset as it is), after the --set overrides every variant
shares (one KEY=VALUE each). Without --refit every variant trains a network with `pitscope.fitting.fit(PRESET, ...)`
(--config, default `demo`; seed 0 unless an override sets `seed`); with --refit MODEL every variant fits the scorers and
thresholds of MODEL's network again (`pitscope.fitting.refit`), for scoring-only settings. Each
is scored on `val`: image AUROC, pixel
AUROC, AUPRO, pixel AP, and recall and false-positive rate at the stored threshold; with more
than one defect kind, the image AUROC and AUPRO of each kind; for a network with a pseudo-defect
classifier, its cross-entropy in the last epoch and the first epoch it fell below 0.9 of chance. Results:
benchmarks/results/<name>.json and .md with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pitscope.benchmark import commit, machine
from pitscope.config import apply_overrides
from pitscope.data import build_dataset
from pitscope.evaluation import evaluate
from pitscope.fitting import fit, refit
from pitscope.inference import Detector
from pitscope.training import chance_cross_entropy

RESULTS = Path(__file__).parent / "results"
COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: give NAME=OVERRIDES (OVERRIDES may be empty)")
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(overrides):  # commas inside [...] belong to a list value
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0:
            break
        if ch == "," and depth == 0:
            parts.append(overrides[start:i])
            start = i + 1
    if depth:
        raise SystemExit(f"--variant {text!r}: unbalanced brackets")
    parts.append(overrides[start:])
    return name, [o for o in parts if o]


def at_quantiles(detector: Detector, result: dict, quantiles: list[float]) -> dict[str, dict]:
    """Recall and false-positive rate on the scored split had the image threshold been set at each
    of `quantiles` of the same out-of-fold training scores (read from the fit's calibration record,
    which keeps the quantiles of `pitscope.scorer_fitting.QUANTILE_GRID`): no refit per quantile."""
    kept = detector.metadata["calibration"]["score_quantiles"]
    rows = result["per_image"]
    labels = np.asarray(rows["labels"])
    scores = np.asarray(rows["scores"])
    out = {}
    for q in quantiles:
        if f"{q:g}" not in kept:
            raise SystemExit(f"--quantiles {q:g}: the calibration record keeps only {', '.join(kept)}")
        flagged = scores > kept[f"{q:g}"]
        out[f"{q:g}"] = {
            "recall": float(flagged[labels == 1].mean()),
            "false_positive_rate": float(flagged[labels == 0].mean()),
        }
    return out


def classifier_learning(detector: Detector) -> dict:
    """The classifier's cross-entropy in the last epoch and the first epoch (1-based) whose mean
    fell below 0.9 of chance (None: never); {} without a classifier or a training record."""
    losses = detector.metadata.get("training", {}).get("losses", [])
    if not losses or "ce" not in losses[-1]:
        return {}
    chance = chance_cross_entropy(detector.cfg.model.head, detector.n_kinds)
    learnt = [int(e["epoch"]) for e in losses if e["ce"] < 0.9 * chance]
    return {"ce_last": round(losses[-1]["ce"], 4), "ce_below_0.9_chance_at_epoch": learnt[0] if learnt else None}


def run_variant(
    preset: str,
    name: str,
    overrides: list[str],
    model: Detector | None,
    source: str | None,
    out: Path,
    quantiles: list[float],
) -> dict:
    start = time.perf_counter()
    torch.manual_seed(0)
    if model is None:
        detector = fit(preset, [*overrides, f"output_dir={out / name.replace(' ', '_')}"], progress=False, save=False)
        assert detector is not None  # one process: fit returns the detector
    else:
        detector = refit(model, apply_overrides(model.cfg, overrides), str(source), progress=False)
    result = evaluate(detector, build_dataset(detector.cfg.data, "val", 0), progress=False)
    at = result["at_threshold"]
    return {
        "variant": name,
        "overrides": overrides,
        "seed": detector.cfg.seed,
        **{k: round(100 * result["metrics"][k], 2) for k in COLUMNS},
        "recall": at.get("true_positive_rate"),
        "false_positive_rate": at.get("false_positive_rate"),
        "kinds": {
            group.removeprefix("kind "): {k: round(100 * subset["metrics"][k], 2) for k in ("image_auroc", "aupro")}
            for group, subset in result["subsets"].items()
            if group.startswith("kind ")
        },
        **classifier_learning(detector),
        "minutes": round((time.perf_counter() - start) / 60, 2),
        **({"at_quantiles": at_quantiles(detector, result, quantiles)} if quantiles else {}),
    }


def networks(record: dict) -> str:
    """What the rows' networks are: one refitted network, or one trained per row and its seed."""
    if record["refit"]:
        return f"`{record['refit']}`, scorers fitted again per row."
    seeds = [row.get("seed", 0) for row in record["rows"]]
    if len(set(seeds)) == 1:
        return f"one per row, seed {seeds[0]}."
    return (
        "one per row, each with its seed: "
        + "; ".join(f"{row['variant']}: seed {seed}" for row, seed in zip(record["rows"], seeds))
        + "."
    )


def markdown(record: dict) -> str:
    lines = [
        f"# The `{record.get('config', 'demo')}` preset, compared on the `val` split",
        "",
        f"Commit `{record['commit']}`, {record['date']}, {record['machine']['platform']}, "
        f"{record['machine']['torch_threads']} threads, torch {record['machine']['torch']}.",
        "",
        f"Command: `{record['command']}`",
        "",
        "Networks: " + networks(record),
        "",
        "| variant | overrides | image AUROC | pixel AUROC | AUPRO | pixel AP | recall | false-positive rate | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        overrides = " ".join(f"`{o}`" for o in row["overrides"]) or "the preset"
        numbers = " | ".join(str(row[k]) for k in (*COLUMNS, "recall", "false_positive_rate", "minutes"))
        lines.append(f"| {row['variant']} | {overrides} | {numbers} |")
    kinds = sorted({kind for row in record["rows"] for kind in row.get("kinds", {})})
    if kinds:
        lines += [
            "",
            "Each defect kind against every defect-free image (image AUROC / AUPRO), and the pseudo-defect "
            "classifier's cross-entropy in the last epoch, with the first epoch it fell below 0.9 of chance:",
            "",
            "| variant | " + " | ".join(kinds) + " | classifier cross-entropy (epoch) |",
            "|---|" + "---|" * (len(kinds) + 1),
        ]
        for row in record["rows"]:
            cells = [
                " / ".join(str(v) for v in row["kinds"][k].values()) if k in row.get("kinds", {}) else "–"
                for k in kinds
            ]
            ce = f"{row['ce_last']} ({row['ce_below_0.9_chance_at_epoch']})" if "ce_last" in row else "–"
            lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {ce} |")
    quantiled = [row for row in record["rows"] if row.get("at_quantiles")]
    if quantiled:
        lines += [
            "",
            "Recall and false-positive rate with the image threshold at other quantiles of the same "
            "out-of-fold training scores (no refit):",
            "",
            "| variant | " + " | ".join(quantiled[0]["at_quantiles"]) + " |",
            "|---|" + "---|" * len(quantiled[0]["at_quantiles"]),
        ]
        for row in quantiled:
            cells = [f"{v['recall']:.3f} at {v['false_positive_rate']:.3f}" for v in row["at_quantiles"].values()]
            lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Minutes are wall time on a machine that may have run other work beside; they are not a speed measurement.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=OVERRIDES")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override of every variant")
    parser.add_argument("--config", default="demo", help="the preset every variant starts from (default: demo)")
    parser.add_argument("--refit", help="a model file whose network every variant reuses")
    parser.add_argument("--name", required=True, help="results file name under benchmarks/results/")
    parser.add_argument("--out", type=Path, default=Path("runs/demo_validation"))
    parser.add_argument(
        "--quantiles", type=float, nargs="+", default=[], help="image-threshold quantiles also read off each fit"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = Detector.load(args.refit) if args.refit else None
    command = "python benchmarks/demo_validation.py " + " ".join(f"'{a}'" if " " in a else a for a in sys.argv[1:])
    rows: list[dict] = []
    for text in args.variant:
        name, overrides = parse_variant(text)
        overrides = [*args.set, *overrides]
        rows.append(run_variant(args.config, name, overrides, model, args.refit, args.out, args.quantiles))
        print(json.dumps(rows[-1]), flush=True)
        record = {
            "benchmark": "demo_validation",
            "command": command,
            "commit": commit(),
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "config": args.config,
            "refit": args.refit,
            "rows": rows,
        }
        RESULTS.mkdir(exist_ok=True)  # written after every variant: a stopped run keeps the rows it finished
        (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
        (RESULTS / f"{args.name}.md").write_text(markdown(record))
    print(f"wrote {RESULTS / args.name}.json and .md")


if __name__ == "__main__":
    main()
