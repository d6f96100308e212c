"""The few_labels suite: the seeded draw of labelled photos, their folder, the curve's table, and the
command's refusals."""

from pathlib import Path

import pytest

from pitscope.benchmark.few_labels import (
    draw_labelled,
    format_few_labels,
    label_position_photos,
    labelled_folder,
)
from pitscope.cli import main
from pitscope.data.bsdata import read_positions
from pitscope.data.labelled import load_labelled_defects

PHOTOS = {"a": ["a1", "a2", "a3"], "b": ["b1"], "c": ["c1", "c2"]}


def test_the_draw_takes_positions_in_turn_and_grows_with_k():
    five = draw_labelled(PHOTOS, 5, seed=3)
    assert [n[0] for n in five[:3]] == ["a", "b", "c"]  # one photo of each position in turn
    assert len(set(five)) == 5
    assert draw_labelled(PHOTOS, 2, seed=3) == five[:2]  # a smaller k: the first of a larger k's
    assert draw_labelled(PHOTOS, 5, seed=3) == five
    assert sorted(draw_labelled(PHOTOS, 6, seed=0)) == sorted(n for v in PHOTOS.values() for n in v)
    with pytest.raises(ValueError, match="only 6 pitting photos"):
        draw_labelled(PHOTOS, 7, seed=0)


def test_label_positions_hold_labelled_photos_and_the_folder_reads_back(real_bsdata, tmp_path):
    photos = label_position_photos(real_bsdata, read_positions())
    assert sorted(photos) == sorted(read_positions()["label"])
    assert all(len(files) >= 20 for files in photos.values())
    names = draw_labelled(photos, 3, seed=0)
    defects = load_labelled_defects(labelled_folder(real_bsdata, names, tmp_path / "marked"))
    assert sorted(d.path.name for d in defects) == sorted(names)
    assert all(d.mask.any() for d in defects)


def _row(run, k, seed, ap):
    metrics = {
        "image_auroc": 0.9,
        "pixel_auroc": 0.95,
        "pixel_ap": ap,
        "aupro": 0.8,
        "pixel_f1_max": 0.3,
        "pixel_f1": 0.2,
        "iou_median": 0.1,
    }
    return {
        "run": run,
        "k": k,
        "seed": seed,
        "regions": 5,
        "pits": 3,
        "photos": ["x.jpg"],
        "metrics": metrics,
        "subsets": {"positions": metrics, "other_type": {**metrics, "pixel_ap": 0.99}},
    }


def test_the_table_gives_the_test_positions_mean_and_spread_over_seeds():
    record = {
        "commit": "abc",
        "date": "2026-12-01",
        "machine": {"platform": "x", "torch_threads": 2, "torch": "2"},
        "command": "pitscope benchmark --suite few_labels",
        "base": "m.pt",
        "label_photos": {"p": 25},
        "rows": [_row("defect probe", 5, 0, 0.2), _row("defect probe", 5, 1, 0.4)],
    }
    table = format_few_labels(record)
    assert "| defect probe | 5 | 2 | 5, 5 | 3, 3 | 90.00 ± 0.00 | 95.00 ± 0.00 | 30.00 ± 14.14 |" in table
    assert "99.00" not in table  # the other screw type's subset is not the curve


def test_few_labels_needs_a_base_model_and_the_other_suites_refuse_its_options(capsys):
    with pytest.raises(SystemExit, match="needs --base MODEL"):
        main(["benchmark", "--suite", "few_labels"])
    with pytest.raises(SystemExit, match="belong to --suite few_labels"):
        main(["benchmark", "--suite", "table3", "--k", "5"])


@pytest.fixture(scope="module")
def tiny_base(real_bsdata, tmp_path_factory):
    """An untrained network's model on BSData's position split at 32 x 80 px (fast, not good)."""
    from pitscope.fitting import fit

    out = tmp_path_factory.mktemp("base")
    overrides = [
        "data.format=bsdata",
        f"data.root={real_bsdata}",
        "data.holdout=positions",
        "data.image_size=32",
        "data.image_width=80",
        "train.epochs=0",
        "train.device=cpu",
        "score.pixel_channels=16",
        "score.pixel_stages=[layer1]",
        "score.image_features=layer4",
        "model.target=none",
        "model.projector_hidden=32",
        f"output_dir={out}",
    ]
    fit(None, overrides, progress=False)
    return out / "model.pt"


def test_the_suite_writes_its_curve_and_a_rerun_adds_only_what_is_missing(tiny_base, tmp_path):
    import json

    from pitscope.benchmark.few_labels import FewLabelsOptions, run_few_labels

    options = FewLabelsOptions(
        base=str(tiny_base), ks=[0, 1], seeds=[0], output=str(tmp_path), runs_dir=str(tmp_path / "runs"), progress=False
    )
    record = run_few_labels(options)
    assert [(r["run"], r["k"], r["seed"]) for r in record["rows"]] == [
        ("unsupervised (the base model)", 0, None),
        ("defect probe", 1, 0),
        ("supervised only", 1, 0),
    ]
    probe, anchor = record["rows"][1], record["rows"][2]
    assert probe["photos"] == anchor["photos"] and len(probe["photos"]) == 1
    assert probe["metrics"]["pixel_ap"] != anchor["metrics"]["pixel_ap"]  # two different probes
    assert set(probe["subsets"]) == {"positions", "other_type"}  # the KGT photos: the other screw type
    written = json.loads((tmp_path / "few_labels.json").read_text())
    assert len(written["rows"]) == 3 and "| defect probe | 1 | 1 |" in (tmp_path / "few_labels.md").read_text()
    first = (tmp_path / "runs" / "k1_seed0" / "model.pt").stat().st_mtime_ns
    options.ks, options.seeds = [0, 1, 2], [0, 1]  # k = 2, and seed 1 without its anchor, are new
    record = run_few_labels(options)
    assert [(r["run"], r["k"], r["seed"]) for r in record["rows"][3:]] == [
        ("defect probe", 2, 0),
        ("supervised only", 2, 0),
        ("defect probe", 1, 1),
        ("defect probe", 2, 1),
    ]
    assert (tmp_path / "runs" / "k1_seed0" / "model.pt").stat().st_mtime_ns == first  # not run again
    assert record["earlier_commands"] == [""]  # the first run's command, kept beside the second's


def test_distinct_pits_joins_one_positions_masks_and_keeps_crops_and_positions_apart():
    import numpy as np

    from pitscope.benchmark.few_labels import distinct_pits
    from pitscope.data.labelled import LabelledDefect

    def photo(name, *boxes):
        mask = np.zeros((20, 20), bool)
        for y, x in boxes:
            mask[y : y + 3, x : x + 3] = True
        return LabelledDefect(Path(name), "", np.zeros((20, 20, 3), np.uint8), mask)

    position_of = {"a_t1_crop_1.jpg": "A", "a_t2_crop_1.jpg": "A", "a_t2_crop_2.jpg": "A", "b_t1_crop_1.jpg": "B"}
    defects = [
        photo("a_t1_crop_1.jpg", (2, 2)),
        photo("a_t2_crop_1.jpg", (3, 3), (12, 12)),  # the first pit again, grown a little, and a new one
        photo("a_t2_crop_2.jpg", (2, 2)),  # the other crop: other pits
        photo("b_t1_crop_1.jpg", (2, 2)),  # another position
    ]
    assert distinct_pits(defects, position_of) == 4
