"""The demo: its pictures, the command's outputs, and that training learns on small synthetic data."""

import numpy as np
import pytest
from PIL import Image

from pitscope.cli import main
from pitscope.data import build_dataset
from pitscope.demo import GAP, MIN_SIDE, overlay_pictures, pick_pictured, picture_name
from pitscope.visualize import GREEN, RED


def test_pick_pictured_takes_the_first_defective_then_the_first_defect_free():
    labels = [0, 1, 0, 1, 1, 0]
    assert pick_pictured(labels, 2, 2) == [1, 3, 0, 2]
    assert pick_pictured(labels, 5, 1) == [1, 3, 4, 0]  # fewer defective images than asked
    assert pick_pictured(labels, 0, 0) == []


@pytest.mark.parametrize(
    "path, name",
    [
        ("synthetic://test/pitting/0003", "pitting_0003.png"),
        ("/data/bsdata/P1 (2)/img 7.jpg", "P1_2__img_7.png"),
        ("C:\\photos\\good\\a.png", "good_a.png"),
    ],
)
def test_picture_name_keeps_the_folder_and_stem(path, name):
    assert picture_name(path) == name


def test_overlay_pictures_show_the_image_beside_its_predicted_and_true_regions(tmp_path, fit_tiny_detector):
    detector, _, cfg = fit_tiny_detector(tmp_path)
    test = build_dataset(cfg.data, "test", cfg.seed)  # 3 defect-free, then 3 defective images of 64 x 64
    pictures = overlay_pictures(detector, test, tmp_path / "pictures", n_defective=2, n_normal=1)

    assert [p.path.name for p in pictures] == ["pitting_0000.png", "pitting_0001.png", "normal_0000.png"]
    assert [p.label for p in pictures] == [1, 1, 0]
    zoom = MIN_SIDE // 64
    expected = detector.predict([test[3].image, test[4].image, test[0].image])
    for picture, prediction, sample in zip(pictures, expected, [test[3], test[4], test[0]]):
        assert picture.score == pytest.approx(prediction.score) and picture.is_defective == prediction.is_defective
        drawn = np.asarray(Image.open(picture.path).convert("RGB"))
        assert drawn.shape == (64 * zoom, 2 * 64 * zoom + GAP, 3)
        left, right = drawn[:, : 64 * zoom], drawn[:, 64 * zoom + GAP :]
        assert (drawn[:, 64 * zoom : 64 * zoom + GAP] == 255).all()
        enlarged = np.asarray(Image.fromarray(sample.image).resize((64 * zoom, 64 * zoom), Image.Resampling.BICUBIC))
        assert np.array_equal(left, enlarged)
        green = (right == GREEN).all(axis=2)
        assert green.any() == bool(sample.label)  # the true defect's outline, on defective images only
        red = (right == RED).all(axis=2)
        assert red.any() == bool(prediction.defect_region.any())  # the predicted region's outline, where there is one


def test_demo_writes_its_report_and_pictures_and_says_where(tmp_path, capsys, tiny_demo_overrides):
    out = tmp_path / "demo"
    flags = [arg for o in tiny_demo_overrides for arg in ("--set", o)]
    assert main(["demo", "--quiet", "--output-dir", str(out), *flags]) == 0
    printed = capsys.readouterr().out

    report = out / "eval" / "report" / "report.html"
    assert report.is_file() and f"report written to {report}" in printed
    assert (out / "eval" / "metrics.json").is_file()
    names = [
        "pitting_0000.png",
        "pitting_0001.png",
        "pitting_0002.png",
        "pitting_0003.png",
        "normal_0000.png",
        "normal_0001.png",
    ]
    assert sorted(p.name for p in (out / "pictures").iterdir()) == sorted(names)
    assert f"written to {out / 'pictures'}" in printed
    for name in names:
        assert f"  {name}: " in printed
    assert f"pitscope serve {out / 'model.pt'}, then open http://127.0.0.1:8000/" in printed
    assert (out / "model.pt").is_file()
    assert not (out / "checkpoint_last.pt").exists()  # the demo preset keeps no training checkpoint


def test_the_demo_preset_outlines_synthetic_pits_at_64_px(tmp_path):
    """The demo's pipeline (its training task and its conv1 maps), shrunk to 64 x 64 images, 64
    training images and 8 steps, ranks the pit pixels of its validation images above most
    defect-free pixels. Seeded: the same numbers every run."""
    from pitscope.evaluation import evaluate
    from pitscope.fitting import fit

    overrides = [
        "data.image_size=64",
        "data.image_width=null",
        "data.synthetic.n_train=64",
        "data.synthetic.n_test_normal=8",
        "data.synthetic.n_test_defect=16",
        "train.epochs=2",
        f"output_dir={tmp_path}",
    ]
    detector = fit("demo", overrides, progress=False, save=False)
    assert detector.metadata["training"]["steps"] == 8 and not detector.metadata["training"]["stopped_by_budget"]
    val = build_dataset(detector.cfg.data, "val", detector.cfg.seed)
    first = evaluate(detector, val, progress=False)["metrics"]
    assert first["pixel_auroc"] >= 0.80
    again = evaluate(fit("demo", overrides, progress=False, save=False), val, progress=False)["metrics"]
    assert again["pixel_auroc"] == first["pixel_auroc"] and again["image_auroc"] == first["image_auroc"]


def test_training_learns_to_find_synthetic_pits_at_64_px(tmp_path):
    """The demo's training task, segmenting the pasted pseudo-defects, teaches its segmentation
    head to find real (synthetic) pits: after 32 steps on 64 x 160 images its map ranks the pit
    pixels of the validation images at least 10 points of pixel AUROC above the same head
    untrained. Seeded: the margin is the same every run."""
    from pitscope.evaluation import evaluate
    from pitscope.fitting import fit

    overrides = [
        "data.image_size=64",
        "data.image_width=160",
        "data.synthetic.n_train=128",
        "data.synthetic.n_test_normal=8",
        "data.synthetic.n_test_defect=16",
        "score.pixel_method=segmentation",  # the map is the segmentation head's own
        f"output_dir={tmp_path}",
    ]
    auroc = {}
    for epochs in (0, 4):
        detector = fit("demo", [*overrides, f"train.epochs={epochs}"], progress=False, save=False)
        assert detector.metadata["training"]["steps"] == 8 * epochs
        val = build_dataset(detector.cfg.data, "val", detector.cfg.seed)
        auroc[epochs] = evaluate(detector, val, progress=False)["metrics"]["pixel_auroc"]
    assert auroc[4] >= auroc[0] + 0.10, auroc
