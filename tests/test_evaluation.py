"""Evaluating a detector on a test split: the files written, metrics against sklearn, the table."""

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from pitscope.config import apply_overrides, load_config
from pitscope.data import build_dataset
from pitscope.evaluation import (
    METRIC_NAMES,
    PAPER_BSDATA,
    REGION_NAMES,
    evaluate,
    format_table,
    kind_groups,
    write_evaluation,
)
from pitscope.inference import Detector
from pitscope.metrics import auroc_interval
from pitscope.tensors import images_to_batch

TINY = [
    "data.format=synthetic",
    "data.image_size=64",
    "data.synthetic.n_train=8",
    "data.synthetic.n_test_normal=4",
    "data.synthetic.n_test_defect=4",
    "train.device=cpu",
    "score.pixel_channels=16",
    "score.batch_size=8",
]


@pytest.fixture(scope="module")
def detector():
    """A detector with a seeded, untrained network, fitted on 8 synthetic images (read-only)."""
    cfg = load_config(None, TINY)
    torch.manual_seed(cfg.seed)
    return Detector(cfg, n_kinds=2).fit(build_dataset(cfg.data, "train", cfg.seed), progress=False)


def load_test_split(*overrides):
    cfg = load_config(None, [*TINY, *overrides])
    return build_dataset(cfg.data, "test", cfg.seed)


def read_scores(path):
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def test_evaluate_writes_metrics_json_and_one_csv_row_per_image(detector, tmp_path):
    split = load_test_split()
    result = evaluate(detector, split, progress=False)
    assert not (tmp_path / "eval").exists()  # evaluate returns; write_evaluation writes
    write_evaluation(result, tmp_path / "eval")

    written = {k: v for k, v in result.items() if k != "per_image"}
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == json.loads(json.dumps(written))
    assert set(result["metrics"]) == set(METRIC_NAMES) | set(REGION_NAMES)
    assert result["counts"] == {"images": 8, "normal": 4, "defective": 4, "left_out_trained_on": 0}
    assert result["threshold"] == float(detector.threshold)

    header, rows = read_scores(tmp_path / "eval" / "scores.csv")
    assert header == ["path", "label", "score", "is_defective"]
    assert [r["path"] for r in rows] == split.paths
    assert [int(r["label"]) for r in rows] == split.labels.tolist()
    scores, _ = detector.score_dataset(split, progress=False)
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, rtol=1e-5)
    assert [int(r["is_defective"]) for r in rows] == (scores > result["threshold"]).astype(int).tolist()


def test_metrics_agree_with_sklearn(detector, tmp_path):
    split = load_test_split()
    result = evaluate(detector, split, progress=False)
    write_evaluation(result, tmp_path)
    metrics = result["metrics"]

    _, rows = read_scores(tmp_path / "scores.csv")
    labels = np.array([int(r["label"]) for r in rows])
    csv_scores = np.array([float(r["score"]) for r in rows])
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, csv_scores), abs=1e-12)
    assert metrics["image_ap"] == pytest.approx(average_precision_score(labels, csv_scores), abs=1e-12)
    interval = result["image_auroc_interval"]
    assert interval["auroc"] == pytest.approx(metrics["image_auroc"], abs=1e-12)
    assert interval["low"] <= metrics["image_auroc"] <= interval["high"]
    assert interval["se"] == pytest.approx(auroc_interval(labels, csv_scores)["se"], rel=1e-5)

    scores, maps = detector.score_dataset(split, progress=False)
    masks = np.stack([split[i].mask for i in range(len(split))])  # (8, 64, 64)
    assert masks.any()
    assert metrics["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel() > 0, maps.ravel()), rel=1e-9)
    assert metrics["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel() > 0, maps.ravel()), rel=1e-9)
    assert 0.0 <= metrics["aupro"] <= 1.0

    flagged = scores > result["threshold"]
    assert result["at_threshold"]["true_positive_rate"] == flagged[labels == 1].mean()
    assert result["at_threshold"]["false_positive_rate"] == flagged[labels == 0].mean()


@pytest.mark.parametrize("only", ["data.synthetic.n_test_defect=0", "data.synthetic.n_test_normal=0"])
def test_a_split_with_one_class_is_refused(detector, tmp_path, only):
    with pytest.raises(ValueError, match="both defect-free and defective"):
        evaluate(detector, load_test_split(only), progress=False)
    assert not (tmp_path / "metrics.json").exists()


def test_an_empty_split_is_refused(detector):
    split = load_test_split("data.synthetic.n_test_defect=0", "data.synthetic.n_test_normal=0")
    with pytest.raises(ValueError, match="no images"):
        evaluate(detector, split, progress=False)


class _NoMasks:
    """A test split without ground-truth masks (the image-level-only case)."""

    has_masks = False

    def __init__(self, split):
        self.split = split
        self.labels = split.labels
        self.paths = split.paths

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split[i]


def test_without_masks_pixel_metrics_are_none(detector):
    result = evaluate(detector, _NoMasks(load_test_split()), progress=False)
    assert result["metrics"]["image_auroc"] is not None
    for name in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert result["metrics"][name] is None


def _result(metrics):
    return {
        "metrics": metrics,
        "counts": {"images": 8, "normal": 4, "defective": 4},
        "threshold": 12.5,
        "at_threshold": {"true_positive_rate": 0.75, "false_positive_rate": 0.25},
    }


def test_format_table_shows_the_paper_only_for_bsdata():
    metrics = {name: 0.5 for name in METRIC_NAMES}
    metrics.update(image_auroc=0.9123, aupro=None)
    ours = format_table(_result(metrics), "synthetic")
    paper = format_table(_result(metrics), "bsdata")

    assert "paper" not in ours and "97.42" not in ours
    assert "paper" not in format_table(_result(metrics))
    assert "paper" in paper.splitlines()[0]
    rows = {line.split()[0]: line.split()[1:] for line in paper.splitlines()[1:-1]}
    assert set(rows) == set(METRIC_NAMES)
    assert rows["image_auroc"] == ["91.23", f"{PAPER_BSDATA['image_auroc']:.2f}"]
    assert rows["pixel_auroc"] == ["50.00", f"{PAPER_BSDATA['pixel_auroc']:.2f}"]
    assert rows["aupro"] == ["n/a"]
    assert "TPR 75.0%" in paper and "FPR 25.0%" in paper and "4 normal + 4 defective" in paper


def test_format_table_shows_the_image_auroc_interval():
    metrics = {name: 0.5 for name in METRIC_NAMES}
    result = _result(metrics)
    assert "interval" not in format_table(result)
    result["image_auroc_interval"] = {"auroc": 0.5, "se": 0.0123, "low": 0.4759, "high": 0.5241, "level": 0.95}
    last = format_table(result).splitlines()[-1]
    assert last.startswith("image_auroc 95% interval 47.59-52.41 (DeLong standard error 1.23)")


def test_image_scores_benchmark_agrees_with_evaluate(detector, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bsdata_image_scores import STAGES, score_model

    detector.save(tmp_path / "model.pt")
    record = score_model(tmp_path / "model.pt")
    rows = {row["score"]: row for row in record["rows"]}
    assert record["default"] == detector.cfg.score.image_features == "projection"
    assert set(STAGES) | {"projection", "sum of layer1-4", "map maximum", "projection + map maximum"} <= set(rows)
    assert 0 <= rows["layer1 + layer4, standardised"]["image_auroc"] <= 100
    # 7 fitting images: both shares round to no image, so the trimmed rows are the layer4 row
    for share in ("2%", "5%"):
        assert rows[f"layer4, fit without its furthest {share}"] == {
            **rows["layer4"],
            "score": f"layer4, fit without its furthest {share}",
        }
    split = load_test_split()
    default = evaluate(detector, split, progress=False)
    assert rows["projection"]["image_auroc"] == round(100 * default["metrics"]["image_auroc"], 2)
    assert rows["projection"]["se"] == round(100 * default["image_auroc_interval"]["se"], 2)
    # the pooled layer4 row is what the detector gives when scoring by it
    by_layer4 = Detector(
        apply_overrides(detector.cfg, ["score.image_features=layer4"]), detector.n_kinds, net=detector.net
    )
    by_layer4.fit(build_dataset(detector.cfg.data, "train", detector.cfg.seed), progress=False)
    assert rows["layer4"]["image_auroc"] == round(
        100 * evaluate(by_layer4, split, progress=False)["metrics"]["image_auroc"], 2
    )
    assert score_model(tmp_path / "model.pt", ["score.image_features=layer4"])["default"] == "layer4"
    raw_max = copy.deepcopy(detector)
    raw_max.cfg.score.map_normalisation, raw_max.cfg.score.image_method = "none", "map_max"
    expected = evaluate(raw_max, split, progress=False)["metrics"]["image_auroc"]
    assert rows["map maximum"]["image_auroc"] == round(100 * expected, 2)
    # The classifier row: the network's own forward pass gives the same logits.
    from pitscope.inference import iterate_batches

    with torch.inference_mode():
        logits = torch.cat(
            [
                detector.net(x).logits.float()
                for _, x in iterate_batches(split, list(range(len(split))), 4, "logits", False)
            ]
        )
    labels = [split[i].label for i in range(len(split))]
    assert rows["classifier logit"]["image_auroc"] == round(100 * roc_auc_score(labels, logits.numpy()), 2)
    assert "projection + classifier logit" in rows
    assert record["counts"] == {"defective": 4, "normal": 4}
    assert len(record["hardest"]) == 4 and all(0 < h["defect_area"] < 1 for h in record["hardest"])


@pytest.mark.parametrize("overrides", [[], ["score.image_method=map_max"]])
def test_threshold_benchmark_refits_as_training_and_counts_rates(detector, tmp_path, monkeypatch, overrides):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bsdata_threshold import threshold_model

    detector.save(tmp_path / "model.pt")
    record = threshold_model(tmp_path / "model.pt", overrides)
    assert record["images"] == {"training": 8, "held_back": 1, "folds": 8}
    train_split = build_dataset(detector.cfg.data, "train", detector.cfg.seed)
    refit = Detector(apply_overrides(detector.cfg, overrides), detector.n_kinds, net=detector.net).fit(
        train_split, progress=False
    )
    assert record["image_method"] == ("map_max" if overrides else "embedding")
    out = record["out_of_fold"]
    assert out["threshold"] == round(float(refit.threshold), 2)
    assert record["model_threshold"] == round(float(detector.threshold), 2)
    assert out["highest"] == refit.metadata["calibration"]["highest"]
    split = load_test_split()
    scores, _ = refit.score_dataset(split, progress=False)
    labels = np.array([split[i].label for i in range(len(split))])
    t = float(refit.threshold)
    assert out["fpr"] == round(100 * float((scores[labels == 0] > t).mean()), 1)
    assert out["tpr"] == round(100 * float((scores[labels == 1] > t).mean()), 1)
    _, cal_idx = refit.split_calibration(8)
    held_score = float(refit(images_to_batch([train_split[cal_idx[0]].image]))[0][0])
    assert record["held_back"]["threshold"] == round(held_score, 2)  # the quantile of one score is that score
    assert record["held_back"]["largest"] == [round(held_score, 2)]


def test_kind_groups_name_the_defective_images_by_their_folder():
    paths = [
        "test/good/0.png",
        "test/crack/1.png",
        "test/crack/2.png",
        "test/stain/3.png",
        "C:\\data\\test\\stain\\4.png",
    ]
    labels = np.array([0, 1, 1, 1, 1])
    groups = kind_groups(paths, labels)
    assert list(groups) == ["kind crack", "kind stain"]
    assert groups["kind crack"].tolist() == [False, True, True, False, False]
    assert groups["kind stain"].tolist() == [False, False, False, True, True]
    assert kind_groups(paths[:3], labels[:3]) == {}  # one kind: no subsets


def test_evaluate_measures_each_synthetic_defect_kind_apart(detector):
    data = load_test_split("data.synthetic.n_test_defect=6", "data.synthetic.defects=[pit,scratch,stain]")
    result = evaluate(detector, data, progress=False)
    assert sorted(result["subsets"]) == ["kind pitting", "kind scratch", "kind stain"]
    for subset in result["subsets"].values():
        assert subset["counts"] == {"normal": 4, "defective": 2}
        assert 0.0 <= subset["metrics"]["image_auroc"] <= 1.0
    one_kind = evaluate(detector, load_test_split(), progress=False)
    assert one_kind["subsets"] == {}


def test_preset_validation_variant_keeps_a_list_value_whole(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from demo_validation import parse_variant

    assert parse_variant("four stages=score.pixel_stages=[layer1,layer2,layer4],score.fit_trim=0.02") == (
        "four stages",
        ["score.pixel_stages=[layer1,layer2,layer4]", "score.fit_trim=0.02"],
    )
    assert parse_variant("as trained=") == ("as trained", [])
    with pytest.raises(SystemExit, match="unbalanced"):
        parse_variant("broken=score.pixel_stages=[layer1,layer2")
    with pytest.raises(SystemExit, match="unbalanced"):
        parse_variant("broken=score.fit_trim=0.02],score.pixel_stages=[layer1")


def test_preset_validation_benchmark_reports_each_kind_and_the_classifier(detector, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from demo_validation import classifier_learning, markdown, run_variant

    three = ["data.synthetic.defects=[pit,scratch,stain]", "data.synthetic.n_test_defect=6"]
    refitted = copy.deepcopy(detector)
    refitted.metadata["training"] = {
        "losses": [{"epoch": 1, "ce": 0.69}, {"epoch": 2, "ce": 0.5}, {"epoch": 3, "ce": 0.4}]
    }
    assert classifier_learning(refitted) == {"ce_last": 0.4, "ce_below_0.9_chance_at_epoch": 2}
    refitted.save(tmp_path / "model.pt")
    row = run_variant("demo", "three kinds", three, Detector.load(tmp_path / "model.pt"), "m", tmp_path, [])
    expected = evaluate(
        Detector.load(tmp_path / "model.pt"),
        build_dataset(apply_overrides(detector.cfg, three).data, "val", 0),
        progress=False,
    )
    assert set(row["kinds"]) == {"pitting", "scratch", "stain"}
    for kind, numbers in row["kinds"].items():
        assert numbers["image_auroc"] == round(100 * expected["subsets"][f"kind {kind}"]["metrics"]["image_auroc"], 2)
    text = markdown(
        {
            "config": "surface",
            "commit": "c",
            "date": "d",
            "machine": {"platform": "p", "torch_threads": 2, "torch": "t"},
            "command": "x",
            "refit": "m",
            "rows": [row],
        }
    )
    assert "# The `surface` preset, compared on the `val` split" in text and "| three kinds | " in text
    assert "Networks: `m`, scorers fitted again per row." in text and row["seed"] == detector.cfg.seed
    trained = {**row, "variant": "seed one", "seed": 1}
    record = {"config": "surface", "commit": "c", "date": "d", "refit": None, "command": "x"}
    record["machine"] = {"platform": "p", "torch_threads": 2, "torch": "t"}
    assert "Networks: one per row, seed 1." in markdown({**record, "rows": [trained]})
    both = markdown({**record, "rows": [{**row, "seed": 0}, trained]})
    assert "Networks: one per row, each with its seed: three kinds: seed 0; seed one: seed 1." in both
