"""The guard against a pseudo-defect classifier that learns and then falls back to chance.

A training's classifier can learn to tell pasted pseudo-defects apart and then, within an epoch,
lose it for good: its cross-entropy returns to chance and stays there, and the network's maps
with it. `CollapseGuard` reads each epoch's mean cross-entropy; training keeps the weights of the
best epoch and, when the guard says so, goes back to them with a lower learning rate. A run in
which the guard never fires trains exactly as without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

LEARNT_SHARE = 0.97  # an epoch's cross-entropy at most this share of chance: the classifier has learnt
CHANCE_SHARE = 0.99  # at least this share of chance: the classifier is back at chance
COLLAPSED_EPOCHS = 2  # epochs in a row back at chance, after having learnt, that fire the guard
LR_FACTOR = 0.5  # the learning rate is multiplied by this at each rollback

Verdict = Literal["best", "rollback", ""]


@dataclass
class CollapseGuard:
    """Reads the classifier's mean cross-entropy epoch by epoch (`observe`).

    `chance` is the cross-entropy of a classifier that answers the base rates alone;
    `max_rollbacks` how many times the guard may fire (0: never). State: the best epoch so far
    (`best_epoch`, `best_ce`), the epochs in a row back at chance since (`at_chance`), the
    rollbacks so far (`rollbacks`).
    """

    chance: float
    max_rollbacks: int
    best_ce: float = math.inf
    best_epoch: int | None = None
    at_chance: int = 0
    rollbacks: int = 0

    def observe(self, epoch: int, ce: float) -> Verdict:
        """The verdict on the finished `epoch` (1-based) of mean cross-entropy `ce`: "best" when it
        is the lowest so far (keep its weights), "rollback" when training should go back to the
        best epoch's weights, "" otherwise. A rollback resets the count of epochs at chance."""
        if not math.isfinite(ce):
            return ""
        if ce < self.best_ce:
            self.best_ce, self.best_epoch, self.at_chance = ce, epoch, 0
            return "best"
        learnt = self.best_ce <= LEARNT_SHARE * self.chance
        self.at_chance = self.at_chance + 1 if learnt and ce >= CHANCE_SHARE * self.chance else 0
        if self.at_chance >= COLLAPSED_EPOCHS and self.rollbacks < self.max_rollbacks:
            self.rollbacks += 1
            self.at_chance = 0
            return "rollback"
        return ""

    @property
    def lr_scale(self) -> float:
        """The factor on the scheduled learning rate after the rollbacks so far."""
        return LR_FACTOR**self.rollbacks


def replay(ces: list[float], chance: float, max_rollbacks: int) -> list[tuple[int, int]]:
    """(epoch it fired after, epoch gone back to) for each time the guard would fire on a
    recorded run's per-epoch mean cross-entropies `ces` (epoch 1 first), as if the run had gone on
    unchanged after each rollback."""
    guard = CollapseGuard(chance, max_rollbacks)
    fired = []
    for epoch, ce in enumerate(ces, start=1):
        if guard.observe(epoch, ce) == "rollback":
            assert guard.best_epoch is not None
            fired.append((epoch, guard.best_epoch))
    return fired


def _copy_to_cpu(obj):
    """`obj` with every tensor in it copied to the CPU (dicts and lists walked)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _copy_to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy_to_cpu(v) for v in obj]
    return obj


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> dict:
    """A copy, on the CPU, of the network's weights and buffers (BatchNorm statistics), the
    optimiser's state (momentum) and the float16 loss scaler's state."""
    return {
        "model": _copy_to_cpu(model.state_dict()),
        "optimizer": _copy_to_cpu(optimizer.state_dict()),
        "scaler": _copy_to_cpu(scaler.state_dict()),
    }


def restore(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, state: dict
) -> None:
    """Load a `snapshot` back into the network, the optimiser and the scaler; the snapshot stays as
    it was (the optimiser gets its own copy, so a later rollback to the same snapshot finds it intact)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(_copy_to_cpu(state["optimizer"]))
    scaler.load_state_dict(state["scaler"])


def guard_state(guard: CollapseGuard) -> dict:
    """What a checkpoint keeps of the guard: its best epoch, epochs at chance and rollbacks."""
    return {
        "best_ce": guard.best_ce,
        "best_epoch": guard.best_epoch,
        "at_chance": guard.at_chance,
        "rollbacks": guard.rollbacks,
    }


def load_guard_state(guard: CollapseGuard, state: dict) -> None:
    """Put a checkpoint's `guard_state` back into `guard` (its chance and limit stay the config's)."""
    guard.best_ce, guard.best_epoch = float(state["best_ce"]), state["best_epoch"]
    guard.at_chance, guard.rollbacks = int(state["at_chance"]), int(state["rollbacks"])
