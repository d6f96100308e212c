"""The collapse guard: when it fires, what a rollback restores, and a training that rolls back."""

import csv
import math

import pytest
import torch
from rollback_guards import AtChanceAfterEpoch2, FiresAfterEpoch2

import pitscope.training as training
from pitscope import fit
from pitscope.config import ConfigError, load_config
from pitscope.data import build_dataset
from pitscope.training import BEST_CHECKPOINT, LAST_CHECKPOINT, classifier_near_chance, train
from pitscope.training_rollback import CollapseGuard, replay, restore, snapshot

CHANCE = math.log(2.0)

# Per-epoch mean cross-entropies of recorded `cpu`-preset trainings on BSData (model metadata).
# The first learnt to epoch 12 and fell back to chance within epoch 13 for good.
FELL_BACK = [0.702, 0.694, 0.693, 0.693, 0.692, 0.692, 0.691, 0.690, 0.687, 0.668, 0.657, 0.656, 0.695, 0.694, 0.693]
LEARNT = [0.707, 0.695, 0.694, 0.693, 0.693, 0.692, 0.692, 0.691, 0.690, 0.687, 0.686, 0.681, 0.668, 0.624, 0.603]
# Learnt, rose towards chance for two epochs, and learnt on by itself.
DIPPED = [0.701, 0.695, 0.693, 0.693, 0.692, 0.691, 0.689, 0.680, 0.684, 0.688, 0.677, 0.644, 0.598, 0.561, 0.652]
DIPPED += [0.678, 0.629, 0.568]
NEVER_LEARNT = [0.703, 0.695, 0.694, 0.693, 0.693, 0.692, 0.692, 0.693, 0.692, 0.692]


def test_the_guard_fires_on_a_classifier_that_fell_back_and_on_no_other():
    assert replay(FELL_BACK, CHANCE, max_rollbacks=2) == [(14, 12)]  # epochs 13 and 14 at chance
    assert replay(LEARNT, CHANCE, max_rollbacks=2) == []
    assert replay(DIPPED, CHANCE, max_rollbacks=2) == []
    assert replay(NEVER_LEARNT, CHANCE, max_rollbacks=2) == []


def test_the_guard_counts_again_after_a_rollback_and_stops_at_its_limit():
    at_chance = [0.60, 0.70, 0.70, 0.70, 0.70, 0.70, 0.70]
    assert replay(at_chance, CHANCE, max_rollbacks=2) == [(3, 1), (5, 1)]
    assert replay(at_chance, CHANCE, max_rollbacks=1) == [(3, 1)]
    assert replay(at_chance, CHANCE, max_rollbacks=0) == []
    guard = CollapseGuard(CHANCE, max_rollbacks=2)
    verdicts = [guard.observe(e, ce) for e, ce in enumerate(at_chance, start=1)]
    assert verdicts == ["best", "", "rollback", "", "rollback", "", ""]
    assert guard.lr_scale == 0.25 and guard.best_epoch == 1 and guard.best_ce == 0.60


def test_a_non_finite_epoch_is_no_verdict():
    guard = CollapseGuard(CHANCE, max_rollbacks=1)
    assert guard.observe(1, math.nan) == "" and guard.best_epoch is None


def test_restore_brings_back_weights_and_momentum_and_leaves_the_snapshot_intact():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, fused=True)  # as training's
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step():
        opt.zero_grad()
        net(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()

    step()
    kept = snapshot(net, opt, scaler)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    for _ in range(2):  # twice: the first restore must not have tied the snapshot to the optimiser
        step()
        step()
        assert not torch.equal(net[0].weight, weights["0.weight"])
        restore(net, opt, scaler, kept)
        for k, v in net.state_dict().items():
            assert torch.equal(v, weights[k]), k  # BatchNorm's running statistics included
        for p, m in zip(net.parameters(), momentum):
            assert torch.equal(opt.state[p]["momentum_buffer"], m)


# -- in a training --------------------------------------------------------------------------
TINY = [
    "data.format=synthetic",
    "data.image_size=64",
    "data.synthetic.n_train=8",
    "train.batch_size=4",
    "train.device=cpu",
    "train.log_every=1",
    "model.target=none",
]


@pytest.fixture(scope="module")
def images():
    cfg = load_config(None, TINY)
    return build_dataset(cfg.data, "train", cfg.seed)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(out, images, *overrides):
    cfg = load_config(None, [*TINY, f"output_dir={out}", *overrides])
    return train(cfg, images, progress=False, echo=lambda _m: None)


def test_a_guard_that_never_fires_changes_nothing(tmp_path, images):
    off = run(tmp_path / "off", images, "train.epochs=3")
    on = run(tmp_path / "on", images, "train.epochs=3", "train.collapse_rollbacks=2")
    assert on.rollbacks == [] and (tmp_path / "on" / BEST_CHECKPOINT).exists()
    assert same_weights(off.model.state_dict(), on.model.state_dict())


def test_the_guard_starts_watching_after_the_opening_epochs(tmp_path, images):
    # epochs 1-2 paste strong noise alone: the guard keeps no epoch of them as its best
    opened = run(
        tmp_path / "opened", images, "train.epochs=3", "train.collapse_rollbacks=2", "augment.opening_epochs=2"
    )
    best = torch.load(tmp_path / "opened" / BEST_CHECKPOINT, weights_only=True)
    assert best["epoch"] == 3 and opened.rollbacks == []
    saved = torch.load(tmp_path / "opened" / LAST_CHECKPOINT, weights_only=True)
    assert saved["guard"]["best_epoch"] == 3


def test_a_rollback_restores_the_best_epoch_and_halves_the_rate(tmp_path, images, monkeypatch):
    one = run(tmp_path / "one", images, "train.epochs=1")
    monkeypatch.setattr(training, "CollapseGuard", FiresAfterEpoch2)
    rolled = run(tmp_path / "rolled", images, "train.epochs=2", "train.collapse_rollbacks=1")
    # after epoch 2 the run went back to epoch 1's weights, and no epoch followed
    assert same_weights(one.model.state_dict(), rolled.model.state_dict())
    a = one.model.state_dict()
    assert rolled.rollbacks == [{"after_epoch": 2, "to_epoch": 1, "lr_scale": 0.5}]
    assert rolled.history[-1]["rolled_back_to"] == 1
    saved = torch.load(tmp_path / "rolled" / LAST_CHECKPOINT, weights_only=True)
    assert saved["rollbacks"] == rolled.rollbacks  # the checkpoint holds the restored epoch's weights
    assert all(torch.equal(saved["model"][k], a[k]) for k in a)
    momentum = torch.load(tmp_path / "one" / LAST_CHECKPOINT, weights_only=True)["optimizer"]["state"]
    assert all(
        torch.equal(saved["optimizer"]["state"][k]["momentum_buffer"], m["momentum_buffer"])
        for k, m in momentum.items()
    )

    three = run(tmp_path / "three", images, "train.epochs=3", "train.collapse_rollbacks=1")
    lrs = {int(r["epoch"]): float(r["lr"]) for r in _log(tmp_path / "three")}
    assert lrs[3] == pytest.approx(0.5 * lrs[2])  # constant schedule: halved after the rollback
    assert three.rollbacks[0]["lr_scale"] == 0.5


def test_a_run_that_ends_at_chance_hands_back_its_best_epoch(tmp_path, images, monkeypatch):
    one = run(tmp_path / "one", images, "train.epochs=1")
    monkeypatch.setattr(training, "CollapseGuard", AtChanceAfterEpoch2)
    ended = run(tmp_path / "ended", images, "train.epochs=2", "train.collapse_rollbacks=1")
    assert same_weights(one.model.state_dict(), ended.model.state_dict())
    a = one.model.state_dict()
    assert ended.rollbacks == [{"after_epoch": 2, "to_epoch": 1, "lr_scale": 1.0, "at_end": True}]
    saved = torch.load(tmp_path / "ended" / LAST_CHECKPOINT, weights_only=True)
    assert all(torch.equal(saved["model"][k], a[k]) for k in a) and saved["epoch"] == 2


def test_a_resumed_run_goes_on_as_the_uninterrupted_one(tmp_path, images, monkeypatch):
    monkeypatch.setattr(training, "CollapseGuard", FiresAfterEpoch2)
    whole = run(tmp_path / "whole", images, "train.epochs=3", "train.collapse_rollbacks=1")
    run(tmp_path / "split", images, "train.epochs=2", "train.collapse_rollbacks=1")
    cfg = load_config(None, [*TINY, f"output_dir={tmp_path / 'split'}", "train.epochs=3", "train.collapse_rollbacks=1"])
    resumed = train(cfg, images, resume=True, progress=False, echo=lambda _m: None)
    assert same_weights(whole.model.state_dict(), resumed.model.state_dict())
    assert resumed.rollbacks == whole.rollbacks


def test_a_resume_without_the_best_epochs_file_watches_afresh(tmp_path, images, monkeypatch):
    messages = []
    run(tmp_path / "r", images, "train.epochs=1", "train.collapse_rollbacks=1")
    (tmp_path / "r" / BEST_CHECKPOINT).unlink()
    cfg = load_config(None, [*TINY, f"output_dir={tmp_path / 'r'}", "train.epochs=2", "train.collapse_rollbacks=1"])
    train(cfg, images, resume=True, progress=False, echo=messages.append)
    assert any("watches afresh" in m for m in messages)


def test_the_chance_check_reads_the_epoch_a_last_rollback_went_back_to():
    history = [{"epoch": 1, "ce": 0.5}, {"epoch": 2, "ce": 0.69, "rolled_back_to": 1}]
    assert classifier_near_chance(history, "binary", 1) is None
    assert classifier_near_chance(history[:1] + [{"epoch": 2, "ce": 0.69}], "binary", 1) == pytest.approx(0.69)


def test_a_resumed_run_keeps_the_rate_its_rollbacks_left(tmp_path, images, monkeypatch):
    monkeypatch.setattr(training, "CollapseGuard", FiresAfterEpoch2)
    run(tmp_path / "r", images, "train.epochs=2", "train.collapse_rollbacks=1")
    cfg = load_config(None, [*TINY, f"output_dir={tmp_path / 'r'}", "train.epochs=3", "train.collapse_rollbacks=1"])
    resumed = train(cfg, images, resume=True, progress=False, echo=lambda _m: None)
    assert resumed.rollbacks == [{"after_epoch": 2, "to_epoch": 1, "lr_scale": 0.5}]
    rows = [r for r in _log(tmp_path / "r") if int(r["epoch"]) == 3]
    assert rows and all(float(r["lr"]) == pytest.approx(0.5 * cfg.train.lr) for r in rows)


def test_the_model_file_records_the_rollbacks(tmp_path, monkeypatch, tiny_detector_overrides):
    monkeypatch.setattr(training, "CollapseGuard", FiresAfterEpoch2)
    overrides = [*tiny_detector_overrides, "train.epochs=2", "train.batch_size=4", "train.collapse_rollbacks=1"]
    detector = fit(None, [*overrides, f"output_dir={tmp_path}"], progress=False)
    assert detector.metadata["training"]["rollbacks"] == [{"after_epoch": 2, "to_epoch": 1, "lr_scale": 0.5}]
    assert detector.metadata["training"]["losses"][-1]["rolled_back_to"] == 1


def test_a_negative_number_of_rollbacks_is_refused():
    with pytest.raises(ConfigError, match="collapse_rollbacks"):
        load_config(None, ["train.collapse_rollbacks=-1"])


def _log(out):
    with (out / training.LOG_FILE).open(newline="") as fh:
        return list(csv.DictReader(fh))
