"""The collapse guard (`train.collapse_rollbacks`) replayed on recorded trainings' epoch losses.

    python benchmarks/training_rollback_replay.py --runs runs/bf16/cpu_seed2/model.pt ... \
        --results benchmarks/results/bsdata_wear_cross30.json ...

Each run's per-epoch mean cross-entropy of the pseudo-defect classifier is read from a model file
(its training metadata), a training checkpoint (its history) or a benchmark result that stored
its folds' training losses; `pitscope.training_rollback.replay` says after which epochs the guard
would have fired and to which epoch it would have gone back, as if the run had gone on unchanged.
Results: benchmarks/results/<name>.json and .md with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from bsdata_cpu import provenance, write_result  # this folder is on sys.path when run as a script

from pitscope.benchmark import commit, machine
from pitscope.training import chance_cross_entropy
from pitscope.training_rollback import CHANCE_SHARE, COLLAPSED_EPOCHS, LEARNT_SHARE, replay


def losses_of_file(path: Path) -> tuple[list[dict], str, int]:
    """(per-epoch losses, classifier head, number of pseudo-defect kinds) of a model file or checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    head = state["config"]["model"].get("head", "binary")
    if "metadata" in state:
        return state["metadata"]["training"]["losses"], head, int(state["n_kinds"])
    return state["history"], head, int(state["n_kinds"])


def losses_of_result(path: Path) -> list[tuple[str, list[dict]]]:
    """(run name, per-epoch losses) of each fold of a benchmark result that stored them."""
    record = json.loads(path.read_text())
    return [
        (f"{path.name}: {fold['output_dir']}", fold["training"]["losses"])
        for fold in record.get("folds", [])
        if fold.get("training", {}).get("losses")
    ]


def summarise(name: str, losses: list[dict], chance: float, max_rollbacks: int) -> dict:
    ces = [float(e["ce"]) for e in losses if "ce" in e]
    best = min(range(len(ces)), key=ces.__getitem__)
    return {
        "run": name,
        "epochs": len(ces),
        "best_epoch": best + 1,
        "best_ce": round(ces[best], 4),
        "last_ce": round(ces[-1], 4),
        "chance": round(chance, 4),
        "fires": [{"after_epoch": a, "to_epoch": b} for a, b in replay(ces, chance, max_rollbacks)],
    }


def markdown(record: dict) -> str:
    lines = [
        "# The collapse guard replayed on recorded trainings",
        "",
        provenance(record),
        "",
        f"Command: `{record['invocation']}`",
        "",
        f"The guard fires when, after an epoch at most {LEARNT_SHARE} of chance (the classifier has learnt), "
        f"{COLLAPSED_EPOCHS} epochs in a row sit at {CHANCE_SHARE} of chance or above; replayed as if each "
        f"run had gone on unchanged, at most {record['max_rollbacks']} times.",
        "",
        "| run | epochs | best epoch (cross-entropy) | last epoch's cross-entropy | chance | guard fires after epoch (back to) |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["runs"]:
        fires = ", ".join(f"{f['after_epoch']} ({f['to_epoch']})" for f in r["fires"]) or "never"
        lines.append(
            f"| {r['run']} | {r['epochs']} | {r['best_epoch']} ({r['best_ce']:.4f}) | {r['last_ce']:.4f} | "
            f"{r['chance']:.4f} | {fires} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="model files or training checkpoints")
    parser.add_argument("--results", nargs="*", type=Path, default=[], help="benchmark results with folds' losses")
    parser.add_argument("--max-rollbacks", type=int, default=2)
    parser.add_argument("--name", default="training_rollback_replay")
    args = parser.parse_args()
    runs = []
    for path in args.runs:
        losses, head, n_kinds = losses_of_file(path)
        runs.append(summarise(str(path), losses, chance_cross_entropy(head, n_kinds), args.max_rollbacks))
    for path in args.results:
        for name, losses in losses_of_result(path):
            runs.append(summarise(name, losses, chance_cross_entropy("binary", 1), args.max_rollbacks))
    if not runs:
        sys.exit("no run given: name model files (--runs) or result files (--results)")
    record = {
        "benchmark": "training_rollback_replay",
        "name": args.name,
        "commit": commit(),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "invocation": "python benchmarks/training_rollback_replay.py " + " ".join(sys.argv[1:]),
        "max_rollbacks": args.max_rollbacks,
        "runs": runs,
    }
    write_result(args.name, record, markdown(record))


if __name__ == "__main__":
    main()
