"""Training: files written, the joint loss, resume, determinism, the time budget and divergence.

Every run is tiny (8 images of 64 x 64, batches of 4: two steps an epoch) and seeded.
"""

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler, default_collate
from tqdm.auto import tqdm

import pitscope.runtime as runtime
import pitscope.training as training
from pitscope.augment import PseudoDefects
from pitscope.config import ConfigError, load_config, to_dict
from pitscope.data import build_dataset
from pitscope.models.hog import hog_features
from pitscope.models.network import DoubleSelfSupervisedNet
from pitscope.seeding import numpy_rng
from pitscope.tensors import denormalise, image_to_tensor
from pitscope.training import (
    LAST_CHECKPOINT,
    LOG_FILE,
    PseudoDefectPairs,
    TrainingDiverged,
    compute_loss,
    pixel_target,
    planned_epochs,
    resolve_precision,
    scheduled_lr,
    sgd,
    train,
)
from pitscope.training_loss import opening_maker

TINY = [
    "data.format=synthetic",
    "data.image_size=64",
    "data.synthetic.n_train=8",
    "data.synthetic.n_test_normal=4",
    "data.synthetic.n_test_defect=4",
    "train.batch_size=4",
    "train.epochs=1",
    "train.device=cpu",
    "train.log_every=1",
    "score.pixel_channels=16",
    "score.batch_size=8",
]
STEPS_PER_EPOCH = 2  # 8 images, batches of 4
# Where the pixel branch does not matter: no decoder, so checkpoints of ~90 MB instead of ~220 MB.
LIGHT = "model.target=none"


@pytest.fixture(scope="module")
def images():
    """The 8 defect-free training images of TINY (read-only, shared)."""
    cfg = load_config(None, TINY)
    return build_dataset(cfg.data, "train", cfg.seed)


def make_config(out, *overrides):
    return load_config(None, [*TINY, f"output_dir={out}", *overrides])


def quiet(_message):
    pass


def run(out, images, *overrides, resume=False):
    return train(make_config(out, *overrides), images, resume=resume, progress=False, echo=quiet)


def assert_same_weights(a: dict, b: dict):
    assert list(a) == list(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def read_log(out):
    with (out / LOG_FILE).open(newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def first_batch(cfg, images, n=4):
    """A collated batch of pairs (normal, pseudo-defective, mask, kind) of images 0..n-1, epoch 0."""
    pairs = PseudoDefectPairs(images, PseudoDefects(cfg.augment), cfg.seed)
    return default_collate([pairs[i] for i in range(n)])


# -- a run and its files ----------------------------------------------------------------------
def test_run_writes_checkpoint_log_and_config(tmp_path, images):
    result = run(tmp_path, images, "train.epochs=2")

    assert result.epochs_done == 2 and not result.stopped_by_budget
    assert result.steps == 2 * STEPS_PER_EPOCH
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert not result.model.training

    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2 and state["step"] == result.steps
    assert_same_weights(state["model"], result.model.state_dict())

    header, rows = read_log(tmp_path)
    assert header == ["epoch", "step", "loss", "ce", "mse", "seg", "sspcab", "lr", "elapsed_s"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 2, 2]
    for r in rows:
        loss, ce, mse = float(r["loss"]), float(r["ce"]), float(r["mse"])
        assert math.isfinite(loss)
        assert loss == pytest.approx(ce + mse, rel=1e-5)  # loss_lambda = 1
        assert float(r["lr"]) == 0.03

    saved = load_config(str(tmp_path / "config.yaml"))
    assert to_dict(saved) == to_dict(make_config(tmp_path, "train.epochs=2"))


# -- the joint loss ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, parts",
    [
        ([], {"ce", "mse", "loss"}),
        (["model.target=none"], {"ce", "loss"}),
        (["model.classify=false", "score.image_features=layer4"], {"mse", "loss"}),
        (["model.head=multiclass", "augment.kinds=[noise, scar]"], {"ce", "mse", "loss"}),
        (["model.target=rgb"], {"ce", "mse", "loss"}),
    ],
)
def test_compute_loss_parts_match_their_definitions(tmp_path, images, overrides, parts):
    cfg = make_config(tmp_path, "model.loss_lambda=2.5", *overrides)
    torch.manual_seed(0)
    model = DoubleSelfSupervisedNet(cfg.model, n_kinds=len(cfg.augment.kinds))
    batch = first_batch(cfg, images)
    loss, got = compute_loss(model, cfg, batch)

    assert set(got) == parts
    assert loss.requires_grad and torch.isfinite(loss)
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert got["loss"] == pytest.approx(got.get("ce", 0.0) + 2.5 * got.get("mse", 0.0), rel=1e-5)

    # The same quantities by hand: normals first (label 0), then their pseudo-defective copies.
    normal, defective, _mask, kind = batch
    x = torch.cat([normal, defective])  # (8, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    if "ce" in parts:
        if cfg.model.head == "binary":
            labels = torch.tensor([0.0] * 4 + [1.0] * 4)
            ce = F.binary_cross_entropy_with_logits(out.logits, labels)
        else:
            assert out.logits.shape == (8, 1 + len(cfg.augment.kinds))
            assert set(kind.tolist()) <= {1, 2}
            ce = F.cross_entropy(out.logits, torch.cat([torch.zeros(4, dtype=torch.long), kind.long()]))
        assert got["ce"] == pytest.approx(float(ce), rel=1e-5)
    if "mse" in parts:
        if cfg.model.target == "hog":
            target = hog_features(denormalise(x))
        else:
            target = training.pixel_target(cfg, x)
            assert target.shape == (8, 3780)
        assert got["mse"] == pytest.approx(float(F.mse_loss(out.target_pred, target)), rel=1e-5)


def test_multiclass_head_trains(tmp_path, images):
    result = run(tmp_path, images, "model.head=multiclass", "augment.kinds=[noise, scar]")
    assert result.n_kinds == 2
    assert result.steps == STEPS_PER_EPOCH
    assert math.isfinite(result.history[-1]["loss"])
    with torch.no_grad():
        logits = result.model(torch.zeros(1, 3, 64, 64)).logits
    assert logits.shape == (1, 3)  # normal, noise, scar


def test_config_without_any_task_is_refused(tmp_path, images):
    with pytest.raises(ValueError, match="classify|target"):
        run(tmp_path, images, "model.classify=false", "model.target=none")


# -- resume -----------------------------------------------------------------------------------
def test_resume_continues_exactly_where_it_stopped(tmp_path, images):
    whole = run(tmp_path / "whole", images, "train.epochs=2")
    run(tmp_path / "split", images, "train.epochs=1")
    resumed = run(tmp_path / "split", images, "train.epochs=2", resume=True)

    assert_same_weights(resumed.model.state_dict(), whole.model.state_dict())
    assert resumed.steps == whole.steps == 2 * STEPS_PER_EPOCH
    assert resumed.epochs_done == 2
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]

    # The optimizer state (momentum) came back too, and the log kept its first epoch's rows.
    a = torch.load(tmp_path / "whole" / LAST_CHECKPOINT, weights_only=True)["optimizer"]["state"]
    b = torch.load(tmp_path / "split" / LAST_CHECKPOINT, weights_only=True)["optimizer"]["state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k]["momentum_buffer"], b[k]["momentum_buffer"]) for k in a)
    _, whole_rows = read_log(tmp_path / "whole")
    header, split_rows = read_log(tmp_path / "split")
    assert header[0] == "epoch"
    assert [(r["epoch"], r["step"], r["loss"]) for r in split_rows] == [
        (r["epoch"], r["step"], r["loss"]) for r in whole_rows
    ]


def test_resume_refuses_another_model_config_or_seed(tmp_path, images):
    run(tmp_path, images, LIGHT)
    for change in ("model.target=hog", "model.head=multiclass", "seed=1"):
        with pytest.raises(ValueError, match="another model config|with seed 0, not 1"):
            run(tmp_path, images, LIGHT, "train.epochs=2", change, resume=True)


def test_resume_names_the_changed_setting_and_takes_a_width_equal_to_the_height_as_square(tmp_path, images):
    run(tmp_path, images, LIGHT)  # 64 x 64 images, data.image_width null
    with pytest.raises(ValueError, match=r"another augment config: augment.kinds \['noise', 'scar'\], not \['scar'\]"):
        run(tmp_path, images, LIGHT, "train.epochs=2", "augment.kinds=[scar]", resume=True)
    resumed = run(tmp_path, images, LIGHT, "train.epochs=2", "data.image_width=64", resume=True)
    assert resumed.epochs_done == 2


def test_without_checkpoint_no_checkpoint_is_written_and_an_earlier_one_is_removed(tmp_path, images):
    run(tmp_path, images[:4], LIGHT)  # an earlier run leaves its checkpoint
    assert (tmp_path / LAST_CHECKPOINT).is_file()
    messages = []
    result = train(
        make_config(tmp_path, LIGHT, "train.epochs=2", "train.checkpoint=false"),
        images[:4],
        progress=False,
        echo=messages.append,
    )
    assert result.epochs_done == 2
    assert not (tmp_path / LAST_CHECKPOINT).exists()
    assert any("removed" in m and LAST_CHECKPOINT in m for m in messages)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", LOG_FILE]


def test_resume_without_checkpoint_is_a_file_not_found(tmp_path, images):
    with pytest.raises(FileNotFoundError, match=LAST_CHECKPOINT):
        run(tmp_path, images, LIGHT, resume=True)


def test_refused_resume_leaves_config_yaml_alone(tmp_path, images):
    run(tmp_path, images, LIGHT)
    with pytest.raises(ValueError):
        run(tmp_path, images, "train.epochs=2", "model.target=rgb", resume=True)
    assert load_config(str(tmp_path / "config.yaml")).model.target == "none"


def test_resume_with_a_new_lr_uses_it(tmp_path, images):
    run(tmp_path, images[:4], LIGHT, "train.lr=0.03")
    run(tmp_path, images[:4], LIGHT, "train.epochs=2", "train.lr=0.001", resume=True)
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    _, rows = read_log(tmp_path)
    assert float(rows[-1]["lr"]) == 0.001
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.001


def test_resume_with_a_random_feature_mask_continues_exactly(tmp_path, images):
    few = images[:4]  # one step an epoch
    whole = run(tmp_path / "whole", few, "train.epochs=2", "model.mask_type=dropout")
    run(tmp_path / "split", few, "model.mask_type=dropout")
    resumed = run(tmp_path / "split", few, "train.epochs=2", "model.mask_type=dropout", resume=True)
    assert_same_weights(resumed.model.state_dict(), whole.model.state_dict())


# -- determinism ------------------------------------------------------------------------------
def test_same_seed_same_weights_other_seed_other_weights(tmp_path, images):
    few = images[:4]  # one step
    a = run(tmp_path / "a", few)
    b = run(tmp_path / "b", few)
    c = run(tmp_path / "c", few, "seed=1")
    assert_same_weights(a.model.state_dict(), b.model.state_dict())
    assert a.history[0]["loss"] == b.history[0]["loss"]
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


# -- the learning-rate schedule ---------------------------------------------------------------
def test_scheduled_lr_closed_form():
    cfg = load_config(None, ["train.lr=0.02", "train.epochs=4"]).train
    assert scheduled_lr(cfg, 37, 10) == 0.02  # constant: whatever the step
    assert scheduled_lr(cfg, 37, 10, 2) == 0.02  # and whatever the plan
    cfg.lr_schedule = "cosine"
    # over train.epochs: 40 steps in all
    assert scheduled_lr(cfg, 0, 10) == pytest.approx(0.02)
    assert scheduled_lr(cfg, 10, 10) == pytest.approx(0.01 * (1 + math.cos(math.pi / 4)))
    assert scheduled_lr(cfg, 20, 10) == pytest.approx(0.01)
    assert scheduled_lr(cfg, 40, 10) == pytest.approx(0.0, abs=1e-12)
    # over a plan shortened to 2 epochs: 20 steps, never below zero past them
    assert scheduled_lr(cfg, 10, 10, 2) == pytest.approx(0.01)
    assert scheduled_lr(cfg, 15, 10, 2) == pytest.approx(0.01 * (1 + math.cos(3 * math.pi / 4)))
    assert scheduled_lr(cfg, 30, 10, 2) == pytest.approx(0.0, abs=1e-12)


def test_planned_epochs_closed_form():
    assert planned_epochs(30, 1, 60.0, 60.0, math.inf) == 30  # no budget
    assert planned_epochs(30, 1, 60.0, 60.0, 1800.0) == 30  # 60 + 29 x 60 = 1800 s: the rest fits
    assert planned_epochs(30, 1, 60.0, 60.0, 1799.0) == 29  # one second short: the 28 more that fit
    assert planned_epochs(30, 10, 900.0, 90.0, 1800.0) == 20  # a slower pace later: 10 more of 90 s
    assert planned_epochs(30, 5, 1790.0, 60.0, 1800.0) == 5  # not one more fits: the run ends
    assert planned_epochs(20, 5, 100.0, 1.0, 1e6) == 20  # a faster pace never lengthens the plan
    assert planned_epochs(20, 20, 1e6, 60.0, 1800.0) == 20  # nothing left to plan


def test_warm_up_closed_form():
    cfg = load_config(None, ["train.lr=0.02", "train.epochs=4", "train.warmup_epochs=0.5"]).train
    # 5 warm-up steps of 10 a epoch: step k runs at (k + 1) / 5 of the rate, then the schedule's
    assert [scheduled_lr(cfg, k, 10) for k in range(6)] == pytest.approx([0.004, 0.008, 0.012, 0.016, 0.02, 0.02])
    cfg.lr_schedule = "cosine"
    assert scheduled_lr(cfg, 1, 10) == pytest.approx(0.4 * 0.01 * (1 + math.cos(math.pi / 40)))
    assert scheduled_lr(cfg, 20, 10) == pytest.approx(0.01)  # past the warm-up: the cosine alone
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        load_config(None, ["train.warmup_epochs=-1"])


def test_cosine_schedule_is_logged_applied_and_resumed(tmp_path, images, monkeypatch):
    cosine = (LIGHT, "train.lr_schedule=cosine", "train.lr=0.04")
    whole = run(tmp_path / "whole", images, *cosine, "train.epochs=2")
    _, rows = read_log(tmp_path / "whole")
    total = 2 * STEPS_PER_EPOCH
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [0.02 * (1 + math.cos(math.pi * s / total)) for s in range(total)]
    )
    state = torch.load(tmp_path / "whole" / LAST_CHECKPOINT, weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(float(rows[-1]["lr"]))
    # a constant rate gives other weights; stopping after epoch 1 and resuming gives the same ones
    flat = run(tmp_path / "flat", images, LIGHT, "train.lr=0.04", "train.epochs=2")
    w, f = whole.model.state_dict(), flat.model.state_dict()
    assert any(not torch.equal(w[k], f[k]) for k in w if w[k].is_floating_point())
    real_save = training.atomic_save

    def killed_after_epoch_1(state, path):
        real_save(state, path)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "atomic_save", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", images, *cosine, "train.epochs=2")
    monkeypatch.setattr(training, "atomic_save", real_save)
    with (tmp_path / "split" / LOG_FILE).open("a", newline="") as fh:  # rows a killed run logged past its checkpoint
        csv.writer(fh).writerows([[2, STEPS_PER_EPOCH + 1, 0.5], [2, STEPS_PER_EPOCH + 2, 0.5]])
    resumed = run(tmp_path / "split", images, *cosine, "train.epochs=2", resume=True)
    assert_same_weights(resumed.model.state_dict(), whole.model.state_dict())
    _, resumed_rows = read_log(tmp_path / "split")
    assert [int(r["step"]) for r in resumed_rows] == [int(r["step"]) for r in rows]  # each step once


def test_bf16_on_a_cpu_without_it_warns(tmp_path, images, monkeypatch):
    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda native=native: native)
        messages = []
        cfg = make_config(tmp_path / str(native), LIGHT, "train.precision=bf16")
        train(cfg, images[:4], progress=False, echo=messages.append)
        assert any("no native bfloat16" in m for m in messages) == warned
        assert any("bfloat16" in m for m in messages)  # the precision line


# -- the time budget --------------------------------------------------------------------------
def test_budget_stops_early_and_still_saves(tmp_path, images):
    messages = []
    cfg = make_config(tmp_path, LIGHT, "train.epochs=2", "train.budget_minutes=0.0001")  # 6 ms
    result = train(cfg, images, progress=False, echo=messages.append)

    assert result.stopped_by_budget
    assert 1 <= result.steps < 2 * STEPS_PER_EPOCH
    assert any("budget" in m for m in messages)
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert state["epoch"] == 0  # the unfinished epoch is redone on resume
    assert state["step"] == result.steps


class FakeClock:
    """A stand-in for time.perf_counter: each call returns the time and then moves it on by the
    next of `advances` seconds (the last one repeated), so step k of a run takes advances[k - 1] s
    (training reads the clock once at an epoch's start and once after each step)."""

    def __init__(self, advances):
        self.advances, self.calls, self.now = list(advances), 0, 0.0

    def perf_counter(self):
        now = self.now
        self.now += self.advances[min(self.calls, len(self.advances) - 1)]
        self.calls += 1
        return now


def test_a_busy_machine_within_the_budget_trains_what_an_idle_one_does(tmp_path, images, monkeypatch):
    cosine = (LIGHT, "train.lr_schedule=cosine", "train.lr=0.04", "train.epochs=2")
    idle = run(tmp_path / "idle", images, *cosine)
    # the first step takes 30 s of a 100 s budget (30% of the time for 25% of the steps); at the
    # first epoch's pace (31 s) both epochs end within the budget, so the plan and the rates stay
    monkeypatch.setattr(training, "time", FakeClock([30.0, 1.0]))
    busy = run(tmp_path / "busy", images, *cosine, f"train.budget_minutes={100 / 60}")
    assert not busy.stopped_by_budget and busy.epochs_done == 2
    assert busy.elapsed_s == pytest.approx(30.0 + 3 * 1.0)
    assert [float(r["lr"]) for r in read_log(tmp_path / "busy")[1]] == [
        float(r["lr"]) for r in read_log(tmp_path / "idle")[1]
    ]
    assert_same_weights(busy.model.state_dict(), idle.model.state_dict())


def test_a_run_too_slow_for_its_budget_anneals_over_the_epochs_that_fit(tmp_path, images, monkeypatch):
    monkeypatch.setattr(training, "time", FakeClock([10.0]))  # every step 10 s: an epoch 20 s
    messages = []
    cfg = make_config(
        tmp_path, LIGHT, "train.lr_schedule=cosine", "train.lr=0.04", "train.epochs=4", "train.budget_minutes=1"
    )
    result = train(cfg, images, progress=False, echo=messages.append)
    # after epoch 1 (20 s), 4 epochs would take 80 s: the plan becomes the 3 that fit in 60 s
    assert result.epochs_done == 3 and result.stopped_by_budget
    assert any("anneals over 3 epochs" in m for m in messages)
    assert any("ended after 3 of 4 epochs" in m for m in messages)
    lrs = [float(r["lr"]) for r in read_log(tmp_path)[1]]
    expected = [0.02 * (1 + math.cos(math.pi * s / 8)) for s in range(2)]  # epoch 1 planned 4 epochs
    expected += [0.02 * (1 + math.cos(math.pi * s / 6)) for s in range(2, 6)]  # then 3
    assert lrs == pytest.approx(expected)
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert state["epoch"] == 3 and state["planned_epochs"] == 3
    # a constant rate plans nothing: the budget stops the same run within its fourth epoch
    monkeypatch.setattr(training, "time", FakeClock([10.0]))
    flat = run(tmp_path / "flat", images, LIGHT, "train.epochs=4", "train.budget_minutes=1")
    assert flat.stopped_by_budget and flat.epochs_done == 3 and flat.steps == 6
    assert torch.load(tmp_path / "flat" / LAST_CHECKPOINT, weights_only=True)["planned_epochs"] == 4


def test_a_resumed_run_keeps_its_shortened_plan(tmp_path, images, monkeypatch):
    slow = (LIGHT, "train.lr_schedule=cosine", "train.lr=0.04", "train.epochs=4", "train.budget_minutes=1")
    monkeypatch.setattr(training, "time", FakeClock([10.0]))
    whole = run(tmp_path / "whole", images, *slow)
    real_save = training.atomic_save

    def killed_after_epoch_2(state, path):
        real_save(state, path)
        if state.get("epoch") == 2 and "planned_epochs" in state:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "time", FakeClock([10.0]))
    monkeypatch.setattr(training, "atomic_save", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "split", images, *slow, "train.checkpoint_every=1")
    monkeypatch.setattr(training, "atomic_save", real_save)
    # resumed on an idle machine (1 s a step): the plan made before the stop holds
    monkeypatch.setattr(training, "time", FakeClock([1.0]))
    resumed = run(tmp_path / "split", images, *slow, "train.checkpoint_every=1", resume=True)
    assert resumed.epochs_done == whole.epochs_done == 3
    assert_same_weights(resumed.model.state_dict(), whole.model.state_dict())
    # resumed with another budget, the plan starts again from train.epochs: the fourth epoch trains
    more = run(tmp_path / "whole", images, *slow[:-1], "train.budget_minutes=null", resume=True)
    assert more.epochs_done == 4 and not more.stopped_by_budget


def test_budget_stop_does_not_count_the_unfinished_epoch(tmp_path, images):
    result = run(tmp_path, images, LIGHT, "train.epochs=2", "train.budget_minutes=0.0001")
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert result.epochs_done == state["epoch"] == 0


# -- divergence -------------------------------------------------------------------------------
def test_nan_loss_raises_training_diverged_naming_where(tmp_path, images, monkeypatch):
    real = training.compute_loss
    calls = []

    def nan_at_second_step(model, cfg, batch):
        loss, parts = real(model, cfg, batch)
        calls.append(1)
        if len(calls) == 2:
            return loss * float("nan"), {**parts, "loss": float("nan")}
        return loss, parts

    monkeypatch.setattr(training, "compute_loss", nan_at_second_step)
    with pytest.raises(TrainingDiverged) as info:
        run(tmp_path, images, LIGHT, "train.epochs=2", "train.lr=0.02")
    message = str(info.value)
    assert "epoch 1" in message and "step 2" in message
    assert "train.lr" in message and "0.02" in message
    assert len(calls) == 2
    assert "no checkpoint of this run was written" in message
    assert not (tmp_path / LAST_CHECKPOINT).exists()  # nothing half-diverged is kept


def test_divergence_keeps_a_finite_checkpoint(tmp_path, images):
    run(tmp_path, images, LIGHT, "train.lr=0.03")
    before = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    with pytest.raises(TrainingDiverged, match="after epoch 1"):
        run(tmp_path, images, LIGHT, "train.epochs=2", "train.lr=1.0e+30", resume=True)
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    poisoned = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not poisoned
    assert state["epoch"] == before["epoch"] == 1


def test_divergence_names_the_epoch_the_checkpoint_holds_not_a_stale_file(tmp_path, images, monkeypatch):
    run(tmp_path, images, LIGHT, "train.epochs=1")  # an earlier run's checkpoint_last.pt
    real, calls = training.compute_loss, []

    def nan_in_epoch_4(model, cfg, batch):
        loss, parts = real(model, cfg, batch)
        calls.append(1)
        if len(calls) == 3 * STEPS_PER_EPOCH + 1:
            return loss * float("nan"), {**parts, "loss": float("nan")}
        return loss, parts

    monkeypatch.setattr(training, "compute_loss", nan_in_epoch_4)
    with pytest.raises(TrainingDiverged, match=r"after epoch 2\)"):
        run(tmp_path, images, LIGHT, "train.epochs=5", "train.checkpoint_every=2")
    assert torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)["epoch"] == 2

    def nan_at_once(model, cfg, batch):
        loss, parts = real(model, cfg, batch)
        return loss * float("nan"), {**parts, "loss": float("nan")}

    monkeypatch.setattr(training, "compute_loss", nan_at_once)
    with pytest.raises(TrainingDiverged, match="no checkpoint of this run was written"):
        run(tmp_path, images, LIGHT, "train.epochs=5")  # the file there is the run before's


def test_dataloader_workers_see_the_same_pseudo_defects(tmp_path, images):
    few = images[:4]
    # bf16 rounding, and oneDNN's channels-last kernels (which pick their path by buffer
    # alignment), would swamp the comparison below
    fp32 = ("train.precision=fp32", "train.channels_last=false")
    inline = run(tmp_path / "inline", few, LIGHT, *fp32, "train.num_workers=0")
    workers = run(tmp_path / "workers", few, LIGHT, *fp32, "train.num_workers=1")
    again = run(tmp_path / "again", few, LIGHT, *fp32, "train.num_workers=1")
    assert_same_weights(workers.model.state_dict(), again.model.state_dict())
    # Tensors that cross from a worker may take another kernel path: equal to rounding only.
    a, b = workers.model.state_dict(), inline.model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_sspcab_loss_is_logged(tmp_path, images):
    run(tmp_path, images[:4], "model.target=none", "model.sspcab=true")
    fields, rows = read_log(tmp_path)
    assert "sspcab" in fields
    assert all(float(row["sspcab"]) >= 0 for row in rows) and rows


def test_compile_wraps_the_step_and_saves_plain_weights(tmp_path, images, monkeypatch):
    """train.compile=true goes through torch.compile (here with the eager backend: inductor's C++
    build takes minutes); the checkpoint keeps the plain module's parameter names."""
    calls = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):
        calls.append(module)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    result = run(tmp_path, images[:4], LIGHT, "train.compile=true")
    assert len(calls) == 1 and result.steps > 0
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    assert not [k for k in state["model"] if k.startswith("_orig_mod")]
    assert_same_weights(state["model"], result.model.state_dict())


def test_precision_choices(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        resolve_precision("fp16", cpu)
    assert resolve_precision("auto", cpu) is None  # bf16 on the CPU only when asked for
    cuda = torch.device("cuda")
    # native only: a GPU that emulates bfloat16 (before compute capability 8) gets fp16 or float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", cuda) is torch.float16
    assert resolve_precision("bf16_where_native", cuda) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", cuda) is torch.bfloat16
    assert resolve_precision("bf16_where_native", cuda) is torch.bfloat16


@pytest.mark.parametrize("native", [False, True])
def test_bf16_where_native_follows_the_cpu(native, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
    assert resolve_precision("bf16_where_native", torch.device("cpu")) is (torch.bfloat16 if native else None)


def test_bf16_where_native_says_what_it_chose(tmp_path, images, monkeypatch):
    for native in (False, True):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda native=native: native)
        messages = []
        cfg = make_config(tmp_path / str(native), LIGHT, "train.precision=bf16_where_native", "train.device=cpu")
        result = train(cfg, images[:4], progress=False, echo=messages.append)
        line = next(m for m in messages if m.startswith("device cpu"))
        assert ("float32 (cpu without native bfloat16)" in line) == (not native)
        assert line.startswith("device cpu, bfloat16") == native
        assert not any("warning" in m for m in messages)
        assert all(p.dtype == torch.float32 for p in result.model.parameters())
        assert result.precision == ("bfloat16" if native else "float32")


@pytest.mark.parametrize("native", [False, True])
def test_the_cpu_presets_train_in_bf16_only_where_native(native, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
    for preset in ("cpu", "surface"):
        precision = load_config(preset).train.precision
        assert resolve_precision(precision, torch.device("cpu")) is (torch.bfloat16 if native else None)


def test_bf16_training_keeps_float32_weights_and_targets(tmp_path, images):
    result = run(tmp_path, images[:4], "train.precision=bf16")
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert all(math.isfinite(h["loss"]) for h in result.history)
    cfg = make_config(tmp_path, "train.precision=bf16")
    x = torch.rand(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        target = pixel_target(cfg, x)
    assert target.dtype == torch.float32
    torch.testing.assert_close(target, pixel_target(cfg, x))


# -- training on crops -------------------------------------------------------------------------
def test_crops_are_seeded_windows_of_the_image_and_the_defect_stays_in_its_mask(images):
    cfg = make_config("unused")
    pairs = PseudoDefectPairs(images, PseudoDefects(cfg.augment), cfg.seed, crop=40)
    offsets = set()
    for index in range(len(images)):
        normal, defective, mask, _ = pairs[index]
        assert normal.shape == defective.shape == (3, 40, 40) and mask.shape == (40, 40)
        whole = image_to_tensor(images[index].image)  # (3, 64, 64)
        found = [(t, x) for t in range(25) for x in range(25) if torch.equal(whole[:, t : t + 40, x : x + 40], normal)]
        assert found, "the crop is not a window of the image"
        offsets.add(found[0])
        outside = mask == 0
        assert torch.equal(defective[:, outside], normal[:, outside])
        again = pairs[index]
        assert all(torch.equal(a, b) for a, b in zip(pairs[index][:3], again[:3]))  # seeded
    assert len(offsets) > 1
    pairs.set_epoch(1)
    assert not all(
        torch.equal(pairs[i][0], PseudoDefectPairs(images, PseudoDefects(cfg.augment), cfg.seed, 40)[i][0])
        for i in range(len(images))
    )  # a new epoch, new windows
    with pytest.raises(ValueError, match="larger than a training image"):
        PseudoDefectPairs(images, PseudoDefects(cfg.augment), cfg.seed, crop=65)[0]


# -- the opening epochs ------------------------------------------------------------------------
def test_opening_epochs_paste_strong_noise_alone_then_the_kinds_as_set(images):
    cfg = make_config("unused", "augment.kinds=[scar, noise, pit]", "augment.opening_epochs=2")
    maker = PseudoDefects(cfg.augment)
    pairs = PseudoDefectPairs(images, maker, cfg.seed)
    plain = PseudoDefectPairs(images, maker, cfg.seed)
    plain.opening = None  # the same pairs without an opening
    strong = opening_maker(maker)
    assert strong.kinds == ["noise"] and (strong.cfg.alpha_min, strong.cfg.alpha_max) == (0.0, 0.5)
    for epoch in range(3):
        kinds = [pairs[epoch, i][3] for i in range(len(images))]
        if epoch < 2:  # noise alone, labelled as the maker's noise (kind 2 of scar, noise, pit)
            assert kinds == [2] * len(images)
            for i in range(len(images)):
                normal, defective, mask, _ = pairs[epoch, i]
                expected, expected_mask, _ = strong(images[i].image, numpy_rng(cfg.seed, epoch, i))
                assert torch.equal(defective, image_to_tensor(expected))
                assert torch.equal(mask, torch.from_numpy(expected_mask.astype("float32")))
        else:  # after the opening: the kinds as set, as a run without an opening draws them
            assert len(set(kinds)) > 1
            assert all(torch.equal(pairs[epoch, i][1], plain[epoch, i][1]) for i in range(len(images)))
    with pytest.raises(ConfigError, match="opening_epochs"):
        make_config("unused", "augment.kinds=[scar, pit]", "augment.opening_epochs=1")
    with pytest.raises(ConfigError, match="opening_epochs"):
        make_config("unused", "augment.opening_epochs=-1")


def test_crop_size_must_fit_the_image_size(tmp_path):
    for bad in (16, 65):
        with pytest.raises(ConfigError, match="train.crop_size"):
            make_config(tmp_path, f"train.crop_size={bad}")
    assert make_config(tmp_path, "train.crop_size=64").train.crop_size == 64


def test_a_run_on_crops_feeds_the_network_crops(tmp_path, images, network_input_shapes):
    seen = network_input_shapes
    result = run(tmp_path, images, "train.crop_size=48")
    assert result.epochs_done == 1 and all(math.isfinite(h["loss"]) for h in result.history)
    assert seen and set(seen) == {(48, 48)}
    with pytest.raises(ValueError, match="train.crop_size"):
        run(tmp_path, images, "train.epochs=2", resume=True)  # the same run on whole images: refused


def test_training_sgd_is_fused_on_cpu_and_steps_as_the_per_parameter_loop():
    cfg = load_config("demo", [])
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    fused = sgd(a, cfg, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    loop = torch.optim.SGD(
        b.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )
    x = torch.randn(8, 6)
    for _ in range(3):
        for model, opt in ((a, fused), (b, loop)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for p, q, p0 in zip(a.parameters(), b.parameters(), start, strict=True):
        torch.testing.assert_close(p, q)
        assert not torch.allclose(p, p0)  # the steps moved the weights


@pytest.mark.parametrize("drop_last", [True, False])
def test_one_loader_serves_every_epoch_in_the_order_a_fresh_loader_in_a_bar_gives_each(drop_last):
    n, batch, seed = 11, 4, 3
    batches = training.EpochBatches(n, batch, drop_last, seed, 2, 5, training.distributed.DistContext())
    got = list(batches)
    assert len(got) == len(batches) == sum(batches.steps(e) for e in range(2, 5))
    expected = []
    for epoch in range(2, 5):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        fresh = torch.utils.data.DataLoader(
            range(n), batch_size=batch, shuffle=True, generator=generator, drop_last=drop_last
        )
        expected += [[(epoch, int(i)) for i in b] for b in tqdm(fresh, disable=True)]
    assert got == expected
    assert len({tuple(i for _, i in b) for b in got}) == len(got)  # the epochs' orders differ


@pytest.mark.parametrize("drop_last", [True, False])
def test_each_process_takes_its_distributed_shard_of_every_epoch(drop_last):
    n, batch, seed, world = 10, 2, 5, 3
    for rank in range(world):
        ctx = training.distributed.DistContext(rank=rank, world_size=world)
        got = list(training.EpochBatches(n, batch, drop_last, seed, 1, 3, ctx))
        expected = []
        for epoch in (1, 2):
            shard = DistributedSampler(
                range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
            )
            shard.set_epoch(epoch)
            order = list(shard)
            steps = len(order) // batch if drop_last else -(-len(order) // batch)
            expected += [[(epoch, i) for i in order[b * batch : (b + 1) * batch]] for b in range(steps)]
        assert got == expected
        assert len(got) == (2 * 1 if drop_last else 2 * 2)  # 3 or 4 images a process, every rank alike


def test_checkpoint_every_writes_at_its_epochs_and_after_the_last(tmp_path, images, monkeypatch):
    written = []
    save = training.atomic_save
    monkeypatch.setattr(
        training, "atomic_save", lambda state, path: (written.append(state["epoch"]), save(state, path))
    )
    run(tmp_path, images, LIGHT, "train.epochs=5", "train.checkpoint_every=2")
    assert written == [1, 2, 4, 5]  # the first epoch's too: the file there is soon this run's
    assert torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)["epoch"] == 5
    with pytest.raises(ConfigError, match="checkpoint_every"):
        make_config(tmp_path, "train.checkpoint_every=0")
