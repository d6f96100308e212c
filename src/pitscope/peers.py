"""Peers: anomalib's PaDiM and PatchCore on pitscope's split, image size and ResNet-18 weights.

What practitioners run today, for the benchmark tables: anomalib's own torch models, fed the
same normalised images as pitscope's detector, with the backbone's weights taken from
`pitscope.models.build_resnet18(cfg.model.weights)` — so "none" gives the very random ResNet-18
that an untrained pitscope network of the same seed starts from, and "imagenet" (or a local file)
the same ImageNet weights — rather than from timm's download. The anomaly maps are divided by
their own mean when `score.map_normalisation` is image_mean, and are taken raw otherwise (the
normalisations with an image-score factor need pitscope's image threshold); the image scores
are anomalib's.

anomalib is an optional extra (`pip install 'pitscope[bench]'`), imported only when a peer is
built; nothing else in pitscope or its tests needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pitscope.config import Config
from pitscope.data.types import Sample
from pitscope.models.backbone import build_resnet18
from pitscope.tensors import iterate_batches

INSTALL_HINT = "pip install 'pitscope[bench]'"
PADIM_LAYERS = ["layer1", "layer2", "layer3"]  # anomalib's PaDiM defaults
PADIM_FEATURES = 100  # PaDiM's random channel subset for ResNet-18
PATCHCORE_LAYERS = ["layer2", "layer3"]  # anomalib's PatchCore defaults
PATCHCORE_NEIGHBOURS = 9
CORESET_RATIO = 0.1  # anomalib's default share of patch features PatchCore keeps


def require_anomalib() -> None:
    """Import anomalib, or raise ImportError saying how to install it."""
    try:
        import anomalib  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"the PaDiM and PatchCore peers need anomalib, which is not installed: {INSTALL_HINT}"
        ) from exc


def _padim() -> nn.Module:
    from anomalib.models.image.padim.torch_model import PadimModel

    return PadimModel(backbone="resnet18", layers=PADIM_LAYERS, pre_trained=False, n_features=PADIM_FEATURES)


def _patchcore() -> nn.Module:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    return PatchcoreModel(
        layers=PATCHCORE_LAYERS, backbone="resnet18", pre_trained=False, num_neighbors=PATCHCORE_NEIGHBOURS
    )


# peer name -> builder of anomalib's torch model (random weights; ours are loaded afterwards). Any:
# PadimModel and PatchcoreModel each have attributes of their own, and anomalib is untyped here.
PEERS: dict[str, Callable[[], Any]] = {"padim": _padim, "patchcore": _patchcore}


def _load_resnet18(extractor: nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Copy a torchvision ResNet-18 state dict into anomalib's timm feature extractor (the same key
    names); every tensor the extractor has must be found."""
    own = extractor.state_dict()
    missing = [key for key in own if key not in source or source[key].shape != own[key].shape]
    if missing:
        raise ValueError(f"anomalib's ResNet-18 does not match torchvision's: no weights for {missing[:5]}")
    extractor.load_state_dict({key: source[key] for key in own})


class PeerModel:
    """An anomalib model behind the `fit` / `score_dataset` calls of pitscope's Detector.

    name: a key of PEERS. cfg: the run's config (seed, weights, batch size, map normalisation).
    coreset_ratio: PatchCore's share of the training patch features kept in its memory bank.
    """

    def __init__(self, name: str, cfg: Config, coreset_ratio: float = CORESET_RATIO):
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEERS)}")
        require_anomalib()
        self.name = name
        self.cfg = cfg
        self.coreset_ratio = coreset_ratio
        torch.manual_seed(cfg.seed)  # weights "none": the random ResNet-18 pitscope's network of this seed starts from
        resnet18 = build_resnet18(cfg.model.weights).state_dict()
        self.model = PEERS[name]()
        _load_resnet18(self.model.feature_extractor.feature_extractor, resnet18)
        if name == "padim":  # PaDiM's channel subset, drawn from a seeded generator, not Python's global RNG
            generator = torch.Generator().manual_seed(cfg.seed)
            n = self.model.n_features_original
            self.model.idx = torch.randperm(n, generator=generator)[:PADIM_FEATURES].sort().values

    def _batches(self, dataset: Sequence[Sample], desc: str, progress: bool):
        return iterate_batches(dataset, range(len(dataset)), self.cfg.score.batch_size, desc, progress)

    @torch.no_grad()
    def fit(self, dataset: Sequence[Sample], progress: bool = True) -> PeerModel:
        """Fill the memory bank with the defect-free `dataset`, then fit PaDiM's Gaussians or
        subsample PatchCore's coreset. Returns self."""
        self.model.train()  # anomalib's models gather features in training mode; its extractor stays in eval
        for _, x in self._batches(dataset, f"{self.name}: features", progress):
            self.model(x)
        if self.name == "padim":  # `fit` in anomalib 2.7, `fit_gaussian` in later releases
            (getattr(self.model, "fit_gaussian", None) or self.model.fit)()
        else:
            self.model.subsample_embedding(self.coreset_ratio)
        self.model.eval()
        return self

    @torch.no_grad()
    def score_dataset(self, dataset: Sequence[Sample], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and maps (N, H, W) float32 of every image of `dataset`."""
        self.model.eval()
        scores, maps = [], []
        for _, x in self._batches(dataset, f"{self.name}: scoring", progress):
            out = self.model(x)
            amap = out.anomaly_map.reshape(x.shape[0], *x.shape[-2:])  # (B, H, W)
            if self.cfg.score.map_normalisation == "image_mean":
                amap = amap / amap.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
            scores.append(out.pred_score.reshape(-1).float().numpy())
            maps.append(amap.float().numpy())
        return np.concatenate(scores), np.concatenate(maps)
