"""ResNet-18 feature extractor f (paper table 1), built by torchvision.

Stage names follow torchvision; the paper's table 1 names map to them as follows
(output sizes for a 256 x 256 input):

=========  ===========  ====================================================
paper      torchvision  output
=========  ===========  ====================================================
conv1      ``conv1``    (B, 64, 128, 128): 7x7/2 conv + BN + ReLU, before the max pool
conv2_x    ``layer1``   (B, 64, 64, 64): 3x3/2 max pool + two basic blocks
conv3_x    ``layer2``   (B, 128, 32, 32)
conv4_x    ``layer3``   (B, 256, 16, 16)
conv5_x    ``layer4``   (B, 512, 8, 8)
=========  ===========  ====================================================

Weights: ``"none"`` (random initialisation, works offline), ``"imagenet"`` (torchvision's
IMAGENET1K_V1, read from the torch hub cache, downloaded only when missing there) or the path of
a local ResNet-18 state dict.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights, resnet18

STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")


def imagenet_cache_path() -> Path:
    """Where torch hub keeps (and where the user may place) the ImageNet ResNet-18 file."""
    filename = Path(urlparse(ResNet18_Weights.IMAGENET1K_V1.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """Read the ImageNet weights from the hub cache; download them only if they are absent."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    path = imagenet_cache_path()
    if not path.is_file():
        hash_prefix = re.search(torch.hub.HASH_REGEX, path.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix.group(1) if hash_prefix else None)
        except OSError as exc:  # URLError, timeouts, a read-only cache: all are OSError
            raise RuntimeError(
                f"ImageNet weights for ResNet-18 are not in the torch hub cache and could not be "
                f"downloaded ({exc}). Place {path.name} (from {weights.url}) at {path}, or set "
                f"model.weights to the path of a local ResNet-18 state dict, or use model.weights=none."
            ) from exc
    return torch.load(path, map_location="cpu", weights_only=True)


def _file_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: bare, or nested under "state_dict"/"model"; "module." stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"ResNet-18 weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_into(model: ResNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every convolution/BN tensor; the classifier `fc` (unused here) only where it fits."""
    own = model.state_dict()
    state = {
        key: value
        for key, value in state.items()
        if not key.startswith("fc.") or (key in own and own[key].shape == value.shape)
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{source}: not a ResNet-18 state dict; missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )


def build_resnet18(weights: str = "none") -> ResNet:
    """A torchvision ResNet-18: `"none"` random, `"imagenet"` IMAGENET1K_V1, else a local file path.

    Random initialisation draws from torch's global RNG (seed it first for a reproducible model).
    """
    model = resnet18(weights=None)
    if weights == "none":
        return model
    if weights == "imagenet":
        _load_into(model, _imagenet_state_dict(), "ImageNet weights")
        return model
    path = Path(weights).expanduser()
    _load_into(model, _file_state_dict(path), str(path))
    return model


def stage_modules(last: str) -> tuple[str, ...]:
    """The Backbone's submodules with weights that compute the stages up to `last`."""
    if last not in STAGES:
        raise ValueError(f"unknown stage {last!r}; valid: {', '.join(STAGES)}")
    return ("conv1", "bn1", *STAGES[1 : STAGES.index(last) + 1])


class Backbone(nn.Module):
    """The convolutional part of ResNet-18 (no global pool, no `fc`), returning every stage.

    The submodules keep torchvision's names, so `Backbone().state_dict()` is a ResNet-18 state
    dict without `fc` and can be passed back as a weights file.
    """

    def __init__(self, weights: str = "none"):
        super().__init__()
        resnet = build_resnet18(weights)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        # Channels of each stage, read from the modules: conv1 from its BN, layers from their last block.
        self.channels: dict[str, int] = {"conv1": self.bn1.num_features}
        for name in STAGES[1:]:
            self.channels[name] = getattr(self, name)[-1].bn2.num_features
        self.last = STAGES[-1]  # the deepest stage computed

    def truncate(self, last: str) -> Backbone:
        """Drop the stages after `last`, weights and all; forward then returns the stages up to
        `last` only. Returns self."""
        keep = stage_modules(last)
        for name in STAGES[1:]:
            if name not in keep and name in self._modules:
                del self._modules[name]
        self.last = last
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, 3, H, W) -> {"conv1": (B, 64, H/2, W/2), "layer1": (B, 64, H/4, W/4),
        "layer2": (B, 128, H/8, W/8), "layer3": (B, 256, H/16, W/16), "layer4": (B, 512, H/32, W/32)}."""
        features = {"conv1": self.relu(self.bn1(self.conv1(x)))}
        if self.last == "conv1":
            return features
        x = self.maxpool(features["conv1"])
        for name in STAGES[1 : STAGES.index(self.last) + 1]:
            x = getattr(self, name)(x)
            features[name] = x
        return features
