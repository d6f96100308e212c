"""Re-deriving a model's thresholds from defect-free images: `calibrate` and `pitscope calibrate`."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import precision_score, recall_score

from pitscope.calibration import calibrate
from pitscope.cli import main
from pitscope.data import build_dataset
from pitscope.data.types import DatasetLayoutError
from pitscope.inference import Detector
from pitscope.metrics import f1_max


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_tiny_detector):
    """(detector, its model.pt, good folder, defect folder, mask folder). Shared read-only."""
    out = tmp_path_factory.mktemp("calibrate")
    detector, model, cfg = fit_tiny_detector(
        out, "data.synthetic.n_test_normal=6", "data.synthetic.n_test_defect=5", "score.batch_size=4"
    )
    folders = {name: out / name for name in ("good", "defects", "masks")}
    for folder in folders.values():
        folder.mkdir()
    test = build_dataset(cfg.data, "test", cfg.seed)
    stems = iter(["num_0", "num_1", "num_10", "num_100", "num_11"])  # exact-stem pairing: num_1 is not num_10
    for i in range(len(test)):
        sample = test[i]
        if sample.label == 0:
            Image.fromarray(sample.image).save(folders["good"] / f"good_{i}.png")
        else:
            stem = next(stems)
            Image.fromarray(sample.image).save(folders["defects"] / f"{stem}.png")
            Image.fromarray(sample.mask * 255).save(folders["masks"] / f"{stem}_mask.png")
    return detector, model, folders["good"], folders["defects"], folders["masks"]


def paths_in(folder):
    return sorted(folder.glob("*.png"))


def predicted(detector, paths):
    """(scores (N,), maps (N, 64, 64)) through the public predict()."""
    predictions = detector.predict(paths)
    return np.array([p.score for p in predictions]), np.stack([p.anomaly_map for p in predictions])


def state_of(detector):
    return float(detector.threshold), float(detector.pixel_threshold), json.dumps(detector.metadata, sort_keys=True)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_thresholds_are_quantiles_of_the_good_images(fitted):
    detector, _, good, _, _ = fitted
    before = state_of(detector)
    scores, maps = predicted(detector, paths_in(good))
    result = calibrate(detector, paths_in(good), progress=False)
    assert result["images"] == 6 and result["quantile"] == 0.75
    assert result["threshold"] == pytest.approx(np.quantile(scores.astype(np.float64), 0.75), rel=1e-6)
    assert result["pixel_quantile"] == 0.999
    assert result["pixel_threshold"] == pytest.approx(np.quantile(maps, 0.999), rel=1e-5)
    assert result["previous"] == {"threshold": before[0], "pixel_threshold": before[1]}
    assert result["defects"] is None and result["pixel"] is None and result["applied"] is False
    assert state_of(detector) == before  # apply=False changes nothing
    json.dumps(result)  # serialisable as it is

    median = calibrate(detector, paths_in(good), quantile=0.5, pixel_quantile=0.9, progress=False)
    assert median["threshold"] == pytest.approx(np.median(scores.astype(np.float64)), rel=1e-6)
    assert median["pixel_threshold"] == pytest.approx(np.quantile(maps, 0.9), rel=1e-5)


@pytest.mark.parametrize("normalisation", ["image_mean_score", "image_score", "image_score_capped"])
def test_maps_with_an_image_score_factor_follow_the_new_threshold(fitted, normalisation):
    import copy

    detector, _, good, _, _ = fitted
    scaled = copy.deepcopy(detector)
    scaled.cfg.score.map_normalisation = normalisation
    calibrate(scaled, paths_in(good), quantile=0.5, apply=True, progress=False)
    _, maps = predicted(scaled, paths_in(good))  # the maps as the new threshold scales them
    assert float(scaled.pixel_threshold) == pytest.approx(np.quantile(maps, 0.999), rel=1e-4)


def test_defects_give_the_f1_optimal_threshold(fitted):
    detector, _, good, defects, masks = fitted
    good_scores, good_maps = predicted(detector, paths_in(good))
    defect_scores, defect_maps = predicted(detector, paths_in(defects))
    labels = np.r_[np.zeros(6), np.ones(5)].astype(int)
    scores = np.r_[good_scores, defect_scores]
    result = calibrate(detector, paths_in(good), paths_in(defects), mask_paths=masks, progress=False)

    best_f1, best_threshold = f1_max(labels, scores)
    assert result["defects"]["images"] == 5
    assert result["defects"]["f1_max"] == pytest.approx(best_f1)
    assert result["defects"]["f1_threshold"] == pytest.approx(best_threshold, rel=1e-6)
    for key, t in (("at_quantile_threshold", result["threshold"]), ("at_f1_threshold", best_threshold)):
        flags = scores > result["defects"][key]["threshold"]
        assert result["defects"][key]["threshold"] == pytest.approx(t, rel=1e-6)
        assert result["defects"][key]["precision"] == pytest.approx(precision_score(labels, flags, zero_division=0))
        assert result["defects"][key]["recall"] == pytest.approx(recall_score(labels, flags))

    truth = np.concatenate(
        [
            np.zeros((6, 64, 64), bool),
            np.stack([np.asarray(Image.open(masks / f"{p.stem}_mask.png")) > 0 for p in paths_in(defects)]),
        ]
    )
    pixel_f1, pixel_threshold = f1_max(truth.ravel(), np.concatenate([good_maps, defect_maps]).ravel())
    assert result["pixel"]["f1_max"] == pytest.approx(pixel_f1, rel=1e-5)
    assert result["pixel"]["f1_threshold"] == pytest.approx(pixel_threshold, rel=1e-5)


def test_masks_pair_by_exact_stem(fitted, tmp_path):
    detector, _, good, defects, masks = fitted
    images = paths_in(defects)
    assert {p.stem for p in images} >= {"num_1", "num_10"}
    as_dict = {p: masks / f"{p.stem}_mask.png" for p in images}
    by_folder = calibrate(detector, paths_in(good), images, mask_paths=masks, progress=False)
    by_dict = calibrate(detector, paths_in(good), images, mask_paths=as_dict, progress=False)
    assert by_folder["pixel"] == by_dict["pixel"]
    swapped = dict(as_dict)
    swapped[defects / "num_1.png"], swapped[defects / "num_10.png"] = (
        as_dict[defects / "num_10.png"],
        as_dict[defects / "num_1.png"],
    )
    assert (
        calibrate(detector, paths_in(good), images, mask_paths=swapped, progress=False)["pixel"] != by_folder["pixel"]
    )
    with pytest.raises(DatasetLayoutError, match="num_1.png.*no mask"):
        calibrate(detector, paths_in(good), images, mask_paths=[m for m in paths_in(masks) if m.stem != "num_1_mask"])
    with pytest.raises(ValueError, match="without defective images"):
        calibrate(detector, paths_in(good), mask_paths=masks)


def test_apply_sets_the_thresholds_and_records_how(fitted):
    _, model, good, defects, _ = fitted
    detector = Detector.load(model)
    result = calibrate(detector, paths_in(good), paths_in(defects), quantile=0.5, apply=True, progress=False)
    assert float(detector.threshold) == pytest.approx(result["threshold"])
    assert float(detector.pixel_threshold) == pytest.approx(result["pixel_threshold"])
    record = detector.metadata["calibration"]
    assert record["source"] == "pitscope calibrate"
    assert (record["images"], record["quantile"], record["defect_images"]) == (6, 0.5, 5)
    assert record["threshold"] == result["threshold"] and record["f1_threshold"] == result["defects"]["f1_threshold"]


def test_unreadable_good_images_are_skipped(fitted, tmp_path):
    detector, _, good, _, _ = fitted
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        result = calibrate(detector, [*paths_in(good), broken], progress=False)
    assert result["images"] == 6 and result["skipped"][0]["path"] == str(broken)
    with pytest.raises(ValueError, match="no readable defect-free image"), pytest.warns(UserWarning):
        calibrate(detector, [broken], progress=False)
    with pytest.raises(ValueError, match="quantile"):
        calibrate(detector, paths_in(good), quantile=1.5, progress=False)


def test_cli_without_write_leaves_the_model_file_alone(fitted, tmp_path, capsys):
    _, model, good, defects, masks = fitted
    copy = tmp_path / "model.pt"
    copy.write_bytes(model.read_bytes())
    digest, mtime = sha256(copy), copy.stat().st_mtime_ns
    args = ["calibrate", str(copy), str(good), "--defects", str(defects), "--masks", str(masks), "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["applied"] is False and result["pixel"] is not None and "left unchanged" in captured.err
    assert (sha256(copy), copy.stat().st_mtime_ns) == (digest, mtime)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_cli_write_saves_the_new_thresholds(fitted, tmp_path, capsys):
    _, model, good, _, _ = fitted
    copy = tmp_path / "model.pt"
    copy.write_bytes(model.read_bytes())
    old = Detector.load(copy)
    assert main(["calibrate", str(copy), str(good), "--quantile", "0.2", "--write", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    loaded = Detector.load(copy)
    assert result["quantile"] == 0.2 and result["threshold"] != float(old.threshold)
    assert float(loaded.threshold) == pytest.approx(result["threshold"])
    assert float(loaded.pixel_threshold) == pytest.approx(result["pixel_threshold"])
    assert loaded.metadata["calibration"]["source"] == "pitscope calibrate"
    a, b = old.state_dict(), loaded.state_dict()  # only the thresholds changed
    assert all(torch.equal(a[k], b[k]) for k in a if k not in ("threshold", "pixel_threshold"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left


def test_cli_errors_exit_with_2(fitted, tmp_path, capsys):
    _, model, good, _, masks = fitted
    assert main(["calibrate", str(tmp_path / "none.pt"), str(good)]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(["calibrate", str(model), str(tmp_path / "no_such_dir")]) == 2
    assert "no_such_dir" in capsys.readouterr().err
    assert main(["calibrate", str(model), str(good), "--masks", str(masks)]) == 2
    assert "--masks needs --defects" in capsys.readouterr().err
