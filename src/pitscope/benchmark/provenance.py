"""What a benchmark result was measured on and with: the machine and the commit."""

from __future__ import annotations

import os
import platform
import subprocess
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


def commit(here: Path | None = None) -> str:
    """The short commit of the checkout holding `here` (default: the pitscope package), with "+dirty"
    if the package, the benchmark scripts or pyproject.toml have uncommitted changes or files git
    does not track yet (ignored files aside); "unknown" outside a git checkout."""
    here = Path(__file__).resolve().parent if here is None else here
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
