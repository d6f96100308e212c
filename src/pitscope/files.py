"""File helpers every layer may use: atomic writes and the names of a run's files."""

from __future__ import annotations

import os
from pathlib import Path

import torch

TRAIN_LOG = "train_log.csv"  # one row per logged training step, in OUTPUT_DIR


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
