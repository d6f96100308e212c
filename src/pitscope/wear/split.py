"""The honest split over wear sequences: which images trained a model, which model may measure
which sequence, and the k folds over sequences that give every sequence such a model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pitscope.config import Config
from pitscope.data.bsdata import bsdata_split, read_split
from pitscope.data.sequences import WearSequence


# -- the split over sequences ----------------------------------------------------------------
def sequence_folds(sequences: Sequence[WearSequence], k: int, seed: int = 0) -> list[tuple[str, ...]]:
    """k folds of sequence names: a `default_rng(seed)` permutation of the sorted names, dealt
    round robin, each fold sorted. Every sequence is in exactly one fold."""
    names = sorted(s.name for s in sequences)
    if not 2 <= k <= len(names):
        raise ValueError(f"k: {k} folds need 2 <= k <= {len(names)} (the number of sequences)")
    order = np.random.default_rng(seed).permutation(len(names))
    return [tuple(sorted(names[i] for i in order[f::k])) for f in range(k)]


def fold_split(root: str | Path, sequences: Sequence[WearSequence], held_out: Iterable[str], seed: int = 0) -> dict:
    """A BSData split (as `bsdata_split` returns) that trains on every defect-free image of
    data/ outside the `held_out` sequences: "train" those, "test_normal" the defect-free images
    of the held-out sequences, "test_defect" every image with pitting. Write it with
    `bsdata.write_split` and train with data.split_file pointing there."""
    held_out = set(held_out)
    unknown = held_out - {s.name for s in sequences}
    if unknown:
        raise ValueError(f"held_out: no sequence named {', '.join(sorted(unknown))}")
    measured = {r.path.name for s in sequences if s.name in held_out for r in s.records}
    split = bsdata_split(root, n_train_normal=0, seed=seed)  # every defect-free image in test_normal
    normal = split["test_normal"]
    return {
        "seed": seed,
        "train": [n for n in normal if n not in measured],
        "test_normal": [n for n in normal if n in measured],
        "test_defect": split["test_defect"],
    }


def _split_path(cfg: Config, model_path: Path) -> Path | None:
    """The model's split file: as its config names it, else beside the model under that name."""
    if cfg.data.split_file is None:
        return None
    path = Path(cfg.data.split_file)
    return path if path.is_file() else model_path.parent / path.name


def training_images(cfg: Config, model_path: str | Path, root: str | Path) -> frozenset[Path]:
    """The images (resolved paths, as under root/data/) a model's training split held.

    A BSData model: the "train" list of its split file (BSData names one image wherever its copy
    lies). A synthetic model: none (its images are generated). Any other format: the files of its
    training split. Raises ValueError when a BSData model's split file cannot be found: without
    it, no one can tell which images trained the model.
    """
    model_path = Path(model_path)
    if cfg.data.format == "synthetic":
        return frozenset()
    if cfg.data.format == "bsdata":
        split_file = _split_path(cfg, model_path)
        if split_file is None or not split_file.is_file():
            raise ValueError(
                f"{model_path}: its split file ({cfg.data.split_file}) is missing, so which images "
                "trained it is unknown; measure with a model whose split file is at hand"
            )
        data = Path(root) / "data"
        return frozenset((data / name).resolve() for name in read_split(split_file)["train"])
    from pitscope.data import build_dataset

    return frozenset(Path(p).resolve() for p in build_dataset(cfg.data, "train", cfg.seed).paths)


def reference_images(detector) -> frozenset[str]:
    """The file names of the reference photos a model's scorers were fitted on beside its
    training photos (`pitscope refit --references`, metadata["references"]): BSData names an
    image by its file name wherever its copy lies, as the split files do."""
    return frozenset(Path(r["path"]).name for r in detector.metadata.get("references", ()))


def assign_models(
    sequences: Sequence[WearSequence], trained: Sequence[frozenset[Path]], allow_overlap: bool = False
) -> dict[str, tuple[int, int]]:
    """Which model measures which sequence: {sequence name: (model index, images it trained on)}.

    Each sequence goes to the first model (in `trained`'s order) that trained on none of its
    images. With none such, allow_overlap gives it to the first model that trained on the
    fewest of them (the overlap is recorded); otherwise the sequence is left out of the result.
    """
    assigned = {}
    for sequence in sequences:
        paths = {r.path.resolve() for r in sequence.records}
        overlaps = [len(paths & images) for images in trained]
        if not overlaps:
            continue
        best = int(np.argmin(overlaps))  # the first model with the fewest
        if overlaps[best] == 0 or allow_overlap:
            assigned[sequence.name] = (best, overlaps[best])
    return assigned
