"""BSData with the `cpu` preset: train, evaluate and record image/pixel AUROC and AUPRO per seed.

    python benchmarks/bsdata_cpu.py --seeds 0 1            # train + evaluate each seed, then record
    python benchmarks/bsdata_cpu.py --seeds 0 --collect    # only record runs already finished

Each seed runs `pitscope train --config cpu --set seed=S --evaluate` into runs/bench/cpu_seedS
(the split is the same for every seed: data.split_seed). Results go to
benchmarks/results/bsdata_cpu.json and .md with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pitscope.benchmark import commit, machine
from pitscope.metrics import auroc_interval

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAPER = {"image_auroc": 97.42, "pixel_auroc": 94.57}
UNTRAINED_REFERENCE = {"image_auroc": 95.9, "pixel_auroc": 75.4}


def run_seed(seed: int, out_dir: Path, extra: list[str]) -> dict:
    cmd = [
        "pitscope",
        "train",
        "--config",
        "cpu",
        "--set",
        f"seed={seed}",
        "--evaluate",
        "--quiet",
        "--output-dir",
        str(out_dir),
        *extra,
    ]
    t0 = time.perf_counter()
    with (out_dir.parent / f"{out_dir.name}.log").open("w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"command": shlex.join(cmd), "wall_minutes": round((time.perf_counter() - t0) / 60, 1)}


def image_interval(metrics: dict, folder: Path) -> dict | None:
    """evaluate()'s image AUROC interval in %; for metrics written before evaluate() gave it, the
    same computed from the folder's scores.csv; None without either."""
    interval = metrics.get("image_auroc_interval")
    if not interval and (folder / "scores.csv").is_file():
        with (folder / "scores.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        interval = auroc_interval(
            np.array([int(r["label"]) for r in rows]), np.array([float(r["score"]) for r in rows])
        )
    if not interval:
        return None
    return {k: (v if k == "level" else round(100 * v, 2)) for k, v in interval.items()}


def interval_text(interval: dict | None) -> str:
    return "n/a" if not interval else f"{interval['low']}-{interval['high']}"


# Evaluation folders of a run: eval/ (written by train --evaluate, maps as the run's config says)
# and eval_<normalisation>/ (pitscope evaluate MODEL --set score.map_normalisation=... afterwards).
def collect(seed: int, out_dir: Path) -> dict:
    model = torch.load(out_dir / "model.pt", map_location="cpu", weights_only=True)
    evaluations = {}
    for folder in sorted(out_dir.glob("eval*")):
        metrics_file = folder / "metrics.json"
        if not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        cfg = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else None
        norm = (cfg or model["config"])["score"].get("map_normalisation", "none")
        evaluations[norm] = {
            "folder": folder.name,
            "metrics": {k: (None if v is None else round(100 * v, 2)) for k, v in metrics["metrics"].items()},
            "image_auroc_interval": image_interval(metrics, folder),
            "threshold": metrics["threshold"],
            "at_threshold": metrics["at_threshold"],
        }
    return {
        "seed": seed,
        "output_dir": str(out_dir.relative_to(REPO)) if out_dir.is_relative_to(REPO) else str(out_dir),
        "training": model["metadata"].get("training"),
        "evaluations": evaluations,
    }


def provenance(record: dict) -> str:
    """The line that says where a result was measured: commit, date, machine, torch (and CUDA)."""
    m = record["machine"]
    return (
        f"Commit `{record['commit']}`, {record['date']}, {m['platform']}, {m['cpu_count']} threads, "
        f"torch {m['torch']}" + (f", {m['cuda']}" if m.get("cuda") else "") + "."
    )


def write_result(name: str, record: dict, markdown: str) -> None:
    """Write benchmarks/results/<name>.json (the record) and .md (the Markdown), then print the Markdown."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def note(record: dict) -> list[str]:
    """The record's note (where a result needs a word on how it was made) as Markdown lines: a blank
    line, then the note; none without one."""
    return ["", record["note"]] if record.get("note") else []


def write_markdown(record: dict, path: Path) -> None:
    rows = record["runs"]
    lines = [
        "# BSData, `cpu` preset",
        "",
        provenance(record),
        *note(record),
        "",
        "| seed | maps | image AUROC | its 95% interval | pixel AUROC | AUPRO | epochs | training min | wall min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["training"] or {}
        for norm, e in r["evaluations"].items():
            m = e["metrics"]
            lines.append(
                f"| {r['seed']} | {norm} | {m['image_auroc']} | {interval_text(e.get('image_auroc_interval'))} "
                f"| {m['pixel_auroc']} | {m['aupro']} | {t.get('epochs')} "
                f"| {t.get('minutes')} | {r.get('wall_minutes', 'n/a')} |"
            )
    lines += [
        f"| paper | | {PAPER['image_auroc']} | | {PAPER['pixel_auroc']} | | 800 | GPU | |",
        f"| PaDiM, untrained ResNet-18 (SPEC) | none | {UNTRAINED_REFERENCE['image_auroc']} | | "
        f"{UNTRAINED_REFERENCE['pixel_auroc']} | | 0 | | |",
        "",
        "The interval: DeLong's standard error of the image AUROC on these test images, +/- 1.96 of it "
        "(from the run's scores.csv where its metrics.json predates it).",
        "",
        "Commands:",
        "",
        *[f"    {r['command']}" for r in rows if r.get("command")],
        *[f"    {c}" for c in record.get("extra_commands", [])],
        "",
    ]
    path.write_text("\n".join(lines))


def save(record: dict, name: str, write_markdown) -> None:
    """Write benchmarks/results/<name>.json and, by `write_markdown(record, path)`, <name>.md; print the latter."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2))
    write_markdown(record, RESULTS / f"{name}.md")
    print((RESULTS / f"{name}.md").read_text())


def models_main(doc: str, benchmark: str, score, write_markdown, splits: bool = False) -> int:
    """The command line of a benchmark over trained models: MODEL... [--name NAME] [--set score.KEY=VALUE];
    `score(path, overrides)` gives each model's record, with the score.* settings to refit with; the
    records go to benchmarks/results/NAME.json and .md (by `write_markdown`) with the commit they
    started from, the date, the machine and the command. With `splits`, --split test|val is offered
    and passed on: `score(path, overrides, split)`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="model.pt files of BSData runs")
    parser.add_argument("--name", default=benchmark, help="result file name under benchmarks/results/")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="score.KEY=VALUE",
        help="a scoring setting for every model's refit (repeatable)",
    )
    if splits:
        parser.add_argument(
            "--split", choices=("test", "val"), default="test", help="the photos scored (val: for choosing)"
        )
    args = parser.parse_args()
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        parser.error(f"no such model: {', '.join(missing)}")
    if any(not o.startswith("score.") for o in args.overrides):
        parser.error("--set takes scoring settings only (score.KEY=VALUE): the networks are trained")
    save_models(
        benchmark,
        args.name,
        write_markdown,
        [
            (path, lambda p=path: score(p, args.overrides, args.split) if splits else score(p, args.overrides))
            for path in args.models
        ],
    )
    return 0


def save_models(benchmark: str, name: str, write_markdown, jobs) -> None:
    """Run `jobs` ([(path, a call giving that model's record)], timed one by one) and save their
    records as one result (`save`) with the commit they started from, the date, the machine and
    the command."""
    source = commit()
    models = []
    for path, job in jobs:
        t0 = time.perf_counter()
        models.append(job())
        print(f"{path}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    record = {
        "benchmark": benchmark,
        "commit": source,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join(["python", *sys.argv]),
        "models": models,
    }
    save(record, name, write_markdown)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--collect", action="store_true", help="do not train; record finished runs")
    parser.add_argument("--runs-dir", default="runs/bench")
    parser.add_argument("--name", default="bsdata_cpu", help="result file name under benchmarks/results/")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra --set for every run")
    parser.add_argument(
        "--command",
        dest="extra_commands",
        action="append",
        default=[],
        help="record a command that made part of the collected results (e.g. a later evaluate)",
    )
    args = parser.parse_args()
    source = commit()  # the code the runs train with (with --collect, where the collecting starts)
    runs = []
    for seed in args.seeds:
        out_dir = (REPO / args.runs_dir / f"cpu_seed{seed}").resolve()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        info = {} if args.collect else run_seed(seed, out_dir, [x for e in args.extra for x in ("--set", e)])
        runs.append({**collect(seed, out_dir), **info})
    record = {
        "benchmark": "bsdata_cpu",
        "commit": source,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "paper": PAPER,
        "runs": runs,
        "extra_commands": args.extra_commands,
    }
    save(record, args.name, write_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
