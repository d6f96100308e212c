"""Run by tests/test_distributed.py under torchrun: train, then save this rank's weights.

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT KEY=VALUE...
    [--guard-fires-after-2]   (the collapse guard goes back to epoch 1 after epoch 2, on every rank)
"""

import sys
from pathlib import Path

import torch
from rollback_guards import FiresAfterEpoch2  # this folder is on sys.path when run as a script

import pitscope.training as training
from pitscope import distributed
from pitscope.config import load_config
from pitscope.data import build_dataset
from pitscope.training import train

if __name__ == "__main__":
    if "--guard-fires-after-2" in sys.argv:
        sys.argv.remove("--guard-fires-after-2")
        training.CollapseGuard = FiresAfterEpoch2
    out = Path(sys.argv[1])
    cfg = load_config(None, [*sys.argv[2:], f"output_dir={out}"])
    dataset = build_dataset(cfg.data, "train", cfg.seed)
    result = train(cfg, dataset, progress=False)
    rank = distributed.context().rank
    torch.save(
        {"state": result.model.state_dict(), "steps": result.steps, "rollbacks": result.rollbacks},
        out / f"rank{rank}.pt",
    )
    distributed.teardown()
