"""The train, evaluate and demo commands, run through `main` with tiny synthetic settings."""

import json

import pytest
import torch
import yaml

from pitscope.cli import main
from pitscope.config import load_config

TINY = {
    "seed": 0,
    "data": {
        "format": "synthetic",
        "image_size": 64,
        "synthetic": {"n_train": 8, "n_test_normal": 4, "n_test_defect": 4},
    },
    "train": {"epochs": 1, "batch_size": 4, "device": "cpu"},
    "score": {"pixel_channels": 16, "batch_size": 8},
}
TINY_SETS = [
    "data.image_size=64",
    "data.synthetic.n_train=8",
    "data.synthetic.n_test_normal=4",
    "data.synthetic.n_test_defect=4",
    "train.epochs=1",
    "train.batch_size=4",
    "train.device=cpu",
    "score.pixel_channels=16",
    "score.batch_size=8",
]


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def as_flags(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def test_train_with_evaluate_then_evaluate_the_saved_model(tmp_path, tiny_yaml, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--output-dir", str(run), "--quiet", "--evaluate"]) == 0
    out = capsys.readouterr().out
    assert "image_auroc" in out and "paper" not in out

    model = run / "model.pt"
    assert model.is_file() and (run / "checkpoint_last.pt").is_file()
    assert load_config(str(run / "config.yaml")).data.synthetic.n_train == 8
    meta = torch.load(model, weights_only=True)["metadata"]
    assert meta["training"]["images"] == 8 and meta["training"]["epochs"] == 1
    first = json.loads((run / "eval" / "metrics.json").read_text())
    assert first["counts"] == {"images": 8, "normal": 4, "defective": 4}
    assert len((run / "eval" / "scores.csv").read_text().splitlines()) == 1 + 8

    other = tmp_path / "again"
    assert main(["evaluate", str(model), "--quiet", "--output-dir", str(other)]) == 0
    assert "image_auroc" in capsys.readouterr().out
    again = json.loads((other / "metrics.json").read_text())
    for key in ("metrics", "counts", "threshold", "at_threshold"):
        assert again[key] == first[key], key
    assert (other / "scores.csv").read_text() == (run / "eval" / "scores.csv").read_text()
    assert (other / "config.yaml").is_file()


def test_demo_trains_and_evaluates(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quiet", "--output-dir", str(out), *as_flags(TINY_SETS)]) == 0
    assert (out / "model.pt").is_file()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["metrics"]["image_auroc"] <= 1.0
    assert "metrics written to" in capsys.readouterr().out


def test_an_unknown_key_is_named_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--set", "train.epoch=1"]) == 2
    err = capsys.readouterr().err
    assert "pitscope train: error" in err
    assert "train.epoch" in err and "epochs" in err
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_evaluate_a_missing_model_is_a_clear_error(capsys):
    assert main(["evaluate", "/nonexistent/model.pt"]) == 2
    err = capsys.readouterr().err
    assert "pitscope evaluate: error" in err and "/nonexistent/model.pt" in err


def test_evaluate_refuses_a_training_checkpoint(tmp_path, capsys):
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"config": {}, "model": {}, "optimizer": {}, "epoch": 1}, path)
    assert main(["evaluate", str(path), "--quiet"]) == 2
    assert "not a pitscope model file" in capsys.readouterr().err


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_yaml, capsys):
    out = tmp_path / "fresh"
    assert main(["train", "--config", str(tiny_yaml), "--output-dir", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "checkpoint_last.pt" in err


def test_evaluate_a_file_that_is_no_model_exits_2(tmp_path, capsys):
    path = tmp_path / "notes.pt"
    path.write_text("hello, I am not a model\n")
    assert main(["evaluate", str(path), "--quiet"]) == 2
    assert "not a pitscope model file" in capsys.readouterr().err


def test_set_accepts_a_float_in_exponent_notation(tmp_path, tiny_yaml):
    out = tmp_path / "run"
    args = ["train", "--config", str(tiny_yaml), "--output-dir", str(out), "--quiet"]
    assert main([*args, "--set", "train.lr=1e-4", "--set", "model.target=none"]) == 0
    assert load_config(str(out / "config.yaml")).train.lr == 1e-4


def test_evaluate_accepts_post_hoc_score_options_only(tmp_path, fit_tiny_detector, capsys):
    _, model, _ = fit_tiny_detector(tmp_path)
    assert main(["evaluate", str(model), "--quiet", "--set", "score.map_normalisation=none"]) == 0
    assert load_config(str(tmp_path / "eval" / "config.yaml")).score.map_normalisation == "none"
    assert main(["evaluate", str(model), "--quiet", "--set", "score.pixel_stages=[layer1]"]) == 2
    assert "cannot change after fitting" in capsys.readouterr().err
    assert main(["evaluate", str(model), "--quiet", "--set", "model.target=rgb"]) == 2
    assert "cannot change after training" in capsys.readouterr().err
