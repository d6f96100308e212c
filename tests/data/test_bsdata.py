import json
from pathlib import Path

import numpy as np
import pytest

from pitscope.config import DataConfig
from pitscope.data.bsdata import ENV_VAR, bsdata_root, bsdata_split, load_bsdata, read_polygons, read_split, write_split
from pitscope.data.dataset import AnomalyDataset, Record
from pitscope.data.types import DatasetLayoutError

# --- a tiny tree in BSData's layout: 6 defect-free, 2 pitting, one stray duplicate in data/BSD ---

RECT = [[4, 2], [13, 2], [13, 7], [4, 7]]  # fills x 4..13, y 2..7: 10 x 6 = 60 pixels


def _labelme(path: Path, polygons: list, width: int = 40, height: int = 20) -> None:
    shapes = [
        {"label": "Pitting", "points": p, "group_id": None, "shape_type": "polygon", "flags": {}} for p in polygons
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "version": "4.5.6",
                "shapes": shapes,
                "imagePath": path.stem + ".jpg",
                "imageHeight": height,
                "imageWidth": width,
            }
        )
    )


@pytest.fixture
def tiny(tmp_path, write_image) -> Path:
    root = tmp_path / "bsdata"
    for i in range(6):
        write_image(root / "data" / f"n{i}.jpg", size=(40, 20), seed=i)
    for i in range(2):
        write_image(root / "data" / f"p{i}.jpg", size=(40, 20), seed=10 + i)
        _labelme(root / "label" / f"p{i}.json", [RECT] if i == 0 else [RECT, [[20, 5], [30, 5], [25, 15]]])
    write_image(root / "data" / "BSD" / "test" / "p0.jpg", size=(40, 20))
    return root


def test_split_of_a_tiny_tree(tiny):
    split = bsdata_split(tiny, n_train_normal=4, seed=0)
    assert len(split["train"]) == 4 and len(split["test_normal"]) == 2
    assert split["test_defect"] == ["p0.jpg", "p1.jpg"]
    assert sorted(split["train"] + split["test_normal"]) == [f"n{i}.jpg" for i in range(6)]
    assert split["train"] == sorted(split["train"]) and split["seed"] == 0


def test_load_tiny_masks_are_the_polygons_at_native_size(tiny):
    cfg = DataConfig(format="bsdata", root=str(tiny), n_train_normal=4, image_size=32)
    train = load_bsdata(cfg, "train", seed=0)
    assert train.describe() == {"total": 4, "normal": 4, "defective": 0}
    test = load_bsdata(cfg, "test", seed=0)
    assert test.describe() == {"total": 4, "normal": 2, "defective": 2}
    assert all(Path(p).parent == tiny / "data" for p in train.paths + test.paths)
    record = next(r for r in test.records if r.path.name == "p0.jpg")
    native = AnomalyDataset([record], size=None)[0]
    assert native.mask.shape == (20, 40) and native.mask.sum() == 60
    assert native.mask[2:8, 4:14].all()
    assert test[test.paths.index(str(tiny / "data" / "p1.jpg"))].mask.shape == (32, 32)


def test_label_without_image_is_named(tiny):
    _labelme(tiny / "label" / "ghost.json", [RECT])
    with pytest.raises(DatasetLayoutError, match=r"ghost\.json"):
        bsdata_split(tiny, n_train_normal=4)


def test_unexpected_shape_is_refused(tiny):
    path = tiny / "label" / "p0.json"
    content = json.loads(path.read_text())
    content["shapes"][0]["label"] = "Rust"
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetLayoutError, match="Rust"):
        read_polygons(path)


def test_too_many_training_images_is_an_error(tiny):
    with pytest.raises(ValueError, match="n_train_normal"):
        bsdata_split(tiny, n_train_normal=7)


def test_split_file_is_written_once_then_reused(tiny, tmp_path):
    split_file = tmp_path / "out" / "split.json"
    cfg = DataConfig(format="bsdata", root=str(tiny), n_train_normal=4, split_file=str(split_file))
    first = load_bsdata(cfg, "train", seed=0)
    assert split_file.is_file()
    stored = read_split(split_file)
    assert stored == bsdata_split(tiny, 4, seed=0)
    seeds = range(1, 20)
    other_seed = next(s for s in seeds if bsdata_split(tiny, 4, seed=s)["train"] != stored["train"])
    assert load_bsdata(cfg, "train", seed=other_seed).paths == first.paths  # the file wins


def test_read_split_refuses_inconsistent_files(tmp_path, tiny):
    path = write_split(bsdata_split(tiny, 4), tmp_path / "split.json")
    content = json.loads(path.read_text())
    content["counts"]["train"] = 5
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="count"):
        read_split(path)
    del content["test_defect"]
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="test_defect"):
        read_split(path)


def test_root_lookup_explicit_then_env(tiny, tmp_path, monkeypatch):
    assert bsdata_root(tiny) == tiny
    monkeypatch.setenv(ENV_VAR, str(tiny))
    assert bsdata_root() == tiny
    with pytest.raises(FileNotFoundError, match="nowhere"):
        bsdata_root(tmp_path / "nowhere")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=f"{ENV_VAR}.*elsewhere"):
        bsdata_root()


# --- the real dataset (skipped where it is absent); decodes only a handful of images ---


@pytest.fixture(scope="module")
def real_root(real_bsdata) -> Path:
    return real_bsdata


def test_real_split_has_the_paper_counts(real_root):
    split = bsdata_split(real_root, n_train_normal=631, seed=0)
    assert (len(split["train"]), len(split["test_normal"]), len(split["test_defect"])) == (631, 79, 394)
    every = split["train"] + split["test_normal"] + split["test_defect"]
    assert len(set(every)) == len(every) == 1104
    assert all((real_root / "data" / name).is_file() for name in every)


def test_real_split_is_seeded(real_root):
    first, again = bsdata_split(real_root, seed=0), bsdata_split(real_root, seed=0)
    other = bsdata_split(real_root, seed=1)
    assert first == again
    assert first["train"] != other["train"] and first["test_defect"] == other["test_defect"]


def test_real_split_file_round_trips(real_root, tmp_path):
    split = bsdata_split(real_root, seed=0)
    path = write_split(split, tmp_path / "split.json")
    content = json.loads(path.read_text())
    assert content["counts"] == {"train": 631, "test_normal": 79, "test_defect": 394}
    assert content["seed"] == 0
    assert read_split(path) == split


def test_real_loader_leaves_out_the_stray_duplicate(real_root):
    cfg = DataConfig(format="bsdata", root=str(real_root))
    train, test = load_bsdata(cfg, "train", seed=0), load_bsdata(cfg, "test", seed=0)
    paths = train.paths + test.paths
    assert len(set(paths)) == len(paths) == 1104
    assert not any("BSD" in Path(p).parent.name for p in paths)
    assert test.describe() == {"total": 473, "normal": 79, "defective": 394}


def test_real_pitting_mask_is_not_empty(real_root):
    name = bsdata_split(real_root, seed=0)["test_defect"][0]
    polygons = read_polygons(real_root / "label" / f"{Path(name).stem}.json")
    record = Record(real_root / "data" / name, 1, polygons=polygons)
    native = AnomalyDataset([record], size=None)[0]
    assert native.mask.shape == native.image.shape[:2]
    # the filled pixels cover at least the polygons' shoelace area, and not much more
    area = sum(
        0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) for x, y in (np.array(p).T for p in polygons)
    )
    assert area <= native.mask.sum() <= 1.5 * area + 200
    resized = AnomalyDataset([record], size=256)[0]
    assert resized.mask.shape == (256, 256) and resized.mask.sum() > 0


def test_split_follows_split_seed_not_run_seed(tiny):
    base = DataConfig(format="bsdata", root=str(tiny), n_train_normal=4)
    paths = load_bsdata(base, "train", seed=0).paths
    assert load_bsdata(base, "train", seed=5).paths == paths
    moved = next(
        s
        for s in range(1, 20)
        if load_bsdata(DataConfig(format="bsdata", root=str(tiny), n_train_normal=4, split_seed=s), "train", 0).paths
        != paths
    )
    assert moved >= 1
