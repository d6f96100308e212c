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

    cfg = load_config(None, ["data.image_width=640", "train.crop_size=256"])
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


def test_the_stored_config_is_read_without_loading_the_model(wide, tmp_path):
    from pitscope.model_file import stored_config

    _, path, _ = wide
    assert stored_config(path) == Detector.load(path).cfg
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pitscope model file"):
        stored_config(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no model file"):
        stored_config(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        stored_config(tmp_path / "empty.pt")


def test_a_crop_wider_than_the_kept_aspect_is_refused_before_training(tmp_path):
    from pitscope.config import ConfigError
    from pitscope.fitting import fit

    root = _photos(tmp_path / "good", 2, 40, 100)  # tall: 32 wide at image_size 32 -> 96 x 32
    with pytest.raises(ConfigError, match="train.crop_size: must lie in 32..32"):
        fit(
            None,
            [
                "data.format=folder",
                f"data.root={root}",
                "data.image_size=32",
                "data.keep_aspect=true",
                "train.crop_size=48",
                f"output_dir={tmp_path / 'run'}",
            ],
            progress=False,
        )


def test_a_wide_detector_exports_to_onnx_with_parity(wide, tmp_path):
    detector, _, test = wide
    path = export_onnx(detector, tmp_path / "wide.onnx")["path"]
    images = [s.image for s in test]
    score, amap, *_ = onnx_session(path).run(None, {"image": to_export_input(images, (64, 160)).numpy()})
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


def _photos(folder, n, width, height, seed=0):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


@pytest.mark.parametrize(
    "width, height, shape",
    [
        (300, 100, (64, 192)),  # wide: 64 high, 64 x 3 wide
        (100, 200, (128, 64)),  # tall: 64 wide, 64 x 2 high
        (210, 200, (64, 64)),  # nearly square: the longer side rounds to 64
        (250, 100, (64, 160)),  # 64 x 2.5 = 160, a multiple of 32
        (270, 100, (64, 160)),  # 64 x 2.7 = 172.8 -> 160, the nearest multiple of 32
    ],
)
def test_keep_aspect_takes_the_shape_from_the_training_photos(tmp_path, width, height, shape):
    root = _photos(tmp_path / "good", 3, width, height)
    cfg = load_config(None, ["data.format=folder", f"data.root={root}", "data.image_size=64", "data.keep_aspect=true"])
    dataset = build_dataset(cfg.data, "train", 0)
    assert cfg.data.shape == shape and not cfg.data.keep_aspect  # the config now holds the shape
    assert dataset[0].image.shape == (*shape, 3)


def test_keep_aspect_takes_the_median_photo_and_an_explicit_width_wins(tmp_path):
    root = tmp_path / "good"
    _photos(root, 3, 300, 100)  # 00-02: ratio 3
    for i, (w, h) in enumerate([(100, 100), (400, 100)]):  # one square, one ratio 4
        _photos(tmp_path / f"odd{i}", 1, w, h).joinpath("00.png").rename(root / f"odd{i}.png")
    cfg = load_config(None, ["data.format=folder", f"data.root={root}", "data.image_size=32", "data.keep_aspect=true"])
    build_dataset(cfg.data, "train", 0)
    assert cfg.data.shape == (32, 96)  # the median ratio, 3
    given = load_config(
        None,
        [
            "data.format=folder",
            f"data.root={root}",
            "data.image_size=32",
            "data.keep_aspect=true",
            "data.image_width=64",
        ],
    )
    build_dataset(given.data, "train", 0)
    assert given.data.shape == (32, 64)


def test_keep_aspect_reads_a_turned_photo_as_it_is_shown(tmp_path):
    from PIL import Image

    from pitscope.data.imageio import photo_size

    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 300 x 100, shown turned a quarter: 100 wide, 300 high
    Image.new("RGB", (300, 100)).save(path, exif=exif)
    assert photo_size(path) == (100, 300)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert photo_size(tmp_path / "broken.jpg") is None


def test_a_model_trained_with_keep_aspect_stores_the_shape(tmp_path, tiny_detector_overrides):
    from pitscope.fitting import fit

    root = _photos(tmp_path / "good", 8, 240, 80)
    detector = fit(
        None,
        [
            *tiny_detector_overrides,
            "data.format=folder",
            f"data.root={root}",
            "data.keep_aspect=true",
            "train.epochs=1",
            "train.batch_size=4",
            f"output_dir={tmp_path / 'run'}",
        ],
        progress=False,
    )
    assert detector is not None and detector.cfg.data.shape == (64, 192)
    loaded = Detector.load(tmp_path / "run" / "model.pt")
    assert loaded.cfg.data.shape == (64, 192) and not loaded.cfg.data.keep_aspect
    assert loaded.predict(np.zeros((80, 240, 3), np.uint8)).anomaly_map.shape == (80, 240)


def test_the_cpu_preset_keeps_bsdata_at_256_x_640(real_bsdata, tmp_path):
    cfg = load_config("cpu", [f"data.root={real_bsdata}", f"data.split_file={tmp_path / 'split.json'}"])
    build_dataset(cfg.data, "train", cfg.seed)
    assert cfg.data.shape == (256, 640)


def test_keep_aspect_on_the_synthetic_data_follows_its_drawn_size():
    cfg = load_config(
        None, ["data.image_size=64", "data.keep_aspect=true", "data.synthetic.height=100", "data.synthetic.width=300"]
    )
    build_dataset(cfg.data, "train", 0)
    assert cfg.data.shape == (64, 192)
