"""Validation networks trained and scored on a GPU machine that holds a copy of the working tree.

    python benchmarks/gpu_networks.py pack .gpudata/bsdata            # here: the photos a run reads
    python benchmarks/gpu_networks.py run --root .gpudata/bsdata --sizes 256 384 --seeds 0 1 2 3 \\
        --name gpu_scale --out OUT --deadline-s 540                    # there

`pack` copies what training with `data.holdout=positions` and the validation study
(`bsdata_localisation.py`) read: the training photos, the validation positions' photos, their
label files (polygons only, without the embedded photo) and `image_data.json`, with the split
file as `split.json`. Every other photo of a monitored position becomes an empty file, so that
the positions are still read whole; no run here opens one.

`run` trains the `cpu` preset (`data.holdout=positions`) for each seed and `data.image_size`
(256 x 256 crops whatever the size), one after another, and scores each network on the validation
positions with `bsdata_localisation.py` (the preset's region settings, raw maps, sigma 2, 10
reference photos a position) while the next one trains. Results go to
benchmarks/results/bsdata_localisation_validation_<name>_size<SIZE>_seed<S>.json and .md; after
each one they and every log are packed into OUT/results.tar. A network is started only when the
measured times say it and its scoring end before --deadline-s; at the deadline whatever still
runs is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from pitscope.data.bsdata import (  # noqa: E402
    IMAGE_DATA,
    bsdata_root,
    bsdata_split,
    hold_out_positions,
    position_files,
    read_positions,
    write_split,
)

RESULTS = REPO / "benchmarks" / "results"
STUDY = [
    "--references", "10", "--sigmas", "2", "--normalisations", "none", "--cores", "0.7",
    "--regions-on", "defective_peak", "--peak-maxes", "0.005", "--min-fractions", "0.02",
]  # fmt: skip


def pack(out: Path, source: Path | None = None) -> dict:
    """Copy the photos, labels and image list a holdout=positions run reads into out; returns counts."""
    root = bsdata_root(source)
    split = hold_out_positions(bsdata_split(root), root, read_positions())
    if out.exists():
        raise SystemExit(f"{out} exists; give a new folder")
    (out / "data").mkdir(parents=True)
    (out / "label").mkdir()
    read = set(split["train"]) | set(split["val_normal"]) | set(split["val_defect"])
    for name in sorted(read):
        shutil.copy2(root / "data" / name, out / "data" / name)
    placeholders = 0
    for files in position_files(root).values():
        for name in files:
            if name not in read:
                (out / "data" / name).touch()
                placeholders += 1
    for name in split["val_defect"]:
        label = json.loads((root / "label" / f"{Path(name).stem}.json").read_text())
        label.pop("imageData", None)
        (out / "label" / f"{Path(name).stem}.json").write_text(json.dumps(label))
    shutil.copy2(root / IMAGE_DATA, out / IMAGE_DATA)
    write_split(split, out / "split.json")
    return {"photos": len(read), "placeholders": placeholders, "labels": len(split["val_defect"])}


class Clock:
    def __init__(self, deadline_s: float):
        self.t0, self.deadline_s = time.monotonic(), deadline_s

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.deadline_s - self.elapsed()


def _run(command: list[str], log: Path, clock: Clock, env: dict) -> tuple[int, float]:
    """Run command with its output in log; stopped at the deadline. Returns (rc, seconds)."""
    start = time.monotonic()
    with log.open("w") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            rc = process.wait(timeout=max(clock.left(), 1.0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            rc = -9
            handle.write("\nstopped at the deadline\n")
    return rc, time.monotonic() - start


def run(args: argparse.Namespace) -> int:
    clock = Clock(args.deadline_s)
    out, logs = Path(args.out), Path(args.out_logs or "runs/gpu_networks/logs")
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    root = Path(os.path.relpath(Path(args.root).resolve(), REPO))  # results name no path of the machine
    jobs = [(seed, size) for seed in args.seeds for size in args.sizes]
    trained: queue.Queue = queue.Queue()
    times = {"train": [], "score": []}
    done: list[str] = []
    written: list[Path] = []  # this run's logs (the folder may hold an earlier run's)
    pending = [0]  # networks trained and not scored yet
    lock = threading.Lock()

    def packed() -> None:
        """Results and logs so far into OUT/results.tar, replaced whole (never left half written)."""
        with lock:
            partial = out / "results.tar.part"
            with tarfile.open(partial, "w") as tar:
                for name in list(done):
                    for ext in (".json", ".md"):
                        tar.add(RESULTS / f"{name}{ext}", arcname=f"results/{name}{ext}")
                for log in list(written):
                    if log.exists():  # named just before its command opens it
                        tar.add(log, arcname=f"logs/{log.name}")
            os.replace(partial, out / "results.tar")

    def logged(name: str) -> Path:
        path = logs / name
        written.append(path)
        return path

    def trainer() -> None:
        try:
            train_all()
        finally:
            trained.put(None)  # the scorer stops whatever happened here

    def train_all() -> None:
        for seed, size in jobs:
            guess_train = max(times["train"], default=args.guess_s)
            guess_score = max(times["score"], default=args.guess_s)
            if clock.left() < guess_train + (pending[0] + 1) * guess_score:  # the queue's scorings too
                print(f"[{clock.elapsed():.0f} s] not started: size {size}, seed {seed} (too little time left)")
                continue
            run_dir = Path("runs") / "gpu_networks" / f"size{size}_seed{seed}"  # from REPO, the commands' folder
            command = [
                sys.executable, "-m", "pitscope.cli", "train", "--config", "cpu", "--quiet",
                "--set", "data.holdout=positions", "--set", f"data.root={root}",
                "--set", f"data.split_file={root / 'split.json'}", "--set", f"seed={seed}",
                "--set", f"data.image_size={size}", "--set", f"train.num_workers={args.workers}",
                "--set", "train.checkpoint_every=10", "--output-dir", str(run_dir),
            ]  # fmt: skip
            command += [item for setting in args.train_set for item in ("--set", setting)]
            rc, seconds = _run(command, logged(f"train_size{size}_seed{seed}.log"), clock, env)
            print(f"[{clock.elapsed():.0f} s] trained size {size}, seed {seed}: rc {rc}, {seconds:.0f} s")
            if rc == 0:
                times["train"].append(seconds)
                with lock:
                    pending[0] += 1
                trained.put((seed, size, run_dir / "model.pt"))
            packed()

    def scorer() -> None:
        device = [args.device]
        while (item := trained.get()) is not None:
            try:
                score(*item, device)
            finally:
                with lock:
                    pending[0] -= 1  # counted until its scoring ends
            packed()

    def score(seed: int, size: int, model: Path, device: list[str]) -> None:
        name = f"bsdata_localisation_validation_{args.name}_size{size}_seed{seed}"
        if clock.left() <= 0:
            print(f"[{clock.elapsed():.0f} s] not scored: size {size}, seed {seed} (the deadline has passed)")
            return
        for attempt in [device[0]] + (["cpu"] if device[0] != "cpu" else []):
            command = [
                sys.executable, "benchmarks/bsdata_localisation.py", str(model), *STUDY,
                "--device", attempt, "--name", name, "--out", "runs/gpu_networks/study",
            ]  # fmt: skip
            rc, seconds = _run(command, logged(f"score_size{size}_seed{seed}_{attempt}.log"), clock, env)
            print(f"[{clock.elapsed():.0f} s] scored size {size}, seed {seed} on {attempt}: rc {rc}, {seconds:.0f} s")
            if rc == 0:
                times["score"].append(seconds)
                done.append(name)
                return
            if rc == -9:
                return
            device[0] = "cpu"  # the next networks go straight to the CPU

    threads = [threading.Thread(target=trainer), threading.Thread(target=scorer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    packed()
    print(f"[{clock.elapsed():.0f} s] scored {len(done)} of {len(jobs)}: {', '.join(done)}")
    return 0 if done else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="copy what a validation run reads")
    p.add_argument("out", type=Path)
    p.add_argument("--source", type=Path, help="the BSData folder (default: the usual places)")
    r = sub.add_parser("run", help="train and score the networks")
    r.add_argument("--root", required=True, help="a folder written by pack")
    r.add_argument("--sizes", type=int, nargs="+", default=[256])
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--name", required=True)
    r.add_argument("--out", required=True, help="where results.tar goes")
    r.add_argument("--out-logs", help="where the logs go (default runs/gpu_networks/logs)")
    r.add_argument("--deadline-s", type=float, default=540.0)
    r.add_argument(
        "--guess-s", type=float, default=60.0, help="a training's and a scoring's time before one is measured"
    )
    r.add_argument("--workers", type=int, default=12, help="train.num_workers")
    r.add_argument("--train-set", nargs="+", default=[], metavar="KEY=VALUE", help="further settings of every training")
    r.add_argument("--device", default="cuda", help="where the networks are scored (cpu if that fails)")
    args = parser.parse_args()
    if args.verb == "pack":
        print(pack(args.out, args.source))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
