"""Using a trained model: Detector.predict on every input kind, run_predict's files, `pitscope predict`.

The detector is tiny and untrained (seeded random weights, scorers fitted on 12 synthetic
images): what is tested is the plumbing around the scores, not their quality.
"""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pitscope.cli import main
from pitscope.data import build_dataset
from pitscope.data.types import BadImageError
from pitscope.inference import Detector, Prediction
from pitscope.predict import FIELDS, expand_inputs, run_predict, safe_output_name

H, W = 50, 90  # a non-square input size


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_tiny_detector):
    """(detector, its model.pt, a folder of 6 test PNGs: 3 at 64 x 64, 3 at H x W). Read-only."""
    out = tmp_path_factory.mktemp("predict")
    detector, model, cfg = fit_tiny_detector(out, "score.batch_size=4")
    folder = out / "images"
    folder.mkdir()
    test = build_dataset(cfg.data, "test", cfg.seed)
    for i in range(len(test)):
        image = Image.fromarray(test[i].image)
        if i % 2:
            image = image.resize((W, H), Image.Resampling.BILINEAR)
        image.save(folder / f"part_{i}.png")
    return detector, model, folder


@pytest.fixture
def picture():
    """(H, W, 3) uint8 with some structure."""
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_jsonl(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


# -- Detector.predict --------------------------------------------------------------------------
def test_predict_a_path_as_str_or_path(fitted):
    detector, _, folder = fitted
    path = folder / "part_1.png"
    by_str, by_path = detector.predict(str(path)), detector.predict(path)
    assert isinstance(by_path, Prediction)
    assert isinstance(by_path.score, float) and isinstance(by_path.is_defective, bool)
    assert by_path.anomaly_map.shape == (H, W) and by_path.anomaly_map.dtype == np.float32
    assert by_path.threshold == float(detector.threshold)
    assert by_path.pixel_threshold == float(detector.pixel_threshold)
    assert by_path.is_defective == (by_path.score > by_path.threshold)
    assert by_str.score == by_path.score and np.array_equal(by_str.anomaly_map, by_path.anomaly_map)


def test_same_pixels_as_path_pil_or_array_score_identically(fitted, picture, tmp_path):
    detector, _, _ = fitted
    path = tmp_path / "x.png"
    Image.fromarray(picture).save(path)
    results = [detector.predict(x) for x in (path, Image.open(path), picture)]
    for p in results[1:]:
        assert p.score == results[0].score
        assert np.array_equal(p.anomaly_map, results[0].anomaly_map)


def grey_inputs(grey):
    """(name, input) pairs that all hold the (H, W) uint8 `grey` image."""
    wide = grey.astype(np.uint16) * 257  # 16-bit, scaled back by 1/257
    return [
        ("L", Image.fromarray(grey)),
        ("I;16", Image.fromarray(wide)),
        ("RGB", Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))),
        ("RGBA", Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 7)]))),
        ("(H, W) uint8", grey),
        ("(H, W) uint16", wide),
        ("(H, W, 1)", grey[:, :, None]),
        ("(H, W, 3)", np.repeat(grey[:, :, None], 3, axis=2)),
        ("(H, W, 4)", np.dstack([grey, grey, grey, np.zeros_like(grey)])),
    ]


def test_every_input_kind_gives_the_same_prediction_of_the_same_pixels(fitted, picture):
    detector, _, _ = fitted
    grey = picture[:, :, 0]
    inputs = grey_inputs(grey)
    assert Image.fromarray(grey.astype(np.uint16) * 257).mode == "I;16"
    reference = detector.predict(inputs[0][1])
    for name, x in inputs:
        p = detector.predict(x)
        assert p.anomaly_map.shape == (H, W), name
        assert p.score == reference.score, name
        assert np.array_equal(p.anomaly_map, reference.anomaly_map), name


@pytest.mark.parametrize("size", [(50, 90), (90, 50), (64, 64), (17, 200)])
def test_maps_come_at_the_input_size(fitted, size):
    detector, _, _ = fitted
    image = np.random.default_rng(0).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    p = detector.predict(image)
    assert p.anomaly_map.shape == size and np.isfinite(p.anomaly_map).all()


def test_a_list_of_mixed_inputs_gives_one_prediction_each(fitted, picture):
    detector, _, folder = fitted
    items = [folder / "part_0.png", Image.fromarray(picture), picture[:30, :20], str(folder / "part_1.png")]
    predictions = detector.predict(items)
    assert isinstance(predictions, list) and len(predictions) == 4
    assert [p.anomaly_map.shape for p in predictions] == [(64, 64), (H, W), (30, 20), (H, W)]
    for item, p in zip(items, predictions):  # a batch scores each image as it would alone
        alone = detector.predict(item)
        assert p.score == pytest.approx(alone.score, rel=1e-5)
        np.testing.assert_allclose(p.anomaly_map, alone.anomaly_map, rtol=1e-4, atol=1e-4)
    assert detector.predict([]) == []
    assert len(detector.predict((picture,))) == 1


def test_an_array_batch_gives_a_list(fitted, picture):
    detector, _, _ = fitted
    batch = np.stack([picture, picture[::-1], picture[:, ::-1]])  # (3, H, W, 3)
    predictions = detector.predict(batch)
    assert len(predictions) == 3 and all(p.anomaly_map.shape == (H, W) for p in predictions)
    assert predictions[0].score == pytest.approx(detector.predict(picture).score, rel=1e-5)


def test_threshold_override_changes_the_decision_not_the_score(fitted, picture):
    detector, _, _ = fitted
    p = detector.predict(picture)
    high = detector.predict(picture, threshold=p.score + 1.0)
    low = detector.predict(picture, threshold=p.score - 1.0)
    assert high.score == low.score == p.score
    assert np.array_equal(high.anomaly_map, p.anomaly_map)
    assert (high.is_defective, low.is_defective) == (False, True)
    assert (high.threshold, low.threshold) == (p.score + 1.0, p.score - 1.0)
    assert float(detector.threshold) == p.threshold  # the detector keeps its own


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((H, W, 3), np.float64), "uint8 or uint16"),
        (np.zeros((H, W, 2), np.uint8), r"shape.*\(50, 90, 2\)"),
        (np.zeros((0, 0), np.uint8), r"shape.*\(0, 0"),
        (np.zeros((0,), np.uint8), "shape"),
        ([np.zeros((8, 8), np.uint8), np.zeros((8, 8, 5), np.uint8)], "shape"),
        (np.zeros((2, H, W, 3), np.float32), "uint8 or uint16"),
        (torch.zeros(3, 8, 8), "PIL image or a numpy array"),
    ],
)
def test_bad_arrays_are_clear_value_errors(fitted, bad, match):
    detector, _, _ = fitted
    with pytest.raises(ValueError, match=match):
        detector.predict(bad)


def test_unreadable_paths_are_bad_image_errors(fitted, tmp_path):
    detector, _, _ = fitted
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(BadImageError, match="notes.png.*cannot decode"):
        detector.predict(text)
    with pytest.raises(BadImageError, match="missing.png.*does not exist"):
        detector.predict(str(tmp_path / "missing.png"))


# -- expand_inputs and safe_output_name ------------------------------------------------------------
def make_images(folder, names, size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", size, (90, 60, 30)).save(folder / name, format="PNG")
    return [folder / n for n in names]


def test_expand_inputs_takes_files_folders_and_globs(tmp_path):
    a = make_images(tmp_path / "a", ["b.png", "a.png", "c.jpg"])
    b = make_images(tmp_path / "b", ["z.png", "y.png"])
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / "sub").mkdir()
    single = make_images(tmp_path, ["one.bmp"])[0]
    got = expand_inputs([str(single), tmp_path / "a", str(tmp_path / "b" / "*.png")])
    assert got == [single, a[1], a[0], a[2], b[1], b[0]]
    assert expand_inputs([str(tmp_path / "*" / "z.png")]) == [b[0]]
    assert expand_inputs([str(tmp_path / "**" / "y.png")]) == [b[1]]
    assert expand_inputs([str(tmp_path / "[ab]")]) == [a[1], a[0], a[2], b[1], b[0]]  # folders matched


def test_expand_inputs_removes_duplicates_keeping_the_first(tmp_path, monkeypatch):
    a = make_images(tmp_path / "a", ["x.png", "y.png"])
    monkeypatch.chdir(tmp_path)
    got = expand_inputs(["a/y.png", "a", "./a/x.png", str(a[0])])
    assert got == [Path("a/y.png"), Path("a/x.png")]


def test_expand_inputs_names_the_spec_that_matches_nothing(tmp_path):
    make_images(tmp_path / "a", ["x.png"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    for spec in ["missing.png", "empty", "nothing*.png", "docs/*"]:
        with pytest.raises(FileNotFoundError, match=spec.replace("*", r"\*")):
            expand_inputs([str(tmp_path / "a"), str(tmp_path / spec)])


@pytest.mark.parametrize(
    "path, name",
    [
        ("a/x.png", "x"),
        ("../../etc/passwd", "passwd"),
        ("..png", "image"),
        ("...", "image"),
        ("x/..", "image"),
        (".hidden.png", "hidden"),
        ("with space é.png", "with_space__"),
        ("日本.png", "__"),
        ("C:\\evil\\win.png", "win"),
        ("a\nb;rm -rf $HOME.png", "a_b_rm_-rf__HOME"),
        ("/abs/name.tar.gz", "name.tar"),
        ("x" * 300 + ".png", "x" * 100),
    ],
)
def test_safe_output_name_cleans_any_name(path, name):
    assert safe_output_name(Path(path), set()) == name


def test_safe_output_name_never_repeats_a_name():
    taken = set()
    names = [safe_output_name(p, taken) for p in ["a/x.png", "b/x.png", "c/X.jpg", "x_2.png", "..png", "..."]]
    assert names == ["x", "x_2", "X_3", "x_2_2", "image", "image_2"]
    assert taken == set(names)


# -- run_predict ---------------------------------------------------------------------------------
def test_run_predict_writes_csv_jsonl_maps_and_overlays(fitted, tmp_path):
    detector, _, folder = fitted
    paths = expand_inputs([folder])
    out = tmp_path / "out"
    summary = run_predict(detector, paths, out, save_maps=True, progress=False, batch_size=4)
    rows, objects = read_csv(out / "predictions.csv"), read_jsonl(out / "predictions.jsonl")
    assert list(rows[0]) == list(FIELDS) and list(objects[0]) == list(FIELDS)
    assert [r["path"] for r in rows] == [o["path"] for o in objects] == [str(p) for p in paths]
    n_defective = 0
    for path, row, obj in zip(paths, rows, objects):
        expected = detector.predict(path)
        assert row["status"] == obj["status"] == "ok" and row["reason"] == "" and obj["reason"] is None
        assert float(row["score"]) == obj["score"] == pytest.approx(expected.score, rel=1e-5)
        assert obj["threshold"] == float(row["threshold"]) == float(detector.threshold)
        assert obj["is_defective"] is (obj["score"] > obj["threshold"])
        assert row["is_defective"] == str(int(obj["is_defective"]))
        regions = expected.regions
        assert obj["region_count"] == int(row["region_count"]) == len(regions)
        assert obj["defect_px"] == int(row["defect_px"]) == int(expected.defect_region.sum())
        assert [(r["area_px"], r["box"]) for r in obj["regions"]] == [(r.area_px, list(r.box)) for r in regions]
        assert [r["peak"] for r in obj["regions"]] == pytest.approx([r.peak for r in regions], rel=1e-4)
        assert row["regions"] == ";".join(" ".join(map(str, r.box)) for r in regions)
        peak = expected.peak()
        assert (obj["peak"]["x"], obj["peak"]["y"]) == (peak["x"], peak["y"])
        assert obj["peak"]["value"] == pytest.approx(peak["value"], rel=1e-4)
        x, y, value = row["peak"].split()
        assert (int(x), int(y), float(value)) == (peak["x"], peak["y"], obj["peak"]["value"])
        n_defective += obj["is_defective"]
        amap = np.load(out / obj["map"])
        with Image.open(path) as im:
            assert amap.shape == (im.height, im.width) and amap.dtype == np.float32
        np.testing.assert_allclose(amap, expected.anomaly_map, rtol=1e-4, atol=1e-4)
        with Image.open(out / row["overlay"]) as im:
            assert (im.width, im.height, im.mode) == (amap.shape[1], amap.shape[0], "RGB")
    assert summary == {
        "images": 6,
        "defective": n_defective,
        "errors": 0,
        "recorded": 0,
        "out_dir": str(out),
        "stopped_early": False,
        "failed": [],
    }
    assert sorted(os.listdir(out)) == ["maps", "predictions.csv", "predictions.jsonl"]  # no .partial left


def test_run_predict_without_maps_writes_only_the_tables(fitted, tmp_path):
    detector, _, folder = fitted
    run_predict(detector, [folder / "part_0.png"], tmp_path, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["predictions.csv", "predictions.jsonl"]
    (obj,) = read_jsonl(tmp_path / "predictions.jsonl")
    assert obj["map"] is None and obj["overlay"] is None


def test_unreadable_files_are_reported_and_the_rest_still_scored(fitted, tmp_path):
    detector, _, folder = fitted
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (bad / "empty.jpg").write_bytes(b"")
    good = [folder / "part_0.png", folder / "part_1.png"]
    paths = [good[0], bad / "corrupt.png", bad / "empty.jpg", good[1]]
    summary = run_predict(detector, paths, tmp_path / "out", save_maps=True, progress=False, batch_size=3)
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert [r["status"] for r in rows] == ["ok", "error", "error", "ok"]
    assert "cannot decode" in rows[1]["reason"] and "empty" in rows[2]["reason"]
    assert rows[1]["score"] == rows[1]["is_defective"] == rows[1]["map"] == ""
    assert float(rows[3]["score"]) == pytest.approx(detector.predict(good[1]).score, rel=1e-5)
    assert summary["errors"] == 2 and summary["images"] == 4
    assert [f["path"] for f in summary["failed"]] == [str(paths[1]), str(paths[2])]
    assert len(list((tmp_path / "out" / "maps").glob("*.npy"))) == 2


def test_hostile_names_stay_inside_the_output_folder_and_never_collide(fitted, tmp_path):
    detector, _, _ = fitted
    src = tmp_path / "src"
    names = ["..png", "...png", "with space.png", "ünïcödé 日本.png", "-rf.png", "X.png"]
    paths = make_images(src, names) + make_images(src / "a", ["x.png"]) + make_images(src / "b", ["x.png"])
    not_utf8 = os.fsdecode(os.fsencode(src) + b"/caf\xe9.png")  # Latin-1 bytes: a surrogate in Python
    Image.new("RGB", (12, 10)).save(not_utf8, format="PNG")
    paths.append(Path(not_utf8))
    out = tmp_path / "deep" / "out"
    summary = run_predict(detector, paths, out, save_maps=True, progress=False)
    assert summary["images"] == len(paths) and summary["errors"] == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file() and src not in p.parents]
    assert all(out in p.resolve().parents for p in written)
    maps = sorted(p.name for p in (out / "maps").iterdir())
    assert len(maps) == 2 * len(paths)  # one .npy and one overlay each: no name was reused
    assert len({m.lower() for m in maps}) == len(maps)
    rows = read_jsonl(out / "predictions.jsonl")
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert all(np.load(out / r["map"]).shape == (10, 12) for r in rows)


def test_threshold_and_stop_at_first_defect(fitted, tmp_path):
    detector, _, folder = fitted
    paths = expand_inputs([folder])
    none = run_predict(detector, paths, tmp_path / "high", threshold=1e30, progress=False)
    assert none["defective"] == 0
    assert {r["threshold"] for r in read_jsonl(tmp_path / "high" / "predictions.jsonl")} == {1e30}
    every = run_predict(detector, paths, tmp_path / "low", threshold=-1.0, progress=False)
    assert every["defective"] == 6
    first = run_predict(detector, paths, tmp_path / "stop", threshold=-1.0, progress=False, stop_at_first_defect=True)
    assert first["stopped_early"] and first["images"] == 1
    assert len(read_csv(tmp_path / "stop" / "predictions.csv")) == 1


def test_a_nan_threshold_is_refused(fitted, tmp_path):
    detector, _, folder = fitted
    with pytest.raises(ValueError, match="NaN"):
        run_predict(detector, [folder / "part_0.png"], tmp_path, threshold=float("nan"), progress=False)
    uncalibrated = Detector(detector.cfg, n_kinds=2)
    uncalibrated.load_state_dict(detector.state_dict())
    uncalibrated.threshold.fill_(float("nan"))
    with pytest.raises(ValueError, match="no calibrated threshold"):
        run_predict(uncalibrated, [folder / "part_0.png"], tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


# -- pitscope predict ----------------------------------------------------------------------------
def test_cli_exit_status_follows_the_predictions(fitted, tmp_path, capsys):
    _, model, folder = fitted
    out = tmp_path / "out"
    code = main(["predict", str(model), str(folder), "--out", str(out), "--quiet"])
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 6
    assert code == int(any(r["is_defective"] == "1" for r in rows))
    assert "6 images" in capsys.readouterr().out
    assert main(["predict", str(model), str(folder), "--out", str(out), "--quiet", "--threshold", "1e30"]) == 0
    assert main(["predict", str(model), str(folder), "--out", str(out), "--quiet", "--threshold=-1"]) == 1
    assert all(r["is_defective"] == "1" for r in read_csv(out / "predictions.csv"))
    args = [
        "predict",
        str(model),
        str(folder / "*.png"),
        "--out",
        str(out),
        "--quiet",
        "--threshold=-1",
        "--fail-on-defect",
        "--save-maps",
    ]
    assert main(args) == 1
    assert len(read_csv(out / "predictions.csv")) == 1


def test_cli_errors_exit_with_2(fitted, tmp_path, capsys):
    _, model, folder = fitted
    out = str(tmp_path / "out")
    assert main(["predict", str(tmp_path / "no_model.pt"), str(folder), "--out", out]) == 2
    assert "no_model.pt" in capsys.readouterr().err
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_text("junk")
    assert main(["predict", str(not_a_model), str(folder), "--out", out]) == 2
    assert "not a pitscope model file" in capsys.readouterr().err
    assert main(["predict", str(model), str(tmp_path / "nowhere"), "--out", out]) == 2
    assert "nowhere" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    assert main(["predict", str(model), str(folder / "part_0.png"), str(broken), "--out", out, "--quiet"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert [r["status"] for r in read_csv(Path(out) / "predictions.csv")] == ["ok", "error"]


def test_cli_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    assert "exit status" in text and "1  at least one image is defective" in text
