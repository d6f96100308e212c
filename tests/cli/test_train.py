"""The train, evaluate and demo commands, run through `main` with tiny synthetic settings."""

import json
from pathlib import Path

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
    # 8 training images, 1 held back: 8 folds of one image, each refit on the 7 others
    assert "(0.99 quantile of 8 training images scored out of fold, 8 folds)" in out
    assert "training images scored highest out of fold (worth a look for defects): " in out

    model = run / "model.pt"
    assert model.is_file() and (run / "checkpoint_last.pt").is_file()
    assert load_config(str(run / "config.yaml")).data.synthetic.n_train == 8
    meta = torch.load(model, weights_only=True)["metadata"]
    assert meta["training"]["images"] == 8 and meta["training"]["epochs"] == 1
    first = json.loads((run / "eval" / "metrics.json").read_text())
    assert first["counts"] == {"images": 8, "normal": 4, "defective": 4, "left_out_trained_on": 0}
    assert len((run / "eval" / "scores.csv").read_text().splitlines()) == 1 + 8

    other = tmp_path / "again"
    assert main(["evaluate", str(model), "--quiet", "--output-dir", str(other)]) == 0
    assert "image_auroc" in capsys.readouterr().out
    again = json.loads((other / "metrics.json").read_text())
    for key in ("metrics", "counts", "threshold", "at_threshold"):
        assert again[key] == first[key], key
    assert (other / "scores.csv").read_text() == (run / "eval" / "scores.csv").read_text()
    assert (other / "config.yaml").is_file()


def test_demo_trains_and_evaluates(tmp_path, capsys, tiny_demo_overrides):
    out = tmp_path / "demo"
    assert main(["demo", "--quiet", "--output-dir", str(out), *as_flags(tiny_demo_overrides)]) == 0
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
    assert "is a training checkpoint, not a model file" in capsys.readouterr().err


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, tiny_yaml, capsys):
    out = tmp_path / "fresh"
    assert main(["train", "--config", str(tiny_yaml), "--output-dir", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "checkpoint_last.pt" in err


def test_resume_without_config_continues_with_the_runs_own_settings(tmp_path, tiny_yaml, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--output-dir", str(out), "--quiet"]) == 0
    # no --config: the run's config.yaml (synthetic, 64 px), not the default preset (BSData), and
    # --set still applies on top of it
    assert main(["train", "--output-dir", str(out), "--resume", "--set", "train.epochs=2"]) == 0
    said = capsys.readouterr().out
    assert f"resuming with the run's own settings, {out / 'config.yaml'}" in said
    saved = load_config(str(out / "config.yaml"))
    assert saved.data.format == "synthetic" and saved.data.image_size == 64 and saved.train.epochs == 2
    assert torch.load(out / "model.pt", weights_only=True)["metadata"]["training"]["epochs"] == 2


def test_resume_without_config_or_run_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--output-dir", str(tmp_path / "none"), "--resume", "--quiet"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


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
    assert "pixel threshold was calibrated" in capsys.readouterr().err  # other maps: its regions may mislead
    assert main(["evaluate", str(model), "--quiet", "--set", "score.map_sharpen_window=9"]) == 0
    assert "pixel threshold" not in capsys.readouterr().err  # the map shown only: the regions are as calibrated
    assert main(["evaluate", str(model), "--quiet", "--set", "score.peak_region_max=0.01"]) == 0
    assert load_config(str(tmp_path / "eval" / "config.yaml")).score.peak_region_max == 0.01
    assert main(["evaluate", str(model), "--quiet", "--set", "score.pixel_stages=[layer1]"]) == 2
    assert "cannot change after fitting" in capsys.readouterr().err
    assert main(["evaluate", str(model), "--quiet", "--set", "model.target=rgb"]) == 2
    assert "cannot change after training" in capsys.readouterr().err


def test_snapshots_and_refit(tmp_path, tiny_yaml, capsys):
    """Snapshots keep the network after every N epochs; refit fits new scorers around a model's or a
    snapshot's network, and refitting the last snapshot with the run's settings gives the run's scores."""
    import numpy as np

    from pitscope.data import build_dataset
    from pitscope.inference import Detector

    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(tiny_yaml),
        "--output-dir",
        str(run),
        "--quiet",
        "--set",
        "train.epochs=2",
        "--set",
        "train.snapshot_every=1",
    ]
    assert main(args) == 0
    snaps = sorted(p.name for p in (run / "snapshots").iterdir())
    assert snaps == ["epoch_0001.pt", "epoch_0002.pt"]
    first = torch.load(run / "snapshots" / "epoch_0001.pt", weights_only=True)
    last = torch.load(run / "snapshots" / "epoch_0002.pt", weights_only=True)
    assert (first["epoch"], last["epoch"]) == (1, 2)
    name = "backbone.conv1.weight"
    assert not torch.equal(first["model"][name], last["model"][name])  # trained on between them

    model = Detector.load(run / "model.pt")
    assert torch.equal(last["model"][name], model.net.state_dict()[name])
    test = build_dataset(model.cfg.data, "test", model.cfg.seed)
    scores, maps = model.score_dataset(test, progress=False)

    again = tmp_path / "again.pt"
    assert main(["refit", str(run / "snapshots" / "epoch_0002.pt"), "--output", str(again), "--quiet"]) == 0
    refit = Detector.load(again)
    assert refit.metadata["training"]["epochs"] == 2 and refit.metadata["refit_from"].endswith("epoch_0002.pt")
    s2, m2 = refit.score_dataset(test, progress=False)
    np.testing.assert_allclose(s2, scores, rtol=1e-5)
    np.testing.assert_allclose(m2, maps, rtol=1e-4, atol=1e-5)
    assert float(refit.threshold) == pytest.approx(float(model.threshold), rel=1e-5)

    wider = tmp_path / "wider.pt"
    before = (run / "model.pt").read_bytes()
    assert (
        main(
            [
                "refit",
                str(run / "model.pt"),
                "--output",
                str(wider),
                "--quiet",
                "--evaluate",
                "--set",
                "score.pixel_channels=24",
            ]
        )
        == 0
    )
    assert "image_auroc" in capsys.readouterr().out
    assert (run / "model.pt").read_bytes() == before  # the original is left as it was
    wide = Detector.load(wider)
    assert wide.pixel_scorer.channel_index_.numel() == 24
    assert torch.equal(wide.net.state_dict()[name], model.net.state_dict()[name])
    assert (tmp_path / "wider_eval" / "metrics.json").is_file()
    assert wide.metadata["training"] == model.metadata["training"]


def test_refit_refuses_what_it_cannot_do(tmp_path, tiny_yaml, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--output-dir", str(run), "--quiet"]) == 0
    model = str(run / "model.pt")
    assert main(["refit", model, "--output", model, "--quiet"]) == 2
    assert "must differ" in capsys.readouterr().err
    assert main(["refit", model, "--output", str(tmp_path / "x.pt"), "--set", "model.target=rgb"]) == 2
    assert "model.*" in capsys.readouterr().err
    assert main(["refit", str(tmp_path / "none.pt"), "--output", str(tmp_path / "y.pt")]) == 2
    assert "no model file" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["refit", str(tmp_path / "junk.pt"), "--output", str(tmp_path / "z.pt")]) == 2
    assert "not a pitscope model file" in capsys.readouterr().err
    assert (
        main(["train", "--config", str(tiny_yaml), "--output-dir", str(run), "--set", "train.snapshot_every=-1"]) == 2
    )
    assert "train.snapshot_every" in capsys.readouterr().err


def test_refit_with_reference_photos(tmp_path, tiny_yaml, capsys):
    """Reference photos join the training photos in the fit: a look the training photos never
    showed scores far lower once a few photos of it are references, and the model names them."""
    import numpy as np
    from PIL import Image

    from pitscope.inference import Detector

    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--output-dir", str(run), "--quiet"]) == 0
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]

    def stripes(phase: float) -> np.ndarray:  # a striped look unlike the synthetic surface
        base = 127 + 100 * np.sin(xx / 3.0 + phase) * np.cos(yy / 7.0)
        return np.clip(base[..., None] + rng.normal(0, 4, (64, 64, 3)), 0, 255).astype(np.uint8)

    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(6):
        Image.fromarray(stripes(0.3 * i)).save(refs / f"ref_{i}.png")
    probe = stripes(0.45)  # the same look, not a reference

    model = Detector.load(run / "model.pt")
    before = model.predict(probe).score
    out = tmp_path / "with_refs.pt"
    assert main(["refit", str(run / "model.pt"), "--output", str(out), "--quiet", "--references", str(refs)]) == 0
    assert "6 reference photo(s) fitted beside the training photos" in capsys.readouterr().out
    refitted = Detector.load(out)
    entries = refitted.metadata["references"]
    assert sorted(Path(r["path"]).name for r in entries) == [f"ref_{i}.png" for i in range(6)]
    assert all(Path(r["path"]).is_absolute() and len(r["sha256"]) == 64 for r in entries)
    after = refitted.predict(probe).score
    assert after < 0.5 * before, (before, after)

    # a photo the model was fitted on measures nothing in `evaluate`
    from pitscope.data.dataset import AnomalyDataset, Record
    from pitscope.evaluation import evaluate

    dark = stripes(0.9)
    dark[20:40, 20:40] = 0
    for name, image in (("probe.png", probe), ("dark.png", dark), ("dark2.png", dark[:, ::-1].copy())):
        Image.fromarray(image).save(tmp_path / name)
    records = [Record(refs / "ref_2.png", 0), Record(tmp_path / "probe.png", 0)]
    records += [Record(tmp_path / "dark.png", 1), Record(tmp_path / "dark2.png", 1)]
    result = evaluate(refitted, AnomalyDataset(records, size=(64, 64), has_masks=False), progress=False)
    assert result["counts"]["left_out_trained_on"] == 1 and result["counts"]["images"] == 3

    # a refit of that model fits its references again, beside any new ones
    (tmp_path / "more").mkdir()
    Image.fromarray(stripes(2.0)).save(tmp_path / "more" / "ref_6.png")
    again = tmp_path / "again.pt"
    args = ["refit", str(out), "--output", str(again), "--quiet", "--references", str(tmp_path / "more")]
    assert main([*args, str(refs / "ref_0.png")]) == 0  # ref_0 again: already one of the model's references
    assert "7 reference photo(s) fitted beside the training photos" in capsys.readouterr().out
    assert len(Detector.load(again).metadata["references"]) == 7
    (refs / "ref_5.png").rename(tmp_path / "ref_5_moved.png")
    assert main(["refit", str(out), "--output", str(tmp_path / "gone.pt"), "--quiet"]) == 2
    assert "ref_5.png, which is gone" in capsys.readouterr().err
    (tmp_path / "ref_5_moved.png").rename(refs / "ref_5.png")

    # single files work too; bad references are refused by name, and nothing is written
    one = tmp_path / "one.pt"
    assert (
        main(["refit", str(run / "model.pt"), "--output", str(one), "--quiet", "--references", str(refs / "ref_0.png")])
        == 0
    )
    assert len(Detector.load(one).metadata["references"]) == 1
    bad = tmp_path / "bad.pt"
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    for args, message in (
        ([str(tmp_path / "missing")], "no such file or folder"),
        ([str(tmp_path / "tiny.yaml")], "not an image file"),
        ([str(run)], "no reference images"),
        ([str(refs), str(refs / "ref_1.png")], "named twice"),
        ([str(junk)], "none of the 1 reference photo(s) could be read"),
    ):
        assert main(["refit", str(run / "model.pt"), "--output", str(bad), "--quiet", "--references", *args]) == 2
        assert message in capsys.readouterr().err, args
        assert not bad.exists()


def test_a_folder_of_photos_trains_from_the_surface_preset_end_to_end(tmp_path, capsys):
    from pitscope.data.synthetic import write_synthetic_tree
    from pitscope.inference import Detector

    tree = write_synthetic_tree(tmp_path / "photos", 8, 2, 2, seed=0, height=40, width=100)
    out = tmp_path / "run"
    flags = as_flags(
        [
            "data.format=folder",
            f"data.root={tree / 'train' / 'good'}",
            f"data.test_normal_dir={tree / 'test' / 'good'}",
            f"data.test_defect_dir={tree / 'test' / 'pitting'}",
            f"data.mask_dir={tree / 'ground_truth' / 'pitting'}",
            "data.image_size=32",
            "train.crop_size=32",
            "train.epochs=1",
            "train.batch_size=4",
            "train.precision=fp32",
            "train.num_workers=0",
            "train.device=cpu",
            "score.pixel_channels=16",
        ]
    )
    assert main(["train", *flags, "--output-dir", str(out), "--evaluate"]) == 0  # no --config
    printed = capsys.readouterr().out
    assert "preset surface" in printed and "pixel_auroc" in printed
    cfg = Detector.load(out / "model.pt").cfg
    assert cfg.augment.kinds == ["noise"] and cfg.augment.alpha_max == 0.5
    assert cfg.data.shape == (32, 96)  # the photos' 100 x 40: 32 x 2.5 = 80, rounded up to a multiple of 32
    assert json.loads((out / "eval" / "metrics.json").read_text())["counts"]["defective"] == 2


def test_train_starts_from_the_preset_of_the_photos_format():
    from pitscope.cli.train import default_preset

    assert default_preset([]) == "cpu"
    assert default_preset(["data.format=bsdata", "train.epochs=3"]) == "cpu"
    assert default_preset(["data.format=synthetic"]) == "cpu"
    assert default_preset(["data.format=folder"]) == default_preset(["data.format=mvtec"]) == "surface"
    assert default_preset(["data.format=folder", "data.format=bsdata"]) == "cpu"  # the last word, as --set reads


def test_the_surface_preset_is_the_cpu_preset_with_strong_noise_pastes_alone():
    from pitscope.config import load_config, to_dict

    surface, cpu = to_dict(load_config("surface")), to_dict(load_config("cpu"))
    assert surface["augment"] == {**cpu["augment"], "kinds": ["noise"], "alpha_min": 0.0, "alpha_max": 0.5}
    assert surface["data"] == {**cpu["data"], "format": "folder", "n_train_normal": surface["data"]["n_train_normal"]}
    for section in ("model", "train"):
        assert surface[section] == cpu[section], section
    # regions: the peak's region on photos decided defective was chosen on BSData for `cpu` alone
    assert (surface["score"]["regions_on"], cpu["score"]["regions_on"]) == ("defective", "defective_peak")
    # ... and with it the bound on the peak's region, which acts on `defective_peak` alone, the
    # map's channel groups, the two steps from the map to the map shown, the regions cut after the
    # first and their core, the trimmed map Gaussians and the image score of layer1 and layer4
    assert surface["score"] == {
        **cpu["score"],
        "fit_trim": 0.0,
        "image_features": "layer4",
        "regions_on": "defective",
        "peak_region_max": 0.0,
        "min_region_fraction": 0.0003,
        "pixel_channels": 100,
        "channel_groups": 1,
        "map_sharpen_window": 0,
        "map_background_window": 0,
        "regions_after_background": False,
        "region_core": 0.7,
    }
