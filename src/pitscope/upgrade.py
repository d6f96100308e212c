"""The one place where files written by older pitscope versions are brought up to date.

Every loader of a model file (`Detector.load`) or a training checkpoint (`Detector.from_checkpoint`,
`train(resume=True)`) passes the `torch.load`ed mapping through `upgrade` before it reads it, so
what older files lack is filled in one way, and options removed since are dropped so that those
files still load.
"""

from __future__ import annotations

import warnings

import torch

from pitscope.augment import PseudoDefects
from pitscope.config import REMOVED, from_dict

KINDS = ("model", "checkpoint")  # a model file (Detector.save), a training checkpoint or snapshot


def drop_removed_options(values: dict) -> dict:
    """Delete the options of `config.REMOVED` from a saved config mapping (in place); returns it."""
    for key in REMOVED:
        section, name = key.split(".")
        values.get(section, {}).pop(name, None)
    return values


def fill_image_features(values: dict, fitted: bool) -> dict:
    """Give a config mapping saved before score.image_features existed the value that scores as it
    did then: layer4 where its scorers were fitted (fitted=True) or its network has no projector
    (model.classify false); otherwise it keeps the default. Changes `values` in place; returns it."""
    score = values.setdefault("score", {})
    if "image_features" not in score and (fitted or not values.get("model", {}).get("classify", True)):
        score["image_features"] = "layer4"
    return values


def upgrade(state: dict, kind: str, source: str = "the file") -> dict:
    """Bring a loaded model file (kind "model") or training checkpoint (kind "checkpoint") up to
    date, in place; returns it. `source` names the file in a warning.

    Both: the options removed since (`config.REMOVED`) leave the saved config, and one saved before
    score.image_features existed gets the features it was fitted, or would be fitted, on.
    Model files: saved before score.map_normalisation, normalisation "none"; before
    score.recompute_batchnorm, false; before the pixel threshold, a NaN one (with a warning: `pitscope
    calibrate --write` adds one). Checkpoints: before n_kinds was saved, the config's count of
    pseudo-defect kinds; the weight average of the removed train.average_from is dropped (the
    checkpoint's network is its last weights).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind of file {kind!r}; kinds: {', '.join(KINDS)}")
    values = drop_removed_options(state["config"])
    fill_image_features(values, fitted=kind == "model")
    if kind == "model":
        score = values["score"]
        score.setdefault("map_normalisation", "none")
        score.setdefault("recompute_batchnorm", False)
        if "pixel_threshold" not in state["state_dict"]:
            state["state_dict"]["pixel_threshold"] = torch.tensor(float("nan"))
            warnings.warn(f"{source} has no pixel threshold; run `pitscope calibrate --write` to add one", stacklevel=3)
    else:
        state.pop("average", None)
        if "n_kinds" not in state:
            state["n_kinds"] = PseudoDefects(from_dict(values).augment).n_kinds
    return state
