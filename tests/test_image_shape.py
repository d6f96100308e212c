"""Images resized to a height and width of their own (`data.image_width`), keeping a photo's
aspect ratio: the datasets, the config's checks, fitting, predicting, saving and the ONNX
export at a non-square shape."""

import numpy as np
import pytest
import torch

from pitscope.config import ConfigError, load_config
from pitscope.data import build_dataset
from pitscope.data.synthetic import write_synthetic_tree
from pitscope.export import export_onnx, onnx_session, to_export_input
from pitscope.fitting import scoring_config
from pitscope.inference import Detector
from pitscope.tensors import as_shape, images_to_batch, resize_image, resize_mask


def test_a_side_is_a_square_and_a_pair_is_height_then_width():
    assert as_shape(64) == (64, 64)
    assert as_shape((48, 120)) == (48, 120)
    assert as_shape([48, 120]) == (48, 120)


def test_resizing_to_a_pair_gives_that_height_and_width():
    image = np.zeros((200, 500, 3), np.uint8)
    image[:, 250:] = 255  # right half white
    mask = np.zeros((200, 500), np.uint8)
    mask[100:, :] = 1  # bottom half marked
    small = resize_image(image, (40, 100))
    small_mask = resize_mask(mask, (40, 100))
    assert small.shape == (40, 100, 3) and small_mask.shape == (40, 100)
    # nothing is transposed: the white half stays on the right, the marked half at the bottom
    assert small[:, :45].max() == 0 and small[:, 55:].min() == 255
    assert small_mask[:18].max() == 0 and small_mask[22:].min() == 1
    assert resize_image(image, (200, 500)) is image  # already that size


def test_the_config_gives_the_shape_and_rescales_it_in_ratio():
    square = load_config(None, ["data.image_size=128"]).data
    assert square.shape == (128, 128)
    data = load_config(None, ["data.image_size=128", "data.image_width=320"]).data
    assert data.shape == (128, 320)
    data.rescale(256)
    assert data.shape == (256, 640)
    square.rescale(64)
    assert square.shape == (64, 64)


def test_rescaling_the_images_keeps_the_width_and_the_crops_in_ratio():
    from pitscope.config import rescale_images

    cfg = load_config("cpu", [])  # 256 x 640, crops of 256
    rescale_images(cfg, 128)
    assert cfg.data.shape == (128, 320) and cfg.train.crop_size == 128
    square = load_config(None, ["data.image_size=128"])
    rescale_images(square, 64)
    assert square.data.shape == (64, 64) and square.train.crop_size is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.image_width=16"], "data.image_width: must be at least 32 or null"),
        (["data.image_size=64", "data.image_width=40", "train.crop_size=48"], "train.crop_size: must lie in 32..40"),
    ],
)
def test_widths_and_crops_out_of_range_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_every_file_dataset_resizes_to_the_shape(tmp_path):
    write_synthetic_tree(tmp_path, n_train=2, n_test_normal=1, n_test_defect=1, seed=0, height=60, width=150)
    cfg = load_config(
        None,
        [
            "data.format=mvtec",
            f"data.root={tmp_path}",
            "data.category=synthetic",
            "data.image_size=32",
            "data.image_width=80",
        ],
    )
    for split in ("train", "test"):
        for sample in build_dataset(cfg.data, split, 0):
            assert sample.image.shape == (32, 80, 3) and sample.mask.shape == (32, 80)


def test_the_scorers_can_be_fitted_at_another_height_in_the_same_ratio(tiny_detector_overrides):
    cfg = load_config(None, [*tiny_detector_overrides, "data.image_width=160", "score.image_size=32"])
    scored, dataset = scoring_config(cfg, build_dataset(cfg.data, "train", 0))
    assert scored.data.shape == (32, 80) and dataset[0].image.shape == (32, 80, 3)
    assert cfg.data.shape == (64, 160)  # the given config is left as it was


@pytest.fixture(scope="module")
def wide(tmp_path_factory, fit_tiny_detector):
    """A tiny detector fitted at 64 x 160, its saved file and its test split."""
    detector, path, cfg = fit_tiny_detector(tmp_path_factory.mktemp("wide"), "data.image_width=160")
    return detector, path, build_dataset(cfg.data, "test", cfg.seed)


def test_a_wide_detector_scores_maps_of_its_shape_and_of_the_photo(wide):
    detector, _, test = wide
    scores, maps = detector(images_to_batch([s.image for s in test]))
    assert maps.shape == (len(test), 64, 160) and torch.isfinite(scores).all()
    photo = np.random.default_rng(0).integers(0, 256, (200, 500, 3), dtype=np.uint8)
    prediction = detector.predict(photo)
    assert prediction.anomaly_map.shape == (200, 500)


def test_a_wide_model_file_keeps_its_shape_and_scores(wide):
    detector, path, test = wide
    loaded = Detector.load(path)
    assert loaded.cfg.data.shape == (64, 160)
    batch = images_to_batch([s.image for s in test])
    assert torch.equal(loaded(batch)[0], detector(batch)[0])


def test_a_wide_detector_exports_to_onnx_with_parity(wide, tmp_path):
    detector, _, test = wide
    path = export_onnx(detector, tmp_path / "wide.onnx")["path"]
    images = [s.image for s in test]
    score, amap, _ = onnx_session(path).run(None, {"image": to_export_input(images, (64, 160)).numpy()})
    ref_score, ref_map = (t.numpy() for t in detector(images_to_batch(images)))
    assert amap.shape == (len(images), 64, 160)
    assert np.abs(score - ref_score).max() <= 1e-4 * np.abs(ref_score).max()
    assert np.abs(amap - ref_map).max() <= 1e-3 * np.abs(ref_map).max()


def test_training_on_square_crops_of_wide_images_feeds_the_network_crops(
    tmp_path, tiny_detector_overrides, network_input_shapes
):
    from pitscope.training import train

    seen = network_input_shapes
    cfg = load_config(
        None,
        [
            *tiny_detector_overrides,
            "data.image_width=160",
            "train.crop_size=64",
            "train.epochs=1",
            "train.batch_size=4",
            f"output_dir={tmp_path}",
        ],
    )
    images = build_dataset(cfg.data, "train", cfg.seed)
    assert images[0].image.shape == (64, 160, 3)
    result = train(cfg, images, progress=False, echo=lambda _message: None)
    assert result.epochs_done == 1 and seen and set(seen) == {(64, 64)}
