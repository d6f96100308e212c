"""Two evaluations of the same network side by side on the photos both scored.

    python benchmarks/paired_scores.py --name bsdata_cross_position_references_paired \\
        --pair runs/localisation/cross_neighbourhood/cross_fold0/eval runs/localisation/cross_references/cross_fold0/eval \\
        --pair ...

Each --pair names two `evaluate` output folders (their scores.csv: path, label, score,
is_defective), e.g. a model before and after `pitscope refit --references`, whose second
evaluation left the reference photos out. For the photos in both, the image AUROC of each and
the share of defect-free photos each flagged at its stored threshold. It reads recorded scores
and scores nothing. Results go to benchmarks/results/<name>.json and .md with the command,
commit and machine.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from bsdata_cpu import provenance, save  # this folder is on sys.path when run as a script

from pitscope.benchmark import commit, machine
from pitscope.metrics import auroc_interval


def read_scores(folder: Path) -> dict[str, dict]:
    path = folder / "scores.csv"
    if not path.is_file():
        raise SystemExit(f"{folder}: no scores.csv (an `evaluate` output folder)")
    with path.open() as fh:
        return {Path(row["path"]).name: row for row in csv.DictReader(fh)}


def paired(first: Path, second: Path) -> dict:
    a, b = read_scores(first), read_scores(second)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit(f"{first} and {second} share no photo")
    if any(a[k]["label"] != b[k]["label"] for k in shared):
        raise SystemExit(f"{first} and {second} label a shared photo differently")
    labels = np.array([int(a[k]["label"]) for k in shared])
    if labels.min() == labels.max():
        raise SystemExit(f"{first} and {second}: the shared photos need both labels")

    def side(rows: dict) -> dict:
        scores = np.array([float(rows[k]["score"]) for k in shared])
        flagged = np.array([int(rows[k]["is_defective"]) for k in shared])
        interval = auroc_interval(labels, scores)
        return {
            "image_auroc": interval["auroc"],
            "se": interval["se"],
            "flagged_defect_free": float(flagged[labels == 0].mean()),
            "flagged_pitting": float(flagged[labels == 1].mean()),
        }

    return {
        "first": str(first),
        "second": str(second),
        "normal": int((labels == 0).sum()),
        "defective": int(labels.sum()),
        "only_first": len(set(a) - set(b)),
        "only_second": len(set(b) - set(a)),
        "first_scores": side(a),
        "second_scores": side(b),
    }


def write_markdown(record: dict, path: Path) -> None:
    def pct(value: float) -> str:
        return f"{100 * value:.2f}"

    lines = [
        "# Two evaluations on the photos both scored",
        "",
        provenance(record),
        "",
        f"Command: `{record['invocation']}`",
        "",
        "| first | second | shared photos (defect-free, pitting) | image AUROC first / second (SE) | "
        "defect-free flagged first / second | pitting flagged first / second |",
        "|---|---|---|---|---|---|",
    ]
    for p in record["pairs"]:
        f, s = p["first_scores"], p["second_scores"]
        lines.append(
            f"| {p['first']} | {p['second']} | {p['normal']}, {p['defective']} | {pct(f['image_auroc'])} / "
            f"{pct(s['image_auroc'])} ({pct(s['se'])}) | {pct(f['flagged_defect_free'])} / "
            f"{pct(s['flagged_defect_free'])} | {pct(f['flagged_pitting'])} / {pct(s['flagged_pitting'])} |"
        )
    means = [np.mean([p[k]["image_auroc"] for p in record["pairs"]]) for k in ("first_scores", "second_scores")]
    lines += ["", f"Mean image AUROC over the pairs: {pct(means[0])} first, {pct(means[1])} second.", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pair", nargs=2, type=Path, action="append", required=True, metavar=("FIRST", "SECOND"), help="two folders"
    )
    parser.add_argument("--name", required=True, help="result file name under benchmarks/results/")
    args = parser.parse_args()
    record = {
        "benchmark": "paired_scores",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join(["python", *sys.argv]),
        "pairs": [paired(first, second) for first, second in args.pair],
    }
    save(record, args.name, write_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
