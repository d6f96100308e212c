"""What a benchmark result was measured on and with: the machine and the commit; and the log of
every scoring of a test split (`append_test_look`)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# What a result depends on: the package, the benchmark scripts (not their results), pyproject.toml
CODE_PATHS = (":(top)src", ":(top)benchmarks", ":(top,exclude)benchmarks/results", ":(top)pyproject.toml")


# The commit a copy of the working tree on another machine was taken from
COMMIT_ENV = "PITSCOPE_COMMIT"


def commit(here: Path | None = None) -> str:
    """The short commit of the checkout holding `here` (default: the pitscope package), with "+dirty"
    if the package, the benchmark scripts or pyproject.toml have uncommitted changes or files git
    does not track yet (ignored files aside); "unknown" outside a git checkout. $PITSCOPE_COMMIT,
    when set, wins, with " (copied tree)": the commit a copy of the working tree on another
    machine was taken from (such a copy may carry a .git of another state)."""
    here = Path(__file__).resolve().parent if here is None else here
    copied = os.environ.get(COMMIT_ENV, "").strip()
    if copied:
        return f"{copied} (copied tree)"
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# The append-only log of test-split scorings, beside the results: how many looks each number had.
TEST_LOOKS = "bsdata_test_looks.jsonl"


def config_hash(cfg) -> str:
    """12 hex digits naming a Config's every value."""
    from pitscope.config import to_dict

    values = to_dict(cfg)
    if not values["data"].get("keep_aspect", False):
        values["data"].pop("keep_aspect", None)  # the hashes of models from before data.keep_aspect stay
    if not values["score"].get("peak_region_max", 0.0):
        values["score"].pop("peak_region_max", None)  # ... and from before score.peak_region_max
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def append_test_look(log: Path, model: Path | str, cfg, overrides: list[str], result: dict, **extra) -> dict:
    """Append one scoring of a test split (an `evaluate` result) to the log file `log`, as one JSON
    line: commit, date, model, config hash, overrides, `extra`, the metrics, subsets and counts.
    Returns the line's record."""
    look = {
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "model": str(model),
        "config_hash": config_hash(cfg),
        "overrides": overrides,
        **extra,
        "metrics": result["metrics"],
        "subsets": {k: v["metrics"] for k, v in result["subsets"].items()},
        "counts": result["counts"],
        "at_threshold": result["at_threshold"],
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(json.dumps(look) + "\n")
    return look
