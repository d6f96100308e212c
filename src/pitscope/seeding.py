"""One seed drives every random choice: python, numpy, torch and DataLoader workers."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded with `seed` for samplers."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def worker_init_fn(worker_id: int) -> None:
    """Give each DataLoader worker its own numpy/python seed derived from torch's worker seed."""
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def numpy_rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent numpy Generator for (seed, stream...), e.g. (cfg.seed, epoch, index)."""
    return np.random.default_rng([seed, *stream])
