"""Wear curves: sequences from a tiny BSData-style tree with known pit areas, ordering by capture
time, areas, growth, agreement, the alert rule, the split over sequences, the CLI and the report."""

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pitscope.cli import main
from pitscope.config import load_config
from pitscope.data import build_dataset
from pitscope.data.bsdata import write_split
from pitscope.data.dataset import Record
from pitscope.data.sequences import capture_time, read_sequences
from pitscope.data.types import DatasetLayoutError
from pitscope.inference import Prediction
from pitscope.report import build_report, read_wear
from pitscope.report.wear_section import _wear_section
from pitscope.wear import (
    AlertRule,
    AreaPoint,
    WearCurve,
    area_point,
    assign_models,
    evaluate_alerts,
    fold_split,
    format_summary,
    sequence_folds,
    slope_per_day,
    spearman,
    summarise,
    trailing_growth,
    trailing_median,
    training_images,
    write_wear,
)

# Three positions, six photographs each, 12 hours apart; the last photograph of each position is
# larger (128x64 instead of 96x48), as BSData's last twelve are. A pit is a w x h rectangle
# (None: no label file). Position A carries two wear_dev names listing the same images.
SMALL, LARGE = (96, 48), (128, 64)
PITS = {
    "100000_000": [None, None, None, (2, 2), (4, 3), (6, 5)],
    "200000_090": [None, None, (3, 2), (3, 3), (5, 4), (8, 6)],
    "300000_180": [None] * 6,
}
TIMES = ["200901000000", "200901120000", "200902000000", "200902120000", "200903000000", "200903120000"]


def _file(position: str, i: int) -> str:
    return f"01_{TIMES[i]}_{position}_crop_{1 if i == 5 else 2}.jpg"


def _true_px(position: str, i: int) -> int:
    pit = PITS[position][i]
    return 0 if pit is None else pit[0] * pit[1]


def make_tree(root: Path) -> Path:
    """A BSData-style folder: data/, label/, image_data.json (images listed in shuffled order)."""
    (root / "data").mkdir(parents=True)
    (root / "label").mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for position, pits in PITS.items():
        names = [f"01_{TIMES[5]}_{position}_crop"]
        if position == "100000_000":
            names.append(f"01_{TIMES[5][:-4]}3000_{position}_crop")
        for i, pit in enumerate(pits):
            width, height = LARGE if i == 5 else SMALL
            image = rng.integers(150, 200, size=(height, width, 3), dtype=np.uint8)
            file = _file(position, i)
            if pit is not None:
                x0, y0 = 20, 10
                image[y0 : y0 + pit[1], x0 : x0 + pit[0]] = 30
                shape = {
                    "label": "Pitting",
                    "shape_type": "polygon",
                    "points": [
                        [x0, y0],
                        [x0 + pit[0] - 1, y0],
                        [x0 + pit[0] - 1, y0 + pit[1] - 1],
                        [x0, y0 + pit[1] - 1],
                    ],
                }
                (root / "label" / f"{Path(file).stem}.json").write_text(json.dumps({"shapes": [shape]}))
            Image.fromarray(image).save(root / "data" / file)
            entries.append(
                {
                    "filename": file,
                    "train_test_split": None,
                    "type": 2,
                    "wear_dev": names,
                    "annotations": f"{Path(file).stem}.json",
                }
            )
    kgt = rng.integers(100, 150, size=(40, 80, 3), dtype=np.uint8)  # a type-1 photograph in no sequence
    Image.fromarray(kgt).save(root / "data" / "KGT1-S-060-A02_crop_0.jpg")
    shape = {"label": "Pitting", "shape_type": "polygon", "points": [[1, 1], [5, 1], [5, 5]]}
    (root / "label" / "KGT1-S-060-A02_crop_0.json").write_text(json.dumps({"shapes": [shape]}))
    entries.append(
        {
            "filename": "KGT1-S-060-A02_crop_0.jpg",
            "train_test_split": "train",
            "type": 1,
            "wear_dev": [],
            "annotations": "KGT1-S-060-A02_crop_0.json",
        }
    )
    order = np.random.default_rng(1).permutation(len(entries))
    (root / "image_data.json").write_text(json.dumps({"images": [entries[i] for i in order]}))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("bsdata"))


@pytest.fixture(scope="module")
def fold_models(tree, tmp_path_factory, fit_tiny_detector):
    """One tiny BSData model per fold of a 2-fold split over the tree's sequences."""
    sequences = read_sequences(tree)
    folds = sequence_folds(sequences, 2, seed=0)
    out = tmp_path_factory.mktemp("folds")
    models = []
    for f, held_out in enumerate(folds):
        split = fold_split(tree, sequences, held_out)
        split_file = write_split(split, out / f"fold{f}" / "split.json")
        _, path, _ = fit_tiny_detector(
            out / f"fold{f}",
            "data.format=bsdata",
            f"data.root={tree}",
            f"data.split_file={split_file}",
            f"data.n_train_normal={len(split['train'])}",
        )
        models.append(path)
    return folds, models


@pytest.fixture(scope="module")
def wear_run(tree, fold_models, tmp_path_factory):
    """`pitscope wear` over the tree with the two fold models: (output folder, exit status)."""
    out = tmp_path_factory.mktemp("wear")
    status = main(["wear", *map(str, fold_models[1]), "--root", str(tree), "--out", str(out), "--quiet"])
    return out, status


# -- sequences -------------------------------------------------------------------------------
def test_capture_time_reads_the_file_name():
    assert capture_time("01_200907232354_560000_000_crop_1.jpg") == datetime(2020, 9, 7, 23, 23, 54)
    assert capture_time(Path("/x/01_201231000001_5_0_crop_2.jpg")) == datetime(2020, 12, 31, 0, 0, 1)
    with pytest.raises(ValueError, match="KGT1"):
        capture_time("KGT1-S-060-A02_crop_0.jpg")
    with pytest.raises(ValueError, match="not a valid"):
        capture_time("01_201345000000_5_0_crop_2.jpg")  # month 13


def test_sequences_merge_names_order_by_time_and_carry_labels(tree):
    sequences = read_sequences(tree)
    assert [s.name for s in sequences] == sorted(f"01_{TIMES[5]}_{p}_crop" for p in PITS)
    merged = sequences[0]
    assert merged.names == tuple(sorted([f"01_{TIMES[5]}_100000_000_crop", f"01_{TIMES[5][:-4]}3000_100000_000_crop"]))
    for sequence, position in zip(sequences, PITS):
        assert [r.path.name for r in sequence.records] == [_file(position, i) for i in range(6)]
        assert list(sequence.times) == sorted(sequence.times)
        np.testing.assert_allclose(sequence.days, [0, 0.5, 1, 1.5, 2, 2.5])
        assert [r.label for r in sequence.records] == [int(p is not None) for p in PITS[position]]
    assert not any("KGT" in r.path.name for s in sequences for r in s.records)


def test_sequences_sharing_some_images_or_missing_files_are_refused(tmp_path):
    root = make_tree(tmp_path / "a")
    content = json.loads((root / "image_data.json").read_text())
    for entry in content["images"]:
        if entry["filename"] == _file("200000_090", 0):
            entry["wear_dev"] = [*entry["wear_dev"], f"01_{TIMES[5]}_300000_180_crop"]
    (root / "image_data.json").write_text(json.dumps(content))
    with pytest.raises(DatasetLayoutError, match="do not list the same images"):
        read_sequences(root)
    root = make_tree(tmp_path / "b")
    (root / "data" / _file("300000_180", 3)).unlink()
    with pytest.raises(DatasetLayoutError, match=_file("300000_180", 3)):
        read_sequences(root)


# -- areas -----------------------------------------------------------------------------------
def test_area_point_counts_map_pixels_above_the_pixel_threshold_and_polygon_pixels():
    amap = np.zeros((48, 96), np.float32)
    amap[0, :7] = 2.0  # above
    amap[1, :5] = 1.0  # at the threshold: not above
    prediction = Prediction(3.5, amap, True, 3.0, 1.0)
    square = ((10.0, 5.0), (19.0, 5.0), (19.0, 12.0), (10.0, 12.0))  # 10 x 8 pixels, outline included
    record = Record(Path("01_200901000000_1_0_crop_2.jpg"), 1, polygons=(square,))
    point = area_point(record, datetime(2020, 9, 1), 0.25, prediction)
    assert (point.predicted_px, point.true_px, point.width, point.height) == (7, 80, 96, 48)
    assert point.predicted_fraction == pytest.approx(7 / (96 * 48))
    assert point.true_fraction == pytest.approx(80 / (96 * 48))
    assert (point.score, point.threshold, point.is_defective, point.days) == (3.5, 3.0, True, 0.25)


# -- growth and agreement --------------------------------------------------------------------
def test_spearman_matches_closed_forms():
    # no ties: 1 - 6 sum(d^2) / (n (n^2 - 1)) with d = (0, -1, 1, 0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    # ties: Pearson correlation of the average ranks
    expected = np.corrcoef([1.5, 1.5, 3, 4], [1, 3, 2, 4])[0, 1]
    assert spearman([0, 0, 1, 2], [0.1, 0.3, 0.2, 0.5]) == pytest.approx(expected)
    assert spearman([0, 0, 0], [1, 2, 3]) is None  # a sequence without pitting: undefined
    assert spearman([1], [2]) is None


def test_growth_of_a_linear_series():
    days = np.array([0, 0.5, 1, 1.5, 2, 3])
    values = 0.002 * days + 0.001
    assert slope_per_day(days, values) == pytest.approx(0.002)
    growth = trailing_growth(days, values, window_days=1.0)
    assert np.isnan(growth[0])
    np.testing.assert_allclose(growth[1:], 0.002)
    assert np.isnan(trailing_growth(days, values, window_days=0.4)).all()  # never two images in a window
    assert slope_per_day([1, 1], [0, 1]) is None


def _curve(days, predicted, truth, scores=None, threshold=1.0) -> WearCurve:
    scores = scores if scores is not None else [0.0] * len(days)
    points = tuple(
        AreaPoint(
            f"{i}.jpg", datetime(2020, 9, 1), d, 100, 10, round(p * 1000), round(t * 1000), s, threshold, s > threshold
        )
        for i, (d, p, t, s) in enumerate(zip(days, predicted, truth, scores))
    )
    return WearCurve("seq", ("seq",), points, "m/model.pt", 0, 1.0)


def test_summary_growth_agreement_and_first_flag():
    days = [0, 1, 2, 3, 4]
    truth = [0, 0, 0.002, 0.004, 0.006]
    predicted = [0.001, 0.001, 0.004, 0.006, 0.008]
    summary = summarise(_curve(days, predicted, truth, scores=[0, 2, 0, 2, 2]), AlertRule(0.005, None))
    assert summary.first_true_days == 2 and summary.first_flagged_days == 1 and summary.flag_lead_days == 1
    assert summary.growth_from_days == 2
    assert summary.growth_true_per_day == pytest.approx(0.002)
    assert summary.growth_predicted_per_day == pytest.approx(0.002)
    assert summary.spearman == pytest.approx(1.0)  # the same order, ties included
    assert summary.mae == pytest.approx(np.mean([0.001, 0.001, 0.002, 0.002, 0.002]))
    assert summary.alert.first_alert_days == 3 and summary.alert.lead_days == -1


def test_summary_and_files_carry_the_watched_area(tmp_path):
    """With a median over the last images, the summary, the CSV and wear.json carry the watched
    area beside the predicted one, and its rank agreement with the truth."""
    days = [0, 1, 2, 3, 4, 5, 6]
    truth = [0, 0, 0.001, 0.002, 0.003, 0.004, 0.005]
    predicted = [0.0, 0.009, 0.001, 0.002, 0.0, 0.004, 0.005]  # two stray images
    curve = _curve(days, predicted, truth)
    rule = AlertRule(0.005, None, smooth_images=3)
    summary = summarise(curve, rule)
    watched = trailing_median(curve.predicted, 3)
    assert summary.spearman == pytest.approx(spearman(curve.predicted, truth))
    assert summary.spearman_watched == pytest.approx(spearman(watched, truth))
    assert summary.spearman_watched > summary.spearman
    assert summarise(curve, AlertRule(0.005, None)).spearman_watched == pytest.approx(summary.spearman)
    path = write_wear(tmp_path, [curve], rule, {"models": []}, tmp_path)
    record = json.loads(path.read_text())
    assert np.allclose(record["curves"]["seq"]["watched_fraction"], watched)
    assert record["overall"]["spearman_watched"]["mean"] == pytest.approx(summary.spearman_watched)
    assert record["rule"]["smooth_images"] == 3
    with (tmp_path / "sequences" / "seq.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert np.allclose([float(r["watched_fraction"]) for r in rows], watched)
    assert "median of the last 3 images" in format_summary(record)
    html = _wear_section(record, tmp_path)
    assert f"median of the last 3 images), mean (median)</td><td>{summary.spearman_watched:.3f}" in html
    plain = json.loads(
        write_wear(tmp_path / "plain", [curve], AlertRule(0.005, None), {"models": []}, tmp_path).read_text()
    )
    assert "the rule watches" not in _wear_section(plain, tmp_path / "plain")


# -- the alert rule --------------------------------------------------------------------------
def test_alert_lead_days_and_false_alerts():
    days = [0, 0.5, 1, 1.5, 2, 2.5]
    predicted = [0.001, 0.001, 0.006, 0.007, 0.008, 0.009]
    rule = AlertRule(area_fraction_above=0.005, growth_per_day_above=None)
    alerts = rule.fires(days, predicted)
    assert alerts.tolist() == [False, False, True, True, True, True]
    early = evaluate_alerts(days, [0, 0, 0, 0, 0.002, 0.004], alerts)  # pitting from day 2
    assert (early.first_alert_days, early.first_true_days, early.lead_days) == (1, 2, 1)
    assert (early.false_alerts, early.clean_images) == (2, 4)  # the early warning counts as false
    late = evaluate_alerts(days, [0, 0.001, 0.001, 0, 0.002, 0.004], alerts)  # pitting from day 0.5
    assert (late.lead_days, late.false_alerts, late.clean_images) == (-0.5, 0, 1)
    never = evaluate_alerts(days, [0] * 6, alerts)
    assert (never.lead_days, never.first_true_days, never.false_alerts, never.clean_images) == (None, None, 4, 6)
    silent = evaluate_alerts(days, [0, 0, 0, 0, 0.002, 0.004], np.zeros(6, bool))
    assert (silent.first_alert_days, silent.lead_days, silent.false_alerts) == (None, None, 0)


def test_alert_on_growth_alone():
    days = np.array([0, 0.5, 1, 1.5, 2])
    rule = AlertRule(area_fraction_above=None, growth_per_day_above=0.001, window_days=1.0)
    assert rule.fires(days, 0.002 * days).tolist() == [False, True, True, True, True]  # one image: no slope
    assert not rule.fires(days, 0.0005 * days).any()
    assert "percentage points a day" in rule.describe() and "area" not in rule.describe()
    with pytest.raises(ValueError, match="both are off"):
        AlertRule(None, None)
    with pytest.raises(ValueError, match="window_days"):
        AlertRule(window_days=0)


def test_alert_confirmed_on_images_in_a_row():
    days = np.arange(8) * 0.5
    predicted = np.array([0.001, 0.006, 0.001, 0.006, 0.007, 0.008, 0.001, 0.009])
    once = AlertRule(area_fraction_above=0.005, growth_per_day_above=None)
    assert once.fires(days, predicted).tolist() == [False, True, False, True, True, True, False, True]
    twice = AlertRule(area_fraction_above=0.005, growth_per_day_above=None, confirm_images=2)
    assert twice.fires(days, predicted).tolist() == [False, False, False, False, True, True, False, False]
    thrice = AlertRule(0.005, None, confirm_images=3)
    assert thrice.fires(days, predicted).tolist() == [False] * 5 + [True, False, False]
    assert "each on 3 images in a row" in thrice.describe() and "in a row" not in once.describe()
    # each condition is confirmed on its own: the area holds on images 1-2, the growth on image 1 alone
    mixed = AlertRule(0.005, 0.001, window_days=0.5, confirm_images=2)
    area = np.array([0.0, 0.006, 0.006, 0.0])
    assert AlertRule(0.005, 0.001, 0.5).fires(days[:4], area).tolist() == [False, True, True, False]
    assert mixed.fires(days[:4], area).tolist() == [False, False, True, False]
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="confirm_images"):
            AlertRule(confirm_images=bad)


def test_trailing_median_is_numpy_median_over_each_image_and_those_before():
    rng = np.random.default_rng(0)
    values = rng.random(11)
    for k in (1, 2, 3, 5, 20):
        expected = [np.median(values[max(0, i - k + 1) : i + 1]) for i in range(values.size)]
        assert np.allclose(trailing_median(values, k), expected), k
    assert trailing_median([0.0, 0.0, 1.0, 0.0, 0.0], 3).tolist() == [0.0] * 5  # one stray image vanishes
    assert trailing_median([0.0, 1.0, 2.0, 3.0], 3).tolist() == [0.0, 0.5, 1.0, 2.0]  # a rise lags by one
    assert trailing_median([], 3).size == 0


def test_alert_on_the_median_of_the_last_images():
    days = np.arange(8) * 0.5
    predicted = np.array([0.001, 0.009, 0.001, 0.001, 0.006, 0.007, 0.008, 0.009])
    once = AlertRule(area_fraction_above=0.005, growth_per_day_above=None)
    assert once.fires(days, predicted).tolist() == [False, True, False, False, True, True, True, True]
    median3 = AlertRule(area_fraction_above=0.005, growth_per_day_above=None, smooth_images=3)
    assert np.allclose(median3.watched(predicted), [0.001, 0.005, 0.001, 0.001, 0.001, 0.006, 0.007, 0.008])
    assert median3.fires(days, predicted).tolist() == [False] * 5 + [True] * 3  # the stray image does not alert
    assert "median of the last 3 images" in median3.describe() and "median" not in once.describe()
    # the growth reads the watched area too: a lone spike has no slope under the median
    growth = AlertRule(None, 0.001, window_days=0.5, smooth_images=3)
    spike = np.array([0.0, 0.0, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert AlertRule(None, 0.001, window_days=0.5).fires(days, spike).any()
    assert not growth.fires(days, spike).any()
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="smooth_images"):
            AlertRule(smooth_images=bad)


# -- the split over sequences ----------------------------------------------------------------
def test_folds_partition_the_sequences_and_never_train_on_a_held_out_sequence(tree):
    sequences = read_sequences(tree)
    folds = sequence_folds(sequences, 2, seed=0)
    assert sorted(n for fold in folds for n in fold) == sorted(s.name for s in sequences)
    assert folds == sequence_folds(sequences, 2, seed=0)
    assert sorted(map(len, folds)) == [1, 2]
    with pytest.raises(ValueError, match="2 <= k <= 3"):
        sequence_folds(sequences, 4)
    normal = {r.path.name for s in sequences for r in s.records if r.label == 0}
    trained = []
    for held_out in folds:
        split = fold_split(tree, sequences, held_out)
        mine = {r.path.name for s in sequences if s.name in held_out for r in s.records}
        assert not mine & set(split["train"])
        assert set(split["train"]) == normal - mine  # every other defect-free image trains
        assert set(split["test_normal"]) == normal & mine
        assert "KGT1-S-060-A02_crop_0.jpg" in split["test_defect"]
        trained.append(frozenset((tree / "data" / n).resolve() for n in split["train"]))
    assigned = assign_models(sequences, trained)
    for sequence in sequences:
        fold = next(f for f, held_out in enumerate(folds) if sequence.name in held_out)
        assert assigned[sequence.name] == (fold, 0)
    everything = frozenset((tree / "data" / n).resolve() for n in normal)
    assert assign_models(sequences, [everything]) == {}
    overlapping = assign_models(sequences, [everything], allow_overlap=True)
    assert overlapping[sequences[2].name] == (0, 6)  # the clean position: all six trained


def test_training_images_of_bsdata_and_synthetic_models(tree, fold_models, tmp_path):
    folds, models = fold_models
    sequences = read_sequences(tree)
    cfg = load_config(None, ["data.format=bsdata", f"data.split_file={models[0].parent / 'split.json'}"])
    images = training_images(cfg, models[0], tree)
    held_out = {(tree / "data" / r.path.name).resolve() for s in sequences if s.name in folds[0] for r in s.records}
    assert images and not images & held_out
    assert training_images(load_config(None, ["data.format=synthetic"]), models[0], tree) == frozenset()
    lost = load_config(None, ["data.format=bsdata", f"data.split_file={tmp_path / 'gone' / 'nowhere.json'}"])
    with pytest.raises(ValueError, match="unknown"):
        training_images(lost, tmp_path / "model.pt", tree)


# -- command line and report -----------------------------------------------------------------
def test_wear_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["wear", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "MODEL" in out and "--alert-area" in out and "--alert-growth" in out and "--allow-overlap" in out
    assert "--alert-confirm" in out and "--alert-smooth" in out


def test_wear_cli_measures_each_sequence_with_the_model_of_its_fold(tree, fold_models, wear_run):
    folds, models = fold_models
    out, status = wear_run
    assert status == 0
    record = json.loads((out / "wear.json").read_text())
    assert record["unmeasured"] == [] and record["overall"]["trained_on_measured_images"] == 0
    for f, entry in enumerate(record["split"]["models"]):
        assert entry["model"] == str(models[f]) and entry["sequences"] == list(folds[f])
    assert record["overall"]["sequences"] == 3 and record["overall"]["with_pitting"] == 2
    assert record["overall"]["images"] == 18
    for position in PITS:
        name = f"01_{TIMES[5]}_{position}_crop"
        with (out / "sequences" / f"{name}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert [r["file"] for r in rows] == [_file(position, i) for i in range(6)]
        assert [int(r["true_px"]) for r in rows] == [_true_px(position, i) for i in range(6)]
        for i, row in enumerate(rows):
            width, height = LARGE if i == 5 else SMALL
            assert (int(row["width"]), int(row["height"])) == (width, height)
            assert float(row["true_fraction"]) == pytest.approx(_true_px(position, i) / (width * height))
            assert float(row["predicted_fraction"]) == pytest.approx(int(row["predicted_px"]) / (width * height))
        assert (out / "sequences" / f"{name}.png").stat().st_size > 1000
        summary = next(s for s in record["sequences"] if s["sequence"] == name)
        first = next((i for i in range(6) if PITS[position][i] is not None), None)
        assert summary["first_true_days"] == (None if first is None else 0.5 * first)
    with (out / "summary.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_wear_cli_leaves_out_sequences_a_model_trained_on(tree, tmp_path, fit_tiny_detector, capsys):
    split = {"seed": 0, "train": [_file(p, 0) for p in PITS], "test_normal": [], "test_defect": []}
    split_file = write_split(split, tmp_path / "split.json")
    _, model, _ = fit_tiny_detector(
        tmp_path, "data.format=bsdata", f"data.root={tree}", f"data.split_file={split_file}", "data.n_train_normal=3"
    )
    args = ["wear", str(model), "--root", str(tree), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "honest")]) == 2
    assert "can be measured honestly" in capsys.readouterr().err
    assert not (tmp_path / "honest" / "wear.json").exists()
    assert main([*args, "--out", str(tmp_path / "overlap"), "--allow-overlap"]) == 0
    record = json.loads((tmp_path / "overlap" / "wear.json").read_text())
    assert record["split"]["allow_overlap"] is True
    assert [s["overlap"] for s in record["sequences"]] == [1, 1, 1]
    assert record["overall"]["trained_on_measured_images"] == 3


def test_report_has_a_wear_section_for_bsdata_only(tree, fold_models, wear_run, tmp_path):
    from pitscope.inference import Detector

    _, models = fold_models
    out, _ = wear_run
    detector = Detector.load(models[0])
    dataset = build_dataset(detector.cfg.data, "test", detector.cfg.seed)
    html_path = build_report(detector, dataset, tmp_path / "report", progress=False, gallery_size=1, wear_dir=out)
    page = html_path.read_text()
    assert '<section id="wear">' in page and 'href="#wear"' in page
    assert page.count('alt="wear curve of') == 3
    assert "No model measured an image it trained on" in page
    report = json.loads(html_path.with_suffix(".json").read_text())
    assert report["wear"]["overall"] == json.loads((out / "wear.json").read_text())["overall"]
    with pytest.raises(ValueError, match="synthetic"):
        read_wear(out, "synthetic")
    with pytest.raises(FileNotFoundError, match="no wear results"):
        read_wear(tmp_path, "bsdata")


def test_wear_from_a_history_replayed_over_http_equals_the_offline_curves(tree, fold_models, wear_run, tmp_path):
    """Each sequence's photos posted to the service of its fold's model, with part and capture time
    read from their names: `wear --db` gives the offline run's curves, numbers and alerts."""
    from fastapi.testclient import TestClient

    from pitscope.history.names import BSDATA_PART, BSDATA_TIME, compile_pattern
    from pitscope.history.recorder import Recorder
    from pitscope.history.store import HistoryStore
    from pitscope.inference import Detector
    from pitscope.serve import create_app

    folds, models = fold_models
    db = tmp_path / "history.sqlite"
    offline = json.loads((wear_run[0] / "wear.json").read_text())
    names = {}
    for fold, model in zip(folds, models):
        detector = Detector.load(model)
        app = create_app(
            detector,
            recorder=Recorder(HistoryStore(db), detector, "fold"),
            part_from=compile_pattern(BSDATA_PART, "p"),
            time_from=compile_pattern(BSDATA_TIME, "t"),
        )
        with TestClient(app) as client:
            for sequence in fold:
                position = sequence.split("_", 2)[2].removesuffix("_crop")
                names[position] = sequence
                for i in reversed(range(6)):  # posted newest first: the trend orders by capture time
                    file = tree / "data" / _file(position, i)
                    answer = client.post("/predict", files={"file": (file.name, file.read_bytes(), "image/jpeg")})
                    assert answer.json()["recorded"] is True
    out = tmp_path / "wear-db"
    assert main(["wear", "--db", str(db), "--root", str(tree), "--out", str(out)]) == 0
    live = json.loads((out / "wear.json").read_text())
    assert sorted(live["curves"]) == sorted(names)
    for position, sequence in names.items():
        mine_curve, their_curve = live["curves"][position], offline["curves"][sequence]
        # scores agree to float32 rounding (the offline run scores images in batches, the service one by one)
        assert mine_curve.pop("score") == pytest.approx(their_curve.pop("score"), rel=1e-5)
        assert mine_curve == their_curve  # days, predicted and true fractions, alerts: exactly
        mine = next(s for s in live["sequences"] if s["sequence"] == position)
        theirs = next(s for s in offline["sequences"] if s["sequence"] == sequence)
        for key in (
            "images",
            "first_flagged_days",
            "first_true_days",
            "spearman",
            "mae",
            "growth_predicted_per_day",
            "growth_true_per_day",
            "alert",
        ):
            assert mine[key] == theirs[key], key
    assert main(["wear", "--db", str(db), "--part", "nope", "--out", str(out)]) == 2


def test_wear_measures_a_sequence_without_its_reference_photos(tree, fold_models, wear_run, tmp_path, capsys):
    """A fold model refitted with the first two photos of each of its sequences as references
    measures those sequences from the third photo on, with the days still counted from the first."""
    folds, models = fold_models
    refitted = []
    for f, held_out in enumerate(folds):
        firsts = [
            str(tree / "data" / _file(name.split("_", 2)[2].rsplit("_crop", 1)[0], i))
            for name in held_out
            for i in (0, 1)
        ]
        out = tmp_path / f"fold{f}_refs.pt"
        assert main(["refit", str(models[f]), "--output", str(out), "--quiet", "--references", *firsts]) == 0
        refitted.append(out)
    capsys.readouterr()
    out = tmp_path / "wear_refs"
    assert main(["wear", *map(str, refitted), "--root", str(tree), "--out", str(out), "--quiet"]) == 0
    assert "6 reference or calibration photos (the models' scorers or thresholds were fitted on them) not measured" in (
        capsys.readouterr().out
    )
    record = json.loads((out / "wear.json").read_text())
    assert record["unmeasured"] == [] and record["overall"]["trained_on_measured_images"] == 0
    assert record["overall"]["reference_images_left_out"] == 6 and record["overall"]["images"] == 12
    assert [m["reference_images"] for m in record["split"]["models"]] == [2 * len(fold) for fold in folds]
    for summary in record["sequences"]:
        assert summary["references"] == 2 and summary["images"] == 4
    for position in PITS:
        name = f"01_{TIMES[5]}_{position}_crop"
        with (out / "sequences" / f"{name}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert [r["file"] for r in rows] == [_file(position, i) for i in range(2, 6)]
        assert record["curves"][name]["days"] == [1.0, 1.5, 2.0, 2.5]
    with (out / "summary.csv").open() as fh:
        assert [int(r["references"]) for r in csv.DictReader(fh)] == [2, 2, 2]

    # a sequence whose every photo is a reference is not measured, and says why
    first = folds[0][0]
    position = first.split("_", 2)[2].rsplit("_crop", 1)[0]
    every = [str(tree / "data" / _file(position, i)) for i in range(6)]
    whole = tmp_path / "whole.pt"
    assert main(["refit", str(models[0]), "--output", str(whole), "--quiet", "--references", *every]) == 0
    capsys.readouterr()
    out = tmp_path / "wear_whole"
    assert main(["wear", str(whole), str(refitted[1]), "--root", str(tree), "--out", str(out), "--quiet"]) == 0
    assert f"not measured: {first}: its model was fitted on all its images as references" in capsys.readouterr().err
    record = json.loads((out / "wear.json").read_text())
    assert [u["sequence"] for u in record["unmeasured"]] == [first]


def test_wear_calibrates_each_sequence_on_its_first_photos(tree, fold_models, tmp_path, capsys):
    """--calibrate-first K: each sequence's thresholds are those `pitscope calibrate` gives on its
    first K photos; those photos are not measured, the model file is unchanged, and the areas are
    the map pixels above the sequence's own pixel threshold."""
    from pitscope.calibration import calibrate
    from pitscope.inference import Detector

    folds, models = fold_models
    before = [Path(m).read_bytes() for m in models]
    out = tmp_path / "wear_calibrated"
    args = ["wear", *map(str, models), "--root", str(tree), "--out", str(out), "--quiet"]
    assert main([*args, "--calibrate-first", "2", "--calibrate-quantile", "1"]) == 0
    assert "6 reference or calibration photos" in capsys.readouterr().out
    assert [Path(m).read_bytes() for m in models] == before
    record = json.loads((out / "wear.json").read_text())
    assert record["overall"]["reference_images_left_out"] == 6 and record["overall"]["images"] == 12
    for f, held_out in enumerate(folds):
        detector = Detector.load(models[f])
        calibrated = record["split"]["models"][f]["calibrated"]
        assert sorted(calibrated) == sorted(held_out)
        for name in held_out:
            position = name.split("_", 2)[2].rsplit("_crop", 1)[0]
            firsts = [tree / "data" / _file(position, i) for i in (0, 1)]
            expected = calibrate(detector, firsts, quantile=1.0, pixel_quantile=1.0, progress=False)
            own = calibrated[name]
            assert own["photos"] == 2 and own["with_pitting"] == 0
            assert own["threshold"] == pytest.approx(expected["threshold"], rel=1e-6)
            assert own["pixel_threshold"] == pytest.approx(expected["pixel_threshold"], rel=1e-6)
            with (out / "sequences" / f"{name}.csv").open() as fh:
                rows = list(csv.DictReader(fh))
            assert [r["file"] for r in rows] == [_file(position, i) for i in range(2, 6)]
            detector.threshold.fill_(own["threshold"])
            detector.pixel_threshold.fill_(own["pixel_threshold"])
            for row in rows:  # decisions and areas at the sequence's own thresholds
                prediction = detector.predict([tree / "data" / row["file"]])[0]
                assert float(row["threshold"]) == pytest.approx(own["threshold"], rel=1e-6)
                assert float(row["predicted_fraction"]) == pytest.approx(float(prediction.defect_region.mean()))
                assert bool(int(row["is_defective"])) == bool(prediction.is_defective)
            detector = Detector.load(models[f])
    assert main([*args, "--calibrate-first", "6"]) == 2  # nothing would be left to measure
    assert "not more than the 6 to calibrate on" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--calibrate-first", "-1"])
    with pytest.raises(SystemExit):
        main([*args, "--calibrate-first", "2", "--calibrate-quantile", "1.5"])
