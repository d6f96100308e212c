"""BSData's monitored positions: grouping by wear_dev names, the seeded deal into validation,
label and test positions, the held-apart split and its file, and the two ball-screw types."""

import json
from pathlib import Path

import numpy as np
import pytest

from pitscope.config import DataConfig
from pitscope.data import build_dataset
from pitscope.data.bsdata import (
    POSITIONS_FILE,
    bsdata_split,
    cross_position_split,
    deal_positions,
    hold_out_positions,
    load_bsdata,
    position_files,
    read_positions,
    read_split,
    type_groups,
    write_split,
)
from pitscope.data.types import DatasetLayoutError

RECT = [[2, 2], [8, 2], [8, 6], [2, 6]]


def make_tree(root: Path, write_image, positions: int = 5, photos: int = 4) -> Path:
    """`positions` positions of `photos` photos each (the last two with pitting), one position with
    two wear_dev names, and one type-1 photo in no position."""
    entries = []
    for p in range(positions):
        names = [f"01_200908{p:02d}0000_{p}00000_000_crop"] + (
            [f"01_200909{p:02d}0000_{p}00000_000_crop"] if p == 0 else []
        )
        for i in range(photos):
            file = f"01_20090{i + 1}000000_{p}00000_000_crop_2.jpg"
            write_image(root / "data" / file, size=(16, 12), seed=10 * p + i)
            if i >= photos - 2:
                (root / "label").mkdir(parents=True, exist_ok=True)
                (root / "label" / f"{Path(file).stem}.json").write_text(
                    json.dumps({"shapes": [{"label": "Pitting", "shape_type": "polygon", "points": RECT}]})
                )
            entries.append({"filename": file, "wear_dev": names})
    write_image(root / "data" / "KGT1-S-060-A02_crop_0.jpg", size=(16, 12), seed=99)
    (root / "label" / "KGT1-S-060-A02_crop_0.json").write_text(
        json.dumps({"shapes": [{"label": "Pitting", "shape_type": "polygon", "points": RECT}]})
    )
    entries.append({"filename": "KGT1-S-060-A02_crop_0.jpg", "wear_dev": []})
    (root / "image_data.json").write_text(json.dumps({"images": entries}))
    return root


@pytest.fixture
def tree(tmp_path, write_image):
    return make_tree(tmp_path / "bsdata", write_image)


def test_positions_group_names_that_list_the_same_images(tree):
    positions = position_files(tree)
    assert len(positions) == 5
    first = next(iter(positions))
    assert len(first) == 2 and all(len(files) == 4 for files in positions.values())
    assert "KGT1-S-060-A02_crop_0.jpg" not in {f for files in positions.values() for f in files}


def test_positions_refuse_names_sharing_only_some_images(tree):
    content = json.loads((tree / "image_data.json").read_text())
    # position 0's first photo: also in position 1, and no longer under position 0's second name
    content["images"][0]["wear_dev"] = ["01_200908000000_000000_000_crop", "01_200908010000_100000_000_crop"]
    (tree / "image_data.json").write_text(json.dumps(content))
    with pytest.raises(DatasetLayoutError, match="do not list the same images"):
        position_files(tree)


def test_deal_is_seeded_disjoint_and_complete(tree):
    deal = deal_positions(tree, seed=3, n_validation=2, n_label=1)
    assert deal == deal_positions(tree, seed=3, n_validation=2, n_label=1)
    assert (len(deal["validation"]), len(deal["label"]), len(deal["test"])) == (2, 1, 2)
    every = deal["validation"] + deal["label"] + deal["test"]
    assert sorted(every) == sorted(key[0] for key in position_files(tree))
    others = {tuple(deal_positions(tree, seed=s, n_validation=2, n_label=1)["validation"]) for s in range(8)}
    assert len(others) > 1  # the seed moves the deal
    with pytest.raises(ValueError, match="at least one validation"):
        deal_positions(tree, n_validation=4, n_label=1)


def test_held_out_split_keeps_validation_photos_out_of_training_and_test(tree):
    deal = deal_positions(tree, seed=0, n_validation=2, n_label=1)
    paper = bsdata_split(tree, n_train_normal=6, seed=0)  # 10 defect-free photos, 11 pitting
    split = hold_out_positions(paper, tree, deal)
    files = {key[0]: set(v) for key, v in position_files(tree).items()}
    val = set().union(*(files[n] for n in deal["validation"]))
    label = set().union(*(files[n] for n in deal["label"]))
    assert not val & set(split["train"]) and set(split["train"]) <= set(paper["train"])
    assert set(paper["train"]) - set(split["train"]) <= val
    tested = set(split["test_normal"]) | set(split["test_defect"])
    assert not tested & (val | label)
    assert "KGT1-S-060-A02_crop_0.jpg" in split["test_defect"]
    assert set(split["val_normal"]) | set(split["val_defect"]) == val
    assert len(split["val_defect"]) == 4 and len(split["val_normal"]) == 4
    assert set(split["test_defect"]) == {f for n in deal["test"] for f in files[n] if f in paper["test_defect"]} | {
        "KGT1-S-060-A02_crop_0.jpg"
    }


def test_holdout_loads_val_and_the_split_file_remembers_it(tree, tmp_path):
    positions = tmp_path / "positions.json"
    positions.write_text(json.dumps(deal_positions(tree, seed=0, n_validation=2, n_label=1)))
    cfg = DataConfig(
        format="bsdata",
        root=str(tree),
        n_train_normal=6,
        image_size=32,
        holdout="positions",
        positions_file=str(positions),
        split_file=str(tmp_path / "split.json"),
    )
    train, test, val = (build_dataset(cfg, s, 0) for s in ("train", "test", "val"))
    stored = read_split(tmp_path / "split.json")
    assert stored["positions"]["validation"] == json.loads(positions.read_text())["validation"]
    assert [Path(p).name for p in val.paths] == stored["val_normal"] + stored["val_defect"]
    assert val.labels.tolist() == [0] * len(stored["val_normal"]) + [1] * len(stored["val_defect"])
    assert not {Path(p).name for p in val.paths} & {Path(p).name for p in train.paths + test.paths}
    assert write_split(stored, tmp_path / "again.json").read_text() == (tmp_path / "split.json").read_text()
    plain = DataConfig(format="bsdata", root=str(tree), n_train_normal=6, split_file=str(tmp_path / "split.json"))
    with pytest.raises(ValueError, match="holds positions apart"):
        load_bsdata(plain, "train", 0)
    with pytest.raises(ValueError, match="data.holdout=positions"):
        load_bsdata(DataConfig(format="bsdata", root=str(tree), n_train_normal=6), "val", 0)


def test_type_groups_split_the_defective_images_by_screw_type(tree):
    paths = [
        str(tree / "data" / n)
        for n in (
            "KGT1-S-060-A02_crop_0.jpg",
            "01_200904000000_100000_000_crop_2.jpg",
            "01_200901000000_100000_000_crop_2.jpg",
        )
    ]
    groups = type_groups(paths, np.array([1, 1, 0]), tree)
    assert groups["other_type"].tolist() == [True, False, False]
    assert groups["positions"].tolist() == [False, True, False]


def test_the_shipped_position_file_is_valid():
    content = read_positions()
    assert content == read_positions(POSITIONS_FILE) and content["version"] == 1
    assert (len(content["validation"]), len(content["label"]), len(content["test"])) == (4, 3, 8)


def test_shipped_positions_match_the_seeded_deal_on_bsdata(real_bsdata):
    deal = deal_positions(real_bsdata, seed=read_positions()["seed"])
    assert {k: deal[k] for k in ("validation", "label", "test")} == {
        k: read_positions()[k] for k in ("validation", "label", "test")
    }


def test_split_files_and_position_deals_are_checked(tree, tmp_path):
    deal = deal_positions(tree, seed=0, n_validation=2, n_label=1)
    partial = {**deal, "test": deal["test"][:-1]}  # one position without a role
    with pytest.raises(ValueError, match="no role"):
        hold_out_positions(bsdata_split(tree, 6), tree, partial)
    positions = tmp_path / "positions.json"
    positions.write_text(json.dumps(deal))
    cfg = DataConfig(
        format="bsdata",
        root=str(tree),
        n_train_normal=6,
        holdout="positions",
        positions_file=str(positions),
        split_file=str(tmp_path / "split.json"),
    )
    load_bsdata(cfg, "train", 0)
    other = deal_positions(tree, seed=5, n_validation=2, n_label=1)
    assert other["validation"] != deal["validation"]
    positions.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="other positions apart"):
        load_bsdata(cfg, "train", 0)
    content = json.loads((tmp_path / "split.json").read_text())
    del content["val_defect"]
    (tmp_path / "broken.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="lacks val_defect"):
        read_split(tmp_path / "broken.json")


def test_holdout_settings_are_checked_in_the_config():
    from pitscope.config import load_config

    with pytest.raises(ValueError, match="data.format is synthetic"):
        load_config(None, ["data.holdout=positions"])
    with pytest.raises(ValueError, match="only with data.holdout=positions"):
        load_config(None, ["data.format=bsdata", "data.positions_file=p.json"])


def test_cross_position_folds_measure_positions_no_model_saw(tree):
    deal = {
        "validation": ["01_200908000000_000000_000_crop"],
        "label": [],
        "test": sorted(key[0] for key in position_files(tree))[1:],
    }  # 4 test positions
    files = {key[0]: set(v) for key, v in position_files(tree).items()}
    measured_all = []
    for fold in range(2):
        split = cross_position_split(tree, deal, fold, k=2)
        measured = split["positions"]["measured"]
        measured_all += measured
        inside = set().union(*(files[n] for n in measured))
        assert set(split["test_normal"]) | set(split["test_defect"]) == inside
        assert not set(split["train"]) & inside and not set(split["train"]) & files[deal["validation"][0]]
        others = set().union(*(files[n] for n in deal["test"] if n not in measured))
        assert set(split["train"]) == {f for f in others if f not in split["test_defect"]} - {
            f for f in others if (tree / "label" / f"{Path(f).stem}.json").exists()
        }
    assert sorted(measured_all) == deal["test"]  # every test position measured once
    with pytest.raises(ValueError, match="fold"):
        cross_position_split(tree, deal, 2, k=2)
