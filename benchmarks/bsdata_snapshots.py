"""How the scores develop with training: evaluate every snapshot of BSData runs.

    python benchmarks/bsdata_cpu.py --seeds 1 --runs-dir runs/snap --name bsdata_cpu_snapshots \\
        --set train.snapshot_every=2                      # a run that keeps snapshots
    python benchmarks/bsdata_snapshots.py runs/snap/cpu_seed1 [more run folders]

For each run folder, each snapshot (OUTPUT_DIR/snapshots/epoch_NNNN.pt) gets
`pitscope refit SNAPSHOT --output OUTPUT_DIR/snapshot_eval/epoch_NNNN.pt --evaluate` with the run's
own scoring settings (and any --set), i.e. exactly what the run would have scored had it stopped
there; the final model (OUTPUT_DIR/eval) is the last row. A snapshot already evaluated is reused.

Results go to benchmarks/results/<name>.json and .md with the commands, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from bsdata_cpu import PAPER, REPO, note, provenance, save  # this folder is on sys.path when run as a script

from pitscope.benchmark import commit, machine

KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def percent(metrics: dict) -> dict:
    return {k: (None if metrics.get(k) is None else round(100 * metrics[k], 2)) for k in KEYS}


def evaluate_snapshots(run: Path, extra: list[str], keep_models: bool, tag: str, last: bool) -> dict:
    out_dir = run / ("snapshot_eval" + (f"_{tag}" if tag else ""))
    rows, commands = [], []
    snaps = sorted((run / "snapshots").glob("epoch_*.pt"))
    snaps += [run / "checkpoint_last.pt"] if last else []
    for snap in snaps:
        target = out_dir / snap.name
        metrics_file = out_dir / f"{target.stem}_eval" / "metrics.json"
        cmd = ["pitscope", "refit", shown(snap), "--output", shown(target), "--evaluate", "--quiet", *extra]
        commands.append(shlex.join(cmd))  # what made the row, run now or before
        if not metrics_file.is_file():
            t0 = time.perf_counter()
            out_dir.mkdir(exist_ok=True)
            with (out_dir / f"{target.stem}.log").open("w") as log:
                subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
            print(f"{snap}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if not keep_models:
                target.unlink()
        state = torch.load(snap, map_location="cpu", weights_only=True, mmap=True)
        if snap.name.startswith("epoch_"):
            epoch = state["epoch"]
        else:
            epoch = f"final weights ({state['epoch']} full epochs)"
        rows.append(
            {
                "epoch": epoch,
                "training_minutes": round(state["elapsed_s"] / 60, 1),
                **percent(json.loads(metrics_file.read_text())["metrics"]),
            }
        )
    model = torch.load(run / "model.pt", map_location="cpu", weights_only=True, mmap=True)
    training = model["metadata"].get("training", {})
    if not last and (run / "eval" / "metrics.json").is_file():  # written by train --evaluate
        final = json.loads((run / "eval" / "metrics.json").read_text())["metrics"]
        rows.append(
            {
                "epoch": f"final model ({training.get('epochs')} full epochs)",
                "training_minutes": training.get("minutes"),
                **percent(final),
            }
        )
    return {"run": shown(run), "seed": model["config"]["seed"], "rows": rows, "commands": commands}


def write_markdown(record: dict, path: Path) -> None:
    lines = [
        "# BSData, `cpu` preset: scores along training",
        "",
        "Each snapshot's network scored with the run's own settings (`pitscope refit SNAPSHOT --evaluate`).",
        "",
        f"{provenance(record)} Paper: {PAPER['image_auroc']} / {PAPER['pixel_auroc']} (image / pixel AUROC).",
        *note(record),
    ]
    for run in record["runs"]:
        lines += [
            "",
            f"## seed {run['seed']} (`{run['run']}`)",
            "",
            "| epoch | training min | image AUROC | pixel AUROC | AUPRO | pixel AP |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r['epoch']} | {r['training_minutes']} | {r['image_auroc']} | {r['pixel_auroc']} | {r['aupro']} "
                f"| {r['pixel_ap']} |"
                for r in run["rows"]
            ],
        ]
    lines += [
        "",
        "Commands:",
        "",
        f"    {record['invocation']}",
        *[f"    {c}" for run in record["runs"] for c in run["commands"]],
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (OUTPUT_DIR of pitscope train with snapshots)")
    parser.add_argument(
        "--name", default="bsdata_cpu_snapshots_eval", help="result file name under benchmarks/results/"
    )
    parser.add_argument("--set", dest="extra", action="append", default=[], help="a --set for every refit")
    parser.add_argument("--tag", default="", help="evaluations go to OUTPUT_DIR/snapshot_eval_TAG (one per setting)")
    parser.add_argument(
        "--last",
        action="store_true",
        help="also refit checkpoint_last.pt (the final weights) instead of reading OUTPUT_DIR/eval",
    )
    parser.add_argument("--keep-models", action="store_true", help="keep the refitted model files")
    args = parser.parse_args()
    extra = [x for e in args.extra for x in ("--set", e)]
    runs = [evaluate_snapshots(Path(r).resolve(), extra, args.keep_models, args.tag, args.last) for r in args.runs]
    record = {
        "benchmark": "bsdata_snapshots",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join(["python", *sys.argv]),
        "paper": PAPER,
        "runs": runs,
    }
    save(record, args.name, write_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
