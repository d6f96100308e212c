"""ONNX and TorchScript export of a fitted Detector, checked against torch.

The detector is tiny (64 px, untrained network, 16 pixel channels): the export must reproduce
whatever it computes. Synthetic dataset images are the real images of these tests; one BSData
photograph is used too when the dataset is present.
"""

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pitscope.cli import main
from pitscope.data import build_dataset
from pitscope.data.imageio import list_images
from pitscope.evaluation import regions_at_settings
from pitscope.export import (
    OUTPUT_NAMES,
    ExportModule,
    ParityError,
    compare_outputs,
    compare_regions,
    export_onnx,
    export_torchscript,
    onnx_session,
    random_images,
    to_export_input,
)
from pitscope.inference import Detector
from pitscope.scoring import remove_background, sharpen_to_local_peak, shown_map
from pitscope.tensors import images_to_batch


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_tiny_detector):
    """(detector fitted on 12 synthetic images, its saved model.pt, the test split); read-only."""
    detector, model, cfg = fit_tiny_detector(tmp_path_factory.mktemp("detector"))
    return detector, model, build_dataset(cfg.data, "test", cfg.seed)


@pytest.fixture(scope="module")
def onnx_file(fitted, tmp_path_factory):
    """The fitted detector exported to ONNX once (checked on random images)."""
    detector, _, _ = fitted
    return export_onnx(detector, tmp_path_factory.mktemp("onnx") / "model.onnx")["path"]


def torch_reference(detector, images):
    """Scores (B,) and maps (B, H, W) by the Detector's own path: uint8 -> images_to_batch -> forward."""
    scores, maps = detector(images_to_batch(images))
    return scores.numpy(), maps.numpy()


def test_onnx_matches_the_detector_on_synthetic_images(fitted, onnx_file):
    detector, _, test_split = fitted
    images = [sample.image for sample in test_split]  # 3 normal, 3 with pitting
    score, amap, defective, region_map = onnx_session(onnx_file).run(
        None, {"image": to_export_input(images, 64).numpy()}
    )
    ref_score, ref_map = torch_reference(detector, images)
    np.testing.assert_array_equal(region_map, amap)  # no narrowing: the regions' map is the map shown

    assert score.shape == (6,) and amap.shape == (6, 64, 64) and defective.dtype == np.bool_
    assert np.abs(score - ref_score).max() <= 1e-4 * np.abs(ref_score).max()
    assert np.abs(amap - ref_map).max() <= 1e-4 * np.abs(ref_map).max()
    assert np.array_equal(defective, ref_score > float(detector.threshold))


def test_onnx_carries_the_neighbourhood_scoring(fitted, tmp_path):
    detector, _, test_split = fitted
    near = copy.deepcopy(detector)
    near.cfg.score.neighbourhood = near.pixel_scorer.radius = 1
    images = [sample.image for sample in test_split]
    path = export_onnx(near, tmp_path / "near.onnx")["path"]
    score, amap, *_ = onnx_session(path).run(None, {"image": to_export_input(images, 64).numpy()})
    ref_score, ref_map = torch_reference(near, images)
    _, own_map = torch_reference(detector, images)
    assert np.abs(score - ref_score).max() <= 1e-4 * np.abs(ref_score).max()
    assert np.abs(amap - ref_map).max() <= 1e-4 * np.abs(ref_map).max()
    assert (ref_map < own_map - 1e-3).any()  # the neighbourhood lowered the maps that were exported


def test_onnx_carries_the_layer1_and_layer4_image_score(fitted, tmp_path):
    detector, _, test_split = fitted
    cfg = copy.deepcopy(detector.cfg)
    cfg.score.image_features = "layer1+layer4"
    train_split = build_dataset(cfg.data, "train", cfg.seed)
    both = Detector(cfg, detector.n_kinds, net=copy.deepcopy(detector.net)).fit(train_split, progress=False)
    images = [sample.image for sample in test_split]
    path = export_onnx(both, tmp_path / "both.onnx")["path"]
    score, _, defective, _ = onnx_session(path).run(None, {"image": to_export_input(images, 64).numpy()})
    ref_score, _ = torch_reference(both, images)
    assert np.abs(score - ref_score).max() <= 1e-4 * np.abs(ref_score).max()
    assert np.array_equal(defective, ref_score > float(both.threshold))
    assert not np.allclose(ref_score, torch_reference(detector, images)[0])  # another score than the default's


def test_onnx_carries_the_capped_image_score_factor_and_the_map_shown(fitted, tmp_path):
    detector, _, test_split = fitted
    images = [sample.image for sample in test_split]
    raw = copy.deepcopy(detector)
    raw.cfg.score.map_normalisation = "none"
    raw_score, raw_map = torch_reference(raw, images)
    capped = copy.deepcopy(detector)
    capped.cfg.score.map_normalisation = "image_score_capped"
    capped.threshold.fill_(float(np.median(raw_score)))  # some photos above the threshold, some below
    path = export_onnx(capped, tmp_path / "capped.onnx")["path"]
    score, amap, *_ = onnx_session(path).run(None, {"image": to_export_input(images, 64).numpy()})
    ref_score, ref_map = torch_reference(capped, images)
    assert np.abs(score - ref_score).max() <= 1e-4 * np.abs(ref_score).max()
    assert np.abs(amap - ref_map).max() <= 1e-4 * np.abs(ref_map).max()
    factor = np.minimum(raw_score / float(capped.threshold), 1.0)
    sharp = copy.deepcopy(capped)
    sharp.cfg.score.map_sharpen_window, sharp.cfg.score.map_sharpen_power = 9, 2.0
    sharp.cfg.score.map_background_window = 15
    sharp_path = export_onnx(sharp, tmp_path / "sharp.onnx")["path"]
    _, sharp_map, _, sharp_regions = onnx_session(sharp_path).run(None, {"image": to_export_input(images, 64).numpy()})
    _, sharp_ref = torch_reference(sharp, images)  # the map the regions are cut from
    shown_ref = shown_map(torch.from_numpy(sharp_ref), 15, 9, 2.0).numpy()
    assert np.abs(sharp_regions - sharp_ref).max() <= 1e-4 * np.abs(sharp_ref).max()
    assert np.abs(sharp_map - shown_ref).max() <= 1e-4 * np.abs(shown_ref).max()
    assert np.abs(shown_ref - ref_map).max() > 1e-2 * np.abs(ref_map).max()  # the narrowing was exported
    narrowed_only = sharpen_to_local_peak(torch.from_numpy(sharp_ref), 9, 2.0).numpy()
    assert np.abs(shown_ref - narrowed_only).max() > 1e-2 * np.abs(narrowed_only).max()  # and the background step
    assert (remove_background(torch.from_numpy(sharp_ref), 15).numpy() < sharp_ref - 1e-6).any()
    after = copy.deepcopy(sharp)  # the background step moved to the regions' map
    after.cfg.score.regions_after_background = True
    after_path = export_onnx(after, tmp_path / "after.onnx")["path"]
    _, after_map, _, after_regions = onnx_session(after_path).run(None, {"image": to_export_input(images, 64).numpy()})
    _, after_ref = torch_reference(after, images)
    np.testing.assert_allclose(after_ref, remove_background(torch.from_numpy(sharp_ref), 15).numpy(), atol=1e-5)
    assert np.abs(after_regions - after_ref).max() <= 1e-4 * np.abs(after_ref).max()
    assert np.abs(after_map - shown_ref).max() <= 1e-4 * np.abs(shown_ref).max()  # the same map shown
    assert (factor < 0.999).any() and (factor == 1.0).any()
    np.testing.assert_allclose(amap, raw_map * factor[:, None, None], rtol=1e-3, atol=1e-4 * np.abs(raw_map).max())


def test_export_check_reports_small_differences_on_given_images(fitted, tmp_path):
    detector, _, test_split = fitted
    images = to_export_input([sample.image for sample in test_split], 64)
    result = export_onnx(detector, tmp_path / "m.onnx", images=images)
    assert result["path"] == str(tmp_path / "m.onnx") and result["opset"] == 17
    assert result["n_images"] == 6 and result["decisions_equal"] is True
    assert 0 <= result["max_abs_diff_score"] <= result["tolerance_score"]
    assert 0 <= result["max_abs_diff_map"] <= result["tolerance_map"]
    # The regions drawn from onnxruntime's maps, against torch's at the model's own settings.
    assert 0 <= result["regions_equal_images"] <= 6
    assert 0.0 <= result["regions_min_iou"] <= 1.0 and 0.0 <= result["regions_max_differing_fraction"] <= 1.0
    with torch.no_grad():
        _, _, ref_defective, ref_map = ExportModule(detector).eval()(images)
    onnx_out = onnx_session(tmp_path / "m.onnx").run(None, {"image": images.numpy()})
    drawn = [
        regions_at_settings(np.asarray(m), np.asarray(d), float(detector.pixel_threshold), detector.cfg.score)
        for m, d in ((ref_map.detach().numpy(), ref_defective.numpy()), (onnx_out[3], onnx_out[2]))
    ]
    assert result["regions_equal_images"] == int((drawn[0] == drawn[1]).all(axis=(1, 2)).sum())


def test_onnx_matches_the_detector_on_a_bsdata_photograph(fitted, tmp_path, real_bsdata):
    root = real_bsdata
    detector, _, _ = fitted
    path = list_images(root / "data")[0]
    from pitscope.data.imageio import read_image

    result = export_onnx(detector, tmp_path / "m.onnx", images=to_export_input([read_image(path)], 64))
    assert result["max_abs_diff_score"] <= result["tolerance_score"]
    assert result["max_abs_diff_map"] <= result["tolerance_map"]

    # The graph input contract matches Detector.predict on the file itself.
    score, _, defective, _ = onnx_session(tmp_path / "m.onnx").run(
        None, {"image": to_export_input([read_image(path)], 64).numpy()}
    )
    prediction = detector.predict(path)
    assert score[0] == pytest.approx(prediction.score, rel=1e-4)
    assert bool(defective[0]) == prediction.is_defective


def test_one_onnx_file_serves_any_batch_size(fitted, onnx_file):
    _, _, test_split = fitted
    x = to_export_input([test_split[i].image for i in (0, 3, 5)], 64).numpy()  # (3, 3, 64, 64)
    session = onnx_session(onnx_file)
    batch = session.run(None, {"image": x})
    for i in range(3):
        alone = session.run(None, {"image": x[i : i + 1]})
        np.testing.assert_allclose(alone[0], batch[0][i : i + 1], rtol=1e-5)
        np.testing.assert_allclose(alone[1], batch[1][i : i + 1], rtol=1e-5, atol=1e-5)
        assert np.array_equal(alone[2], batch[2][i : i + 1])


def test_onnx_names_types_shapes_and_metadata(fitted, onnx_file):
    detector, _, _ = fitted
    import onnx

    session = onnx_session(onnx_file)
    (image,) = session.get_inputs()
    assert (image.name, image.type, image.shape) == ("image", "tensor(float)", ["batch", 3, 64, 64])
    outputs = [(o.name, o.type, o.shape) for o in session.get_outputs()]
    assert OUTPUT_NAMES == ("score", "anomaly_map", "is_defective", "region_map")
    assert outputs == [
        ("score", "tensor(float)", ["batch"]),
        ("anomaly_map", "tensor(float)", ["batch", 64, 64]),
        ("is_defective", "tensor(bool)", ["batch"]),
        ("region_map", "tensor(float)", ["batch", 64, 64]),
    ]
    props = {p.key: p.value for p in onnx.load(onnx_file).metadata_props}
    assert float(props["threshold"]) == float(detector.threshold)
    assert float(props["pixel_threshold"]) == float(detector.pixel_threshold)
    assert props["image_size"] == "64"
    assert json.loads(props["regions"]) == {
        "min_region_fraction": detector.cfg.score.min_region_fraction,
        "regions_on": detector.cfg.score.regions_on,
        "region_core": detector.cfg.score.region_core,
        "peak_region_max": detector.cfg.score.peak_region_max,
    }


def test_is_defective_is_the_score_against_the_stored_threshold(fitted, onnx_file):
    detector, _, test_split = fitted
    images = [sample.image for sample in test_split]
    x = torch.cat([to_export_input(images, 64), random_images(64, n=2)])  # noise scores far above
    score, _, defective, _ = onnx_session(onnx_file).run(None, {"image": x.numpy()})
    threshold = float(detector.threshold)
    assert np.array_equal(defective, score > threshold)
    ref_score, _ = torch_reference(detector, images)
    assert np.array_equal(defective[:6], ref_score > threshold)
    assert defective.any() and not defective.all(), "the batch should straddle the threshold"


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript is deprecated, still asked for
def test_torchscript_round_trip_equals_torch(fitted, tmp_path):
    detector, _, test_split = fitted
    images = [sample.image for sample in test_split]
    result = export_torchscript(detector, tmp_path / "m.torchscript.pt", images=to_export_input(images, 64))
    assert "opset" not in result and result["decisions_equal"] is True

    extra = {"pitscope.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["pitscope.json"])["threshold"] == repr(float(detector.threshold))
    with torch.no_grad():
        score, amap, defective, region_map = loaded(to_export_input(images, 64))
        alone = loaded(to_export_input(images[:1], 64))
    ref_score, ref_map = torch_reference(detector, images)
    np.testing.assert_allclose(score.numpy(), ref_score, rtol=1e-5)
    np.testing.assert_allclose(amap.numpy(), ref_map, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(region_map.numpy(), amap.numpy())  # no narrowing
    assert np.array_equal(defective.numpy(), ref_score > float(detector.threshold))
    np.testing.assert_allclose(alone[0].numpy(), ref_score[:1], rtol=1e-5)


def test_parity_check_fails_on_a_real_difference():
    ref = [torch.tensor([1.0, 5.0]), torch.ones(2, 4, 4), torch.tensor([False, True]), 2 * torch.ones(2, 4, 4)]

    def outputs(score=(1.0, 5.0), amap=1.0, decision=(False, True), region=2.0):
        return [np.array(score), np.full((2, 4, 4), amap), np.array(decision), np.full((2, 4, 4), region)]

    ok = compare_outputs(ref, outputs(), 3.0)
    assert ok["max_abs_diff_score"] == 0 and ok["tolerance_score"] == pytest.approx(5e-3)
    with pytest.raises(ParityError, match="anomaly_map differs"):
        compare_outputs(ref, outputs(amap=1.01), 3.0)
    with pytest.raises(ParityError, match="region_map differs"):
        compare_outputs(ref, outputs(region=2.01), 3.0)
    with pytest.raises(ParityError, match="region_map differs"):
        compare_outputs(ref, outputs(region=np.nan), 3.0)
    near = compare_outputs(ref, outputs(amap=1.0005, region=2.0002), 3.0)  # both within: the worse reported
    assert near["max_abs_diff_map"] == pytest.approx(5e-4) and near["tolerance_map"] == pytest.approx(1e-3)
    with pytest.raises(ParityError, match="score differs"):
        compare_outputs(ref, outputs(score=(1.0, 5.1)), 3.0)
    with pytest.raises(ParityError, match="is_defective differs"):
        compare_outputs(ref, outputs(decision=(True, True)), 3.0)
    with pytest.raises(ParityError, match="output shapes"):
        compare_outputs(ref, outputs()[:3], 3.0)
    # A decision flip for a score within the tolerance of the threshold is rounding, not a bug.
    near = compare_outputs(ref, outputs(decision=(False, False)), 4.999)
    assert near["decisions_equal"] is False


def test_region_comparison_counts_the_pixels_that_differ():
    score = SimpleNamespace(min_region_fraction=0.0, regions_on="all", region_core=0.0, peak_region_max=0.0)
    ref_map = torch.zeros(3, 4, 5)
    ref_map[0, 1:3, 1:3] = 2.0  # image 0: a 2 x 2 region above the pixel threshold 1
    ref_map[1, 0, 0] = 2.0  # image 1: one pixel
    shown = np.zeros((3, 4, 5))  # the map shown: the regions are cut from region_map, the last output
    reference = [torch.zeros(3), torch.zeros(3, 4, 5), torch.zeros(3, dtype=torch.bool), ref_map]  # image 2: none

    same = compare_regions(reference, [np.zeros(3), shown, np.zeros(3, bool), ref_map.numpy()], 1.0, score)
    assert same == {"regions_equal_images": 3, "regions_min_iou": 1.0, "regions_max_differing_fraction": 0.0}

    exported = ref_map.numpy().copy()
    exported[0, 1, 1] = 0.5  # one pixel of image 0's region falls below the threshold: IoU 3/4
    exported[2, 3, 4] = 1.5  # a new one-pixel region on image 2: IoU 0
    differ = compare_regions(reference, [np.zeros(3), shown, np.zeros(3, bool), exported], 1.0, score)
    assert differ["regions_equal_images"] == 1
    assert differ["regions_min_iou"] == 0.0 and differ["regions_max_differing_fraction"] == pytest.approx(1 / 20)

    # With regions on images decided defective only, each runtime's own decisions choose the images.
    only_defective = SimpleNamespace(**{**vars(score), "regions_on": "defective"})
    decided = [torch.zeros(3), torch.zeros(3, 4, 5), torch.tensor([True, False, False]), ref_map]
    flipped = compare_regions(
        decided, [np.zeros(3), shown, np.array([False, False, False]), ref_map.numpy()], 1.0, only_defective
    )
    assert flipped["regions_equal_images"] == 2 and flipped["regions_min_iou"] == 0.0
    assert flipped["regions_max_differing_fraction"] == pytest.approx(4 / 20)


def test_an_unfitted_detector_is_refused(fitted):
    detector, _, _ = fitted
    with pytest.raises(ValueError, match="not fitted"):
        ExportModule(Detector(detector.cfg, n_kinds=2))


@pytest.fixture
def image_folder(fitted, tmp_path):
    """A folder of 3 synthetic test images as PNG files, for --check-images."""
    _, _, test_split = fitted
    folder = tmp_path / "images"
    folder.mkdir()
    for i in (0, 3, 4):
        Image.fromarray(test_split[i].image).save(folder / f"img{i}.png")
    return folder


def test_cli_export_writes_both_formats_and_reports_parity(fitted, image_folder, tmp_path, capsys):
    _, model, _ = fitted
    out = tmp_path / "exported"
    code = main(["export", str(model), "--format", "both", "--out", str(out), "--check-images", str(image_folder)])
    printed = capsys.readouterr().out
    assert code == 0
    assert (out / "model.onnx").is_file() and (out / "model.torchscript.pt").is_file()
    assert printed.count("parity on 3 images") == 2 and "max |map diff|" in printed
    assert printed.count("regions: identical on ") == 2 and "of 3 images, lowest IoU" in printed
    assert onnx_session(out / "model.onnx").get_outputs()[0].name == "score"


def test_cli_export_errors_and_parity_failures(fitted, tmp_path, monkeypatch, capsys):
    _, model, _ = fitted
    assert main(["export", str(tmp_path / "missing.pt")]) == 2
    assert main(["export", str(model), "--format", "both", "--out", str(tmp_path / "one.onnx")]) == 2
    assert main(["export", str(model), "--check-images", str(tmp_path / "no_such_dir")]) == 2

    def disagree(*args, **kwargs):
        raise ParityError("exported model disagrees with torch: score differs")

    monkeypatch.setattr("pitscope.cli.export.export_onnx", disagree)
    assert main(["export", str(model), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "parity check FAILED" in capsys.readouterr().err


def test_merged_checks_keep_each_maps_difference_with_its_own_tolerance():
    from pitscope.export import _merge

    def check(diff_map, tol_map, diff_score=0.0):
        return {
            "max_abs_diff_score": diff_score,
            "max_abs_diff_map": diff_map,
            "tolerance_map": tol_map,
            "regions_max_differing_fraction": 0.0,
            "regions_min_iou": 1.0,
            "decisions_equal": True,
        }

    # the batch run's worst map is at a tenth of its tolerance; the single image's, at a twentieth of a looser one
    merged = _merge(check(1e-4, 1e-3), check(5e-4, 1e-2, diff_score=0.5))
    assert (merged["max_abs_diff_map"], merged["tolerance_map"]) == (1e-4, 1e-3)
    assert merged["max_abs_diff_score"] == 0.5
    merged = _merge(check(1e-4, 1e-2), check(5e-4, 1e-3))
    assert (merged["max_abs_diff_map"], merged["tolerance_map"]) == (5e-4, 1e-3)
