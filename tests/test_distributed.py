"""Two CPU processes under torchrun (gloo): replicas agree, rank 0 writes, the CLI detects it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pitscope.distributed import DistContext, any_rank, context
from pitscope.inference import Detector

WORKER = Path(__file__).with_name("distributed_worker.py")
TINY = [
    "data.format=synthetic",
    "data.image_size=64",
    "data.image_width=null",  # the cpu preset's wide images and crops; the worker's defaults are square and whole
    "data.keep_aspect=false",
    "train.crop_size=null",
    "data.synthetic.n_train=8",
    "data.synthetic.n_test_normal=2",
    "data.synthetic.n_test_defect=2",
    "train.batch_size=4",
    "train.epochs=2",
    "train.budget_minutes=null",  # no budget stop: the same seed gives the same weights
    "train.lr_schedule=cosine",  # the learning rate must change alike on both ranks
    "train.device=cpu",
    "train.precision=fp32",  # the CLI's default preset (cpu) asks for bf16 where native; the worker's defaults do not
    "augment.kinds=[noise, scar, pit]",  # the cpu preset's kinds; the worker's defaults have no pit
    "model.projector_hidden=32",
    "score.pixel_channels=16",
    "score.batch_size=4",
]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_context_reads_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert context() == DistContext(0, 1, 0) and not context().enabled
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = context()
    assert ctx.enabled and not ctx.is_main and ctx.world_size == 2
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        context()


def test_any_rank_without_a_group_returns_the_flags():
    assert any_rank([True, False], torch.device("cpu")) == [True, False]


def test_two_processes_agree_and_pitscope_train_detects_torchrun(tmp_path):
    worker_out, cli_out = tmp_path / "worker", tmp_path / "cli"
    torchrun(str(WORKER), str(worker_out), *TINY)
    ranks = [torch.load(worker_out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert list(a) == list(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # 8 images, global batch 4 = 2 per process: 2 steps an epoch, 2 epochs
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4
    last = torch.load(worker_out / "checkpoint_last.pt", weights_only=True)
    assert last["epoch"] == 2
    assert all(torch.equal(last["model"][k], a[k]) for k in a)
    assert not list(worker_out.glob("*.tmp*"))

    # The CLI under torchrun, same seed and world size: the very same weights, one saved model.
    sets = [arg for pair in (("--set", o) for o in TINY) for arg in pair]
    proc = torchrun("-m", "pitscope.cli", "train", "--quiet", "--output-dir", str(cli_out), *sets)
    assert proc.stdout.count("saved") == 1  # rank 0 alone fits, calibrates and saves
    detector = Detector.load(cli_out / "model.pt")
    got = detector.net.state_dict()
    assert all(torch.equal(got[k], a[k]) for k in a)
    assert detector.metadata["training"]["steps"] == 4


def test_two_processes_roll_back_alike(tmp_path):
    out = tmp_path / "rolled"
    torchrun(str(WORKER), str(out), *TINY, "train.epochs=3", "train.collapse_rollbacks=1", "--guard-fires-after-2")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # BatchNorm statistics included
    assert ranks[0]["rollbacks"] == ranks[1]["rollbacks"] == [{"after_epoch": 2, "to_epoch": 1, "lr_scale": 0.5}]
    best = torch.load(out / "checkpoint_best.pt", weights_only=True)
    assert best["epoch"] == 1  # rank 0 wrote the kept epoch
