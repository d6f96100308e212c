"""BSData (ball screw drive surfaces, Schlagenhauf et al. 2021) and the paper's seeded split.

Layout (`<root>` as published at github.com/2Obe/BSData):
    <root>/data/*.jpg        1104 photographs; only the top level counts (`data/BSD/` holds a
                             stray duplicate that is not part of the dataset)
    <root>/label/<stem>.json labelme file per image with pitting; `shapes` are polygons
                             labelled "Pitting" in the image's own pixel coordinates
Images without a label file are defect-free. The paper's protocol: 631 randomly chosen
defect-free images train; the other 79 defect-free and all 394 pitting images test.
The split is seeded and can be written to a JSON file so every run and report share it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from pitscope.config import DataConfig
from pitscope.data.dataset import AnomalyDataset, Polygon, Record
from pitscope.data.imageio import list_images
from pitscope.data.types import DatasetLayoutError

ENV_VAR = "PITSCOPE_BSDATA"
IMAGE_DATA = "image_data.json"
POSITIONS_FILE = Path(__file__).with_name("bsdata_positions.json")
POSITIONS_VERSION = 1
POSITION_ROLES = ("validation", "label", "test")
HOLDOUTS = ("none", "positions")
VAL_KEYS = ("val_normal", "val_defect")
DEFECT_LABEL = "Pitting"
SPLIT_KEYS = ("train", "test_normal", "test_defect")


def _is_bsdata(path: Path) -> bool:
    return (path / "data").is_dir() and (path / "label").is_dir()


def bsdata_root(root: str | Path | None = None) -> Path:
    """Find the BSData folder (the one holding `data/` and `label/`).

    An explicit `root` is used alone, then the environment variable PITSCOPE_BSDATA alone;
    otherwise `../shared/datasets/bsdata` beside the repository (found from this file) and
    beside the current directory are tried. Raises FileNotFoundError naming every place tried.
    """
    if root is not None:
        candidates, origin = [Path(root)], "the given root"
    elif os.environ.get(ENV_VAR):
        candidates, origin = [Path(os.environ[ENV_VAR])], f"${ENV_VAR}"
    else:
        repo = Path(__file__).resolve().parents[3]
        candidates = [
            repo.parent / "shared" / "datasets" / "bsdata",
            Path.cwd().parent / "shared" / "datasets" / "bsdata",
        ]
        origin = f"the default places (set ${ENV_VAR} or data.root to choose another)"
    for candidate in candidates:
        if _is_bsdata(candidate):
            return candidate
    tried = ", ".join(str(c) for c in dict.fromkeys(c.resolve() for c in candidates))
    raise FileNotFoundError(f"BSData not found in {origin}: no folder with data/ and label/ at {tried}")


def bsdata_split(root: str | Path, n_train_normal: int = 631, seed: int = 0) -> dict:
    """The paper's split of BSData: a seeded choice of defect-free training images.

    Returns {"seed": seed, "train": [...], "test_normal": [...], "test_defect": [...]}, each a
    sorted list of image file names (not paths). "train" holds `n_train_normal` defect-free
    images drawn by `numpy.random.default_rng(seed).permutation` of the sorted defect-free
    names; "test_normal" the other defect-free ones; "test_defect" every image with a label file.
    Raises DatasetLayoutError for a label file without its image.
    """
    root = Path(root)
    names = [p.name for p in list_images(root / "data")]
    stems = {Path(n).stem: n for n in names}
    defect = []
    for label in sorted((root / "label").glob("*.json")):
        if label.stem not in stems:
            raise DatasetLayoutError(f"{label}: label file has no image named {label.stem}.* in {root / 'data'}")
        defect.append(stems[label.stem])
    defect_set = set(defect)
    normal = [n for n in names if n not in defect_set]
    if not 0 <= n_train_normal <= len(normal):
        raise ValueError(
            f"n_train_normal: {n_train_normal} is not in 0..{len(normal)} (the defect-free images in {root / 'data'})"
        )
    order = np.random.default_rng(seed).permutation(len(normal))
    train = sorted(normal[i] for i in order[:n_train_normal])
    test_normal = sorted(normal[i] for i in order[n_train_normal:])
    return {"seed": seed, "train": train, "test_normal": test_normal, "test_defect": sorted(defect)}


def write_split(split: dict, path: str | Path) -> Path:
    """Write a split from `bsdata_split` as indented JSON with its seed and counts; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = SPLIT_KEYS + (VAL_KEYS if "val_normal" in split else ())
    content = {
        "dataset": "bsdata",
        "seed": split["seed"],
        **({"positions": split["positions"]} if "positions" in split else {}),
        "counts": {key: len(split[key]) for key in keys},
        **{key: list(split[key]) for key in keys},
    }
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # concurrent writers (torchrun) never collide
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_split(path: str | Path) -> dict:
    """Read a split written by `write_split`: {"seed", "train", "test_normal", "test_defect"}.

    Raises ValueError naming the file when a list is missing, its count disagrees, or a
    name appears in two lists.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a valid split file: {exc}") from exc
    missing = [key for key in ("seed", *SPLIT_KEYS) if key not in content]
    if missing:
        raise ValueError(f"{path}: split file lacks {', '.join(missing)}")
    keys = SPLIT_KEYS + (VAL_KEYS if any(key in content for key in VAL_KEYS) else ())
    missing = [key for key in keys if key not in content]
    if missing:
        raise ValueError(f"{path}: split file lacks {', '.join(missing)}")
    split = {"seed": content["seed"], **{key: list(content[key]) for key in keys}}
    if "positions" in content:
        split["positions"] = content["positions"]
    for key in keys:
        stated = content.get("counts", {}).get(key, len(split[key]))
        if stated != len(split[key]):
            raise ValueError(f"{path}: {key} lists {len(split[key])} names but its count says {stated}")
    every = [name for key in keys for name in split[key]]
    if len(set(every)) != len(every):
        raise ValueError(f"{path}: a file name appears more than once across {', '.join(keys)}")
    return split


def position_files(root: str | Path) -> dict[tuple[str, ...], list[str]]:
    """BSData's monitored positions, from `image_data.json`: {names: sorted image file names}.

    Each image lists the wear-development sequences (`wear_dev`) it belongs to; names that list
    the very same images are one position, keyed by all its names, sorted (15 positions, 27
    names). Raises FileNotFoundError without image_data.json, DatasetLayoutError for an image
    missing from data/ or for two names that share only some of their images.
    """
    root = Path(root)
    path = root / IMAGE_DATA
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BSData's image list is missing (it defines the monitored positions)")
    try:
        images = json.loads(path.read_text())["images"]
        members: dict[str, set[str]] = {}
        for image in images:
            for name in image.get("wear_dev") or ():
                members.setdefault(name, set()).add(image["filename"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetLayoutError(f"{path}: not BSData's image list with an 'images' array: {exc}") from exc
    by_files: dict[frozenset[str], list[str]] = {}
    for name, files in members.items():
        by_files.setdefault(frozenset(files), []).append(name)
    owner: dict[str, str] = {}
    positions = {}
    for file_set, names in by_files.items():
        key = tuple(sorted(names))
        for file in sorted(file_set):
            if file in owner:
                raise DatasetLayoutError(
                    f"{path}: {file} is in sequences {owner[file]} and {key[0]}, which do not list the same images"
                )
            owner[file] = key[0]
            if not (root / "data" / file).is_file():
                raise DatasetLayoutError(f"{path}: sequence {key[0]} lists {file}, which is not in {root / 'data'}")
        positions[key] = sorted(file_set)
    return dict(sorted(positions.items()))


def deal_positions(root: str | Path, seed: int = 0, n_validation: int = 4, n_label: int = 3) -> dict:
    """Deal BSData's monitored positions into validation, label and test positions.

    A `default_rng(seed)` permutation of the sorted position names (each position's first
    sequence name): the first `n_validation` choose settings, the next `n_label` are kept for
    training with labelled defects, the rest measure. Returns {"version", "seed",
    "validation", "label", "test"}, each list sorted.
    """
    names = [key[0] for key in position_files(root)]
    if n_validation < 1 or n_label < 0 or n_validation + n_label >= len(names):
        raise ValueError(
            f"n_validation={n_validation}, n_label={n_label}: need at least one validation "
            f"and one test position among {len(names)}"
        )
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    return {
        "version": POSITIONS_VERSION,
        "seed": seed,
        "validation": sorted(order[:n_validation]),
        "label": sorted(order[n_validation : n_validation + n_label]),
        "test": sorted(order[n_validation + n_label :]),
    }


def read_positions(path: str | Path | None = None) -> dict:
    """The position split file (default: the versioned one shipped with pitscope).

    Raises ValueError naming the file when a list is missing or a position is in two lists.
    """
    path = POSITIONS_FILE if path is None else Path(path)
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable position split file: {exc}") from exc
    missing = [key for key in POSITION_ROLES if not isinstance(content.get(key), list)]
    if missing:
        raise ValueError(f"{path}: position split file lacks the lists {', '.join(missing)}")
    every = [name for key in POSITION_ROLES for name in content[key]]
    if len(set(every)) != len(every):
        raise ValueError(f"{path}: a position appears in more than one of {', '.join(POSITION_ROLES)}")
    return content


def hold_out_positions(split: dict, root: str | Path, positions: dict) -> dict:
    """The paper's split with the validation and label positions held apart.

    train: the paper's training images less those of validation positions (label positions'
    defect-free photos still train); test_normal / test_defect: the paper's test images of test
    positions, plus the photos of no position (the 69 type-1 `KGT*` photos, all pitting);
    val_normal / val_defect: every photo of the validation positions, none of which trains.
    """
    by_name = {key[0]: files for key, files in position_files(root).items()}
    named = set(n for role in POSITION_ROLES for n in positions[role])
    unknown, unassigned = sorted(named - set(by_name)), sorted(set(by_name) - named)
    if unknown:
        raise ValueError(f"position split names unknown positions: {', '.join(unknown)}")
    if unassigned:
        raise ValueError(f"position split gives no role to the positions {', '.join(unassigned)}")
    role_of = {f: role for role in POSITION_ROLES for n in positions[role] for f in by_name[n]}
    tested = {None, "test"}
    defect = set(split["test_defect"])
    val = sorted(f for f, role in role_of.items() if role == "validation")
    return {
        "seed": split["seed"],
        "train": [f for f in split["train"] if role_of.get(f) != "validation"],
        "test_normal": [f for f in split["test_normal"] if role_of.get(f) in tested],
        "test_defect": [f for f in split["test_defect"] if role_of.get(f) in tested],
        "val_normal": [f for f in val if f not in defect],
        "val_defect": [f for f in val if f in defect],
        "positions": positions,
    }


def cross_position_split(root: str | Path, positions: dict, fold: int, k: int = 3, seed: int = 0) -> dict:
    """The cross-position protocol: the test positions dealt into k seeded folds; fold `fold` is
    measured by a model that never saw those positions.

    train: every defect-free photo of the other positions, validation positions left out;
    test_normal / test_defect: every photo of the fold's positions; val_normal / val_defect: the
    validation positions' photos, as in `hold_out_positions`. The folds: a `default_rng(seed)`
    permutation of the sorted test positions, dealt round robin.
    """
    test = sorted(positions["test"])
    if not 2 <= k <= len(test):
        raise ValueError(f"k: {k} folds need 2 <= k <= {len(test)} (the test positions)")
    if not 0 <= fold < k:
        raise ValueError(f"fold: {fold} is not in 0..{k - 1}")
    order = np.random.default_rng(seed).permutation(len(test))
    measured = {test[i] for i in order[fold::k]}
    by_name = {key[0]: files for key, files in position_files(root).items()}
    held = hold_out_positions(bsdata_split(root, n_train_normal=0, seed=seed), root, positions)
    defect = set(bsdata_split(root, n_train_normal=0, seed=seed)["test_defect"])
    inside = {f for n in measured for f in by_name[n]}
    validation = {f for n in positions["validation"] for f in by_name[n]}
    placed = {f for files in by_name.values() for f in files}
    normal = [f for f in sorted(placed) if f not in defect]
    return {
        "seed": seed,
        "train": [f for f in normal if f not in inside and f not in validation],
        "test_normal": [f for f in normal if f in inside],
        "test_defect": sorted(f for f in inside if f in defect),
        "val_normal": held["val_normal"],
        "val_defect": held["val_defect"],
        "positions": {**positions, "fold": fold, "folds": k, "measured": sorted(measured)},
    }


def type_groups(paths: list[str], labels: np.ndarray, root: str | Path) -> dict[str, np.ndarray]:
    """The defective images of each BSData ball-screw type, as (N,) bool over `paths`.

    "positions": pitting photos of the monitored positions (type 2, the type training shows);
    "other_type": photos of no position (the 69 type-1 `KGT*` photos, all pitting, never in training).
    """
    placed = {f for files in position_files(root).values() for f in files}
    other = np.array([Path(p).name not in placed for p in paths], dtype=bool)
    defective = np.asarray(labels) == 1
    return {"positions": defective & ~other, "other_type": defective & other}


def read_polygons(label_path: Path) -> tuple[Polygon, ...]:
    """The "Pitting" polygons of a labelme file as ((x, y), ...) tuples in image pixels.

    Any other label or shape type is a DatasetLayoutError naming the file: silently ignoring
    it could leave a defective image with an empty mask.
    """
    try:
        shapes = json.loads(label_path.read_text())["shapes"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise DatasetLayoutError(f"{label_path}: not a labelme file with 'shapes': {exc}") from exc
    polygons = []
    for shape in shapes:
        if shape.get("label") != DEFECT_LABEL or shape.get("shape_type", "polygon") != "polygon":
            raise DatasetLayoutError(
                f"{label_path}: unexpected shape {shape.get('label')!r} of type "
                f"{shape.get('shape_type')!r}; expected {DEFECT_LABEL!r} polygons"
            )
        polygons.append(tuple((float(x), float(y)) for x, y in shape["points"]))
    return tuple(polygons)


def _draw_split(cfg: DataConfig, root: Path, seed: int) -> dict:
    """A new split: the paper's, with positions held apart when cfg.holdout says so."""
    if cfg.position_fold is not None:
        return cross_position_split(root, read_positions(cfg.positions_file), cfg.position_fold, cfg.position_folds)
    split = bsdata_split(root, cfg.n_train_normal, seed)
    if cfg.holdout == "positions":
        split = hold_out_positions(split, root, read_positions(cfg.positions_file))
    return split


def _resolve_split(cfg: DataConfig, root: Path, seed: int) -> dict:
    """The split to use: cfg.split_file when it exists, else a new one (written there if set)."""
    if cfg.split_file is None:
        return _draw_split(cfg, root, seed)
    path = Path(cfg.split_file)
    if not path.exists():
        return read_split(write_split(_draw_split(cfg, root, seed), path))
    split = read_split(path)
    held = "val_normal" in split
    if held != (cfg.holdout == "positions"):
        raise ValueError(
            f"{path}: the stored split {'holds' if held else 'does not hold'} positions apart, "
            f"but data.holdout={cfg.holdout}; give another data.split_file or remove this one"
        )
    if held and {k: split.get("positions", {}).get(k) for k in POSITION_ROLES} != {
        k: read_positions(cfg.positions_file)[k] for k in POSITION_ROLES
    }:
        raise ValueError(
            f"{path}: the stored split holds other positions apart than {cfg.positions_file or POSITIONS_FILE}; "
            "give another data.split_file or remove this one"
        )
    stored_fold = split.get("positions", {}).get("fold")
    if stored_fold != cfg.position_fold:
        raise ValueError(
            f"{path}: the stored split measures position fold {stored_fold}, not data.position_fold="
            f"{cfg.position_fold}; give another data.split_file or remove this one"
        )
    if cfg.holdout == "none" and len(split["train"]) != cfg.n_train_normal:
        warnings.warn(
            f"{path}: the stored split trains on {len(split['train'])} defect-free images, "
            f"not data.n_train_normal={cfg.n_train_normal}; using the stored split",
            stacklevel=3,
        )
    return split


def load_bsdata(cfg: DataConfig, split: str, seed: int) -> AnomalyDataset:
    """BSData's "train" (defect-free only), "test" or "val" (defect-free and pitting) split.

    With cfg.holdout "positions" the validation and label positions are held apart
    (`hold_out_positions`); "val" is then the validation positions' photos.

    The root comes from `bsdata_root(cfg.root)`; the split from `cfg.split_file` when that file
    exists, otherwise drawn with `cfg.split_seed` (and written to cfg.split_file when one is set);
    the run `seed` does not move the split, so runs with different seeds are compared on one.
    Pitting masks are the label polygons, filled at each image's native size.
    """
    if split not in ("train", "test", "val"):
        raise ValueError(f"split: {split!r} is not one of train, test, val")
    if split == "val" and cfg.holdout != "positions":
        raise ValueError("split 'val': BSData has a validation split only with data.holdout=positions")
    root = bsdata_root(cfg.root)
    names = _resolve_split(cfg, root, cfg.split_seed)
    data = root / "data"
    if split == "train":
        records = [Record(data / name, 0) for name in names["train"]]
    else:
        prefix = "test" if split == "test" else "val"
        records = [Record(data / name, 0) for name in names[f"{prefix}_normal"]]
        records += [
            Record(data / name, 1, polygons=read_polygons(root / "label" / f"{Path(name).stem}.json"))
            for name in names[f"{prefix}_defect"]
        ]
    for record in records:
        if not record.path.is_file():
            raise DatasetLayoutError(f"{record.path}: listed in the split but not in {data}")
    return AnomalyDataset(records, size=cfg.shape, on_bad_file=cfg.on_bad_file, cache=cfg.cache, name=f"bsdata-{split}")
