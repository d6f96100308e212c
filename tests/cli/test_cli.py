import json

import pytest
from PIL import Image

from pitscope.cli import build_parser, main


def test_every_subcommand_explains_itself(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"datasets", "augment-preview"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: pitscope " + name in capsys.readouterr().out


def test_datasets_counts_synthetic(capsys):
    assert main(["datasets", "--format", "synthetic", "--json", "--set", "data.synthetic.n_train=5"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {"split": "train", "total": 5, "normal": 5, "defective": 0, "bad_files": 0}


def test_datasets_reports_bad_files(tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (i * 40, 80, 90)).save(good / f"img{i}.png")
    (good / "broken.png").write_bytes(b"not an image at all")
    assert main(["datasets", str(good), "--format", "folder", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["bad_files"] == 1
    assert "broken.png" in captured.err
    assert main(["datasets", str(good), "--format", "folder", "--strict"]) == 1
    assert main(["datasets", str(good), "--format", "folder", "--refuse-bad-files"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_config_error_is_a_clear_message(capsys):
    assert main(["datasets", "--format", "synthetic", "--set", "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "train.epoch" in err and "epochs" in err


def test_missing_root_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["datasets", "--format", "mvtec"])
    assert "ROOT is required" in capsys.readouterr().err


def test_augment_preview_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    args = ["augment-preview", "--out", str(out), "--n", "2", "--size", "64", "--set", "data.synthetic.n_train=4"]
    assert main(args) == 0
    with Image.open(out) as im:
        assert im.width > 64 and im.height > 64
    assert (tmp_path / "grid.config.yaml").exists()


def test_augment_preview_of_wide_images_keeps_their_ratio_and_shows_training_crops(tmp_path):
    out = tmp_path / "grid.png"
    wide = ["--set", "data.image_size=128", "--set", "data.image_width=320", "--set", "train.crop_size=128"]
    args = [
        "augment-preview",
        "--out",
        str(out),
        "--n",
        "1",
        "--size",
        "64",
        "--set",
        "data.synthetic.n_train=2",
        *wide,
    ]
    assert main(args) == 0
    saved = (tmp_path / "grid.config.yaml").read_text()
    assert "image_size: 64" in saved and "image_width: 160" in saved and "crop_size: 64" in saved
