"""How many defect-free photos does a model need? The `cpu` preset trained on 25, 50, 100 and 200
of BSData's defect-free training photos, measured on the validation positions.

    python benchmarks/training_photos_curve.py --steps 60 --out runs/photo_curve

Every run sees the same number of training steps (`--steps` batches of `--batch-size`
photos: fewer photos, more epochs), with `data.holdout=positions` so that the validation
positions (181 defect-free and 95 pitting photos) are never trained on; `data.train_images=N`
takes a seeded random N of the 476 training photos, and a smaller N is a subset of a larger one.
Each run is `pitscope train` then `pitscope evaluate --split val`. Writes
benchmarks/results/training_photos_curve.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from pitscope.benchmark import commit, machine

RESULTS = Path(__file__).parent / "results"
SHOWN = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "pixel_f1", "iou_median", "normal_area_p99")


def run(command: list[str], log: Path) -> None:
    with log.open("a") as fh:
        fh.write("$ " + " ".join(command) + "\n")
        fh.flush()
        subprocess.run(command, check=True, stdout=fh, stderr=subprocess.STDOUT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--steps", type=int, default=60, help="training steps of every run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/photo_curve"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more config overrides")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pitscope = [sys.executable, "-m", "pitscope.cli"]
    rows = []
    for n in args.counts:
        epochs = math.ceil(args.steps * args.batch_size / n)
        out = args.out / f"n{n}"
        overrides = [
            "data.holdout=positions",
            f"data.train_images={n}",
            f"train.epochs={epochs}",
            f"train.batch_size={args.batch_size}",
            "train.budget_minutes=null",
            "train.precision=fp32",
            f"seed={args.seed}",
            *args.overrides,
        ]
        started = time.perf_counter()
        run(
            [
                *pitscope,
                "train",
                "--config",
                "cpu",
                "--quiet",
                "--output-dir",
                str(out),
                *[a for o in overrides for a in ("--set", o)],
            ],
            args.out / "log.txt",
        )
        trained = time.perf_counter() - started
        run(
            [
                *pitscope,
                "evaluate",
                str(out / "model.pt"),
                "--split",
                "val",
                "--quiet",
                "--output-dir",
                str(out / "val"),
            ],
            args.out / "log.txt",
        )
        record = json.loads((out / "val" / "metrics.json").read_text())
        rows.append(
            {
                "train_images": n,
                "epochs": epochs,
                "steps": math.ceil(n / args.batch_size) * epochs,
                "train_minutes": round(trained / 60, 1),
                "metrics": record["metrics"],
                "at_threshold": record["at_threshold"],
                "counts": record["counts"],
            }
        )
        print(n, {k: record["metrics"].get(k) for k in SHOWN}, flush=True)
    result = {
        "command": "python benchmarks/training_photos_curve.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "machine": machine(),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training_photos_curve.json").write_text(json.dumps(result, indent=1))

    def pct(value):
        return "–" if value is None else f"{100 * value:.2f}"

    lines = [
        "# How many defect-free training photos: BSData validation positions",
        "",
        f"`{result['command']}` at commit `{result['commit']}`; {result['machine']['cpu']}, "
        f"{result['machine']['cpu_count']} cores, torch {result['machine']['torch']}.",
        "",
        f"The `cpu` preset, seed {args.seed}, float32, {args.steps} steps of {args.batch_size} photos for "
        "every run (fewer photos, more epochs); measured on the validation positions' photos (never trained on).",
        "",
        "| training photos | epochs | training min | image AUROC | pixel AUROC | AUPRO | pixel AP | "
        "regions' pixel F1 | IoU median | defect-free area p99 | TPR / FPR at threshold |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, t = r["metrics"], r["at_threshold"]
        lines.append(
            f"| {r['train_images']} | {r['epochs']} | {r['train_minutes']} | {pct(m.get('image_auroc'))} | "
            f"{pct(m.get('pixel_auroc'))} | {pct(m.get('aupro'))} | {pct(m.get('pixel_ap'))} | "
            f"{pct(m.get('pixel_f1'))} | {pct(m.get('iou_median'))} | "
            f"{pct(m.get('normal_area_p99'))} | {pct(t['true_positive_rate'])} / "
            f"{pct(t['false_positive_rate'])} |"
        )
    (RESULTS / "training_photos_curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
