"""Replay BSData's monitored positions through the service into an inspection history, then
compare `pitscope wear --db` with the offline `pitscope wear` on the same model.

    python benchmarks/bsdata_history_replay.py runs/hold/cpu_seed0/model.pt

The model must not have trained on the replayed positions: by default three of the validation
positions of the shipped position split (a model trained with `data.holdout=positions` never
sees them). The service (`pitscope serve MODEL --db ... --part-from ... --time-from ...`, a real
uvicorn process) receives every photo of those positions in a shuffled order, with nothing but
the file; part id and capture time come from the file names. Then:
- each part's trend must hold every photo of its position (69), in capture order;
- `pitscope wear --db` (true areas from BSData's labels) must give the offline run's curves:
  the same days, predicted and true area fractions and alerts, and scores equal to float32
  rounding (the offline run scores in batches).
Writes benchmarks/results/bsdata_history_replay.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pitscope.benchmark import commit, machine
from pitscope.data.bsdata import bsdata_root, read_positions
from pitscope.data.sequences import read_sequences
from pitscope.history.names import BSDATA_PART, BSDATA_TIME
from pitscope.history.store import HistoryStore

RESULTS = Path(__file__).parent / "results"
CURVE_KEYS = ("days", "predicted_fraction", "true_fraction", "alert")
SUMMARY_KEYS = (
    "images",
    "first_flagged_days",
    "first_true_days",
    "spearman",
    "mae",
    "growth_predicted_per_day",
    "growth_true_per_day",
    "alert",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(model: Path, db: Path, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pitscope.cli",
            "serve",
            str(model),
            "--db",
            str(db),
            "--port",
            str(port),
            "--part-from",
            BSDATA_PART,
            "--time-from",
            BSDATA_TIME,
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError("the service exited; see its log")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("the service did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--root", help="BSData folder (default: $PITSCOPE_BSDATA, ../shared/datasets/bsdata)")
    parser.add_argument("--positions", type=int, default=3, help="how many validation positions to replay")
    parser.add_argument("--work", type=Path, help="folder for the database and wear outputs (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the order the photos are posted in")
    args = parser.parse_args()

    root = bsdata_root(args.root)
    work = args.work or Path(tempfile.mkdtemp(prefix="pitscope-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "inspections.sqlite"
    if db.exists():
        raise SystemExit(f"{db} exists: give a fresh --work folder")
    chosen = read_positions()["validation"][: args.positions]
    sequences = {s.name: s for s in read_sequences(root)}
    replay = [sequences[name] for name in chosen]
    photos = [(s.name, r.path) for s in replay for r in s.records]
    random.Random(args.seed).shuffle(photos)

    started = time.perf_counter()
    with (work / "serve.log").open("w") as log:
        process, url = serve(args.model, db, log)
        answers = []
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                for _, path in photos:
                    with path.open("rb") as fh:
                        answer = client.post("/predict", files={"file": (path.name, fh, "image/jpeg")})
                    answer.raise_for_status()
                    answers.append(answer.json())
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    replay_s = time.perf_counter() - started

    store = HistoryStore(db)
    parts = {}
    for sequence in replay:
        part = sequence.name.split("_", 2)[2].removesuffix("_crop")
        trend = store.trend(part)
        parts[part] = {
            "sequence": sequence.name,
            "points": len(trend),
            "in_capture_order": [p["name"] for p in trend] == [r.path.name for r in sequence.records],
        }

    offline_dir, db_dir = work / "wear-offline", work / "wear-db"
    cli = [sys.executable, "-m", "pitscope.cli", "wear"]
    subprocess.run([*cli, str(args.model), "--root", str(root), "--out", str(offline_dir), "--quiet"], check=True)
    subprocess.run(
        [*cli, "--db", str(db), "--root", str(root), "--out", str(db_dir), *[a for p in parts for a in ("--part", p)]],
        check=True,
    )
    offline = json.loads((offline_dir / "wear.json").read_text())
    live = json.loads((db_dir / "wear.json").read_text())
    comparison = {}
    for part, entry in parts.items():
        mine, theirs = live["curves"][part], offline["curves"][entry["sequence"]]
        score_gap = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(mine["score"], theirs["score"]))
        summary_mine = next(s for s in live["sequences"] if s["sequence"] == part)
        summary_theirs = next(s for s in offline["sequences"] if s["sequence"] == entry["sequence"])
        comparison[part] = {
            **entry,
            "curves_equal": {k: mine[k] == theirs[k] for k in CURVE_KEYS},
            "largest_relative_score_gap": score_gap,
            "summary_equal": {k: summary_mine[k] == summary_theirs[k] for k in SUMMARY_KEYS},
            "summary": {k: summary_mine[k] for k in SUMMARY_KEYS},
        }
    ok = all(
        c["points"] == 69
        and c["in_capture_order"]
        and all(c["curves_equal"].values())
        and all(c["summary_equal"].values())
        and c["largest_relative_score_gap"] < 1e-4
        for c in comparison.values()
    )
    record = {
        "command": "python benchmarks/bsdata_history_replay.py "
        + " ".join(sys.argv[1:]).replace(str(Path.home()), "~"),
        "commit": commit(),
        "machine": machine(),
        "model": args.model.name,
        "photos_posted": len(photos),
        "recorded": sum(a["recorded"] for a in answers),
        "rows": store.count(),
        "replay_seconds": round(replay_s, 1),
        "parts": comparison,
        "all_equal": ok,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bsdata_history_replay.json").write_text(json.dumps(record, indent=1, default=str))
    lines = [
        "# BSData positions replayed through the service into a history",
        "",
        f"`{record['command']}` at commit `{record['commit']}`; {record['machine'].get('cpu', '')}, "
        f"{record['machine'].get('cpu_count', '')} cores.",
        "",
        f"{len(photos)} photos of {len(parts)} validation positions (never trained on) posted in a shuffled "
        f"order with nothing but the file; {record['recorded']} answers said recorded, the database holds "
        f"{record['rows']} rows ({replay_s:.0f} s).",
        "",
        "| part | sequence | trend points | in capture order | wear --db = offline (days, areas, alerts) | "
        "summary equal | largest score gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, c in comparison.items():
        lines.append(
            f"| {part} | {c['sequence']} | {c['points']} | {c['in_capture_order']} | "
            f"{all(c['curves_equal'].values())} | {all(c['summary_equal'].values())} | "
            f"{c['largest_relative_score_gap']:.1e} |"
        )
    lines += ["", "Scores agree to float32 rounding: the offline run scores photos in batches, the service one by one."]
    (RESULTS / "bsdata_history_replay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
