"""Training the double self-supervised network: the loop, budget, checkpoints, resume, logs.

One epoch is one pass over the defect-free training images. Every batch of B normal images is
paired with B pseudo-defective copies (one pseudo-defect each), so the network sees 2B images a
step: the classifier tells them apart (L_CE) and the pixel branch predicts the HOG (or RGB) of
every image fed in (L_MSE). L = L_CE + lambda * L_MSE (paper eq. 1-5); the pairs and the loss
are in training_loss.py.

The pseudo-defect of image i in epoch e is drawn from numpy_rng(seed, e, i), and the epoch's
order from a torch Generator seeded with (seed, e): a resumed run sees the same data as an
uninterrupted one.

The time budget (train.budget_minutes) never enters the learning rate directly: the cosine
schedule anneals over the planned epochs, train.epochs until, after some epoch, the rest at that epoch's
pace would end past the budget; the plan then shrinks to the epochs that fit (`planned_epochs`).
A run whose plan never shrinks takes the steps an unhurried run takes, however busy the machine.
The budget still stops a step that would end past it.
"""

from __future__ import annotations

import csv
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from pitscope import __version__, distributed
from pitscope.augment import PseudoDefects
from pitscope.config import Config, TrainConfig, from_dict, save_config, to_dict
from pitscope.data.types import Sample
from pitscope.files import TRAIN_LOG, atomic_save
from pitscope.models.network import DoubleSelfSupervisedNet, NetOutput
from pitscope.runtime import native_bf16, precision_name, resolve_device, resolve_precision
from pitscope.seeding import seed_everything, worker_init_fn
from pitscope.training_loss import PseudoDefectPairs, compute_loss
from pitscope.training_loss import pixel_target as pixel_target  # the loop's names, kept importable here
from pitscope.training_rollback import CollapseGuard, guard_state, load_guard_state, restore, snapshot
from pitscope.upgrade import upgrade
from pitscope.warm_start import labelled_cutouts, start_from

LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"  # train.collapse_rollbacks: the best epoch's state, for --resume
LOG_FILE = TRAIN_LOG
SNAPSHOT_DIR = "snapshots"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


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
    precision: str = "float32"  # what the steps ran in: float32, bfloat16 or float16
    # each time training went back to an earlier epoch's weights (train.collapse_rollbacks):
    # {"after_epoch", "to_epoch", "lr_scale"}
    rollbacks: list[dict] = field(default_factory=list)


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
                rows = [
                    row
                    for row in csv.DictReader(fh)
                    if row.get("step", "").isdigit() and int(row["step"]) <= resume_step
                ]
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


def run_progress(train_cfg: TrainConfig, step: int, steps_per_epoch: int, planned_epochs: int | None = None) -> float:
    """How much of the run is done, in [0, 1]: the share of the planned epochs' steps done
    (planned_epochs, by default train.epochs; `planned_epochs` shortens it to fit a budget)."""
    epochs = train_cfg.epochs if planned_epochs is None else planned_epochs
    return min(1.0, step / max(1, epochs * steps_per_epoch))


def scheduled_lr(train_cfg: TrainConfig, step: int, steps_per_epoch: int, planned_epochs: int | None = None) -> float:
    """The learning rate of the step after `step` steps.

    constant: train.lr. cosine: train.lr * (1 + cos(pi * p)) / 2 with p = run_progress(...), so a
    run that ends after its planned epochs has annealed to (nearly) zero. With train.warmup_epochs
    w > 0, either is multiplied by min(1, (step + 1) / (w * steps_per_epoch)): the rate rises
    linearly over the first w epochs. The clock never enters it: a run whose plan stays the same
    takes the same steps however busy the machine is.
    """
    warmup_steps = train_cfg.warmup_epochs * steps_per_epoch
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if train_cfg.lr_schedule == "constant":
        return train_cfg.lr * warm
    progress = run_progress(train_cfg, step, steps_per_epoch, planned_epochs)
    return train_cfg.lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def planned_epochs(planned: int, done: int, elapsed_s: float, epoch_s: float, budget_s: float) -> int:
    """The epochs the run plans after `done` finished epochs, `elapsed_s` seconds in all and the
    last epoch's `epoch_s`: `planned` while the rest of them, each at the last one's pace, would end
    within budget_s; else `done` plus the whole epochs that would (so `done` when none would fit:
    the run ends there). Never more than `planned`."""
    if not math.isfinite(budget_s) or done >= planned or epoch_s <= 0:
        return planned
    if elapsed_s + (planned - done) * epoch_s <= budget_s:
        return planned
    return done + max(0, int((budget_s - elapsed_s) // epoch_s))


def chance_cross_entropy(head: str, n_kinds: int) -> float:
    """The pseudo-defect classifier's cross-entropy when it answers the base rates alone (half the
    batch normal): ln 2 for the binary head; for the multiclass one, half normal and half spread
    over n_kinds kinds, ln 2 + ln(n_kinds) / 2."""
    return math.log(2.0) + (0.5 * math.log(max(1, n_kinds)) if head == "multiclass" else 0.0)


def classifier_near_chance(history: list[dict], head: str, n_kinds: int, share: float = 0.95) -> float | None:
    """The cross-entropy of the epoch whose weights the run ended with (the last, or the one a
    rollback after the last went back to) when it is at least `share` of chance
    (`chance_cross_entropy`): the classifier has not learnt to tell the pseudo-defects; else None
    (also with no epoch or no classifier)."""
    if not history or "ce" not in history[-1]:
        return None
    back = history[-1].get("rolled_back_to")
    ended = next((e for e in history if e.get("epoch") == back), history[-1]) if back else history[-1]
    ce = float(ended["ce"])
    return ce if ce >= share * chance_cross_entropy(head, n_kinds) else None


def chance_record(history: list[dict], head: str, n_kinds: int) -> dict | None:
    """What a model's training metadata keeps when its classifier ended near chance
    (`classifier_near_chance`): the last epoch's cross-entropy and chance's; else None."""
    ce = classifier_near_chance(history, head, n_kinds)
    if ce is None:
        return None
    return {"cross_entropy": round(ce, 4), "chance": round(chance_cross_entropy(head, n_kinds), 4)}


@dataclass
class _Run:
    """The state one training run carries from its setup through its epochs to its result."""

    cfg: Config
    ctx: distributed.DistContext
    device: torch.device
    echo: Callable[[str], None]
    progress: bool
    out_dir: Path
    last_path: Path
    maker: PseudoDefects
    labelled: list[dict]
    model: DoubleSelfSupervisedNet
    optimizer: torch.optim.SGD
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    start_epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    step_time: float = 0.0  # the last step's seconds: the budget check looks one step ahead
    saved_epoch: int | None = None  # the finished epochs in the checkpoint this run wrote or resumed from
    history: list[dict] = field(default_factory=list)
    guard: CollapseGuard | None = None  # train.collapse_rollbacks above 0 and a classifier to watch
    best_state: dict | None = None  # the guard's best epoch: weights, momentum, scaler, on the CPU
    rollbacks: list[dict] = field(default_factory=list)
    lr_scale: float = 1.0  # the factor the rollbacks so far put on the scheduled learning rate
    planned: int = 0  # the epochs the learning rate anneals over (`planned_epochs`; train.epochs at first)
    log: _CsvLog | None = None
    writer: Any = None

    @property
    def main(self) -> bool:
        return self.ctx.is_main


def _build(cfg: Config, resume: bool, progress: bool, echo: Callable[[str], None]) -> _Run:
    """Device, seeds, pseudo-defect maker, network and optimiser of a run (nothing loaded yet)."""
    out_dir = Path(cfg.output_dir)
    ctx, device = distributed.setup(resolve_device(cfg.train.device))
    if cfg.train.batch_size % ctx.world_size:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of the {ctx.world_size} processes"
        )
    if not ctx.is_main:
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
    optimizer = sgd(model, cfg, device)
    amp_dtype = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return _Run(
        cfg,
        ctx,
        device,
        echo,
        progress,
        out_dir,
        out_dir / LAST_CHECKPOINT,
        maker,
        labelled,
        model,
        optimizer,
        scaler,
        amp_dtype,
        planned=cfg.train.epochs,
    )


def _changed_keys(saved, now) -> list[tuple[str, object, object]]:
    """(key, saved value, value now) of each setting of a config section that differs; a data
    section's image width compares as the width it resolves to (null is the height)."""
    a, b = to_dict(saved), to_dict(now)
    if "image_width" in a:
        a["image_width"], b["image_width"] = saved.shape[1], now.shape[1]
    return [(key, a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)]


def _resume(run: _Run) -> None:
    """Load checkpoint_last.pt into `run` after checking it was trained with the same model,
    augment, data, seed and crop size; the config's optimiser settings win over the saved ones."""
    cfg, last_path = run.cfg, run.last_path
    if not last_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
    state = upgrade(torch.load(last_path, map_location=run.device, weights_only=True), "checkpoint", str(last_path))
    saved = from_dict(state["config"])
    for section in ("model", "augment", "data"):
        changed = _changed_keys(getattr(saved, section), getattr(cfg, section))
        if changed:
            said = "; ".join(f"{section}.{key} {before!r}, not {now!r}" for key, before, now in changed)
            raise ValueError(f"--resume: {last_path} was trained with another {section} config: {said}")
    if saved.seed != cfg.seed:
        raise ValueError(f"--resume: {last_path} was trained with seed {saved.seed}, not {cfg.seed}")
    if saved.train.crop_size != cfg.train.crop_size:
        raise ValueError(
            f"--resume: {last_path} was trained with train.crop_size {saved.train.crop_size}, not {cfg.train.crop_size}"
        )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    for group in run.optimizer.param_groups:
        group.update(lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)
    if "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.step, run.elapsed = state["epoch"], state["step"], state["elapsed_s"]
    run.saved_epoch = run.start_epoch
    run.history = list(state["history"])
    run.rollbacks, run.lr_scale = list(state.get("rollbacks", [])), float(state.get("lr_scale", 1.0))
    if (saved.train.epochs, saved.train.budget_minutes) == (cfg.train.epochs, cfg.train.budget_minutes):
        run.planned = int(state.get("planned_epochs", cfg.train.epochs))  # the plan the budget made holds
    if run.guard is not None and state.get("guard"):
        _resume_guard(run, state["guard"])
    run.echo(f"resuming after epoch {run.start_epoch} (step {run.step}, {run.elapsed / 60:.1f} min trained)")


def _resume_guard(run: _Run, saved: dict) -> None:
    """The collapse guard as the checkpoint left it, with its best epoch's state from
    checkpoint_best.pt; without that file (or with one of another epoch) it watches afresh."""
    guard = run.guard
    assert guard is not None
    load_guard_state(guard, saved)
    path = run.out_dir / BEST_CHECKPOINT
    best = torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None
    if guard.best_epoch is not None and best is not None and best["epoch"] == guard.best_epoch:
        run.best_state = best["state"]
    elif guard.best_epoch is not None:
        guard.best_ce, guard.best_epoch, guard.at_chance = math.inf, None, 0
        run.echo(f"no state of the guard's best epoch in {path}: the collapse guard watches afresh")


def _step_model(run: _Run) -> Callable[[torch.Tensor], NetOutput]:
    """The network as the steps call it: wrapped in DistributedDataParallel and compiled if asked."""
    step_model: Callable[[torch.Tensor], NetOutput] = run.model
    if run.ctx.enabled:
        device = run.device
        step_model = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)
    if run.cfg.train.compile:
        step_model = torch.compile(step_model)
    return step_model


def _announce(run: _Run) -> None:
    """Echo the device and precision, warning when bf16 runs emulated on this CPU and saying when
    bf16_where_native chose float32."""
    cfg, device, amp_dtype = run.cfg, run.device, run.amp_dtype
    precision = precision_name(amp_dtype)
    if amp_dtype == torch.bfloat16 and not native_bf16(device):
        run.echo(
            f"warning: this {'CPU' if device.type == 'cpu' else 'GPU'} has no native bfloat16, so "
            "train.precision=bf16 runs emulated, slower than float32, here; --set "
            "train.precision=bf16_where_native trains in float32 and fits more epochs in the same budget"
        )
    if cfg.train.precision == "bf16_where_native" and amp_dtype is None:
        precision += f" ({device.type} without native bfloat16)"
    run.echo(
        f"device {device}, {precision}{', channels-last' if cfg.train.channels_last else ''}"
        + (f", {run.ctx.world_size} processes" if run.ctx.enabled else "")
    )


def _save_last(run: _Run, epoch: int) -> None:
    """checkpoint_last.pt after `epoch` finished epochs (rank 0, when train.checkpoint is on);
    the loop calls it after the run's first epoch (so the file in OUTPUT_DIR is soon this run's),
    every train.checkpoint_every epochs, after the last and at a budget stop."""
    if not run.main or not run.cfg.train.checkpoint:
        return
    atomic_save(
        {
            "config": to_dict(run.cfg),
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "epoch": epoch,
            "step": run.step,
            "elapsed_s": run.elapsed,
            "history": run.history,
            "rollbacks": run.rollbacks,
            "lr_scale": run.lr_scale,
            "planned_epochs": run.planned,
            "guard": guard_state(run.guard) if run.guard is not None else None,
            "n_kinds": run.maker.n_kinds,
            "version": __version__,
        },
        run.last_path,
    )
    run.saved_epoch = epoch


def _save_snapshot(run: _Run, epoch: int) -> None:
    """snapshots/epoch_NNNN.pt every train.snapshot_every epochs (rank 0)."""
    cfg = run.cfg
    if not run.main or not cfg.train.snapshot_every or epoch % cfg.train.snapshot_every:
        return
    atomic_save(
        {
            "config": to_dict(cfg),
            "model": run.model.state_dict(),
            "n_kinds": run.maker.n_kinds,
            "epoch": epoch,
            "step": run.step,
            "elapsed_s": run.elapsed,
            "version": __version__,
            # after a rollback the weights are those of this earlier epoch
            "rolled_back_to": run.history[-1].get("rolled_back_to") if run.history else None,
        },
        run.out_dir / SNAPSHOT_DIR / f"epoch_{epoch:04d}.pt",
    )


def sgd(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.SGD:
    """The training's optimizer: SGD with momentum and weight decay, as one fused update over all
    parameters on CPU and CUDA (the same arithmetic as the per-parameter loop, in fewer passes)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
        fused=device.type in ("cpu", "cuda") or None,
    )


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order of the n training images in `epoch` on one process: a permutation from a torch
    Generator seeded with (seed, epoch), after two int64 drawn from it (the order a shuffling
    DataLoader with that generator and no workers gives inside a tqdm.auto bar, which starts its
    iterator twice)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    for _ in range(2):
        torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator).tolist()


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """The batches of epochs start..stop-1 in turn, each item as (epoch, index), so that one
    DataLoader and its workers serve every epoch and draw the next epoch's pseudo-defects while
    the last steps of this one run. Under torchrun each process takes its DistributedSampler
    shard of every epoch."""

    def __init__(
        self, n: int, batch_size: int, drop_last: bool, seed: int, start: int, stop: int, ctx: distributed.DistContext
    ):
        self.n, self.batch_size, self.drop_last, self.seed = n, batch_size, drop_last, seed
        self.start, self.stop = start, stop
        self._shard: DistributedSampler[int] | None = None
        if ctx.enabled:
            self._shard = DistributedSampler(
                cast("Dataset[int]", range(n)),
                num_replicas=ctx.world_size,
                rank=ctx.rank,
                shuffle=True,
                seed=seed,
                drop_last=drop_last,
            )

    def order(self, epoch: int) -> list[int]:
        """This process's image indices in `epoch`, in order."""
        if self._shard is None:
            return epoch_order(self.seed, epoch, self.n)
        self._shard.set_epoch(epoch)
        return list(self._shard)

    def steps(self, epoch: int) -> int:
        """The number of batches of `epoch` on this process."""
        return self._batches(len(self.order(epoch)) if self._shard is not None else self.n)

    def _batches(self, k: int) -> int:
        return k // self.batch_size if self.drop_last else math.ceil(k / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.start, self.stop):
            order = self.order(epoch)
            for b in range(self._batches(len(order))):
                yield [(epoch, i) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]

    def __len__(self) -> int:
        return sum(self.steps(epoch) for epoch in range(self.start, self.stop))


def _loader(run: _Run, pairs: PseudoDefectPairs, batches: EpochBatches) -> DataLoader:
    """One loader over every remaining epoch's batches; workers (train.num_workers) start once."""
    return DataLoader(
        pairs,
        batch_sampler=batches,
        num_workers=run.cfg.train.num_workers,
        worker_init_fn=worker_init_fn,
        pin_memory=run.device.type == "cuda",
    )


def _train_epoch(
    run: _Run,
    step_model: Callable[[torch.Tensor], NetOutput],
    batches: Iterator[Any],
    steps_per_epoch: int,
    epoch: int,
    budget_s: float,
) -> bool:
    """One epoch of optimiser steps over the next steps_per_epoch of `batches`; seeds torch's RNG
    with (seed, epoch) first, from which the feature masks draw, so a resumed run draws what an
    uninterrupted one would. Logs every train.log_every steps and appends the epoch's mean losses
    to run.history when it finishes. Returns whether the budget stopped it."""
    cfg, device, amp_dtype = run.cfg, run.device, run.amp_dtype
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    bar = tqdm(
        itertools.islice(batches, steps_per_epoch),
        total=steps_per_epoch,
        desc=f"epoch {epoch + 1}/{run.planned}",
        disable=not run.progress,
        leave=False,
    )
    sums: dict[str, float] = {}
    n = 0
    stopped_by_budget = False
    tick = time.perf_counter()
    for batch in bar:
        batch = [
            t.to(device, non_blocking=True, memory_format=torch.channels_last)
            if cfg.train.channels_last and t.ndim == 4
            else t.to(device, non_blocking=True)
            for t in batch
        ]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, parts = compute_loss(step_model, cfg, batch)
        # one all-reduce: the budget and a NaN stop every process at the same step
        over_budget, diverged = distributed.max_over_ranks(
            [run.elapsed + run.step_time > budget_s, not bool(torch.isfinite(loss))], device
        )
        if diverged:
            raise _diverged(run, epoch, parts)
        if over_budget:
            stopped_by_budget = True
            break
        lr = scheduled_lr(cfg.train, run.step, steps_per_epoch, run.planned)
        lr *= run.lr_scale
        _optimiser_step(run, loss, lr)
        now = time.perf_counter()
        run.step_time, tick = now - tick, now  # data preparation of this step included
        run.elapsed += run.step_time
        n += 1
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        bar.set_postfix({k: f"{v:.4f}" for k, v in parts.items()})
        if run.main and (run.step % cfg.train.log_every == 0 or n == 1):
            _log_step(run, epoch, lr, parts)
    bar.close()
    if n and not stopped_by_budget:
        _end_epoch(run, epoch, n, sums)
    return stopped_by_budget


def _optimiser_step(run: _Run, loss: torch.Tensor, lr: float) -> None:
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.step += 1


def _log_step(run: _Run, epoch: int, lr: float, parts: dict[str, float]) -> None:
    """One row of train_log.csv and the loss parts to TensorBoard (rank 0)."""
    row = {"epoch": epoch + 1, "step": run.step, "lr": lr, "elapsed_s": round(run.elapsed, 2), **parts}
    assert run.log is not None
    run.log.write(row)
    if run.writer is not None:
        for k, v in parts.items():
            run.writer.add_scalar(f"train/{k}", v, run.step)


def _diverged(run: _Run, epoch: int, parts: dict[str, float]) -> TrainingDiverged:
    where = (
        f"the last good state (after epoch {run.saved_epoch}) is in {run.last_path}; resume from it with "
        if run.saved_epoch is not None and run.last_path.exists()
        else "no checkpoint of this run was written, so start again with "
    )
    return TrainingDiverged(
        f"loss is {parts['loss']} at epoch {epoch + 1}, step {run.step + 1} ({parts}); "
        f"{where}a lower train.lr (now {run.cfg.train.lr})."
    )


def _end_epoch(run: _Run, epoch: int, n: int, sums: dict[str, float]) -> None:
    """The finished epoch's mean losses: into run.history and echoed."""
    summary = {"epoch": epoch + 1, "steps": n, **{k: v / n for k, v in sums.items()}, "elapsed_s": run.elapsed}
    run.history.append(summary)
    run.echo(
        f"epoch {epoch + 1}/{run.planned}: "
        + ", ".join(f"{k} {summary[k]:.4f}" for k in ("loss", "ce", "mse", "seg", "sspcab") if k in summary)
        + f" ({run.elapsed / 60:.1f} min)"
    )


def _watch_classifier(run: _Run, epoch: int) -> None:
    """The collapse guard's turn after finished `epoch` (0-based): keep the state of a new best
    epoch (in memory, and in checkpoint_best.pt when checkpoints are on), or go back to it when the
    classifier has fallen back to chance (train.collapse_rollbacks). The opening epochs
    (augment.opening_epochs) pose another, easier task, so the guard starts after them."""
    if run.guard is None or not run.history or "ce" not in run.history[-1]:
        return
    if epoch < run.cfg.augment.opening_epochs:
        return
    # rank 0's cross-entropy decides on every process, so all keep and restore the same epoch
    ce = distributed.max_over_ranks([run.history[-1]["ce"] if run.main else -math.inf], run.device)[0]
    verdict = run.guard.observe(epoch + 1, ce)
    if verdict == "best":
        run.best_state = snapshot(run.model, run.optimizer, run.scaler)
        if run.main and run.cfg.train.checkpoint:
            atomic_save({"epoch": epoch + 1, "state": run.best_state}, run.out_dir / BEST_CHECKPOINT)
    elif verdict == "rollback":
        run.lr_scale = run.guard.lr_scale
        _go_back(run, epoch, ce, f"learning rate x{run.lr_scale:g} from here")


def _go_back(run: _Run, epoch: int, ce: float, then: str, at_end: bool = False) -> None:
    """Restore the guard's best epoch after finished `epoch` (0-based) and record it."""
    guard = run.guard
    assert guard is not None and run.best_state is not None  # a rollback needs a best epoch, which was kept
    restore(run.model, run.optimizer, run.scaler, run.best_state)
    record: dict = {"after_epoch": epoch + 1, "to_epoch": guard.best_epoch, "lr_scale": run.lr_scale}
    if at_end:
        record["at_end"] = True
    run.rollbacks.append(record)
    run.history[-1]["rolled_back_to"] = guard.best_epoch
    run.echo(
        f"the pseudo-defect classifier fell back to chance (cross-entropy {ce:.4f}, chance "
        f"{guard.chance:.4f}): back to the weights of epoch {guard.best_epoch} "
        f"(cross-entropy {guard.best_ce:.4f}), {then}"
    )


def _settle_guard(run: _Run) -> None:
    """At the end of a run whose last finished epoch sat at chance after the classifier had
    learnt (one epoch, too few to fire the guard, or after its last rollback), hand back the best
    epoch's state instead, and write it to the checkpoint."""
    guard = run.guard
    if guard is None or guard.at_chance < 1 or run.best_state is None or not run.history:
        return
    last = int(run.history[-1]["epoch"]) - 1
    _go_back(run, last, float(run.history[-1]["ce"]), "as the run's result", at_end=True)
    if run.saved_epoch is not None:
        _save_last(run, run.saved_epoch)


def _replan(run: _Run, epoch: int, epoch_s: float, budget_s: float) -> None:
    """After finished `epoch` (0-based) that took epoch_s seconds: shorten the plan (`planned_epochs`)
    when at that pace its rest would end past the budget, and say so. Every process decides on the
    slowest one's clock, so all keep the same plan. A constant rate needs no plan: the budget
    alone stops such a run."""
    if not math.isfinite(budget_s) or run.cfg.train.lr_schedule != "cosine":
        return
    clock, pace = distributed.max_over_ranks([run.elapsed, epoch_s], run.device)
    planned = planned_epochs(run.planned, epoch + 1, clock, pace, budget_s)
    if planned == run.planned:
        return
    run.echo(
        f"at {pace / 60:.1f} min an epoch, {run.planned} epochs would end past the budget of "
        f"{run.cfg.train.budget_minutes:g} min: "
        + (
            f"the learning rate now anneals over {planned} epochs"
            if planned > epoch + 1
            else f"the run ends after epoch {epoch + 1}"
        )
    )
    run.planned = planned


def _finish(run: _Run, epoch: int, stopped_by_budget: bool) -> TrainResult:
    """Close the logs, share rank 0's BatchNorm statistics and hand back the eval-mode network."""
    if run.main and run.writer is not None:
        run.writer.close()
    distributed.broadcast_buffers(run.model)  # BatchNorm statistics: rank 0's, like the checkpoint
    epochs_done = run.history[-1]["epoch"] if run.history else run.start_epoch  # complete epochs only
    if stopped_by_budget:
        run.echo(
            f"stopped at the budget of {run.cfg.train.budget_minutes} min after {run.step} steps "
            f"(epoch {epoch + 1} of {run.planned} planned, {run.cfg.train.epochs} set)"
        )
    elif run.planned < run.cfg.train.epochs:
        stopped_by_budget = True  # it ended short of train.epochs because of the budget
        run.echo(
            f"ended after {epochs_done} of {run.cfg.train.epochs} epochs, the number that fit the budget of "
            f"{run.cfg.train.budget_minutes:g} min"
        )
    run.model.eval()
    model = run.model.to(memory_format=torch.contiguous_format)
    return TrainResult(
        model,
        run.maker.n_kinds,
        epochs_done,
        run.step,
        run.elapsed,
        stopped_by_budget,
        run.history,
        run.labelled,
        precision_name(run.amp_dtype),
        run.rollbacks,
    )


def train(
    cfg: Config,
    dataset: Sequence[Sample],
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train the network on the defect-free `dataset` (images already at cfg.data.image_size).

    Writes OUTPUT_DIR/checkpoint_last.pt atomically after the first epoch, every
    train.checkpoint_every epochs, the last, and when the budget stops the run, OUTPUT_DIR/train_log.csv, and the
    resolved config. With train.checkpoint false no
    checkpoint is written, and a fresh run removes the one an earlier run left in OUTPUT_DIR (it
    would hold another network than this run's). With resume=True it continues
    from checkpoint_last.pt after the last finished epoch. The budget counts wall-clock time of
    the training loop, data preparation included; the plan it may shorten is kept in the
    checkpoint and holds on resume with the same train.epochs and budget.

    Launched by torchrun with WORLD_SIZE > 1, every process trains a DistributedDataParallel
    replica on its shard of each epoch (cfg.train.batch_size is the global batch, split evenly),
    gradients are averaged, and only rank 0 writes files and prints; all ranks return the same
    weights.
    """
    if len(dataset) == 0:
        raise ValueError("the training split holds no images")
    run = _build(cfg, resume, progress, echo)
    if cfg.train.collapse_rollbacks:
        run.guard = CollapseGuard(chance_cross_entropy(cfg.model.head, run.maker.n_kinds), cfg.train.collapse_rollbacks)
    if resume:
        _resume(run)
    elif run.main and not cfg.train.checkpoint and run.last_path.exists():
        run.last_path.unlink()
        run.echo(f"removed {run.last_path} of an earlier run (train.checkpoint is false)")
    if not resume and run.main:
        (run.out_dir / BEST_CHECKPOINT).unlink(missing_ok=True)  # an earlier run's best epoch
    if run.main:
        save_config(cfg, run.out_dir / "config.yaml")
        run.log = _CsvLog(run.out_dir / LOG_FILE, truncate=not resume, resume_step=run.step if resume else None)
        run.writer = _tensorboard(run.out_dir)
    step_model = _step_model(run)
    pairs = PseudoDefectPairs(dataset, run.maker, cfg.seed, cfg.train.crop_size)
    batch_size = min(cfg.train.batch_size, len(dataset)) // run.ctx.world_size  # per process
    if batch_size < 1:
        raise ValueError(f"{len(dataset)} training images cannot be shared by {run.ctx.world_size} processes")
    drop_last = len(dataset) >= 2 * batch_size * run.ctx.world_size
    budget_s = cfg.train.budget_minutes * 60 if cfg.train.budget_minutes else math.inf
    _announce(run)

    stopped_by_budget = False
    epoch = run.start_epoch
    run.model.train()
    order = EpochBatches(len(pairs), batch_size, drop_last, cfg.seed, run.start_epoch, cfg.train.epochs, run.ctx)
    batches = iter(_loader(run, pairs, order)) if len(order) else iter(())
    try:
        for epoch in range(run.start_epoch, cfg.train.epochs):
            if epoch >= run.planned:
                break
            started = run.elapsed
            stopped_by_budget = _train_epoch(run, step_model, batches, order.steps(epoch), epoch, budget_s)
            if stopped_by_budget:
                _save_last(run, epoch)  # a partial epoch is redone on resume
                break
            _watch_classifier(run, epoch)
            _replan(run, epoch, run.elapsed - started, budget_s)
            if epoch == run.start_epoch or (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == run.planned:
                _save_last(run, epoch + 1)
            _save_snapshot(run, epoch + 1)
        _settle_guard(run)
    finally:
        del batches  # its workers stop here, not at the end of fitting (or with the error)
    return _finish(run, epoch, stopped_by_budget)
