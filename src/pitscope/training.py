"""Training the double self-supervised network: joint loss, budget, checkpoints, resume, logs.

One epoch is one pass over the defect-free training images. Every batch of B normal images is
paired with B pseudo-defective copies (one pseudo-defect each), so the network sees 2B images a
step: the classifier tells them apart (L_CE) and the pixel branch predicts the HOG (or RGB) of
every image fed in (L_MSE). L = L_CE + lambda * L_MSE (paper eq. 1-5).

The pseudo-defect of image i in epoch e is drawn from numpy_rng(seed, e, i), and the epoch's
order from a torch Generator seeded with (seed, e): a resumed run sees the same data as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pitscope import __version__
from pitscope.augment import PseudoDefects
from pitscope.config import Config, save_config, to_dict, from_dict
from pitscope.data.types import Sample
from pitscope.models.hog import hog_features, rgb_target
from pitscope.models.network import DoubleSelfSupervisedNet, NetOutput
from pitscope.models.segmentation import focal_loss
from pitscope.seeding import numpy_rng, seed_everything, worker_init_fn
from pitscope.tensors import denormalise, image_to_tensor

LAST_CHECKPOINT = "checkpoint_last.pt"
LOG_FILE = "train_log.csv"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


class PseudoDefectPairs(Dataset):
    """Item i of epoch e: (normal (3,H,W), pseudo-defective (3,H,W), mask (H,W), kind)."""

    def __init__(self, dataset: Sequence[Sample], maker: PseudoDefects, seed: int):
        self.dataset = dataset
        self.maker = maker
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        rng = numpy_rng(self.seed, self.epoch, index)
        image, mask, kind = self.maker(sample.image, rng)
        return (
            image_to_tensor(sample.image),
            image_to_tensor(image),
            torch.from_numpy(mask.astype(np.float32)),
            kind,
        )


def pixel_target(cfg: Config, x: torch.Tensor) -> torch.Tensor | None:
    """The pixel branch's target for normalised input x (B, 3, H, W): (B, 3780) or None."""
    if cfg.model.target == "none":
        return None
    images = denormalise(x)  # (B, 3, H, W) in [0, 1]
    if cfg.model.target == "hog":
        return hog_features(images)
    return rgb_target(images)


def compute_loss(model: DoubleSelfSupervisedNet, cfg: Config, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint loss of one batch of pairs; returns (loss, its parts as floats)."""
    normal, defective, mask, kind = batch
    b = normal.shape[0]
    x = torch.cat([normal, defective])  # (2B, 3, H, W)
    out: NetOutput = model(x)
    parts: dict[str, float] = {}
    loss = x.new_zeros(())
    if out.logits is not None:
        if cfg.model.head == "binary":
            labels = torch.cat([x.new_zeros(b), x.new_ones(b)])  # (2B,)
            ce = F.binary_cross_entropy_with_logits(out.logits.reshape(-1), labels)
        else:
            labels = torch.cat([torch.zeros(b, dtype=torch.long), kind.long()]).to(x.device)  # (2B,)
            ce = F.cross_entropy(out.logits, labels)
        loss = loss + ce
        parts["ce"] = float(ce.detach())
    if out.target_pred is not None:
        with torch.no_grad():
            target = pixel_target(cfg, x)  # (2B, 3780)
        mse = F.mse_loss(out.target_pred, target)
        loss = loss + cfg.model.loss_lambda * mse
        parts["mse"] = float(mse.detach())
    if out.seg_logits is not None:
        logits = F.interpolate(out.seg_logits[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        target = torch.cat([torch.zeros_like(mask), mask])  # (2B, H, W): normal images have no defect
        seg = focal_loss(logits, target)
        loss = loss + cfg.model.segment_weight * seg
        parts["seg"] = float(seg.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    model: DoubleSelfSupervisedNet
    n_kinds: int
    epochs_done: int
    steps: int
    elapsed_s: float
    stopped_by_budget: bool
    history: list[dict] = field(default_factory=list)


class _CsvLog:
    """Appends one row per logged step to OUTPUT_DIR/train_log.csv (kept across resumes)."""

    FIELDS = ("epoch", "step", "loss", "ce", "mse", "seg", "lr", "elapsed_s")

    def __init__(self, path: Path, truncate: bool):
        self.path = path
        if truncate or not path.exists():
            with path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.FIELDS)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow([row.get(k, "") for k in self.FIELDS])


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def train(
    cfg: Config,
    dataset: Sequence[Sample],
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train the network on the defect-free `dataset` (images already at cfg.data.image_size).

    Writes OUTPUT_DIR/checkpoint_last.pt atomically after every epoch (and when the budget stops
    the run), OUTPUT_DIR/train_log.csv, and the resolved config. With resume=True it continues
    from checkpoint_last.pt after the last finished epoch.
    """
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(dataset) == 0:
        raise ValueError("the training split holds no images")
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed)
    maker = PseudoDefects(cfg.augment)
    model = DoubleSelfSupervisedNet(cfg.model, n_kinds=maker.n_kinds).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )
    start_epoch, step, elapsed, history = 0, 0, 0.0, []
    last_path = out_dir / LAST_CHECKPOINT
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        state = torch.load(last_path, map_location=device, weights_only=True)
        saved = from_dict(state["config"])
        for section in ("model", "augment", "data"):
            if to_dict(getattr(saved, section)) != to_dict(getattr(cfg, section)):
                raise ValueError(f"--resume: {last_path} was trained with another {section} config")
        if saved.seed != cfg.seed:
            raise ValueError(f"--resume: {last_path} was trained with seed {saved.seed}, not {cfg.seed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the config's optimiser settings win over the saved ones
            group.update(lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)
        start_epoch, step, elapsed = state["epoch"], state["step"], state["elapsed_s"]
        history = list(state["history"])
        echo(f"resuming after epoch {start_epoch} (step {step}, {elapsed / 60:.1f} min trained)")
    save_config(cfg, out_dir / "config.yaml")
    log = _CsvLog(out_dir / LOG_FILE, truncate=not resume)
    writer = _tensorboard(out_dir)
    pairs = PseudoDefectPairs(dataset, maker, cfg.seed)
    batch_size = min(cfg.train.batch_size, len(dataset))
    budget_s = cfg.train.budget_minutes * 60 if cfg.train.budget_minutes else math.inf

    def save_last(epoch: int) -> None:
        atomic_save(
            {
                "config": to_dict(cfg),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step": step,
                "elapsed_s": elapsed,
                "history": history,
                "version": __version__,
            },
            last_path,
        )

    stopped_by_budget = False
    epoch = start_epoch
    model.train()
    step_time = 0.0
    for epoch in range(start_epoch, cfg.train.epochs):
        pairs.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # feature masks draw from torch's RNG: resumable
        order = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        loader = DataLoader(
            pairs,
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(dataset) >= 2 * batch_size,
            generator=order,
            num_workers=cfg.train.num_workers,
            worker_init_fn=worker_init_fn,
            pin_memory=device.type == "cuda",
        )
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress, leave=False)
        sums: dict[str, float] = {}
        n = 0
        for batch in bar:
            if elapsed + step_time > budget_s:
                stopped_by_budget = True
                break
            t0 = time.perf_counter()
            batch = [t.to(device, non_blocking=True) for t in batch]
            loss, parts = compute_loss(model, cfg, batch)
            if not torch.isfinite(loss):
                where = (
                    f"the last good state (after epoch {epoch}) is in {last_path}; resume from it with "
                    if last_path.exists() else "no epoch finished, so start again with "
                )
                raise TrainingDiverged(
                    f"loss is {parts['loss']} at epoch {epoch + 1}, step {step + 1} ({parts}); "
                    f"{where}a lower train.lr (now {cfg.train.lr})."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            step_time = time.perf_counter() - t0
            elapsed += step_time
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
            if step % cfg.train.log_every == 0 or n == 1:
                row = {"epoch": epoch + 1, "step": step, "lr": cfg.train.lr, "elapsed_s": round(elapsed, 2), **parts}
                log.write(row)
                if writer is not None:
                    for k, v in parts.items():
                        writer.add_scalar(f"train/{k}", v, step)
        bar.close()
        if n and not stopped_by_budget:
            summary = {"epoch": epoch + 1, "steps": n, **{k: v / n for k, v in sums.items()}, "elapsed_s": elapsed}
            history.append(summary)
            echo(
                f"epoch {epoch + 1}/{cfg.train.epochs}: "
                + ", ".join(f"{k} {summary[k]:.4f}" for k in ("loss", "ce", "mse", "seg") if k in summary)
                + f" ({elapsed / 60:.1f} min)"
            )
        if stopped_by_budget:
            save_last(epoch)  # a partial epoch is redone on resume
            break
        save_last(epoch + 1)
    if writer is not None:
        writer.close()
    epochs_done = history[-1]["epoch"] if history else start_epoch  # complete epochs only
    if stopped_by_budget:
        echo(
            f"stopped at the budget of {cfg.train.budget_minutes} min after {step} steps "
            f"(epoch {epoch + 1} of {cfg.train.epochs})"
        )
    model.eval()
    return TrainResult(model, maker.n_kinds, epochs_done, step, elapsed, stopped_by_budget, history)
