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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from pitscope import __version__, distributed
from pitscope.augment import PseudoDefects
from pitscope.config import Config, TrainConfig, from_dict, save_config, to_dict
from pitscope.data.types import Sample
from pitscope.files import TRAIN_LOG, atomic_save
from pitscope.models.hog import hog_features, rgb_target
from pitscope.models.network import DoubleSelfSupervisedNet, NetOutput
from pitscope.models.segmentation import focal_loss
from pitscope.models.sspcab import reconstruction_loss
from pitscope.seeding import numpy_rng, seed_everything, worker_init_fn
from pitscope.tensors import denormalise, image_to_tensor
from pitscope.upgrade import upgrade
from pitscope.warm_start import labelled_cutouts, start_from

LAST_CHECKPOINT = "checkpoint_last.pt"
LOG_FILE = TRAIN_LOG
SNAPSHOT_DIR = "snapshots"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


class PseudoDefectPairs(Dataset):
    """Item i of epoch e: (normal (3,H,W), pseudo-defective (3,H,W), mask (H,W), kind).

    With `crop`, the normal image is first a random crop x crop square of the sample (drawn from
    the item's own seeded generator), so H = W = crop."""

    def __init__(self, dataset: Sequence[Sample], maker: PseudoDefects, seed: int, crop: int | None = None):
        self.dataset = dataset
        self.maker = maker
        self.seed = seed
        self.crop = crop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        normal = self.dataset[index].image
        rng = numpy_rng(self.seed, self.epoch, index)
        if self.crop is not None:
            h, w = normal.shape[:2]
            if self.crop > min(h, w):
                raise ValueError(f"train.crop_size {self.crop} is larger than a training image ({h} x {w})")
            top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
            normal = normal[top : top + self.crop, left : left + self.crop]
        image, mask, kind = self.maker(normal, rng)
        return (
            image_to_tensor(normal),
            image_to_tensor(image),
            torch.from_numpy(mask.astype(np.float32)),
            kind,
        )


def pixel_target(cfg: Config, x: torch.Tensor) -> torch.Tensor | None:
    """The pixel branch's target for normalised input x (B, 3, H, W): (B, 3780) or None."""
    if cfg.model.target == "none":
        return None
    with torch.autocast(x.device.type, enabled=False):  # targets in float32 under mixed precision
        images = denormalise(x.float())  # (B, 3, H, W) in [0, 1]
        if cfg.model.target == "hog":
            return hog_features(images)
        return rgb_target(images)


def compute_loss(model: Callable[[torch.Tensor], NetOutput], cfg: Config, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint loss of one batch of pairs; returns (loss, its parts as floats). model: the network,
    or its DistributedDataParallel or compiled wrapper."""
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
            hog = pixel_target(cfg, x)  # (2B, 3780)
        if hog is None:
            raise ValueError("the network predicts a pixel target but model.target is none")
        mse = F.mse_loss(out.target_pred.float(), hog)
        loss = loss + cfg.model.loss_lambda * mse
        parts["mse"] = float(mse.detach())
    if out.seg_logits is not None:
        logits = F.interpolate(out.seg_logits[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        target = torch.cat([torch.zeros_like(mask), mask])  # (2B, H, W): normal images have no defect
        seg = focal_loss(logits, target)
        loss = loss + cfg.model.segment_weight * seg
        parts["seg"] = float(seg.detach())
    if out.sspcab is not None:
        rec = reconstruction_loss(*out.sspcab)
        loss = loss + cfg.model.sspcab_weight * rec
        parts["sspcab"] = float(rec.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype train.precision asks for on `device`; None means plain float32.

    "auto" is bf16 (fp16 on GPUs without bf16) on CUDA and float32 on the CPU, where bf16 is
    asked for explicitly (the cpu preset does): only CPUs with native bfloat16 run it faster.
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 or AMX); elsewhere it is emulated
    and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class TrainResult:
    model: DoubleSelfSupervisedNet
    n_kinds: int
    epochs_done: int
    steps: int
    elapsed_s: float
    stopped_by_budget: bool
    history: list[dict] = field(default_factory=list)
    labelled: list[dict] = field(default_factory=list)  # the marked photos pasted from: name, sha256


class _CsvLog:
    """Appends one row per logged step to OUTPUT_DIR/train_log.csv (kept across resumes).

    resume_step: the step a resumed run starts after; rows logged past it by the run that
    stopped are dropped (that run's work after its last checkpoint is done again), so every
    step is logged once.
    """

    FIELDS = ("epoch", "step", "loss", "ce", "mse", "seg", "sspcab", "lr", "elapsed_s")

    def __init__(self, path: Path, truncate: bool, resume_step: int | None = None):
        self.path = path
        if truncate or not path.exists():
            with path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.FIELDS)
        elif resume_step is not None:
            with path.open(newline="") as fh:
                rows = [row for row in csv.DictReader(fh) if row.get("step", "").isdigit()
                        and int(row["step"]) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(self.FIELDS)
                writer.writerows([row.get(k, "") for k in self.FIELDS] for row in rows)
            tmp.replace(path)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow([row.get(k, "") for k in self.FIELDS])


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def run_progress(train_cfg: TrainConfig, step: int, steps_per_epoch: int, elapsed_s: float, budget_s: float) -> float:
    """How much of the run is done, in [0, 1]: the larger of the share of all epochs' steps done
    and the share of the budget spent."""
    progress = step / max(1, train_cfg.epochs * steps_per_epoch)
    if math.isfinite(budget_s) and budget_s > 0:
        progress = max(progress, elapsed_s / budget_s)
    return min(1.0, progress)


def scheduled_lr(train_cfg: TrainConfig, step: int, steps_per_epoch: int, elapsed_s: float, budget_s: float) -> float:
    """The learning rate of the step after `step` steps and `elapsed_s` seconds of training.

    constant: train.lr. cosine: train.lr * (1 + cos(pi * p)) / 2 with p = run_progress(...), so a
    run stopped by its budget has annealed to (nearly) zero all the same.
    """
    if train_cfg.lr_schedule == "constant":
        return train_cfg.lr
    progress = run_progress(train_cfg, step, steps_per_epoch, elapsed_s, budget_s)
    return train_cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    cfg: Config,
    dataset: Sequence[Sample],
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train the network on the defect-free `dataset` (images already at cfg.data.image_size).

    Writes OUTPUT_DIR/checkpoint_last.pt atomically after every epoch (and when the budget stops
    the run), OUTPUT_DIR/train_log.csv, and the resolved config. With train.checkpoint false no
    checkpoint is written, and a fresh run removes the one an earlier run left in OUTPUT_DIR (it
    would hold another network than this run's). With resume=True it continues
    from checkpoint_last.pt after the last finished epoch. The budget counts wall-clock time of
    the training loop, data preparation included.

    Launched by torchrun with WORLD_SIZE > 1, every process trains a DistributedDataParallel
    replica on its shard of each epoch (cfg.train.batch_size is the global batch, split evenly),
    gradients are averaged, and only rank 0 writes files and prints; all ranks return the same
    weights.
    """
    out_dir = Path(cfg.output_dir)
    if len(dataset) == 0:
        raise ValueError("the training split holds no images")
    ctx, device = distributed.setup(resolve_device(cfg.train.device))
    if cfg.train.batch_size % ctx.world_size:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of the {ctx.world_size} processes"
        )
    main = ctx.is_main
    if not main:
        echo, progress = (lambda _msg: None), False
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    cutouts, labelled = labelled_cutouts(cfg)
    maker = PseudoDefects(cfg.augment, cutouts)
    if labelled:
        echo(f"{len(cutouts)} marked defects of {len(labelled)} labelled photos pasted as pseudo-defects")
    model = DoubleSelfSupervisedNet(cfg.model, n_kinds=maker.n_kinds)
    if cfg.train.init_from and not resume:
        start_from(model, cfg.train.init_from, echo)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )
    amp_dtype = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, step, elapsed, history = 0, 0, 0.0, []
    last_path = out_dir / LAST_CHECKPOINT
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        state = upgrade(torch.load(last_path, map_location=device, weights_only=True), "checkpoint", str(last_path))
        saved = from_dict(state["config"])
        for section in ("model", "augment", "data"):
            if to_dict(getattr(saved, section)) != to_dict(getattr(cfg, section)):
                raise ValueError(f"--resume: {last_path} was trained with another {section} config")
        if saved.seed != cfg.seed:
            raise ValueError(f"--resume: {last_path} was trained with seed {saved.seed}, not {cfg.seed}")
        if saved.train.crop_size != cfg.train.crop_size:
            raise ValueError(f"--resume: {last_path} was trained with train.crop_size {saved.train.crop_size}, "
                             f"not {cfg.train.crop_size}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the config's optimiser settings win over the saved ones
            group.update(lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch, step, elapsed = state["epoch"], state["step"], state["elapsed_s"]
        history = list(state["history"])
        echo(f"resuming after epoch {start_epoch} (step {step}, {elapsed / 60:.1f} min trained)")
    elif main and not cfg.train.checkpoint and last_path.exists():
        last_path.unlink()
        echo(f"removed {last_path} of an earlier run (train.checkpoint is false)")
    if main:
        save_config(cfg, out_dir / "config.yaml")
        log = _CsvLog(out_dir / LOG_FILE, truncate=not resume, resume_step=step if resume else None)
        writer = _tensorboard(out_dir)
    step_model: Callable[[torch.Tensor], NetOutput] = model
    if ctx.enabled:
        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        step_model = torch.compile(step_model)
    pairs = PseudoDefectPairs(dataset, maker, cfg.seed, cfg.train.crop_size)
    batch_size = min(cfg.train.batch_size, len(dataset)) // ctx.world_size  # per process
    if batch_size < 1:
        raise ValueError(f"{len(dataset)} training images cannot be shared by {ctx.world_size} processes")
    drop_last = len(dataset) >= 2 * batch_size * ctx.world_size
    budget_s = cfg.train.budget_minutes * 60 if cfg.train.budget_minutes else math.inf
    precision = "float32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")
    if amp_dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_bf16():
        echo("warning: this CPU has no native bfloat16, so train.precision=bf16 runs slower than float32 "
             "here; --set train.precision=fp32 trains more epochs in the same budget")
    echo(
        f"device {device}, {precision}{', channels-last' if cfg.train.channels_last else ''}"
        + (f", {ctx.world_size} processes" if ctx.enabled else "")
    )

    def save_last(epoch: int) -> None:
        if not main or not cfg.train.checkpoint:
            return
        atomic_save(
            {
                "config": to_dict(cfg),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step": step,
                "elapsed_s": elapsed,
                "history": history,
                "n_kinds": maker.n_kinds,
                "version": __version__,
            },
            last_path,
        )

    def save_snapshot(epoch: int) -> None:
        if not main or not cfg.train.snapshot_every or epoch % cfg.train.snapshot_every:
            return
        atomic_save(
            {
                "config": to_dict(cfg),
                "model": model.state_dict(),
                "n_kinds": maker.n_kinds,
                "epoch": epoch,
                "step": step,
                "elapsed_s": elapsed,
                "version": __version__,
            },
            out_dir / SNAPSHOT_DIR / f"epoch_{epoch:04d}.pt",
        )

    stopped_by_budget = False
    epoch = start_epoch
    model.train()
    step_time = 0.0
    for epoch in range(start_epoch, cfg.train.epochs):
        pairs.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # feature masks draw from torch's RNG: resumable
        if ctx.enabled:
            sampler: DistributedSampler[int] = DistributedSampler(
                pairs, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed, drop_last=drop_last
            )
            sampler.set_epoch(epoch)
            order: dict[str, Any] = {"sampler": sampler}
        else:
            order = {"shuffle": True, "generator": torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)}
        loader = DataLoader(
            pairs,
            batch_size=batch_size,
            drop_last=drop_last,
            num_workers=cfg.train.num_workers,
            worker_init_fn=worker_init_fn,
            pin_memory=device.type == "cuda",
            **order,
        )
        steps_per_epoch = len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress, leave=False)
        sums: dict[str, float] = {}
        n = 0
        tick = time.perf_counter()
        for batch in bar:
            batch = [
                t.to(device, non_blocking=True, memory_format=torch.channels_last)
                if cfg.train.channels_last and t.ndim == 4 else t.to(device, non_blocking=True)
                for t in batch
            ]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, parts = compute_loss(step_model, cfg, batch)
            # one all-reduce: the budget and a NaN stop every process at the same step, and the
            # learning rate follows the slowest process's clock so all of them apply the same one
            over_budget, diverged, clock = distributed.max_over_ranks(
                [elapsed + step_time > budget_s, not bool(torch.isfinite(loss)), elapsed], device
            )
            if diverged:
                where = (
                    f"the last good state (after epoch {epoch}) is in {last_path}; resume from it with "
                    if last_path.exists() else "no epoch finished, so start again with "
                )
                raise TrainingDiverged(
                    f"loss is {parts['loss']} at epoch {epoch + 1}, step {step + 1} ({parts}); "
                    f"{where}a lower train.lr (now {cfg.train.lr})."
                )
            if over_budget:
                stopped_by_budget = True
                break
            lr = scheduled_lr(cfg.train, step, steps_per_epoch, clock, budget_s)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            now = time.perf_counter()
            step_time, tick = now - tick, now  # data preparation of this step included
            elapsed += step_time
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
            if main and (step % cfg.train.log_every == 0 or n == 1):
                row = {"epoch": epoch + 1, "step": step, "lr": lr, "elapsed_s": round(elapsed, 2), **parts}
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
                + ", ".join(f"{k} {summary[k]:.4f}" for k in ("loss", "ce", "mse", "seg", "sspcab") if k in summary)
                + f" ({elapsed / 60:.1f} min)"
            )
        if stopped_by_budget:
            save_last(epoch)  # a partial epoch is redone on resume
            break
        save_last(epoch + 1)
        save_snapshot(epoch + 1)
    if main and writer is not None:
        writer.close()
    distributed.broadcast_buffers(model)  # BatchNorm statistics: rank 0's, like the checkpoint
    epochs_done = history[-1]["epoch"] if history else start_epoch  # complete epochs only
    if stopped_by_budget:
        echo(
            f"stopped at the budget of {cfg.train.budget_minutes} min after {step} steps "
            f"(epoch {epoch + 1} of {cfg.train.epochs})"
        )
    model.eval()
    model = model.to(memory_format=torch.contiguous_format)
    return TrainResult(model, maker.n_kinds, epochs_done, step, elapsed, stopped_by_budget, history, labelled)
