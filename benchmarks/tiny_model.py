"""The tiny model the service benchmarks serve: what is measured is the service, not the model."""

from __future__ import annotations

from pathlib import Path

import torch

from pitscope.config import load_config
from pitscope.data import build_dataset
from pitscope.inference import Detector

# A seeded, untrained network at 64 px, its scorers fitted on 12 synthetic images (half held back
# to calibrate the threshold at the 0.75 quantile): the settings of tests/conftest.py's tiny detector.
TINY = [
    "data.format=synthetic",
    "data.image_size=64",
    "data.synthetic.n_train=12",
    "train.device=cpu",
    "score.pixel_channels=16",
    "score.batch_size=8",
    "score.calibration_fraction=0.5",
    "score.threshold_quantile=0.75",
]


def tiny_model(folder: Path) -> Path:
    """Fit the tiny detector and save it as folder/model.pt; returns that path."""
    cfg = load_config(None, [*TINY, f"output_dir={folder}"])
    torch.manual_seed(cfg.seed)
    detector = Detector(cfg, n_kinds=2).fit(build_dataset(cfg.data, "train", cfg.seed), progress=False)
    return detector.save(Path(folder) / "model.pt")
