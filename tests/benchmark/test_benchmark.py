"""Benchmark suites: the paper's numbers, the variants' configs, run reuse and resume, the tables.

End-to-end runs use tiny generated data (8 training images of 64 px, one epoch): what is tested
is the bookkeeping, not the numbers.
"""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pitscope.benchmark as benchmark
from pitscope.benchmark import (
    MVTEC_OBJECTS,
    MVTEC_TEXTURES,
    PAPER,
    RESULT_FILE,
    SUITES,
    VARIANTS,
    BenchmarkOptions,
    format_markdown,
    paper_mvtec,
    run_suite,
    summarise,
    variant_config,
)
from pitscope.cli import main
from pitscope.config import load_config
from pitscope.evaluation import PAPER_BSDATA

TINY = [
    "data.format=synthetic",
    "data.synthetic.n_train=8",
    "data.synthetic.n_test_normal=2",
    "data.synthetic.n_test_defect=2",
    "train.epochs=1",
    "train.batch_size=4",
    "train.device=cpu",
    "score.pixel_channels=8",
    "score.batch_size=8",
]


def tiny_options(tmp_path, suite, **kwargs) -> BenchmarkOptions:
    values = dict(
        suite=suite,
        seeds=[0],
        preset=None,
        image_size=64,
        overrides=list(TINY),
        output=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
        progress=False,
        command="pitscope benchmark (test)",
    )
    return BenchmarkOptions(**{**values, **kwargs})


# -- the paper's numbers ------------------------------------------------------------------------
def test_the_full_model_has_one_number_in_every_table():
    full = PAPER["table3"]["ours"]
    assert full == (PAPER_BSDATA["image_auroc"], PAPER_BSDATA["pixel_auroc"])
    assert PAPER["table7"]["ours"] == PAPER["table8"]["ours"] == PAPER["table9"]["ours"] == full
    assert PAPER["table6"]["hog_only"] == PAPER["table7"]["hog_only"]


@pytest.mark.parametrize(
    ("variant", "column", "objects", "textures", "everything"),
    [
        ("ours", 0, 95.00, 98.83, 96.28),  # table 4's averages
        ("ours", 1, 97.38, 97.07, 97.28),  # table 5's
        ("cutpaste", 0, 94.36, 97.00, 95.24),
        ("sspcab", 0, 95.80, 96.76, 96.12),
        ("padim", 1, 97.28, 95.54, 96.70),
    ],
)
def test_mvtec_numbers_average_to_the_papers_means(variant, column, objects, textures, everything):
    def mean(categories):
        return np.mean([paper_mvtec(variant, c)[column] for c in categories])

    assert mean(MVTEC_OBJECTS) == pytest.approx(objects, abs=0.011)
    assert mean(MVTEC_TEXTURES) == pytest.approx(textures, abs=0.011)
    assert mean(MVTEC_OBJECTS + MVTEC_TEXTURES) == pytest.approx(everything, abs=0.011)
    assert paper_mvtec(variant, "not_a_category") == (None, None)


# -- variants and their configs -----------------------------------------------------------------
def test_every_suite_names_known_variants_and_every_paper_row_is_in_its_suite():
    for suite, names in SUITES.items():
        assert set(names) <= set(VARIANTS), suite
    for table, rows in PAPER.items():
        assert set(rows) <= set(SUITES[table]), table


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_is_a_valid_config_of_the_cpu_preset(name, tmp_path):
    cfg = variant_config(BenchmarkOptions(suite="table3", runs_dir=str(tmp_path)), name, seed=1)
    assert cfg.seed == 1 and cfg.data.format == "bsdata"
    assert cfg.output_dir.startswith(str(tmp_path / f"{name}_seed1_"))
    assert cfg.data.split_file == str(tmp_path / "bsdata_split0_631.json")  # one split for every run


def test_baselines_are_the_configs_they_claim():
    options = BenchmarkOptions(suite="table3")
    cutpaste = variant_config(options, "cutpaste", 0)
    assert (cutpaste.model.target, cutpaste.model.head, cutpaste.augment.kinds) == (
        "none",
        "multiclass",
        ["normal", "scar"],
    )
    assert cutpaste.score.pixel_method == "patch" and not cutpaste.model.sspcab
    sspcab = variant_config(options, "sspcab", 0)
    assert sspcab.model.sspcab and sspcab.model.target == "none"
    assert variant_config(options, "mask_dropout", 0).model.mask_type == "dropout"
    assert variant_config(options, "hog_only", 0).model.classify is False


def test_run_directories_are_shared_by_equal_configs_only():
    a = variant_config(BenchmarkOptions(suite="table3"), "ours", 0)
    assert variant_config(BenchmarkOptions(suite="table9"), "ours", 0).output_dir == a.output_dir
    assert variant_config(BenchmarkOptions(suite="table3"), "ours", 1).output_dir != a.output_dir
    assert variant_config(BenchmarkOptions(suite="table3", budget=5), "ours", 0).output_dir != a.output_dir
    assert variant_config(BenchmarkOptions(suite="table3", runs_dir="elsewhere"), "ours", 0).output_dir.endswith(
        a.output_dir.rsplit("/", 1)[1]
    )


def test_only_patchcore_runs_depend_on_the_coreset_ratio():
    default, small = BenchmarkOptions(suite="table3"), BenchmarkOptions(suite="table3", coreset_ratio=0.01)
    assert variant_config(default, "patchcore", 0).output_dir != variant_config(small, "patchcore", 0).output_dir
    assert variant_config(default, "padim", 0).output_dir == variant_config(small, "padim", 0).output_dir


def test_budget_and_image_size_apply_to_every_variant():
    options = BenchmarkOptions(suite="table3", budget=12.5, image_size=128)
    for name in SUITES["table3"]:
        cfg = variant_config(options, name, 0)
        assert cfg.train.budget_minutes == 12.5 and cfg.train.epochs == 800
        assert cfg.data.image_size == 128
        assert (cfg.score.patch_size, cfg.score.patch_stride) == (32, 8)  # a quarter of the side, every 16th


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid: table3, table6"):
        run_suite(tiny_options(tmp_path, "table10"))
    with pytest.raises(ValueError, match="valid: ours, cutpaste"):
        run_suite(tiny_options(tmp_path, "table3", variants=["cutpaste4"]))
    with pytest.raises(ValueError, match="valid: ours"):
        variant_config(BenchmarkOptions(suite="table3"), "theirs", 0)


# -- running a suite ----------------------------------------------------------------------------
def test_suite_runs_tabulates_and_reuses_finished_runs(tmp_path, monkeypatch):
    options = tiny_options(tmp_path, "table3", variants=["ours", "cutpaste", "sspcab"])
    record = run_suite(options)

    rows = {row["variant"]: row for row in record["rows"]}
    assert list(rows) == ["ours", "cutpaste", "sspcab", "padim", "patchcore"]
    for name in ("ours", "cutpaste", "sspcab"):
        (run,) = rows[name]["runs"]
        assert set(run["metrics"]) >= {"image_auroc", "pixel_auroc", "aupro"}
        assert 0 <= run["metrics"]["image_auroc"] <= 100
        assert run["training"]["epochs"] == 1 and run["minutes"]["wall"] > 0
        assert rows[name]["summary"]["image_auroc"]["mean"] == run["metrics"]["image_auroc"]
        assert rows[name]["summary"]["image_auroc"]["std"] is None  # one seed
    assert rows["cutpaste"]["paper"] == {"image_auroc": 95.63, "pixel_auroc": 93.89}
    assert rows["padim"]["runs"] == [] and rows["padim"]["summary"] is None  # not asked for

    saved = json.loads((tmp_path / "results" / "table3.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(record["rows"]))
    assert saved["commit"] and saved["machine"]["cpu_count"] >= 1 and saved["command"] == options.command
    table = (tmp_path / "results" / "table3.md").read_text()
    assert "| CutPaste 3-way (normal / cut-paste / scar) (`cutpaste`) |" in table and "| 95.63 |" in table
    assert "not run" in table

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(benchmark.runs, "run_variant", refuse)  # where run_suite looks it up
    again = run_suite(tiny_options(tmp_path, "table3", variants=["ours"]))
    assert again["rows"][0]["runs"] == rows["ours"]["runs"]
    collected = run_suite(tiny_options(tmp_path, "table3", collect=True))
    assert [r["variant"] for r in collected["rows"]] == ["ours", "cutpaste", "sspcab", "padim", "patchcore"]


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    from pitscope.data import build_dataset
    from pitscope.training import train

    options = tiny_options(tmp_path, "table9", variants=["mask_none"])
    cfg = variant_config(options, "mask_none", 0)
    train(cfg, build_dataset(cfg.data, "train", cfg.seed), progress=False, echo=lambda line: None)  # then "killed"
    (run,) = run_suite(options)["rows"][0]["runs"]
    assert run["training"]["resumed"] and run["training"]["epochs"] == 1
    assert (tmp_path / "runs" / run["run_dir"].rsplit("/", 1)[1] / RESULT_FILE).is_file()


def test_peers_without_anomalib_are_skipped_with_the_install_hint(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "anomalib", None)  # import anomalib raises ImportError
    record = run_suite(tiny_options(tmp_path, "table3", variants=["padim"]))
    assert "pip install 'pitscope[bench]'" in record["skipped"]["padim"]
    assert "`padim` skipped" in format_markdown(record)


def write_mvtec_tree(root, categories=("bottle", "carpet")):
    """A tiny MVTec-style tree: 6 training images, 2 good and 2 defective test images with masks."""
    rng = np.random.default_rng(0)

    def image(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)

    for category in categories:
        for i in range(6):
            image(root / category / "train" / "good" / f"{i:03d}.png")
        for i in range(2):
            image(root / category / "test" / "good" / f"{i:03d}.png")
            image(root / category / "test" / "crack" / f"{i:03d}.png")
            mask = np.zeros((40, 40), np.uint8)
            mask[10 + 5 * i : 20 + 5 * i, 10:20] = 255
            (root / category / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / category / "ground_truth" / "crack" / f"{i:03d}_mask.png")


def test_mvtec_suite_lays_out_tables_4_and_5(tmp_path):
    write_mvtec_tree(tmp_path / "mvtec")
    options = tiny_options(
        tmp_path,
        "mvtec",
        data=str(tmp_path / "mvtec"),
        image_size=32,
        overrides=["train.epochs=1", "train.batch_size=4", "train.device=cpu", "score.pixel_channels=8"],
    )
    record = run_suite(options)
    assert [(r["variant"], r["category"]) for r in record["rows"]] == [("ours", "bottle"), ("ours", "carpet")]
    assert record["rows"][0]["paper"] == {"image_auroc": 100.00, "pixel_auroc": 96.64}
    table = (tmp_path / "results" / "mvtec.md").read_text()
    lines = table.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(f"| {key}"))
        for key in ("bottle", "**mean of objects**", "carpet", "**mean of textures**", "**mean of all**")
    ]
    assert order == sorted(order)
    assert "| **mean of all** |" in table and "| 98.59 |" in table  # the paper's image mean of bottle and carpet
    with pytest.raises(ValueError, match="found: bottle, carpet"):
        run_suite(tiny_options(tmp_path, "mvtec", data=str(tmp_path / "mvtec"), categories=["wood"]))


def test_summary_is_mean_and_sample_std_over_seeds():
    runs = [
        {
            "seed": s,
            "metrics": {"image_auroc": v, "pixel_auroc": None, "aupro": 50.0},
            "training": {"epochs": 10, "minutes": 45.0},
            "minutes": {"wall": 55.0},
        }
        for s, v in ((0, 96.0), (1, 98.0))
    ]
    summary = summarise(runs)
    assert summary["image_auroc"] == {"mean": 97.0, "std": round(float(np.std([96.0, 98.0], ddof=1)), 2)}
    assert summary["pixel_auroc"] == {"mean": None, "std": None}
    assert summary["seeds"] == [0, 1] and summary["epochs"] == 10 and summary["wall_minutes"] == 55.0


def test_cli_runs_a_suite(tmp_path, capsys):
    code = main(
        [
            "benchmark",
            "--suite",
            "table6",
            "--seeds",
            "0",
            "--preset",
            "demo",
            "--image-size",
            "64",
            "--variants",
            "rgb_only",
            "--output",
            str(tmp_path / "out"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--quiet",
            *[x for o in TINY for x in ("--set", o)],
        ]
    )
    assert code == 0
    assert "| RGB target only, no classifier (`rgb_only`) |" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "table6.json").read_text())
    assert saved["preset"] == "demo" and saved["image_size"] == 64
    assert load_config("demo").model.target == "none"  # the variant, not the preset, set the RGB target
    assert saved["rows"][1]["runs"][0]["training"]["epochs"] == 1


def test_bsdata_cpu_interval_from_metrics_or_scores_csv(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bsdata_cpu import image_interval

    from pitscope.metrics import auroc_interval

    labels, scores = np.array([0, 0, 0, 1, 1, 1, 1]), np.array([0.1, 0.5, 0.3, 0.4, 0.9, 0.8, 0.7])
    assert image_interval({}, tmp_path) is None  # neither the interval nor scores.csv
    lines = ["path,label,score,is_defective"] + [f"im{i}.png,{y},{s},0" for i, (y, s) in enumerate(zip(labels, scores))]
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    expected = auroc_interval(labels, scores)
    from_csv = image_interval({}, tmp_path)
    assert from_csv == {k: (v if k == "level" else round(100 * v, 2)) for k, v in expected.items()}
    stored = {"auroc": 0.5, "se": 0.1, "low": 0.3, "high": 0.7, "level": 0.95}
    assert image_interval({"image_auroc_interval": stored}, tmp_path) == {
        "auroc": 50.0,
        "se": 10.0,
        "low": 30.0,
        "high": 70.0,
        "level": 0.95,
    }


def _git(repo: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_commit_marks_changed_code_and_benchmark_scripts_dirty(tmp_path, monkeypatch):
    monkeypatch.delenv("PITSCOPE_COMMIT", raising=False)
    package, scripts = tmp_path / "src" / "pitscope", tmp_path / "benchmarks"
    package.mkdir(parents=True)
    scripts.mkdir()
    (package / "a.py").write_text("a = 1\n")
    (scripts / "b.py").write_text("b = 1\n")
    (tmp_path / "README.md").write_text("read me\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "first")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    assert benchmark.commit(package) == head
    (tmp_path / "README.md").write_text("read me again\n")  # prose: not what a result depends on
    assert benchmark.commit(package) == head
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert benchmark.commit(package) == head
    (scripts / "results").mkdir()
    (scripts / "results" / "r.json").write_text("{}\n")  # a benchmark's own output
    assert benchmark.commit(package) == head
    (scripts / "c.py").write_text("c = 1\n")  # a new script, not committed yet
    assert benchmark.commit(package) == head + "+dirty"
    (scripts / "c.py").unlink()
    (scripts / "b.py").write_text("b = 2\n")
    assert benchmark.commit(package) == head + "+dirty"
    _git(tmp_path, "checkout", "--", "benchmarks/b.py")
    (package / "a.py").write_text("a = 2\n")
    assert benchmark.commit(package) == head + "+dirty"


def test_commit_outside_a_checkout_is_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv("PITSCOPE_COMMIT", raising=False)
    assert benchmark.commit(tmp_path) == "unknown"


def test_commit_of_a_copied_tree_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PITSCOPE_COMMIT", "abc1234")
    assert benchmark.commit(tmp_path) == "abc1234 (copied tree)"
    package = tmp_path / "repo" / "src"
    package.mkdir(parents=True)
    (package / "a.py").write_text("a = 1\n")
    _git(tmp_path / "repo", "init", "-q")
    _git(tmp_path / "repo", "add", "-A")
    _git(tmp_path / "repo", "commit", "-qm", "first")
    assert benchmark.commit(package) == "abc1234 (copied tree)"  # a copy's .git may hold another state
    monkeypatch.delenv("PITSCOPE_COMMIT")
    assert benchmark.commit(package) == _git(tmp_path / "repo", "rev-parse", "--short", "HEAD")


def test_models_main_passes_score_settings_and_refuses_others(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bsdata_cpu

    model = tmp_path / "model.pt"
    model.write_bytes(b"")
    monkeypatch.setattr(bsdata_cpu, "RESULTS", tmp_path / "results")
    seen = []

    def score(path, overrides):
        seen.append((path, overrides))
        return {"model": str(path)}

    def write_markdown(record, path):
        path.write_text(f"{len(record['models'])} model(s): {record['invocation']}\n")

    argv = [
        "bench.py",
        str(model),
        "--set",
        "score.image_method=map_max",
        "--set",
        "score.shrinkage=ridge",
        "--name",
        "x",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    assert bsdata_cpu.models_main("doc", "bench", score, write_markdown) == 0
    assert seen == [(model, ["score.image_method=map_max", "score.shrinkage=ridge"])]
    record = json.loads((tmp_path / "results" / "x.json").read_text())
    assert record["benchmark"] == "bench" and record["models"] == [{"model": str(model)}]
    assert "--set score.image_method=map_max" in (tmp_path / "results" / "x.md").read_text()
    monkeypatch.setattr(sys, "argv", ["bench.py", str(model), "--set", "train.epochs=3"])
    with pytest.raises(SystemExit):
        bsdata_cpu.models_main("doc", "bench", score, write_markdown)
    assert "scoring settings only" in capsys.readouterr().err
    assert len(seen) == 1


def test_task_ablations_score_every_row_by_the_pooled_backbone_stages(tmp_path):
    # rows without the classifier have no projector: in tables 6 and 7 every row scores alike, by
    # the preset's pooled stages, or by layer4 when the preset reads the projection
    for suite in ("table6", "table7"):
        for name in SUITES[suite]:
            cfg = variant_config(BenchmarkOptions(suite=suite, runs_dir=str(tmp_path)), name, seed=0)
            assert cfg.score.image_features == "layer1+layer4", (suite, name)
            options = BenchmarkOptions(suite=suite, runs_dir=str(tmp_path), preset=None)
            assert variant_config(options, name, seed=0).score.image_features == "layer4", (suite, name)
    ours = variant_config(BenchmarkOptions(suite="table3", runs_dir=str(tmp_path)), "ours", seed=0)
    assert ours.score.image_features == "layer1+layer4"  # the cpu preset's own setting
    # the user's image score holds for the rows without the classifier too, where it needs no projector
    mine = BenchmarkOptions(
        suite="table3", runs_dir=str(tmp_path), preset=None, overrides=("score.image_features=layer1+layer4",)
    )
    assert variant_config(mine, "hog_only", seed=0).score.image_features == "layer1+layer4"
    user = BenchmarkOptions(suite="table7", runs_dir=str(tmp_path), overrides=("score.image_features=projection",))
    assert variant_config(user, "ours", seed=0).score.image_features == "projection"  # the user's word last


def test_a_suite_image_size_keeps_the_presets_ratio_and_mvtec_stays_square():
    from pitscope.benchmark.runs import BenchmarkOptions, common_overrides
    from pitscope.config import load_config
    from pitscope.data import build_dataset

    # the width follows the photos when they are read: the synthetic photos' 500 x 200, like BSData's
    bsdata = load_config("cpu", common_overrides(BenchmarkOptions(suite="table3", image_size=128)))
    assert bsdata.data.keep_aspect and bsdata.data.image_width is None and bsdata.train.crop_size == 128
    bsdata.data.format = "synthetic"
    build_dataset(bsdata.data, "train", 0)
    assert bsdata.data.shape == (128, 320)
    mvtec = load_config("cpu", common_overrides(BenchmarkOptions(suite="mvtec")))
    assert mvtec.data.shape == (256, 256) and mvtec.train.crop_size is None and not mvtec.data.keep_aspect


def test_every_run_of_a_suite_gets_the_photos_shape_though_the_data_is_cached():
    from pitscope.benchmark.runs import BenchmarkOptions, _Datasets, variant_config

    options = BenchmarkOptions(
        suite="table3",
        preset="cpu",
        overrides=[
            "data.format=synthetic",
            "data.image_size=64",
            "train.crop_size=64",
            "data.synthetic.n_train=2",
            "data.synthetic.n_test_normal=1",
            "data.synthetic.n_test_defect=1",
        ],
    )
    datasets = _Datasets(progress=False)
    configs = [variant_config(options, name, seed=0) for name in ("ours", "hog_only")]  # one data config
    for cfg in configs:
        train_set, _ = datasets.get(cfg)
        assert cfg.data.shape == (64, 160) and train_set[0].image.shape == (64, 160, 3)


def test_bsdata_image_threshold_rates_at_each_quantile_and_the_lowest_within_the_fpr(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bsdata_image_threshold import at_thresholds, chosen

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([1.0, 2.0, 3.0, 4.0, 2.5, 3.5, 4.5, 5.5])
    rows = at_thresholds(scores, labels, {"0.5": 1.5, "0.9": 3.2, "0.99": 5.0})
    assert [(r["recall"], r["false_positive_rate"]) for r in rows] == [(1.0, 0.75), (0.75, 0.25), (0.25, 0.0)]
    assert rows[1]["precision"] == 0.75 and rows[1]["f1"] == 0.75
    assert chosen(rows, 0.25)["quantile"] == 0.9
    assert chosen(rows, 0.0)["quantile"] == 0.99
    assert chosen(rows[:1], 0.1) is None


def test_bsdata_wear_sums_its_measures_by_position_role(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bsdata_wear import by_role

    def sequence(name, rho, first_true, false_alerts, clean):
        alert = {"false_alerts": false_alerts, "clean_images": clean}
        return {"sequence": name, "spearman": rho, "first_true_days": first_true, "alert": alert}

    sequences = [
        sequence("a", 0.5, 3.0, 1, 10),
        sequence("b", None, None, 4, 20),
        sequence("c", 0.9, 1.0, 0, 5),
        sequence("x", 0.1, 2.0, 9, 9),  # in no role: left out
    ]
    rows = by_role(sequences, {"test": ["a", "b"], "validation": ["c"], "label": []})
    assert [r["role"] for r in rows] == ["test", "validation", "label"]
    test, validation, label = rows
    assert (test["sequences"], test["with_pitting"], test["spearman_n"]) == (2, 1, 1)
    assert test["spearman_mean"] == 0.5 and test["false_alerts"] == 5 and test["false_alert_rate"] == 5 / 30
    assert validation["spearman_mean"] == 0.9 and validation["false_alert_rate"] == 0.0
    assert label["sequences"] == 0 and label["spearman_mean"] is None and label["false_alert_rate"] is None


def test_bsdata_wear_rule_replays_a_rule_and_chooses_on_validation(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bsdata_wear_rule import choose, describe, replay

    from pitscope.growth import AlertRule

    days = [0.0, 1.0, 2.0, 3.0, 4.0]
    curves = {
        "early": {
            "days": days,
            "predicted_fraction": [0.0, 0.03, 0.03, 0.06, 0.08],
            "true_fraction": [0, 0, 0, 0.01, 0.02],
        },
        "clean": {"days": days, "predicted_fraction": [0.0, 0.01, 0.0, 0.01, 0.0], "true_fraction": [0] * 5},
    }
    m = replay(curves, ["early", "clean"], AlertRule(area_fraction_above=0.02, growth_per_day_above=None))
    assert (m["with_pitting"], m["alerted"], m["median_lead_days"]) == (1, 1, 2.0)  # alerts from day 1, pits on day 3
    assert (m["false_alerts"], m["clean_images"]) == (2, 8)  # days 1 and 2 of "early"; "clean" stays under 2%
    late = replay(curves, ["early"], AlertRule(area_fraction_above=0.07, growth_per_day_above=None))
    assert late["latest_days"] == 1.0  # the first alert on day 4, a day after the first pits

    assert m["leads"] == [2.0] and late["leads"] == [-1.0]
    twice = replay(curves, ["early", "clean"], AlertRule(0.02, None, confirm_images=2))
    assert (twice["leads"], twice["false_alerts"]) == ([1.0], 1)  # from day 2: the second image above 2%
    assert (
        describe(0.02, None, 2) == "area > 2%, 2 images in a row" and describe(None, 0.001) == "growth > 0.1 points/day"
    )

    def row(false_alerts, leads, with_pitting=1):
        v = {
            "alerted": len(leads),
            "with_pitting": with_pitting,
            "latest_days": -min(leads) if leads else None,
            "median_lead_days": float(np.median(leads)) if leads else None,
            "leads": leads,
            "false_alerts": false_alerts,
        }
        return {"validation": v}

    rows = [row(5, [2.0]), row(1, [-3.0]), row(1, [0.5]), row(1, [-1.0]), row(0, [])]
    assert choose(rows, 2.0) is rows[2]  # fewest false alerts within 2 days, then the earliest
    assert choose(rows, 0.0) is rows[2]  # alerted before the pits: in time at 0 days too
    assert choose([rows[0], rows[3]], 2.0) is rows[3]  # a day late is within 2 days
    assert choose([rows[0], rows[3]], 0.0) is rows[0]  # but not within 0
    assert choose(rows[1:2], 2.0) is None  # no alert in time on any sequence
    # no rule alerts in time on both pitting sequences: the most alerted in time, then the fewest false alerts
    partial = [row(4, [1.0], 2), row(2, [0.5], 2), row(0, [-5.0, -6.0], 2), row(3, [1.0, -4.0], 2)]
    assert choose(partial, 2.0) is partial[1]


def test_bsdata_wear_rule_chooses_the_median_window_on_validation_spearman(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bsdata_wear_rule import choose_smoothing, describe, replay

    from pitscope.growth import AlertRule
    from pitscope.wear import spearman, trailing_median

    days = list(range(9))
    truth = [0, 0, 0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    noisy = [0.0, 0.05, 0.0, 0.01, 0.0, 0.03, 0.04, 0.0, 0.06]  # stray highs and lows
    curves = {
        "a": {"days": days, "predicted_fraction": noisy, "true_fraction": truth},
        "flat": {"days": days, "predicted_fraction": [0.0] * 9, "true_fraction": [0.0] * 9},  # no Spearman
    }
    means = {k: spearman(trailing_median(noisy, k), truth) for k in (1, 3, 5)}
    assert means[3] > means[1]  # the median helps this curve
    best = max(means, key=lambda k: (means[k], -k))
    k, rows = choose_smoothing(curves, ["a", "flat"], [5, 1, 3])
    assert k == best and [r["smooth"] for r in rows] == [1, 3, 5] and all(r["n"] == 1 for r in rows)
    assert [r["spearman_mean"] for r in rows] == pytest.approx([means[1], means[3], means[5]])
    assert choose_smoothing({"flat": curves["flat"]}, ["flat"], [3, 1]) == (
        1,
        [
            {"smooth": 1, "spearman_mean": None, "n": 0},
            {"smooth": 3, "spearman_mean": None, "n": 0},
        ],
    )
    # a tie keeps the smaller window: the median of a rising curve rises with it, same ranks
    rising = {"days": days, "predicted_fraction": [0.01 * (d + 1) for d in days], "true_fraction": days}
    k, rows = choose_smoothing({"r": rising}, ["r"], [3, 1])
    assert k == 1 and [r["spearman_mean"] for r in rows] == pytest.approx([1.0, 1.0])
    # a K whose median flattens a poorly ranked curve to a constant is not excused from it: every K
    # is averaged over the sequences where each K has a Spearman
    spike = {"days": days, "predicted_fraction": [0.0, 0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0], "true_fraction": truth}
    assert spearman(trailing_median(spike["predicted_fraction"], 3), truth) is None
    k, rows = choose_smoothing({"a": curves["a"], "spike": spike}, ["a", "spike"], [1, 3])
    assert [r["n"] for r in rows] == [1, 1] and [r["spearman_mean"] for r in rows] == pytest.approx(
        [means[1], means[3]]
    )
    m = replay(curves, ["a"], AlertRule(0.02, None, smooth_images=3))
    assert m["spearman_mean"] == pytest.approx(means[3]) and m["spearman_predicted_mean"] == pytest.approx(means[1])
    assert describe(0.02, None, 1, 3) == "area > 2% of the median of the last 3 images"


def test_bsdata_localisation_merges_seeds_with_mean_sd_and_range(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bsdata_localisation import merged

    def record(model, aupro, ap, kgt_aupro, overrides=("score.neighbourhood=2",)):
        look = {
            "model": model,
            "overrides": list(overrides),
            "metrics": {"aupro": aupro, "pixel_ap": ap},
            "subsets": {"positions": {"aupro": aupro + 0.1, "pixel_ap": None}, "other_type": {"aupro": kgt_aupro}},
        }
        return {"command": f"look {model}", "commit": "abc", "date": "2026-12-02", "looks": [look]}

    out = merged([record("s0", 0.5, 0.1, 0.3), record("s1", 0.7, 0.3, 0.5)], "merge")
    assert [look["model"] for look in out["looks"]] == ["s0", "s1"]
    aupro = out["summary"]["all"]["aupro"]
    assert aupro["mean"] == pytest.approx(0.6) and aupro["sd"] == pytest.approx(0.1 * 2**0.5)
    assert (aupro["min"], aupro["max"], aupro["n"]) == (0.5, 0.7, 2)
    assert out["summary"]["positions"]["aupro"]["mean"] == pytest.approx(0.7)
    assert "pixel_ap" not in out["summary"]["positions"]  # a network without the number: no mean
    assert out["summary"]["other_type"]["aupro"]["mean"] == pytest.approx(0.4)
    with pytest.raises(SystemExit, match="different settings"):
        merged([record("s0", 0.5, 0.1, 0.3), record("s1", 0.7, 0.3, 0.5, overrides=())], "merge")
    with pytest.raises(SystemExit, match="twice"):
        merged([record("s0", 0.5, 0.1, 0.3), record("s0", 0.7, 0.3, 0.5)], "merge")
    with pytest.raises(SystemExit, match="at least two"):
        merged([record("s0", 0.5, 0.1, 0.3)], "merge")


def test_bsdata_localisation_lists_the_models_own_settings_for_each_regions_on(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bsdata_localisation import preset_rows, write_markdown

    def row(on, core, quantile, f1, peak_max=0.0):
        return {
            "smoothing_sigma": 2.0,
            "map_normalisation": "none",
            "pixel_rule": "image_max",
            "pixel_quantile": quantile,
            "min_region_fraction": 0.0003,
            "regions_on": on,
            "region_core": core,
            "peak_region_max": peak_max,
            **dict.fromkeys(("pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max"), 0.5),
            "pixel_f1": f1,
            **dict.fromkeys(("iou_median", "iou_q1", "iou_q3", "normal_area_median", "area_within_2x"), 0.1),
            "normal_area_p99": 0.005,
        }

    rows = [
        row("defective", 0.7, 0.99, 0.2),
        row("defective_peak", 0.7, 0.99, 0.3),
        row("defective_peak", 0.7, 0.99, 0.4, 0.005),
        row("defective", 0.7, 0.9, 0.9),
    ]
    own = {
        "smoothing_sigma": 2.0,
        "map_normalisation": "none",
        "pixel_threshold_from": "image_max",
        "pixel_threshold_quantile": 0.99,
        "min_region_fraction": 0.0003,
        "region_core": 0.7,
    }
    run = {"model": "m.pt", "rows": rows, "preset": own, "image_auroc": 0.9}
    run["counts"] = {"normal": 3, "defective": 2, "calibration": 4}
    assert preset_rows(run) == rows[:3]  # every peak bound; the 0.9 quantile is not the model's
    assert preset_rows({**run, "preset": {**own, "region_core": 0.5}}) == []
    assert preset_rows({k: v for k, v in run.items() if k != "preset"}) == []  # files written before it
    run["chosen"] = {**rows[3], "pixel_threshold_from": "image_max", "within_area_limit": True}
    path = tmp_path / "out.md"
    machine = {"platform": "Linux", "cpu_count": 2, "torch": "2"}
    write_markdown({"command": "c", "commit": "abc", "date": "d", "machine": machine, "runs": [run]}, path)
    text = path.read_text()
    section = text.split("At the model's own settings")[1].split("Chosen:")[0]
    assert "| defective | 0.7 | 0 | 20.00 |" in section and "| defective_peak | 0.7 | 0 | 30.00 |" in section
    assert "| defective_peak | 0.7 | 0.005 | 40.00 |" in section and "90.00" not in section
    assert "score.peak_region_max=0.0" in text.split("Chosen:")[1]
    cut_after = {**rows[1], "regions_from": "background", "map_background_window": 91, "pixel_f1": 0.8}
    assert preset_rows({**run, "rows": [*rows, cut_after]}) == rows[:3]  # the model cuts them from the map
    write_markdown(
        {"command": "c", "commit": "abc", "date": "d", "machine": machine, "runs": [{**run, "rows": [cut_after]}]}, path
    )
    assert "none, background 91 px removed, regions after the background step |" in path.read_text()


def test_paired_scores_compares_two_evaluations_on_the_photos_both_scored(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from paired_scores import paired

    def write(folder: Path, rows: list[tuple[str, int, float, int]]) -> Path:
        folder.mkdir()
        lines = ["path,label,score,is_defective"] + [f"/data/{p},{y},{s},{d}" for p, y, s, d in rows]
        (folder / "scores.csv").write_text("\n".join(lines) + "\n")
        return folder

    first = write(
        tmp_path / "a", [("n1", 0, 1.0, 0), ("n2", 0, 5.0, 1), ("d1", 1, 4.0, 1), ("d2", 1, 6.0, 1), ("r", 0, 9.0, 1)]
    )
    second = write(tmp_path / "b", [("n1", 0, 1.0, 0), ("n2", 0, 2.0, 0), ("d1", 1, 4.0, 1), ("d2", 1, 6.0, 1)])
    p = paired(first, second)
    assert (p["normal"], p["defective"], p["only_first"], p["only_second"]) == (2, 2, 1, 0)
    assert p["first_scores"]["image_auroc"] == pytest.approx(0.75)  # n2 (5.0) above d1 (4.0)
    assert p["second_scores"]["image_auroc"] == pytest.approx(1.0)
    assert p["first_scores"]["flagged_defect_free"] == 0.5 and p["second_scores"]["flagged_defect_free"] == 0.0
    bad = write(tmp_path / "c", [("n1", 1, 1.0, 0)])
    with pytest.raises(SystemExit, match="differently"):
        paired(first, bad)
    with pytest.raises(SystemExit, match="no scores.csv"):
        paired(first, tmp_path)


def test_bsdata_position_calibration_thresholds_per_photo_and_its_choice(monkeypatch):
    """Each photo is decided and its region drawn at its own position's thresholds; the choice
    takes the best regions' pixel F1 within the limits, else the fewest defect-free flagged."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from types import SimpleNamespace

    from bsdata_position_calibration import choose, measure

    maps = np.zeros((4, 8, 8), np.float32)
    maps[:, 2:4, 2:4] = [[[1.0]], [[3.0]], [[1.0]], [[3.0]]]  # a blob of each photo's own height
    masks = np.zeros((4, 8, 8), bool)
    masks[1, 2:4, 2:4] = masks[3, 2:4, 2:4] = True
    labels = np.array([0, 1, 0, 1])
    scores = np.array([1.0, 3.0, 1.0, 3.0])
    cfg = SimpleNamespace(min_region_fraction=0.0, regions_on="all", region_core=0.0, peak_region_max=0.0)
    # position A (photos 0, 1) at thresholds 0.5, position B (photos 2, 3) at 2.0
    got = measure(labels, masks, scores, maps, np.array([0.5, 0.5, 2.0, 2.0]), np.array([0.5, 0.5, 2.0, 2.0]), cfg)
    assert got["flagged_defect_free"] == 0.5 and got["flagged_pitting"] == 1.0  # photo 0 flagged, photo 2 not
    assert got["iou_median"] == 1.0 and got["normal_area_p99"] == pytest.approx(
        4 / 64 * (0.99 * 1 + 0.01 * 0), abs=1e-3
    )
    assert got["pixel_f1"] == pytest.approx(2 * 8 / (12 + 8))

    def row(name, flagged, p99, f1):
        return {"setting": name, "flagged_defect_free": flagged, "normal_area_p99": p99, "pixel_f1": f1}

    rows = [row("a", 0.3, 0.0, 0.9), row("b", 0.1, 0.005, 0.2), row("c", 0.05, 0.01, 0.3), row("d", 0.0, 0.02, 0.5)]
    assert choose(rows) == "c"  # within 10% flagged and 1% area: the best F1
    assert choose([rows[0], rows[3]]) == "d"  # none within both limits: the fewest flagged


@pytest.mark.parametrize("native", [False, True])
def test_precision_benchmark_times_each_step_in_its_precision(tmp_path, monkeypatch, native):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import precision

    import pitscope.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native)
    built = []  # (which step, the dtype or precision it was built with)
    bare, pitscope_step = precision.bare_train_step, precision.pitscope_train_step
    monkeypatch.setattr(
        precision,
        "bare_train_step",
        lambda n, shape, dtype, cl: built.append(("bare", dtype)) or bare(n, shape, dtype, cl),
    )
    monkeypatch.setattr(
        precision,
        "pitscope_train_step",
        lambda cfg, ds, end_to_end: (
            built.append(("pitscope", cfg.train.precision)) or pitscope_step(cfg, ds, end_to_end)
        ),
    )
    argv = ["precision.py", "--size", "32", "--batch", "2", "--repeats", "1", "--output", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert precision.main() == 0

    assert built == [("bare", None), ("pitscope", "fp32"), ("bare", torch.bfloat16), ("pitscope", "bf16")]
    name = "precision_native_bf16" if native else "precision_no_native_bf16"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json", f"{name}.md"]
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["native_bf16"] is native
    assert record["bf16_where_native_picks"] == ("bfloat16" if native else "float32")
    rates = record["train_images_per_s"]
    assert set(rates) == {"bare_resnet18_fp32", "bare_resnet18_bf16", "pitscope_step_fp32", "pitscope_step_bf16"}
    assert all(v > 0 for v in rates.values())
    ratio = record["bf16_over_fp32"]["pitscope_step"]
    assert ratio == pytest.approx(rates["pitscope_step_bf16"] / rates["pitscope_step_fp32"], rel=0.01)
    md = (tmp_path / f"{name}.md").read_text()
    assert f"trains in {'bfloat16' if native else 'float32'} here" in md
    assert "    python benchmarks/precision.py --size 32" in md


def test_speed_markdown_says_why_the_training_precision_is_what_it_is(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import speed

    settings = {"preset_precision": "bf16_where_native", "native_bf16": False}
    assert speed._precision_why(settings) == " (the preset's `bf16_where_native`: this CPU has no native bfloat16)"
    assert "has native bfloat16" in speed._precision_why({**settings, "native_bf16": True})
    assert speed._precision_why({**settings, "preset_precision": "bf16"}) == ""
    assert speed.command_lines("python benchmarks/speed.py --name x") == [
        "Command:",
        "",
        "    python benchmarks/speed.py --name x",
        "",
    ]


def test_run_keys_and_config_hashes_are_unchanged_by_a_peak_bound_of_zero():
    """Runs and test looks recorded before score.peak_region_max keep their keys and hashes; a bound
    set changes both."""
    import hashlib

    from pitscope.benchmark.provenance import config_hash
    from pitscope.benchmark.runs import config_key
    from pitscope.benchmark.suites import Variant
    from pitscope.config import apply_overrides, to_dict

    cfg = apply_overrides(load_config("cpu"), ["score.peak_region_max=0"])
    values = to_dict(cfg)
    values["score"].pop("peak_region_max")  # a config as written before the setting
    assert config_hash(cfg) == hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
    values.pop("output_dir")
    values["data"].pop("split_file")
    values["peer"] = None
    assert config_key(cfg, Variant("p")) == hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
    bounded = apply_overrides(cfg, ["score.peak_region_max=0.005"])
    assert config_hash(bounded) != config_hash(cfg) and config_key(bounded, Variant("p")) != config_key(
        cfg, Variant("p")
    )


def test_bsdata_localisation_draws_other_regions_without_fitting_again(monkeypatch, tmp_path, fit_tiny_detector):
    """Overrides of region settings alone keep the scorers and thresholds as saved; any other
    score.* override fits the scorers again."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bsdata_localisation

    from pitscope.inference import Detector

    saved, model, _ = fit_tiny_detector(tmp_path)
    monkeypatch.setattr(bsdata_localisation, "check_model", lambda detector, path: None)  # a synthetic model
    fits = []
    fit = Detector.fit
    monkeypatch.setattr(Detector, "fit", lambda self, *a, **k: fits.append(1) or fit(self, *a, **k))
    regions = ["score.peak_region_max=0.01", "score.regions_on=defective_peak", "score.region_core=0.5"]
    got = bsdata_localisation.refitted(model, regions, tmp_path / "out")
    assert fits == [] and (got.cfg.score.peak_region_max, got.cfg.score.region_core) == (0.01, 0.5)
    assert float(got.threshold) == float(saved.threshold) and float(got.pixel_threshold) == float(saved.pixel_threshold)
    assert Detector.load(tmp_path / "out" / "model.pt").cfg.score.regions_on == "defective_peak"
    narrowed = bsdata_localisation.refitted(model, ["score.map_sharpen_window=9"])  # the map shown only
    assert fits == [] and float(narrowed.pixel_threshold) == float(saved.pixel_threshold)
    bsdata_localisation.refitted(model, ["score.smoothing_sigma=1"])
    assert fits == [1]


def _steps_compared(monkeypatch, detector, sharpens, regions_from=("map",)):
    """(the benchmark module, `choose` on a tiny detector at sigma 2, raw maps, regions on every
    photo with no smallest size, for these --sharpen triples and regions' maps)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bsdata_localisation

    run = bsdata_localisation.choose(
        detector,
        [2.0],
        ["none"],
        progress=False,
        regions_on=["all"],
        min_fractions=[0.0],
        sharpens=sharpens,
        regions_from=regions_from,
    )
    return bsdata_localisation, run


def test_bsdata_localisation_narrowing_moves_the_pixel_metrics_and_not_the_regions(
    monkeypatch, tmp_path, fit_tiny_detector
):
    """With --sharpen the pixel metrics rank the map shown (narrowed, and with a background window
    less its background), and the regions, cut from the map before those steps as the detector
    cuts them, are those of the map as it is."""
    bsdata_localisation, run = _steps_compared(
        monkeypatch, fit_tiny_detector(tmp_path)[0], [(0, 1.0, 0), (9, 2.0, 0), (9, 2.0, 15)]
    )
    plain = [r for r in run["rows"] if r["map_sharpen_window"] == 0]
    sharp = [r for r in run["rows"] if r["map_sharpen_window"] == 9 and r["map_background_window"] == 0]
    opened = [r for r in run["rows"] if r["map_background_window"] == 15]
    assert len(plain) == len(sharp) == len(opened) == len(bsdata_localisation.THRESHOLDS)
    assert plain[0]["pixel_ap"] != pytest.approx(sharp[0]["pixel_ap"])
    assert opened[0]["pixel_ap"] != pytest.approx(sharp[0]["pixel_ap"])
    for a, b, c in zip(plain, sharp, opened):
        assert a["pixel_ap"] == plain[0]["pixel_ap"] and b["pixel_ap"] == sharp[0]["pixel_ap"]
        for key in ("pixel_f1", "iou_median", "normal_area_p99", "area_within_2x"):
            assert a[key] == pytest.approx(b[key], nan_ok=True) == c[key], key


def test_bsdata_localisation_cuts_regions_after_the_background_step_when_asked(
    monkeypatch, tmp_path, fit_tiny_detector
):
    """regions_from "background" cuts the regions, and takes their pixel threshold, from the maps
    after the background step: the rows of the map's pixel metrics stay, the regions' move; a
    triple without a background step gives no such rows."""
    bsdata_localisation, run = _steps_compared(
        monkeypatch, fit_tiny_detector(tmp_path)[0], [(0, 1.0, 0), (0, 1.0, 15)], ["map", "background"]
    )
    n = len(bsdata_localisation.THRESHOLDS)
    before = [r for r in run["rows"] if r["regions_from"] == "map" and r["map_background_window"] == 15]
    after = [r for r in run["rows"] if r["regions_from"] == "background"]
    assert len(run["rows"]) == 3 * n and len(before) == len(after) == n
    assert {r["map_background_window"] for r in after} == {15}
    assert all(a["pixel_ap"] == b["pixel_ap"] for a, b in zip(before, after))  # the map shown is the same
    keys = ("pixel_f1", "iou_median", "normal_area_median", "normal_area_p99", "area_within_2x")
    assert any(a[k] != b[k] for a, b in zip(before, after) for k in keys)  # the regions' own numbers move


def test_bsdata_localisation_reads_maps_before_the_background_step_of_a_model_that_cuts_after_it(
    monkeypatch, tmp_path, fit_tiny_detector
):
    """A model with score.regions_after_background gives the study its maps before the step (the
    study takes every step itself), and its own rows are those cut after the step."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bsdata_localisation

    from pitscope.config import apply_overrides
    from pitscope.data import build_dataset

    detector, _, cfg = fit_tiny_detector(tmp_path)
    test = build_dataset(cfg.data, "test", cfg.seed)
    after = copy.deepcopy(detector)
    after.cfg = apply_overrides(detector.cfg, ["score.map_background_window=15", "score.regions_after_background=true"])
    _, plain = bsdata_localisation.raw_maps(detector, test, range(len(test)))
    _, read = bsdata_localisation.raw_maps(after, test, range(len(test)))
    np.testing.assert_array_equal(read, plain)
    assert after.cfg.score.regions_after_background  # set back
    run = bsdata_localisation.choose(after, [2.0], ["none"], progress=False, regions_on=["all"], min_fractions=[0.0])
    assert {r["regions_from"] for r in run["rows"]} == {"background"}


def test_bsdata_localisation_compares_the_smallest_regions_it_is_given(monkeypatch, tmp_path, fit_tiny_detector):
    """`choose` scores one row per smallest-region value asked for; a larger smallest region
    never shows more of a defect-free photo."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bsdata_localisation

    detector, _, _ = fit_tiny_detector(tmp_path)
    run = bsdata_localisation.choose(
        detector, [2.0], ["none"], progress=False, regions_on=["all"], min_fractions=[0.0, 0.05, 0.999]
    )
    assert {r["min_region_fraction"] for r in run["rows"]} == {0.0, 0.05, 0.999}
    assert len(run["rows"]) == len(bsdata_localisation.THRESHOLDS) * 3
    for rule, q in bsdata_localisation.THRESHOLDS:
        at = {r["min_region_fraction"]: r for r in run["rows"] if (r["pixel_rule"], r["pixel_quantile"]) == (rule, q)}
        assert at[0.05]["normal_area_p99"] <= at[0.0]["normal_area_p99"]
        assert at[0.999]["normal_area_p99"] == 0.0  # no region covers 99.9% of a photo


def test_bsdata_localisation_maps_are_the_detectors_for_every_normalisation(monkeypatch, tmp_path, fit_tiny_detector):
    """The study's maps, from raw maps by `transform`, are the ones the detector gives with each
    score.map_normalisation (and the model's sigma and threshold)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bsdata_localisation import NORMALISATIONS, raw_maps, transform

    from pitscope.data import build_dataset

    detector, _, cfg = fit_tiny_detector(tmp_path)
    test = build_dataset(cfg.data, "test", cfg.seed)
    scores, raw = raw_maps(detector, test, range(len(test)))
    threshold = float(np.median(scores))  # photos on both sides of it
    detector.threshold.fill_(threshold)
    for normalisation, sharpen in [*((n, (0, 1.0)) for n in NORMALISATIONS), ("image_score_capped", (9, 2.0))]:
        detector.cfg.score.map_normalisation = normalisation
        detector.cfg.score.map_sharpen_window, detector.cfg.score.map_sharpen_power = sharpen
        _, maps = detector.score_dataset(test, progress=False)  # the maps the regions are cut from
        expected = transform(raw, scores, threshold, detector.cfg.score.smoothing_sigma, normalisation)
        np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max(), err_msg=normalisation)


def test_gpu_networks_pack_holds_what_a_validation_run_reads(tmp_path, monkeypatch, real_bsdata):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import gpu_networks

    from pitscope.data.bsdata import bsdata_split, hold_out_positions, position_files, read_positions, read_split

    out = tmp_path / "bsdata"
    counts = gpu_networks.pack(out, real_bsdata)
    split = hold_out_positions(bsdata_split(real_bsdata), real_bsdata, read_positions())
    stored = read_split(out / "split.json")
    for key in ("train", "val_normal", "val_defect", "test_normal", "test_defect"):
        assert stored[key] == split[key]
    read = set(split["train"]) | set(split["val_normal"]) | set(split["val_defect"])
    assert counts["photos"] == len(read)
    for name in read:
        assert (out / "data" / name).read_bytes() == (real_bsdata / "data" / name).read_bytes()
    assert position_files(out) == position_files(real_bsdata)  # positions read whole
    unread = {name for files in position_files(real_bsdata).values() for name in files} - read
    assert unread and all((out / "data" / name).stat().st_size == 0 for name in unread)
    assert counts["placeholders"] == len(unread)
    assert len(list((out / "data").iterdir())) == len(read) + len(unread)  # nothing else (no KGT* photo)
    assert sorted(p.stem for p in (out / "label").iterdir()) == sorted(Path(n).stem for n in split["val_defect"])
    label = json.loads((out / "label" / f"{Path(split['val_defect'][0]).stem}.json").read_text())
    assert "imageData" not in label and label["shapes"]
    with pytest.raises(SystemExit, match="exists"):
        gpu_networks.pack(out, real_bsdata)


def test_gpu_networks_run_trains_then_scores_each_network_and_packs_the_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import tarfile

    import gpu_networks

    monkeypatch.setattr(gpu_networks, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    seen = []

    def fake_run(command, log, clock, env):
        seen.append(command)
        log.write_text("$ " + " ".join(command) + "\n")
        if "train" in command:
            return 0, 0.01
        if command[command.index("--device") + 1] == "cuda":
            return 1, 0.01  # scoring fails on the GPU: the same network again on the CPU, the next ones there
        name = command[command.index("--name") + 1]
        for ext in (".json", ".md"):
            (tmp_path / "results" / f"{name}{ext}").write_text("{}\n")
        return 0, 0.01

    monkeypatch.setattr(gpu_networks, "_run", fake_run)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train_size999_seed9.log").write_text("an earlier run's\n")
    parser_args = [
        "run", "--root", str(tmp_path / "data"), "--sizes", "256", "384", "--seeds", "0", "--name", "t",
        "--out", str(tmp_path / "out"), "--out-logs", str(tmp_path / "logs"), "--deadline-s", "60",
        "--guess-s", "1", "--train-set", "train.epochs=1",
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["gpu_networks.py", *parser_args])
    assert gpu_networks.main() == 0
    trains = [c for c in seen if "train" in c]
    scores = [c for c in seen if "train" not in c]
    assert [c[c.index("--output-dir") + 1] for c in trains] == [
        "runs/gpu_networks/size256_seed0",
        "runs/gpu_networks/size384_seed0",
    ]
    for command, size in zip(trains, (256, 384)):
        assert f"data.image_size={size}" in command and "train.epochs=1" in command
    assert [(c[2], c[c.index("--device") + 1]) for c in scores] == [
        ("runs/gpu_networks/size256_seed0/model.pt", "cuda"),
        ("runs/gpu_networks/size256_seed0/model.pt", "cpu"),
        ("runs/gpu_networks/size384_seed0/model.pt", "cpu"),
    ]
    roots = [item for c in trains for item in c if item.startswith(("data.root=", "data.split_file="))]
    assert len(roots) == 4 and not any(item.split("=", 1)[1].startswith("/") for item in roots)  # no machine's path
    with tarfile.open(tmp_path / "out" / "results.tar") as tar:
        names = set(tar.getnames())
    assert {f"results/bsdata_localisation_validation_t_size{s}_seed0.json" for s in (256, 384)} <= names
    assert "logs/train_size384_seed0.log" in names and "logs/train_size999_seed9.log" not in names

    seen.clear()
    parser_args[parser_args.index("--deadline-s") + 1] = "0.5"
    parser_args[parser_args.index("--guess-s") + 1] = "10"
    monkeypatch.setattr("sys.argv", ["gpu_networks.py", *parser_args])
    assert gpu_networks.main() == 1 and seen == []  # too little time for a network: none starts
