"""What a training run may start from besides defect-free photos: the network of an earlier model
(`train.init_from`, as `pitscope finetune` sets it) and photos with marked real defects
(`data.labelled_defects`), whose defects are cut out and pasted as one more pseudo-defect kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pitscope.config import Config
from pitscope.data.labelled import Cutout, defect_cutouts, load_labelled_defects


def initial_weights(path: str | Path) -> dict:
    """The network state dict of a model file (model.pt) or a training checkpoint, to start from."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.init_from: no model file or checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and "config" in state:  # a training checkpoint
        return state["model"]
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"train.init_from: {path} is neither a pitscope model file nor a training checkpoint")
    if state.get("network"):
        raise ValueError(
            f"train.init_from: {path} keeps only part of its network (up to "
            f"{state['network']['kept_stage']}); start from its training checkpoint instead"
        )
    return {k.removeprefix("net."): v for k, v in state["state_dict"].items() if k.startswith("net.")}


def start_from(model: nn.Module, path: str, echo: Callable[[str], None]) -> None:
    """Load the network weights of `path` into `model`; its heads that `path` lacks stay fresh."""
    weights = initial_weights(path)
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    if unexpected or reshaped:
        raise ValueError(
            f"train.init_from: {path} holds weights this network has no place for "
            f"(e.g. {(unexpected or reshaped)[0]}): it was trained with another model config"
        )
    model.load_state_dict(weights, strict=False)
    fresh = sorted({k.split(".")[0] for k in missing})
    echo(f"started from the network of {path}" + (f"; fresh: {', '.join(fresh)}" if fresh else ""))


def labelled_cutouts(cfg: Config) -> tuple[list[Cutout], list[dict]]:
    """The cut-outs of data.labelled_defects' marked defects at the training size, and the photos
    they come from (name, sha256); none without the option."""
    if not cfg.data.labelled_defects:
        return [], []
    defects = load_labelled_defects(cfg.data.labelled_defects, cfg.data.on_bad_file)
    cutouts = defect_cutouts(defects, cfg.data.shape)  # at the scale of the training images
    return cutouts, [{"name": d.path.name, "sha256": d.sha256} for d in defects]
