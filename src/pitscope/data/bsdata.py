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
        candidates = [repo.parent / "shared" / "datasets" / "bsdata",
                      Path.cwd().parent / "shared" / "datasets" / "bsdata"]
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
        raise ValueError(f"n_train_normal: {n_train_normal} is not in 0..{len(normal)} "
                         f"(the defect-free images in {root / 'data'})")
    order = np.random.default_rng(seed).permutation(len(normal))
    train = sorted(normal[i] for i in order[:n_train_normal])
    test_normal = sorted(normal[i] for i in order[n_train_normal:])
    return {"seed": seed, "train": train, "test_normal": test_normal, "test_defect": sorted(defect)}


def write_split(split: dict, path: str | Path) -> Path:
    """Write a split from `bsdata_split` as indented JSON with its seed and counts; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"dataset": "bsdata", "seed": split["seed"],
               "counts": {key: len(split[key]) for key in SPLIT_KEYS},
               **{key: list(split[key]) for key in SPLIT_KEYS}}
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
    split = {"seed": content["seed"], **{key: list(content[key]) for key in SPLIT_KEYS}}
    for key in SPLIT_KEYS:
        stated = content.get("counts", {}).get(key, len(split[key]))
        if stated != len(split[key]):
            raise ValueError(f"{path}: {key} lists {len(split[key])} names but its count says {stated}")
    every = [name for key in SPLIT_KEYS for name in split[key]]
    if len(set(every)) != len(every):
        raise ValueError(f"{path}: a file name appears more than once across {', '.join(SPLIT_KEYS)}")
    return split


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
            raise DatasetLayoutError(f"{label_path}: unexpected shape {shape.get('label')!r} of type "
                                     f"{shape.get('shape_type')!r}; expected {DEFECT_LABEL!r} polygons")
        polygons.append(tuple((float(x), float(y)) for x, y in shape["points"]))
    return tuple(polygons)


def _resolve_split(cfg: DataConfig, root: Path, seed: int) -> dict:
    """The split to use: cfg.split_file when it exists, else a new one (written there if set)."""
    if cfg.split_file is None:
        return bsdata_split(root, cfg.n_train_normal, seed)
    path = Path(cfg.split_file)
    if not path.exists():
        return read_split(write_split(bsdata_split(root, cfg.n_train_normal, seed), path))
    split = read_split(path)
    if len(split["train"]) != cfg.n_train_normal:
        warnings.warn(f"{path}: the stored split trains on {len(split['train'])} defect-free images, "
                      f"not data.n_train_normal={cfg.n_train_normal}; using the stored split", stacklevel=3)
    return split


def load_bsdata(cfg: DataConfig, split: str, seed: int) -> AnomalyDataset:
    """BSData's "train" (defect-free only) or "test" (defect-free and pitting) split.

    The root comes from `bsdata_root(cfg.root)`; the split from `cfg.split_file` when that file
    exists, otherwise drawn with `cfg.split_seed` (and written to cfg.split_file when one is set);
    the run `seed` does not move the split, so runs with different seeds are compared on one.
    Pitting masks are the label polygons, filled at each image's native size.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: {split!r} is not one of train, test")
    root = bsdata_root(cfg.root)
    names = _resolve_split(cfg, root, cfg.split_seed)
    data = root / "data"
    if split == "train":
        records = [Record(data / name, 0) for name in names["train"]]
    else:
        records = [Record(data / name, 0) for name in names["test_normal"]]
        records += [Record(data / name, 1, polygons=read_polygons(root / "label" / f"{Path(name).stem}.json"))
                    for name in names["test_defect"]]
    for record in records:
        if not record.path.is_file():
            raise DatasetLayoutError(f"{record.path}: listed in the split but not in {data}")
    return AnomalyDataset(records, size=cfg.image_size, on_bad_file=cfg.on_bad_file, cache=cfg.cache,
                          name=f"bsdata-{split}")
