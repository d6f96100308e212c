"""Training from an earlier network and with marked real defects: `finetune`, train.init_from,
data.labelled_defects, and evaluate leaving the labelled photos out."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pitscope.augment import PseudoDefects
from pitscope.cli import main
from pitscope.config import AugmentConfig, load_config
from pitscope.data import build_dataset, without_files
from pitscope.data.labelled import defect_cutouts, load_labelled_defects
from pitscope.evaluation import evaluate
from pitscope.files import file_sha256
from pitscope.fitting import finetune, fit
from pitscope.inference import Detector
from pitscope.models.network import DoubleSelfSupervisedNet
from pitscope.warm_start import initial_weights, start_from


def labelled_folder(folder: Path, n: int = 2, size: int = 64) -> Path:
    """n tiny photos, each with one dark square marked in masks/<stem>.png."""
    (folder / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(150, 200, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[10 + 3 * i : 20 + 3 * i, 30:38] = 255
        image[mask > 0] = 20
        Image.fromarray(image).save(folder / f"pit{i}.png")
        Image.fromarray(mask).save(folder / "masks" / f"pit{i}.png")
    return folder


def tiny_overrides(out: Path, n_train: int = 8) -> list[str]:
    """A synthetic 64 px model trained one epoch on n_train images, half of them held back, into out."""
    return [
        "data.format=synthetic",
        "data.image_size=64",
        f"data.synthetic.n_train={n_train}",
        "data.synthetic.n_test_normal=2",
        "data.synthetic.n_test_defect=2",
        "train.device=cpu",
        "train.epochs=1",
        "train.batch_size=4",
        "score.pixel_channels=16",
        "score.batch_size=8",
        "score.calibration_fraction=0.5",
        "model.projector_hidden=32",
        f"output_dir={out}",
    ]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(a tiny model trained one epoch, its path, its training overrides)."""
    out = tmp_path_factory.mktemp("base")
    overrides = tiny_overrides(out)
    detector = fit(None, overrides, progress=False)
    return detector, out / "model.pt", overrides


def test_start_from_loads_the_network_and_leaves_new_heads_fresh(base):
    detector, path, _ = base
    cfg = load_config(None, ["model.segment=true", "model.projector_hidden=32"])
    torch.manual_seed(1)
    net = DoubleSelfSupervisedNet(cfg.model, n_kinds=1)
    fresh_head = {k: v.clone() for k, v in net.segmenter.state_dict().items()}
    said = []
    start_from(net, str(path), said.append)
    for name, tensor in detector.net.backbone.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[name], tensor)
    for name, tensor in net.segmenter.state_dict().items():
        assert torch.equal(tensor, fresh_head[name])
    assert "fresh: segmenter" in said[0]


def test_start_from_refuses_another_model_config_and_a_kept_part(base, tmp_path):
    _, path, _ = base
    other = DoubleSelfSupervisedNet(load_config(None, ["model.projector_hidden=16"]).model, n_kinds=1)
    with pytest.raises(ValueError, match="another model config"):
        start_from(other, str(path), print)
    trimmed = dict(torch.load(path, weights_only=True), network={"kept_stage": "conv1"})
    torch.save(trimmed, tmp_path / "trimmed.pt")
    with pytest.raises(ValueError, match="keeps only part of its network"):
        initial_weights(tmp_path / "trimmed.pt")
    with pytest.raises(FileNotFoundError, match="init_from"):
        initial_weights(tmp_path / "missing.pt")


def test_marked_defects_are_one_more_pseudo_defect_kind(tmp_path):
    cutouts = defect_cutouts(load_labelled_defects(labelled_folder(tmp_path / "marked")), 64)
    maker = PseudoDefects(AugmentConfig(kinds=["scar"]), cutouts)
    assert maker.kinds == ["scar", "real"] and maker.n_kinds == 2
    image = np.full((64, 64, 3), 180, np.uint8)
    kinds = set()
    for seed in range(20):
        out, mask, kind = maker(image, np.random.default_rng(seed))
        kinds.add(kind)
        if kind == 2:  # a pasted marked square: dark where the mask is
            assert mask.any() and out[mask > 0].mean() < 60
    assert kinds == {1, 2}


def test_finetune_writes_a_new_model_that_names_its_labelled_photos(base, tmp_path):
    _, path, _ = base
    folder = labelled_folder(tmp_path / "marked")
    detector = finetune(path, folder, tmp_path / "tuned", ["train.epochs=1", "train.batch_size=4"], progress=False)
    assert (tmp_path / "tuned" / "model.pt").is_file() and path.is_file()
    names = {d["name"]: d["sha256"] for d in detector.metadata["labelled_defects"]}
    assert names == {f"pit{i}.png": file_sha256(folder / f"pit{i}.png") for i in range(2)}
    assert detector.metadata["training"]["init_from"] == str(path)
    loaded = Detector.load(tmp_path / "tuned" / "model.pt")
    assert loaded.cfg.score.pixel_method == "segmentation" and loaded.cfg.model.segment
    assert loaded.metadata["labelled_defects"] == detector.metadata["labelled_defects"]
    with pytest.raises(ValueError, match="holds the model itself"):
        finetune(path, folder, path.parent, progress=False)


def test_finetune_command_and_a_folder_without_labels(base, tmp_path, capsys):
    _, path, _ = base
    folder = labelled_folder(tmp_path / "marked", n=1)
    rc = main(
        [
            "finetune",
            str(path),
            "--defects",
            str(folder),
            "--output-dir",
            str(tmp_path / "tuned"),
            "--route",
            "network",
            "--set",
            "train.epochs=1",
            "--set",
            "train.batch_size=4",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "trained with 1 labelled photos" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    rc = main(
        ["finetune", str(path), "--defects", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "t2"), "--quiet"]
    )
    assert rc == 2 and "empty" in capsys.readouterr().err


def test_evaluate_leaves_out_the_photos_that_trained_the_model(base, tmp_path):
    detector, _, _ = base
    # a folder-format test split: two defect-free and two defective photos, one of which trained the model
    for sub in ("train", "good", "bad", "masks"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "train" / f"t{i}.png")
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "good" / f"g{i}.png")
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "bad" / f"b{i}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[5:15, 5:15] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"b{i}.png")
    cfg = load_config(
        None,
        [
            "data.format=folder",
            f"data.root={tmp_path / 'train'}",
            "data.image_size=64",
            f"data.test_normal_dir={tmp_path / 'good'}",
            f"data.test_defect_dir={tmp_path / 'bad'}",
            f"data.mask_dir={tmp_path / 'masks'}",
        ],
    )
    test = build_dataset(cfg.data, "test", 0)
    trained = {file_sha256(tmp_path / "bad" / "b0.png")}
    subset, left_out = without_files(test, trained)
    assert len(subset) == 3 and left_out == [str(tmp_path / "bad" / "b0.png")]
    detector.cfg.data = cfg.data
    detector.metadata["labelled_defects"] = [{"name": "b0.png", "sha256": next(iter(trained))}]
    try:
        result = evaluate(detector, test, progress=False)
    finally:
        del detector.metadata["labelled_defects"]
    assert result["counts"]["images"] == 3 and result["counts"]["left_out_trained_on"] == 1
