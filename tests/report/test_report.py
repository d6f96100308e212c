"""The HTML report: produced from a tiny run, every section there, its numbers those of its JSON
and of `evaluate`, nothing that needs the network; the per-category page; the CLI."""

import argparse
import base64
import copy
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from pitscope.cli.report import add_parsers as add_report_parsers
from pitscope.config import load_config
from pitscope.data import build_dataset
from pitscope.evaluation import METRIC_NAMES, PAPER_BSDATA, evaluate
from pitscope.inference import Detector
from pitscope.report import (
    CURVE_POINTS,
    CategoryRun,
    build_category_report,
    build_report,
    category_means,
    pick_gallery,
    pixel_sample,
    read_train_log,
    report_from_evaluation,
    thin_curve,
)

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
SECTIONS = ("metrics", "curves", "histogram", "gallery", "training")
LOG = """epoch,step,loss,ce,mse,seg,lr,elapsed_s
1,1,1.10,0.69,0.41,,0.03,27.7
1,10,0.72,0.69,0.03,,0.03,186.8
2,20,0.71,0.68,0.02,,0.03,355.6
"""


def fit_detector(seed: int) -> tuple[Detector, object]:
    """A detector with a seeded, untrained network fitted on 8 synthetic images, and its test split."""
    cfg = load_config(None, [*TINY, f"seed={seed}"])
    torch.manual_seed(seed)
    detector = Detector(cfg, n_kinds=2).fit(build_dataset(cfg.data, "train", cfg.seed), progress=False)
    return detector, build_dataset(cfg.data, "test", cfg.seed)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder (model.pt + train_log.csv) and its report, built once (read-only)."""
    run_dir = tmp_path_factory.mktemp("run")
    detector, split = fit_detector(0)
    detector.save(run_dir / "model.pt")
    (run_dir / "train_log.csv").write_text(LOG)
    path = build_report(detector, split, run_dir / "report", run_dir=run_dir, progress=False, gallery_size=3)
    record = json.loads((run_dir / "report" / "report.json").read_text())
    return detector, split, path, path.read_text(), record


class Page(HTMLParser):
    """Collects what the tests read from a report: ids, images, links, table cells, tiles."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.img_src, self.hrefs, self.cells, self.tiles, self.tags = [], [], [], [], [], set()
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.img_src.append(attrs.get("src", ""))
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "td" and "data-key" in attrs:
            self._cell = [attrs["data-key"], attrs["data-value"], ""]
        if tag == "figure":
            self.tiles.append((attrs["data-path"], attrs["data-score"]))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(tuple(self._cell))
            self._cell = None


def json_value(record, key):
    """Where a headline table cell's number lives in report.json."""
    for part in ("metrics", "counts", "confusion", "at_threshold"):
        if key in record[part]:
            return record[part][key]
    if key in ("image_auroc_low", "image_auroc_high"):
        return record["image_auroc_interval"][key.removeprefix("image_auroc_")]
    if key.startswith("pixel_") and key.removeprefix("pixel_") in record["pixel_at_threshold"]:
        return record["pixel_at_threshold"][key.removeprefix("pixel_")]
    return record[key]


def shown(key, value):
    """The text a cell shows for a value: metrics and rates in %, thresholds to 4 digits, counts."""
    if value is None:
        return "n/a"
    if key in ("threshold", "pixel_threshold"):
        return f"{value:.4g}"
    if isinstance(value, int):
        return str(value)
    return f"{100 * value:.2f}"


def test_report_has_every_section_and_the_gallery_groups(run):
    _, _, path, text, record = run
    assert path.name == "report.html" and (path.parent / "report.json").is_file()
    page = Page(text)
    for section in SECTIONS:
        assert section in page.ids, section
    assert {"gallery-false-positives", "gallery-false-negatives", "gallery-correct"} <= set(page.ids)
    assert "categories" not in page.ids
    assert len(page.img_src) == 3 + len(page.tiles)  # curves, histogram, training + one per tile
    assert "From " in text and "train_log.csv" in text  # the training curves came from the log
    assert set(record["gallery"]) == {"false_positives", "false_negatives", "correct"}
    assert all(len(paths) <= 3 for paths in record["gallery"].values())
    assert record["paper"] is None and "paper (%)" not in text  # synthetic data: no paper column


def test_bsdata_runs_show_the_paper_beside_ours(run, tmp_path):
    detector, split, _, _, _ = run
    bsdata = copy.deepcopy(detector)
    bsdata.cfg.data.format = "bsdata"  # the synthetic split, reported as BSData would be
    text = build_report(bsdata, split, tmp_path, progress=False, gallery_size=0).read_text()
    record = json.loads((tmp_path / "report.json").read_text())
    assert record["paper"] == PAPER_BSDATA
    assert "<th>paper (%)</th>" in text
    for name in ("image_auroc", "pixel_auroc"):
        row = re.search(rf'<td data-key="{name}"[^>]*>[^<]*</td><td>([^<]*)</td>', text)
        assert row and row.group(1) == f"{PAPER_BSDATA[name]:.2f}"


def test_html_numbers_equal_the_json(run):
    _, _, _, text, record = run
    cells = Page(text).cells
    keys = {key for key, _, _ in cells}
    assert (
        set(METRIC_NAMES)
        | {
            "threshold",
            "pixel_threshold",
            "images",
            "normal",
            "defective",
            "true_positives",
            "false_positives",
            "image_auroc_low",
            "image_auroc_high",
        }
        <= keys
    )
    interval = record["image_auroc_interval"]
    assert interval["low"] <= record["metrics"]["image_auroc"] <= interval["high"]
    for key, value, shown_text in cells:
        expected = json_value(record, key)
        assert json.loads(value) == expected, key  # the exact value
        assert shown_text == shown(key, expected), key  # and what the reader sees
    scores = {item["path"]: item["score"] for item in record["images"]}
    tiles = Page(text).tiles
    assert [p for p, _ in tiles] == [p for group in record["gallery"].values() for p in group]
    for tile_path, tile_score in tiles:
        assert float(tile_score) == scores[tile_path]
        assert f"{scores[tile_path]:.4g}" in text


def test_json_numbers_equal_evaluate_on_the_same_data(run):
    detector, split, _, _, record = run
    result = evaluate(detector, split, progress=False)
    assert record["metrics"] == result["metrics"]
    assert record["image_auroc_interval"] == result["image_auroc_interval"]
    assert record["counts"] == result["counts"] == {"images": 8, "normal": 4, "defective": 4, "left_out_trained_on": 0}
    assert record["threshold"] == result["threshold"]
    assert record["at_threshold"] == result["at_threshold"]
    scores, _ = detector.score_dataset(split, progress=False)
    assert [item["score"] for item in record["images"]] == scores.tolist()
    assert [item["path"] for item in record["images"]] == split.paths
    assert sum(record["confusion"].values()) == 8


def test_report_needs_no_network(run):
    _, _, _, text, _ = run
    page = Page(text)
    assert page.img_src and all(
        src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for src in page.img_src
    )
    assert all(href.startswith("#") for href in page.hrefs)
    assert not {"script", "link", "iframe", "object", "embed"} & page.tags
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"url\(|@import|https?://", text, re.I)
    for src in page.img_src:  # every picture decodes
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()


def test_curves_are_thinned_and_pixel_curves_come_from_a_weighted_sample(run):
    _, split, _, _, record = run
    curves = record["curves"]
    assert {"image_roc", "image_pr", "pixel_roc", "pixel_pr", "pro"} <= set(curves)
    for curve in (curves["image_roc"], curves["image_pr"], curves["pixel_roc"], curves["pixel_pr"], curves["pro"]):
        lengths = {len(v) for v in curve.values() if isinstance(v, list)}
        assert len(lengths) == 1 and 2 <= lengths.pop() <= CURVE_POINTS
    masks = np.stack([s.mask for s in split])
    defect = int((masks > 0).sum())
    assert curves["pixel_sampling"] == {"defect": [defect, defect], "normal": [masks.size - defect] * 2}
    assert curves["pro"]["fpr"][0] == 0.0 and curves["pro"]["fpr"][-1] >= 0.3
    counts = record["histogram"]
    assert sum(counts["normal"]) == 4 and sum(counts["defective"]) == 4
    assert len(counts["edges"]) == len(counts["normal"]) + 1


def test_pixel_sample_is_seeded_and_weights_each_class_to_its_size():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 40, 40)) < 0.05  # ~240 defect pixels of 4800
    maps = rng.random((3, 40, 40)) + masks
    truth, values, weights, counts = pixel_sample(masks, maps, per_class=1000)
    n_defect = int(masks.sum())
    assert counts == {"defect": [n_defect, n_defect], "normal": [1000, masks.size - n_defect]}
    assert weights[truth].sum() == pytest.approx(n_defect)
    assert weights[~truth].sum() == pytest.approx(masks.size - n_defect)
    again = pixel_sample(masks, maps, per_class=1000)
    assert np.array_equal(values, again[1])
    exact = roc_auc_score(masks.ravel(), maps.ravel())
    assert roc_auc_score(truth, values, sample_weight=weights) == pytest.approx(exact, abs=0.02)


def test_thin_curve_keeps_both_ends_and_at_most_n_points():
    x = np.linspace(0, 1, 10_000) ** 3
    y = np.sqrt(np.linspace(0, 1, 10_000))
    tx, ty = thin_curve(x, y, n=50)
    assert len(tx) <= 50 and (tx[0], ty[0], tx[-1], ty[-1]) == (x[0], y[0], x[-1], y[-1])
    assert np.all(np.diff(tx) >= 0)
    short = thin_curve([0, 1], [0, 1], n=50)
    assert [list(v) for v in short] == [[0, 1], [0, 1]]


def test_pick_gallery_groups():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([1.0, 9.0, 7.0, 2.0, 8.0, 3.0, 4.0, 10.0])
    picks = pick_gallery(labels, scores, threshold=5.0, k=2)
    assert picks["false_positives"] == [1, 2]  # normal above 5, highest first
    assert picks["false_negatives"] == [5, 6]  # defective at or below 5, lowest first
    assert list(scores[picks["correct"]]) == sorted(scores[picks["correct"]], reverse=True)
    assert {labels[i] for i in picks["correct"]} == {0, 1}  # one true positive, one true negative
    empty = {"false_positives": [], "false_negatives": [], "correct": []}
    assert pick_gallery(labels, scores, threshold=5.0, k=0) == empty
    assert pick_gallery(labels, scores, 5.0, 3) == pick_gallery(labels, scores, 5.0, 3)


def test_read_train_log_keeps_the_last_row_of_each_step_and_drops_empty_columns(tmp_path):
    path = tmp_path / "train_log.csv"
    path.write_text(LOG + "2,20,0.5,0.49,0.01,,0.03,400\n")  # a resumed run logs step 20 again
    log = read_train_log(path)
    assert log["step"] == [1.0, 10.0, 20.0]
    assert log["loss"] == [1.10, 0.72, 0.5]
    assert "seg" not in log
    assert read_train_log(tmp_path / "absent.csv") is None


def test_without_a_run_folder_the_training_section_says_so(run, tmp_path):
    detector, split, _, _, _ = run
    text = build_report(detector, split, tmp_path, run_dir=None, progress=False, gallery_size=1).read_text()
    assert 'id="training"' in text and "No training log" in text


def test_two_categories_give_the_per_category_table_with_mean_rows(run, tmp_path):
    carpet, carpet_split, _, _, _ = run
    screw, screw_split = fit_detector(1)
    path = build_category_report(
        [CategoryRun("carpet", carpet, carpet_split), CategoryRun("screw", screw, screw_split)],
        tmp_path,
        progress=False,
        gallery_size=1,
    )
    text, record = path.read_text(), json.loads((tmp_path / "report.json").read_text())
    page = Page(text)
    assert "categories" in page.ids
    for name in ("carpet", "screw"):
        assert f"category-{name}" in page.ids
        for section in SECTIONS:
            assert f"{section}-{name}" in page.ids
    rows = re.findall(r'<tr class="[^"]*" data-category="([^"]+)"', text)
    assert rows == ["carpet", "mean (textures)", "screw", "mean (objects)", "mean (all)"]
    assert set(record["categories"]) == {"carpet", "screw"}
    both = [record["categories"][c]["metrics"] for c in ("carpet", "screw")]
    for metric in METRIC_NAMES:
        assert record["means"]["all"][metric] == pytest.approx(np.mean([m[metric] for m in both]), rel=1e-12)
        assert record["means"]["textures"][metric] == both[0][metric]
    table = text[text.index('id="categories"') : text.index("</table>", text.index('id="categories"'))]
    for row in Page(table).cells:
        if row[0] in METRIC_NAMES:
            assert shown(row[0], json.loads(row[1])) == row[2]
    assert record["categories"]["screw"]["metrics"] == evaluate(screw, screw_split, progress=False)["metrics"]


def test_category_means_split_textures_and_objects_only_when_both_are_there():
    one = {m: 0.5 for m in METRIC_NAMES}
    assert set(category_means({"bottle": one, "screw": one})) == {"all"}
    means = category_means({"wood": {**one, "aupro": None}, "bottle": {**one, "image_auroc": 1.0}})
    assert set(means) == {"textures", "objects", "all"}
    assert means["all"]["image_auroc"] == 0.75
    assert means["all"]["aupro"] == 0.5 and means["textures"]["aupro"] is None


def test_report_from_evaluation_writes_evaluate_files_and_the_report(run, tmp_path):
    detector, split, _, _, record = run
    result, path = report_from_evaluation(detector, split, tmp_path, run_dir=None, progress=False)
    assert path == tmp_path / "report" / "report.html" and path.is_file()
    written = {k: v for k, v in result.items() if k != "per_image"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(written))
    assert (tmp_path / "scores.csv").is_file()
    assert result["metrics"] == record["metrics"]


def test_cli_report_writes_beside_the_model_and_takes_several_models(run, tmp_path, capsys):
    detector, _, _, _, _ = run
    first, second = tmp_path / "first_run", tmp_path / "second_run"
    for folder in (first, second):
        folder.mkdir()
        detector.save(folder / "model.pt")
    parser = argparse.ArgumentParser()
    add_report_parsers(parser.add_subparsers(dest="command"))

    args = parser.parse_args(["report", str(first / "model.pt"), "--quiet", "--gallery-size", "1"])
    assert args.func(args) == 0
    assert (first / "report" / "report.html").is_file()  # default: beside the model
    assert "report written to" in capsys.readouterr().out

    args = parser.parse_args(
        [
            "report",
            str(first / "model.pt"),
            str(second / "model.pt"),
            "--quiet",
            "--gallery-size",
            "0",
            "--set",
            "data.synthetic.n_test_normal=3",
            "--out",
            str(tmp_path / "both"),
        ]
    )
    assert args.func(args) == 0
    record = json.loads((tmp_path / "both" / "report.json").read_text())
    assert set(record["categories"]) == {"first_run", "second_run"}
    assert record["categories"]["second_run"]["counts"]["normal"] == 3
    assert 'id="categories"' in (tmp_path / "both" / "report.html").read_text()


def test_training_section_names_the_budget_stop():
    from pitscope.report.sections import _training_section

    training = {"epochs": 19, "steps": 380, "minutes": 45.0, "images": 568, "stopped_by_budget": True}
    text = _training_section(None, None, training, "")
    assert "19 epochs, 380 steps, 45.0 minutes on 568 defect-free images (stopped by its time budget)." in text
    assert "stopped" not in _training_section(None, None, {**training, "stopped_by_budget": False}, "")
    in_float32 = _training_section(None, None, {**training, "precision": "float32"}, "")
    assert "568 defect-free images in float32 (stopped by its time budget)." in in_float32


def test_training_section_warns_when_the_classifier_ended_near_chance():
    from pitscope.report.sections import _training_section

    training = {"epochs": 30, "steps": 420, "minutes": 16.2, "images": 476}
    assert "near chance" not in _training_section(None, None, training, "")
    near = {**training, "classifier_near_chance": {"cross_entropy": 0.6903, "chance": 0.6931}}
    text = _training_section(None, None, near, "")
    assert '<p class="warning">' in text and "(cross-entropy 0.690 in the last epoch, 0.693 at chance)" in text
    assert "fallen back" not in text
    rolled = {
        **training,
        "rollbacks": [
            {"after_epoch": 14, "to_epoch": 12, "lr_scale": 0.5},
            {"after_epoch": 30, "to_epoch": 20, "lr_scale": 0.5, "at_end": True},
        ],
    }
    text = _training_section(None, None, rolled, "")
    assert "After epoch 14 the pseudo-defect classifier had fallen back to chance" in text
    assert "went back to epoch 12's weights and went on at 0.5 times the learning rate" in text
    assert "went back to epoch 20's weights and handed that epoch back as its result" in text


def test_gallery_tile_draws_the_predicted_region_it_is_given():
    from pitscope.report.figures import gallery_tile

    image = np.full((16, 20, 3), 100, dtype=np.uint8)
    mask = np.zeros((16, 20), dtype=np.uint8)
    mask[2:6, 2:6] = 1  # the marked defect, top left
    region = np.zeros((16, 20), dtype=bool)
    region[10:14, 14:18] = True  # the predicted region, elsewhere
    tile = gallery_tile(image, mask, np.zeros((16, 20)), 1.0, 0.0, 2.0, region=region)
    width, gap = 20, 4
    predicted = tile[:, 2 * (width + gap) : 2 * (width + gap) + width]  # the third panel
    red = (predicted[..., 0].astype(int) - predicted[..., 1]) > 20  # red fill over the grey input
    np.testing.assert_array_equal(red, region)
