"""The Detector: fitting, the calibrated threshold, scoring, and its one-file save/load.

The network is left untrained (seeded random weights): what is tested here is the scoring and
persistence around it, which does not care how good the features are.
"""

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from pitscope.config import apply_overrides, from_dict, load_config, to_dict
from pitscope.data import build_dataset
from pitscope.evaluation import REGION_NAMES, evaluate
from pitscope.inference import Detector
from pitscope.metrics import evaluate_all
from pitscope.scorer_fitting import QUANTILE_GRID, standardisation_folds
from pitscope.scoring import (
    PatchGaussianScorer,
    out_of_fold_block_distances,
    pixel_threshold_of,
    remove_background,
    sharpen_to_local_peak,
    shown_maps,
)
from pitscope.tensors import images_to_batch
from pitscope.training import LAST_CHECKPOINT, train

TINY = [
    "data.format=synthetic",
    "data.image_size=64",
    "data.synthetic.n_train=12",
    "data.synthetic.n_test_normal=4",
    "data.synthetic.n_test_defect=4",
    "train.batch_size=4",
    "train.epochs=1",
    "train.device=cpu",
    "score.pixel_channels=16",
    "score.batch_size=8",
    "score.calibration_fraction=0.5",  # 6 of the 12 training images are held back
    "score.threshold_quantile=0.75",
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(detector fitted on the 12 training images, its saved model.pt, train split, test split).

    Shared read-only by the tests of this module.
    """
    out = tmp_path_factory.mktemp("detector")
    cfg = load_config(None, [*TINY, f"output_dir={out}"])
    train_split = build_dataset(cfg.data, "train", cfg.seed)
    test_split = build_dataset(cfg.data, "test", cfg.seed)
    torch.manual_seed(cfg.seed)
    detector = Detector(cfg, n_kinds=2).fit(train_split, progress=False)
    path = detector.save(out / "model.pt")
    return detector, path, train_split, test_split


def batch_of(split, indices):
    return images_to_batch([split[i].image for i in indices])  # (B, 3, 64, 64)


def test_fit_returns_self_and_a_finite_threshold(fitted):
    detector, path, _, _ = fitted
    assert detector.image_scorer.is_fitted and detector.pixel_scorer.is_fitted
    assert np.isfinite(float(detector.threshold))
    record = dict(detector.metadata["calibration"])
    highest, grid = record.pop("highest"), record.pop("score_quantiles")
    assert record == {
        "method": "out_of_fold",
        "images": 12,
        "folds": 2,
        "quantile": 0.75,
        "pixel_images": 6,
        "held_back": True,
        "threshold": float(detector.threshold),
        "pixel_quantile": 0.999,
        "pixel_rule": "pixels",
        "pixel_threshold": float(detector.pixel_threshold),
    }
    assert len(highest) == 5
    assert [h["score"] for h in highest] == sorted((h["score"] for h in highest), reverse=True)
    assert all(h["image"] for h in highest)
    assert Detector.load(path).metadata["calibration"]["score_quantiles"] == grid  # kept in the model file


def test_save_load_round_trip_scores_identically(fitted):
    detector, path, _, test_split = fitted
    loaded = Detector.load(path)

    assert not loaded.training and not loaded.net.training
    assert to_dict(loaded.cfg) == to_dict(detector.cfg)
    assert loaded.n_kinds == detector.n_kinds
    assert float(loaded.threshold) == float(detector.threshold)
    assert loaded.metadata["calibration"] == detector.metadata["calibration"]
    a, b = detector.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)

    scores, maps = detector.score_dataset(test_split, progress=False)
    scores2, maps2 = loaded.score_dataset(test_split, progress=False)
    assert np.array_equal(scores, scores2)
    assert np.array_equal(maps, maps2)


def test_model_file_loads_with_weights_only(fitted):
    _, path, _, _ = fitted
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {"config", "n_kinds", "state_dict", "metadata", "version"} <= set(state)
    assert from_dict(state["config"]).score.pixel_channels == 16
    assert "threshold" in state["state_dict"]
    assert any(k.startswith("image_scorer.") for k in state["state_dict"])
    assert any(k.startswith("pixel_scorer.") for k in state["state_dict"])


def test_threshold_is_the_quantile_of_out_of_fold_scores(fitted):
    detector, _, train_split, _ = fitted
    fit_idx, cal_idx = detector.split_calibration(len(train_split))
    assert len(cal_idx) == 6 and len(fit_idx) == 6
    assert sorted(fit_idx + cal_idx) == list(range(12))
    assert (fit_idx, cal_idx) == detector.split_calibration(12)  # seeded

    folds = detector.calibration_folds(12)  # round(1 / 0.5) = 2 folds of 6: each refit sees 6, as the scorer
    assert [len(f) for f in folds] == [6, 6] and sorted(sum(folds, [])) == list(range(12))
    assert folds == detector.calibration_folds(12)  # seeded
    with torch.no_grad():
        embeddings = detector.net(batch_of(train_split, range(12))).projection.double().numpy()  # (12, 512)
    scores = np.empty(12)
    for fold in folds:
        rest = np.setdiff1d(np.arange(12), fold)
        scores[fold] = np.sqrt(LedoitWolf().fit(embeddings[rest]).mahalanobis(embeddings[fold]))
    expected = np.quantile(scores, 0.75)  # linear interpolation, as torch's
    assert float(detector.threshold) == pytest.approx(expected, rel=1e-3)
    highest = detector.metadata["calibration"]["highest"]
    assert highest[0]["score"] == pytest.approx(scores.max(), rel=1e-3)
    assert highest[0]["image"] == Path(train_split[int(scores.argmax())].path).name
    grid = detector.metadata["calibration"]["score_quantiles"]  # other quantiles of the same scores
    assert len(grid) == len(QUANTILE_GRID)
    assert [grid[f"{p:g}"] for p in (0.5, 0.9, 0.999)] == pytest.approx(
        np.quantile(scores, [0.5, 0.9, 0.999]), rel=1e-3
    )

    _, maps = detector(batch_of(train_split, cal_idx))
    assert float(detector.pixel_threshold) == pytest.approx(np.quantile(maps.numpy(), 0.999), rel=1e-5)


@pytest.mark.parametrize(
    "overrides", [["score.threshold_from=held_back"], ["score.image_method=map_max", "score.pixel_method=patch"]]
)
def test_held_back_threshold_is_the_quantile_of_held_back_scores(fitted, overrides):
    # asked for, or what map_max uses with pixel methods other than padim
    detector, _, train_split, _ = fitted
    cfg = apply_overrides(detector.cfg, overrides)
    held = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    _, cal_idx = held.split_calibration(len(train_split))
    scores, maps = held(batch_of(train_split, cal_idx))
    expected = np.quantile(scores.double().numpy(), 0.75)
    assert float(held.threshold) == pytest.approx(expected, rel=1e-6)
    assert float(held.pixel_threshold) == pytest.approx(np.quantile(maps.numpy(), 0.999), rel=1e-5)
    assert held.metadata["calibration"]["method"] == "held_back"
    assert held.metadata["calibration"]["images"] == 6


def test_map_max_threshold_comes_from_pixel_gaussians_refitted_without_each_fold(fitted):
    detector, _, train_split, _ = fitted
    cfg = apply_overrides(detector.cfg, ["score.image_method=map_max", "score.batch_size=4"])  # 2 batches a fold
    oof = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    assert oof.pixel_scorer._moments is None  # the sums are not kept past the fit
    x = batch_of(train_split, range(12))
    embedding, patches, seg = oof._features(x)
    assert embedding is None  # map_max reads no image embedding
    scores = np.empty(12)
    for fold in oof.calibration_folds(12):
        rest = np.setdiff1d(np.arange(12), fold)
        # fitted directly on the other fold's images (the same seeded channels as the detector's)
        direct = PatchGaussianScorer(n_channels=16, seed=cfg.seed).fit(patches[rest])
        assert direct.channel_index_.tolist() == oof.pixel_scorer.channel_index_.tolist()
        scores[fold] = oof._score(x[fold], None, patches[fold], seg, pixel_scorer=direct)[0].numpy()
    assert float(oof.threshold) == pytest.approx(np.quantile(scores, 0.75), rel=1e-4)
    record = oof.metadata["calibration"]
    assert (record["method"], record["images"], record["folds"], record["pixel_images"]) == ("out_of_fold", 12, 2, 6)
    assert record["highest"][0]["score"] == pytest.approx(scores.max(), rel=1e-4)
    assert float(oof.pixel_threshold) == float(detector.pixel_threshold)  # the held-back maps, as before
    # the fitted scorer is the one fitted on the fit images alone
    fit_idx, _ = oof.split_calibration(12)
    _, maps = oof(x)
    reference = PatchGaussianScorer(n_channels=16, seed=cfg.seed).fit(patches[fit_idx])
    _, expected = oof._score(x, embedding, patches, seg, pixel_scorer=reference)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)


def test_trimmed_fit_leaves_out_each_cells_furthest_photo_there(fitted):
    detector, _, train_split, _ = fitted
    cfg = apply_overrides(detector.cfg, ["score.fit_trim=0.17"])  # 1 of the 6 fitting images
    trimmed = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    assert trimmed.pixel_scorer._moments is None  # the sums are not kept past the fit
    fit_idx, _ = trimmed.split_calibration(12)
    with torch.no_grad():
        _, patches, _ = trimmed._features(batch_of(train_split, fit_idx))
    first = PatchGaussianScorer(n_channels=16, seed=cfg.seed).fit(patches)
    far = first.row_distances(patches).argmax(1)  # (rows,) the furthest image at each row
    assert len(set(far.tolist())) > 1  # not one image left out everywhere
    rows = first.location_.shape[0]
    selected = first._select(patches).double()  # (rows, 6, 16)
    kept = torch.ones(rows, 6, dtype=torch.bool)
    kept[torch.arange(rows), far] = False
    expected = (selected * kept[..., None]).sum(1) / 5
    torch.testing.assert_close(trimmed.pixel_scorer.location_.double(), expected, rtol=1e-4, atol=1e-5)
    for row in (0, rows // 2, rows - 1):
        reference = LedoitWolf().fit(selected[row][kept[row]].numpy())
        assert trimmed.pixel_scorer.shrinkage_[row].item() == pytest.approx(reference.shrinkage_, rel=1e-3)
    # not the untrimmed fit: the thresholds come from the trimmed Gaussians
    assert not torch.allclose(trimmed.pixel_scorer.location_, detector.pixel_scorer.location_)
    assert float(trimmed.pixel_threshold) != float(detector.pixel_threshold)


def test_trim_share_rounding_to_no_photo_keeps_the_first_fit(fitted):
    detector, _, train_split, _ = fitted
    cfg = apply_overrides(detector.cfg, ["score.fit_trim=0.05"])  # 0.3 of the 6 fitting images
    trimmed = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    assert trimmed.pixel_scorer._moments is None
    torch.testing.assert_close(trimmed.pixel_scorer.location_, detector.pixel_scorer.location_)
    torch.testing.assert_close(trimmed.pixel_scorer.shrinkage_, detector.pixel_scorer.shrinkage_)
    assert float(trimmed.pixel_threshold) == pytest.approx(float(detector.pixel_threshold))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["score.fit_trim=0.5"], "must lie in"),
        (["score.fit_trim=-0.1"], "must lie in"),
        (["score.fit_trim=0.1", "score.pixel_method=patch"], "trims the padim Gaussians"),
        (["score.fit_trim=0.1", "score.image_method=map_max"], "threshold_from held_back"),
    ],
)
def test_fit_trim_refuses_what_it_cannot_do(overrides, message):
    from pitscope.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, [*TINY, *overrides])
    load_config(None, [*TINY, "score.fit_trim=0.1", "score.image_method=map_max", "score.threshold_from=held_back"])


def test_map_max_over_small_channel_groups_calibrates_a_finite_threshold():
    # the demo preset's first-convolution maps in groups of 4 channels: some cells of a fold's
    # refit hold the same features on every image (a zero covariance)
    cfg = load_config(
        "demo",
        [
            "data.synthetic.n_train=8",
            "data.image_size=64",
            "data.image_width=64",
            "score.pixel_channels=16",
            "score.channel_groups=4",
            "score.batch_size=8",
            "train.device=cpu",
        ],
    )
    torch.manual_seed(0)
    detector = Detector(cfg, n_kinds=3).fit(build_dataset(cfg.data, "train", cfg.seed), progress=False)
    assert np.isfinite(float(detector.threshold)) and np.isfinite(float(detector.pixel_threshold))


def test_no_folds_without_held_back_images_or_enough_to_fit(fitted):
    detector, _, train_split, _ = fitted
    assert detector.calibration_folds(3) == []  # split_calibration(3) holds none back
    assert [len(f) for f in detector.calibration_folds(5)] == [3, 2]
    cfg = apply_overrides(detector.cfg, ["score.calibration_fraction=0.45"])
    three = Detector(cfg, detector.n_kinds, net=detector.net)
    assert three.split_calibration(3)[1]  # one image held back, but
    assert three.calibration_folds(3) == []  # 2 folds of 3: the larger leaves 1 image to fit
    few = [train_split[i] for i in range(3)]
    three.fit(few, progress=False)
    assert three.metadata["calibration"]["method"] == "held_back"
    assert three.metadata["calibration"]["images"] == 1


def test_scorers_see_only_the_fit_images(fitted):
    detector, _, train_split, _ = fitted
    fit_idx, cal_idx = detector.split_calibration(len(train_split))
    with torch.no_grad():
        embeddings = detector.net(batch_of(train_split, range(12))).projection.double()  # (12, 512)
    fit_mean = embeddings[fit_idx].mean(0)
    location = detector.image_scorer.location_.double()
    torch.testing.assert_close(location, fit_mean, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(location, embeddings.mean(0), rtol=1e-4, atol=1e-6)


def test_too_few_images_hold_none_back(fitted):
    detector, _, _, _ = fitted
    assert detector.split_calibration(2) == ([0, 1], [])
    assert detector.split_calibration(3) == ([0, 1, 2], [])  # round(1.5) = 2 would leave 1 to fit


def test_maps_have_the_input_size_and_are_finite(fitted):
    detector, _, _, test_split = fitted
    scores, maps = detector.score_dataset(test_split, progress=False)
    assert scores.shape == (8,) and scores.dtype == np.float32
    assert maps.shape == (8, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    assert (scores >= 0).all() and (maps >= 0).all()
    assert maps.std() > 0


def test_scores_do_not_depend_on_the_batch(fitted):
    detector, _, _, test_split = fitted
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    x = batch_of(test_split, range(8))
    scores, maps = detector(x)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    shuffled_scores, shuffled_maps = detector(x[order])
    torch.testing.assert_close(shuffled_scores, scores[order], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shuffled_maps, maps[order], rtol=1e-5, atol=1e-4)
    alone_scores, alone_maps = detector(x[3:4])
    torch.testing.assert_close(alone_scores, scores[3:4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone_maps, maps[3:4], rtol=1e-5, atol=1e-4)
    # Scoring changed nothing (BatchNorm running statistics included).
    after = detector.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loading_a_training_checkpoint_is_refused(tmp_path):
    cfg = load_config(None, [*TINY, "model.target=none", f"output_dir={tmp_path}"])
    train_split = build_dataset(cfg.data, "train", cfg.seed)
    train(cfg, train_split[:4], progress=False, echo=lambda _: None)
    with pytest.raises(ValueError, match="is a training checkpoint, not a model file"):
        Detector.load(tmp_path / LAST_CHECKPOINT)


@pytest.mark.parametrize("classify, expected", [(False, "layer4"), (True, "projection")])
def test_checkpoints_from_before_image_features_score_by_what_their_network_has(tmp_path, classify, expected):
    overrides = [*TINY, f"output_dir={tmp_path}", f"model.classify={str(classify).lower()}"]
    cfg = load_config(None, overrides + ([] if classify else ["score.image_features=layer4"]))
    train(cfg, build_dataset(cfg.data, "train", cfg.seed)[:4], progress=False, echo=lambda _: None)
    state = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=True)
    del state["config"]["score"]["image_features"]
    torch.save(state, tmp_path / LAST_CHECKPOINT)
    assert Detector.from_checkpoint(tmp_path / LAST_CHECKPOINT).cfg.score.image_features == expected
    # and a resume of that run reads it
    resumed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    train(resumed, build_dataset(cfg.data, "train", cfg.seed)[:4], resume=True, progress=False, echo=lambda _: None)


def test_loading_a_missing_file_is_a_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.pt"):
        Detector.load(tmp_path / "nothing_here.pt")


@pytest.mark.parametrize(
    "kind, says",
    [
        ("text", r"not a PyTorch file \(24 bytes, starting b'hello, I'\)"),
        ("empty", r"is empty \(0 bytes\)"),
        ("onnx", "is an ONNX export: run it with onnxruntime"),
        ("tensor", "a PyTorch file but not a pitscope model file"),
        ("checkpoint", "is a training checkpoint, not a model file: pass OUTPUT_DIR/model.pt"),
    ],
)
def test_loading_a_file_that_is_no_model_says_what_it_is(tmp_path, kind, says):
    path = tmp_path / ("model.onnx" if kind == "onnx" else "model.pt")
    if kind == "text":
        path.write_text("hello, I am not a model\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "onnx":
        path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.1.0")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        torch.save({"model": {}, "config": {}, "epoch": 1}, path)
    with pytest.raises(ValueError, match=says):
        Detector.load(path)


def test_a_model_from_a_newer_pitscope_is_refused_by_name(fitted, tmp_path):
    _, path, _, _ = fitted
    state = torch.load(path, weights_only=True)
    state["version"] = "99.0.0"
    torch.save(state, tmp_path / "new.pt")
    with pytest.raises(ValueError, match=r"written by pitscope 99.0.0, newer than this one"):
        Detector.load(tmp_path / "new.pt")


def test_a_file_without_pixel_threshold_loads_with_a_warning(fitted, tmp_path):
    _, path, _, _ = fitted
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["pixel_threshold"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.warns(UserWarning, match="calibrate"):
        loaded = Detector.load(old)
    assert np.isnan(float(loaded.pixel_threshold))


def test_maps_are_divided_by_their_own_mean(fitted):
    detector, _, _, test_split = fitted
    assert detector.cfg.score.map_normalisation == "image_mean"
    _, maps = detector.score_dataset(test_split, progress=False)
    np.testing.assert_allclose(maps.reshape(len(maps), -1).mean(1), 1.0, rtol=1e-4)
    raw = Detector(
        dataclasses.replace(detector.cfg, score=dataclasses.replace(detector.cfg.score, map_normalisation="none")),
        detector.n_kinds,
        net=detector.net,
    )
    raw.load_state_dict(detector.state_dict())
    _, raw_maps = raw.score_dataset(test_split, progress=False)
    np.testing.assert_allclose(maps, raw_maps / raw_maps.reshape(len(maps), -1).mean(1)[:, None, None], rtol=1e-4)


def test_image_mean_score_maps_are_scaled_by_the_image_score(fitted):
    detector, _, train_split, test_split = fitted
    cfg = apply_overrides(detector.cfg, ["score.map_normalisation=image_mean_score"])
    torch.manual_seed(cfg.seed)
    scaled = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    assert float(scaled.threshold) == float(detector.threshold)  # the image side is unchanged
    scores, maps = scaled.score_dataset(test_split, progress=False)
    plain_scores, plain = detector.score_dataset(test_split, progress=False)
    np.testing.assert_allclose(scores, plain_scores, rtol=1e-6)
    expected = plain * (plain_scores / float(scaled.threshold))[:, None, None]
    np.testing.assert_allclose(maps, expected, rtol=1e-4)
    _, cal = detector.split_calibration(len(train_split))  # the pixel threshold: the held-back maps, scaled
    held_scores, held = detector.score_dataset([train_split[i] for i in cal], progress=False)
    held = held * (held_scores / float(scaled.threshold))[:, None, None]
    assert float(scaled.pixel_threshold) == pytest.approx(
        float(np.quantile(held, cfg.score.pixel_threshold_quantile)), rel=1e-4
    )
    with pytest.raises(ValueError, match="image_method=embedding"):
        apply_overrides(detector.cfg, ["score.map_normalisation=image_mean_score", "score.image_method=map_max"])


@pytest.mark.parametrize("normalisation", ["image_score", "image_score_capped"])
def test_raw_maps_times_the_image_score_factor(fitted, normalisation):
    detector, _, train_split, test_split = fitted
    fits = {}
    for name in ("none", normalisation):
        cfg = apply_overrides(detector.cfg, [f"score.map_normalisation={name}"])
        torch.manual_seed(cfg.seed)
        fits[name] = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    raw, scaled = fits["none"], fits[normalisation]
    threshold = float(scaled.threshold)
    assert threshold == float(raw.threshold)  # the image side is unchanged
    scores, maps = scaled.score_dataset(test_split, progress=False)
    raw_scores, raw_maps = raw.score_dataset(test_split, progress=False)
    np.testing.assert_allclose(scores, raw_scores, rtol=1e-6)
    ratio = raw_scores / threshold
    if normalisation == "image_score_capped":
        ratio = np.minimum(ratio, 1.0)
    np.testing.assert_allclose(maps, raw_maps * ratio[:, None, None], rtol=1e-4, atol=1e-6)
    _, cal = raw.split_calibration(len(train_split))  # the pixel threshold: the held-back maps, scaled
    held_scores, held = raw.score_dataset([train_split[i] for i in cal], progress=False)
    held_ratio = held_scores / threshold
    if normalisation == "image_score_capped":
        held_ratio = np.minimum(held_ratio, 1.0)
    expected = np.quantile(held * held_ratio[:, None, None], scaled.cfg.score.pixel_threshold_quantile)
    assert float(scaled.pixel_threshold) == pytest.approx(float(expected), rel=1e-4)
    with pytest.raises(ValueError, match="image_method=embedding"):
        apply_overrides(detector.cfg, [f"score.map_normalisation={normalisation}", "score.image_method=map_max"])


@pytest.mark.parametrize(
    ("normalisation", "unscaled"),
    [("image_score", "none"), ("image_score_capped", "none"), ("image_mean_score", "image_mean")],
)
def test_a_given_threshold_sets_the_maps_factor_and_moves_the_pixel_threshold(fitted, normalisation, unscaled):
    detector, _, train_split, test_split = fitted
    cfg = apply_overrides(detector.cfg, [f"score.map_normalisation={normalisation}"])
    torch.manual_seed(cfg.seed)
    scaled = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    raw_cfg = apply_overrides(detector.cfg, [f"score.map_normalisation={unscaled}"])
    torch.manual_seed(cfg.seed)
    raw = Detector(raw_cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    images = [sample.image for sample in test_split]
    stored, pixel = float(scaled.threshold), float(scaled.pixel_threshold)
    given = stored * 1.7
    for plain, moved, base in zip(scaled.predict(images), scaled.predict(images, threshold=given), raw.predict(images)):
        assert moved.threshold == given and plain.threshold == stored
        assert moved.pixel_threshold == pytest.approx(pixel * stored / given, rel=1e-6)
        assert plain.pixel_threshold == pytest.approx(pixel, rel=1e-6)
        for prediction, threshold in ((moved, given), (plain, stored)):
            factor = prediction.score / threshold
            if normalisation == "image_score_capped":
                factor = min(factor, 1.0)
            np.testing.assert_allclose(prediction.anomaly_map, base.anomaly_map * factor, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="above 0"):
        scaled.predict(images[0], threshold=0.0)


def test_the_narrowing_changes_the_map_shown_and_not_the_regions(fitted):
    detector, _, train_split, test_split = fitted
    cfg = apply_overrides(detector.cfg, ["score.map_sharpen_window=9", "score.map_sharpen_power=2"])
    torch.manual_seed(cfg.seed)
    sharp = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    # both thresholds come from the maps before the narrowing, so they are the plain detector's
    assert float(sharp.threshold) == float(detector.threshold)
    assert float(sharp.pixel_threshold) == pytest.approx(float(detector.pixel_threshold), rel=1e-6)
    _, maps = sharp.score_dataset(test_split, progress=False)
    _, plain = detector.score_dataset(test_split, progress=False)
    np.testing.assert_allclose(maps, plain, rtol=1e-5, atol=1e-7)  # the regions' map: not narrowed

    # the map shown: the raw smoothed map narrowed, then divided by its mean (the preset's
    # image_mean), which is the normalised map narrowed as the narrowing ignores a factor per map
    raw = copy.deepcopy(detector)
    raw.cfg.score.map_normalisation = "none"
    _, unscaled = raw.score_dataset(test_split, progress=False)
    unscaled_t = torch.from_numpy(unscaled)
    expected = sharpen_to_local_peak(unscaled_t, 9, 2.0) / unscaled_t.mean(dim=(1, 2), keepdim=True)
    shown = shown_maps(maps, sharp.cfg.score)
    np.testing.assert_allclose(shown, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(shown, maps)
    np.testing.assert_array_equal(shown_maps(maps, detector.cfg.score), maps)  # window 0: as they are

    images = [test_split[i].image for i in range(len(test_split))]
    for narrowed, as_is in zip(sharp.predict(images), detector.predict(images)):
        assert narrowed.region_map is not None and as_is.region_map is None
        np.testing.assert_allclose(narrowed.region_map, as_is.anomaly_map, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(narrowed.defect_region, as_is.defect_region)
        assert narrowed.regions == as_is.regions
        assert narrowed.peak() == pytest.approx(as_is.peak(), rel=1e-5)  # where to look, on the regions' map
        assert narrowed.anomaly_map.max() == pytest.approx(as_is.anomaly_map.max(), rel=1e-4)  # the peak stays
        assert narrowed.anomaly_map.mean() < as_is.anomaly_map.mean()  # the flanks fall
    # evaluate ranks the pixels of the map shown and cuts the regions as before
    sharp_result, plain_result = (
        evaluate(sharp, test_split, progress=False),
        evaluate(detector, test_split, progress=False),
    )
    masks = np.stack([test_split[i].mask for i in range(len(test_split))])
    labels = np.asarray(test_split.labels)
    assert sharp_result["metrics"]["pixel_ap"] == pytest.approx(
        evaluate_all(labels, np.zeros(len(labels)), masks, shown)["pixel_ap"]
    )
    assert sharp_result["metrics"]["pixel_ap"] != pytest.approx(plain_result["metrics"]["pixel_ap"])
    for name in REGION_NAMES:
        assert sharp_result["metrics"][name] == pytest.approx(plain_result["metrics"][name], nan_ok=True)
    for bad in ("score.map_sharpen_window=4", "score.map_sharpen_window=-1", "score.map_sharpen_power=0"):
        with pytest.raises(ValueError, match="map_sharpen"):
            apply_overrides(detector.cfg, [bad])
    for bad in ("score.map_background_window=8", "score.map_background_window=-3"):
        with pytest.raises(ValueError, match="map_background_window"):
            apply_overrides(detector.cfg, [bad])


def test_the_background_step_changes_the_map_shown_and_not_the_regions(fitted):
    detector, _, _, test_split = fitted
    opened = copy.deepcopy(detector)  # a step after the scorers: the fitted detector with the setting
    opened.cfg = apply_overrides(detector.cfg, ["score.map_background_window=15"])
    images = [test_split[i].image for i in range(len(test_split))]
    _, plain = detector.score_dataset(test_split, progress=False)
    expected = remove_background(torch.from_numpy(plain), 15).numpy()
    np.testing.assert_allclose(shown_maps(plain, opened.cfg.score), expected, rtol=1e-6)
    assert not np.allclose(expected, plain)
    for with_step, as_is in zip(opened.predict(images), detector.predict(images)):
        assert with_step.region_map is not None  # the map shown is not the regions' map
        np.testing.assert_allclose(with_step.region_map, as_is.anomaly_map, rtol=1e-5, atol=1e-6)
        assert with_step.regions == as_is.regions
        assert (with_step.anomaly_map <= as_is.anomaly_map + 1e-6).all()
        assert not np.allclose(with_step.anomaly_map, as_is.anomaly_map)  # the step reached predict


def test_regions_after_the_background_step_come_from_the_stepped_map_and_its_threshold(fitted):
    """With score.regions_after_background the detector's map is less its background, the pixel
    threshold is a quantile of held-back maps after that step, the regions are cut from it and the
    map shown is that map narrowed only."""
    detector, _, train_split, test_split = fitted
    cfg = apply_overrides(
        detector.cfg,
        ["score.map_background_window=15", "score.map_sharpen_window=9", "score.regions_after_background=true"],
    )
    torch.manual_seed(cfg.seed)
    after = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    _, plain = detector.score_dataset(test_split, progress=False)
    _, stepped = after.score_dataset(test_split, progress=False)
    np.testing.assert_allclose(stepped, remove_background(torch.from_numpy(plain), 15).numpy(), rtol=1e-5, atol=1e-6)
    _, cal = detector.split_calibration(len(train_split))
    _, held = detector.score_dataset([train_split[i] for i in cal], progress=False)
    held_after = remove_background(torch.from_numpy(held), 15).numpy()
    expected = pixel_threshold_of(held_after, cfg.score.pixel_threshold_quantile, cfg.score.pixel_threshold_from)
    assert float(after.pixel_threshold) == pytest.approx(expected, rel=1e-5)
    assert float(after.pixel_threshold) < float(detector.pixel_threshold)
    np.testing.assert_allclose(
        shown_maps(stepped, cfg.score), sharpen_to_local_peak(torch.from_numpy(stepped), 9).numpy(), rtol=1e-6
    )
    images = [test_split[i].image for i in range(len(test_split))]
    for got, amap in zip(after.predict(images), stepped):  # photos at the scoring size: maps as scored
        assert got.region_map is not None and got.pixel_threshold == float(after.pixel_threshold)
        np.testing.assert_allclose(got.region_map, amap, rtol=1e-4, atol=1e-6)  # the regions' map
        np.testing.assert_allclose(
            got.anomaly_map, sharpen_to_local_peak(torch.from_numpy(amap[None]), 9)[0].numpy(), rtol=1e-4, atol=1e-6
        )
    with pytest.raises(ValueError, match="regions_after_background"):
        apply_overrides(detector.cfg, ["score.regions_after_background=true"])  # no background window


def test_pixel_threshold_from_each_held_back_maps_maximum(fitted):
    detector, _, train_split, _ = fitted
    cfg = apply_overrides(detector.cfg, ["score.pixel_threshold_from=image_max", "score.pixel_threshold_quantile=0.5"])
    torch.manual_seed(cfg.seed)
    by_max = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    _, cal = detector.split_calibration(len(train_split))
    _, held = detector.score_dataset([train_split[i] for i in cal], progress=False)
    assert float(by_max.pixel_threshold) == pytest.approx(float(np.median(held.max(axis=(1, 2)))), rel=1e-5)
    assert by_max.metadata["calibration"]["pixel_rule"] == "image_max"


def test_files_from_before_map_normalisation_keep_raw_maps(fitted, tmp_path):
    _, path, _, _ = fitted
    state = torch.load(path, weights_only=True)
    del state["config"]["score"]["map_normalisation"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert Detector.load(old).cfg.score.map_normalisation == "none"


def test_image_embedding_is_the_projection_or_the_pooled_layer4(fitted):
    detector, _, train_split, _ = fitted
    assert detector.cfg.score.image_features == "projection"  # the default
    cfg = apply_overrides(detector.cfg, ["model.projector_hidden=32"])
    torch.manual_seed(0)
    narrow = Detector(cfg, detector.n_kinds).fit(train_split, progress=False)
    x = batch_of(train_split, range(4))
    with torch.no_grad():
        out = narrow.net(x)
    assert out.projection.shape == (4, 32)
    torch.testing.assert_close(narrow._features(x)[0], out.projection)
    assert narrow.image_scorer.location_.shape == (32,)  # fitted on the projection
    pooled = Detector(apply_overrides(cfg, ["score.image_features=layer4"]), detector.n_kinds, net=narrow.net)
    torch.testing.assert_close(pooled._features(x)[0], out.embedding)
    torch.testing.assert_close(out.embedding, out.features["layer4"].mean(dim=(2, 3)))
    assert pooled.fit(train_split, progress=False).image_scorer.location_.shape == (512,)


def test_layer1_and_layer4_image_score_is_standardised_out_of_fold(fitted, tmp_path):
    """score.image_features=layer1+layer4: a Gaussian on each pooled stage; each block's centre and
    spread are its out-of-fold distances' mean and deviation over every training image, so the
    out-of-fold scores the threshold is a quantile of sum to zero; the file scores as fitted."""
    detector, _, train_split, test_split = fitted
    cfg = apply_overrides(detector.cfg, ["score.image_features=layer1+layer4"])
    both = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    x = batch_of(train_split, range(4))
    with torch.no_grad():
        out = detector.net(x)
    embedding = both._features(x)[0]
    torch.testing.assert_close(embedding[:, :64], out.features["layer1"].mean(dim=(2, 3)))
    torch.testing.assert_close(embedding[:, 64:], out.embedding)
    scorer = both.image_scorer
    every = torch.cat([both._features(batch_of(train_split, [i]))[0] for i in range(len(train_split))]).double()
    folds = both.calibration_folds(len(train_split))
    blocks = out_of_fold_block_distances(scorer, every, folds)
    torch.testing.assert_close(scorer.centre_.double(), blocks.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scorer.spread_.double(), blocks.std(0), rtol=1e-4, atol=1e-4)
    oof = scorer.combine(blocks.float())
    assert abs(float(oof.mean())) < 1e-4
    assert float(both.threshold) == pytest.approx(
        float(torch.quantile(oof.double(), cfg.score.threshold_quantile)), rel=1e-4
    )
    assert both.metadata["calibration"]["method"] == "out_of_fold"
    loaded = Detector.load(both.save(tmp_path / "layer14.pt"))
    assert loaded.cfg.score.image_features == "layer1+layer4"
    np.testing.assert_allclose(
        loaded.score_dataset(test_split, progress=False)[0],
        both.score_dataset(test_split, progress=False)[0],
        rtol=1e-5,
    )


@pytest.mark.parametrize("overrides", [["score.threshold_from=held_back"], ["score.calibration_fraction=0"]])
def test_layer1_and_layer4_is_standardised_out_of_fold_when_the_threshold_is_not(fitted, overrides):
    """Held-back or in-sample thresholds: the blocks are still standardised by out-of-fold
    distances over every training image (folds of their own), and the threshold is a quantile of
    the scores it is taken from."""
    detector, _, train_split, _ = fitted
    cfg = apply_overrides(detector.cfg, ["score.image_features=layer1+layer4", *overrides])
    both = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    assert both.image_scorer.is_fitted and both.metadata["calibration"]["method"] == "held_back"
    every = torch.cat([both._features(batch_of(train_split, [i]))[0] for i in range(len(train_split))]).double()
    blocks = out_of_fold_block_distances(both.image_scorer, every, standardisation_folds(both, len(train_split)))
    torch.testing.assert_close(both.image_scorer.centre_.double(), blocks.mean(0), rtol=1e-4, atol=1e-4)
    _, cal = both.split_calibration(len(train_split))
    scores, _ = both.score_dataset([train_split[i] for i in (cal or range(len(train_split)))], progress=False)
    q = cfg.score.threshold_quantile
    assert float(both.threshold) == pytest.approx(float(np.quantile(scores, q)), rel=1e-4, abs=1e-4)


def test_files_from_before_image_features_keep_scoring_by_layer4(fitted, tmp_path):
    detector, _, train_split, test_split = fitted
    cfg = apply_overrides(detector.cfg, ["score.image_features=layer4"])
    pooled = Detector(cfg, detector.n_kinds, net=detector.net).fit(train_split, progress=False)
    state = torch.load(pooled.save(tmp_path / "layer4.pt"), weights_only=True)
    del state["config"]["score"]["image_features"]
    torch.save(state, tmp_path / "old.pt")
    old = Detector.load(tmp_path / "old.pt")
    assert old.cfg.score.image_features == "layer4"
    assert np.array_equal(
        old.score_dataset(test_split, progress=False)[0], pooled.score_dataset(test_split, progress=False)[0]
    )


def test_map_max_scores_images_by_their_strongest_pixel(fitted):
    detector, _, _, test_split = fitted
    cfg = dataclasses.replace(detector.cfg, score=dataclasses.replace(detector.cfg.score, image_method="map_max"))
    other = Detector(cfg, detector.n_kinds, net=detector.net)
    other.load_state_dict(detector.state_dict())
    scores, maps = other.score_dataset(test_split, progress=False)
    np.testing.assert_array_equal(scores, maps.reshape(len(maps), -1).max(1))


def test_prediction_defect_region_is_the_map_above_the_pixel_threshold():
    from pitscope.inference import Prediction

    anomaly_map = np.array([[0.5, 2.0], [np.nan, 1.0]], dtype=np.float32)
    p = Prediction(score=1.0, anomaly_map=anomaly_map, is_defective=True, threshold=0.5, pixel_threshold=1.0)
    np.testing.assert_array_equal(p.defect_region, [[False, True], [False, False]])


def test_the_peak_regions_bound_reaches_predict_and_evaluate(fitted):
    """score.peak_region_max bounds the region around each flagged photo's peak in what `predict`
    returns and in what `evaluate` measures."""
    from pitscope.evaluation import evaluate

    _, path, _, test_split = fitted
    detector = Detector.load(path)
    score = detector.cfg.score
    score.regions_on, score.region_core = "defective_peak", 0.1  # a wide peak's region
    detector.threshold.fill_(-1.0)  # every photo decided defective
    detector.pixel_threshold.fill_(1e9)  # no region above the pixel threshold: the peak's region only
    image = test_split[0].image  # 64 x 64
    wide = detector.predict(image)
    assert wide.peak_region_max == 0.0 and wide.defect_region.sum() > 40
    unbounded = evaluate(detector, test_split, progress=False)["metrics"]
    score.peak_region_max = 10 / 4096  # at most 10 of the 64 x 64 pixels
    bounded = detector.predict(image)
    assert bounded.peak_region_max == score.peak_region_max
    assert 1 <= bounded.defect_region.sum() <= 10 and not (bounded.defect_region & ~wide.defect_region).any()
    measured = evaluate(detector, test_split, progress=False)["metrics"]
    assert unbounded["normal_area_p99"] > 40 / 4096
    assert 0 < measured["normal_area_median"] <= measured["normal_area_p99"] <= 10 / 4096 + 1e-9


def test_batchnorm_statistics_are_recomputed_on_the_fitting_images_only():
    """score.recompute_batchnorm: the first BatchNorm's running mean and variance become the average
    over equal batches of the fitting images of their batch mean and unbiased variance; the
    held-back calibration images do not enter; with false the network's statistics stay."""
    cfg = load_config(None, [*TINY, "train.batch_size=3", "score.recompute_batchnorm=true"])  # 6 fitting images: 2 x 3
    split = build_dataset(cfg.data, "train", cfg.seed)
    torch.manual_seed(cfg.seed)
    detector = Detector(cfg, n_kinds=2)
    before = {k: v.clone() for k, v in detector.net.state_dict().items()}
    fit_idx, cal_idx = detector.split_calibration(len(split))
    assert len(fit_idx) == 6 and cal_idx
    detector.fit(split, progress=False)

    backbone = detector.net.backbone
    conv, norm = backbone.conv1, backbone.bn1
    with torch.no_grad():
        outs = [conv(batch_of(split, fit_idx[i : i + 3])).double() for i in (0, 3)]
    means = [o.mean(dim=(0, 2, 3)) for o in outs]
    variances = [o.var(dim=(0, 2, 3), unbiased=True) for o in outs]
    torch.testing.assert_close(norm.running_mean.double(), (means[0] + means[1]) / 2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var.double(), (variances[0] + variances[1]) / 2, rtol=1e-4, atol=1e-5)
    assert norm.momentum == 0.1 and not detector.net.training
    with torch.no_grad():  # not the statistics of all 12 images
        every = conv(batch_of(split, range(len(split)))).double().mean(dim=(0, 2, 3))
    assert not torch.allclose(norm.running_mean.double(), every, rtol=1e-3)
    after = detector.net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        k.startswith(("backbone.", "projector.")) and "running" in k or "num_batches" in k for k in changed
    )
    # the projector's, which the image score reads: from the same batches through the training-mode backbone
    reference = Detector(cfg, n_kinds=2).net
    reference.load_state_dict(before)
    reference.train()
    linear = next(m for m in reference.projector.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        outs = [
            linear(reference.backbone(batch_of(split, fit_idx[i : i + 3]))["layer4"].mean(dim=(2, 3))).double()
            for i in (0, 3)
        ]
    projector_norm = next(m for m in detector.net.projector.modules() if isinstance(m, torch.nn.BatchNorm1d))
    torch.testing.assert_close(
        projector_norm.running_mean.double(), (outs[0].mean(0) + outs[1].mean(0)) / 2, rtol=1e-4, atol=1e-5
    )
    layer4 = Detector(apply_overrides(cfg, ["score.image_features=layer4"]), n_kinds=2)
    layer4.net.load_state_dict(before)
    layer4.fit(split, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in layer4.net.state_dict().items() if k.startswith("projector."))

    kept = Detector(
        from_dict({**to_dict(cfg), "score": {**to_dict(cfg)["score"], "recompute_batchnorm": False}}), n_kinds=2
    )
    kept.net.load_state_dict(before)
    kept.fit(split, progress=False)
    for k, v in kept.net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_scorers_follow_the_network_handed_over(fitted):
    """A network straight from training on a GPU brings its detector's scorers and thresholds to
    the same device (the meta device stands in for the GPU here)."""
    detector = fitted[0]
    net = Detector(detector.cfg, detector.n_kinds).net.to("meta")
    built = Detector(detector.cfg, detector.n_kinds, net=net)
    devices = {tensor.device.type for tensor in built.buffers()} | {p.device.type for p in built.parameters()}
    assert devices == {"meta"}
