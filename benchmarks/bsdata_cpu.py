"""BSData with the `cpu` preset: train, evaluate and record image/pixel AUROC and AUPRO per seed.

    python benchmarks/bsdata_cpu.py --seeds 0 1            # train + evaluate each seed, then record
    python benchmarks/bsdata_cpu.py --seeds 0 --collect    # only record runs already finished

Each seed runs `pitscope train --config cpu --set seed=S --evaluate` into runs/bench/cpu_seedS
(the split is the same for every seed: data.split_seed). Results go to
benchmarks/results/bsdata_cpu.json and .md with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAPER = {"image_auroc": 97.42, "pixel_auroc": 94.57}
UNTRAINED_REFERENCE = {"image_auroc": 95.9, "pixel_auroc": 75.4}


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_seed(seed: int, out_dir: Path, extra: list[str]) -> dict:
    cmd = ["pitscope", "train", "--config", "cpu", "--set", f"seed={seed}", "--evaluate", "--quiet",
           "--output-dir", str(out_dir), *extra]
    t0 = time.perf_counter()
    with (out_dir.parent / f"{out_dir.name}.log").open("w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"command": shlex.join(cmd), "wall_minutes": round((time.perf_counter() - t0) / 60, 1)}


def collect(seed: int, out_dir: Path) -> dict:
    metrics = json.loads((out_dir / "eval" / "metrics.json").read_text())
    model = torch.load(out_dir / "model.pt", map_location="cpu", weights_only=True)
    return {
        "seed": seed,
        "output_dir": str(out_dir.relative_to(REPO)) if out_dir.is_relative_to(REPO) else str(out_dir),
        "metrics": {k: (None if v is None else round(100 * v, 2)) for k, v in metrics["metrics"].items()},
        "training": model["metadata"].get("training"),
        "threshold": metrics["threshold"],
        "at_threshold": metrics["at_threshold"],
    }


def write_markdown(record: dict, path: Path) -> None:
    rows = record["runs"]
    lines = [
        "# BSData, `cpu` preset",
        "",
        f"Commit `{record['commit']}`, {record['date']}, {record['machine']['platform']}, "
        f"{record['machine']['cpu_count']} threads, torch {record['machine']['torch']}.",
        "",
        "| seed | image AUROC | pixel AUROC | AUPRO | epochs | training min | wall min |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, t = r["metrics"], r["training"] or {}
        lines.append(
            f"| {r['seed']} | {m['image_auroc']} | {m['pixel_auroc']} | {m['aupro']} | {t.get('epochs')} "
            f"| {t.get('minutes')} | {r.get('wall_minutes', 'n/a')} |"
        )
    lines += [
        f"| paper | {PAPER['image_auroc']} | {PAPER['pixel_auroc']} | | 800 | GPU | |",
        f"| PaDiM, untrained ResNet-18 (SPEC) | {UNTRAINED_REFERENCE['image_auroc']} | {UNTRAINED_REFERENCE['pixel_auroc']} | | 0 | | |",
        "",
        "Commands:",
        "",
        *[f"    {r['command']}" for r in rows if r.get("command")],
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--collect", action="store_true", help="do not train; record finished runs")
    parser.add_argument("--runs-dir", default="runs/bench")
    parser.add_argument("--name", default="bsdata_cpu", help="result file name under benchmarks/results/")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra --set for every run")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        out_dir = (REPO / args.runs_dir / f"cpu_seed{seed}").resolve()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        info = {} if args.collect else run_seed(seed, out_dir, [x for e in args.extra for x in ("--set", e)])
        runs.append({**collect(seed, out_dir), **info})
    record = {
        "benchmark": "bsdata_cpu",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "paper": PAPER,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2))
    write_markdown(record, RESULTS / f"{args.name}.md")
    print((RESULTS / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
