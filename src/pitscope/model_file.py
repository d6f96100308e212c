"""The model file on disk: what `Detector.save` writes and `Detector.load` reads back.

One `torch.save` dictionary: config, n_kinds, state_dict, metadata, version, and "network" when
the network is stored in part. Two things keep the file small without changing a score:
- a detector whose scoring reads nothing of the network but backbone stages (image score = the
  map's maximum, PaDiM maps) stores the backbone only up to the deepest stage it scores
  (`scored_stage`); the loaded detector holds that much (`models.network.ScoringNetwork`);
- the pixel Gaussians' precision matrices, symmetric, are stored as their upper triangles
  (`pixel_scorer.precision_packed_`) and unpacked on load, bit for bit.
Files written before either (every tensor of the network, full matrices) load as they are.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pitscope import __version__
from pitscope.config import Config, from_dict, to_dict
from pitscope.files import atomic_save
from pitscope.models.backbone import STAGES, stage_modules
from pitscope.scoring import pack_symmetric, unpack_symmetric
from pitscope.upgrade import upgrade

PRECISION = "pixel_scorer.precision_"
PACKED = "pixel_scorer.precision_packed_"
LOCATION = "pixel_scorer.location_"


def scored_stage(cfg: Config) -> str | None:
    """The deepest backbone stage the detector's scoring reads, when that is all it reads of the
    network (score.image_method map_max on score.pixel_method padim); None when scoring needs more
    (an image embedding, the segmentation head, crops through the whole backbone)."""
    if cfg.score.image_method == "map_max" and cfg.score.pixel_method == "padim":
        return max(cfg.score.pixel_stages, key=STAGES.index)
    return None


def stored_state(state_dict: dict, cfg: Config) -> tuple[dict, dict | None]:
    """The state dict as the file stores it, and the "network" record (None: the whole network)."""
    state = dict(state_dict)
    network = None
    stage = scored_stage(cfg)
    if stage is not None:
        prefixes = tuple(f"net.backbone.{name}." for name in stage_modules(stage))
        state = {k: v for k, v in state.items() if not k.startswith("net.") or k.startswith(prefixes)}
        network = {"kept_stage": stage}
    if PRECISION in state and state[PRECISION].ndim == 3:
        state[PACKED] = pack_symmetric(state.pop(PRECISION))
    return state, network


def loaded_state(state_dict: dict) -> dict:
    """`stored_state`'s state dict as the detector holds it: full precision matrices."""
    state = dict(state_dict)
    if PACKED in state:
        state[PRECISION] = unpack_symmetric(state.pop(PACKED), state[LOCATION].shape[-1])
    return state


def save_model_file(detector, path: Path) -> Path:
    """Write a Detector to `path`, atomically."""
    state, network = stored_state(detector.state_dict(), detector.cfg)
    content = {
        "config": to_dict(detector.cfg),
        "n_kinds": detector.n_kinds,
        "state_dict": state,
        "metadata": detector.metadata,
        "version": __version__,
    }
    if network is not None:
        content["network"] = network
    atomic_save(content, path)
    return path


def _newer(version) -> bool:
    """Whether a "X.Y.Z" version string is newer than this pitscope's."""

    def parts(text):
        return tuple(int(p) if p.isdigit() else 0 for p in str(text).split("."))

    return version is not None and parts(version) > parts(__version__)


def refuse_what_is_no_model(path: Path) -> None:
    """Raise ValueError with one sentence on what the file is, when it is plainly no model file:
    empty, an ONNX export, or not a PyTorch file at all (PyTorch writes zip archives)."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a model file; pass the model.pt that pitscope train wrote")
    with path.open("rb") as fh:
        head = fh.read(256)
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and b"pytorch" in head):
        raise ValueError(
            f"{path} is an ONNX export: run it with onnxruntime (pitscope export wrote it); "
            "pitscope's commands take the model.pt it was exported from"
        )
    if not head.startswith((b"PK", b"\x80")):  # a zip archive, or the legacy pickle format
        raise ValueError(
            f"{path} is not a pitscope model file: it is not a PyTorch file ({size} bytes, "
            f"starting {head[:8]!r}); pass the model.pt that pitscope train wrote"
        )


def read_model_file(path: Path, device: str | torch.device = "cpu") -> dict:
    """The upgraded content of a model file, its state dict as the detector holds it; ValueError
    (FileNotFoundError) with one sentence when the file is not one."""
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    refuse_what_is_no_model(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # not a torch file, or one holding more than tensors and plain data
        raise ValueError(
            f"{path} is a PyTorch file that holds more than a pitscope model file does "
            f"(it cannot be loaded safely); pass the model.pt that pitscope train wrote "
            f"({type(exc).__name__})"
        ) from exc
    if isinstance(state, dict) and "model" in state and "config" in state and "state_dict" not in state:
        raise ValueError(
            f"{path} is a training checkpoint, not a model file: pass OUTPUT_DIR/model.pt, or fit "
            f"the checkpoint's network with `pitscope refit {path} --output model.pt`"
        )
    if not isinstance(state, dict) or "state_dict" not in state or "config" not in state:
        raise ValueError(
            f"{path} is a PyTorch file but not a pitscope model file: pass the model.pt that pitscope train wrote"
        )
    if _newer(state.get("version")):
        raise ValueError(
            f"{path} was written by pitscope {state['version']}, newer than this one "
            f"({__version__}): upgrade pitscope to load it"
        )
    state = upgrade(state, "model", source=str(path))
    state["state_dict"] = loaded_state(state["state_dict"])
    return state


def stored_config(path: str | Path) -> Config:
    """The config a model file was fitted with, brought up to date as `read_model_file` does, read
    without loading its tensors into memory (the file is mapped, not read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    refuse_what_is_no_model(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # refused above unless a zip archive; here, one torch cannot read safely
        raise ValueError(f"{path} is not a pitscope model file: pass the model.pt that pitscope train wrote") from exc
    if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
        raise ValueError(f"{path} is not a pitscope model file: pass the model.pt that pitscope train wrote")
    if _newer(state.get("version")):
        raise ValueError(f"{path} was written by pitscope {state['version']}, newer than this one ({__version__})")
    return from_dict(upgrade(state, "model", source=str(path))["config"])
