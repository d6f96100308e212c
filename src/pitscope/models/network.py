"""The double self-supervised network (paper fig. 3), built from a `ModelConfig`.

    x (B, 3, H, W) -> backbone f -> features of every stage
      image branch: layer4 -> global average pool -> embedding (B, 512)
                    -> projector g -> projection (B, 512) -> classifier W -> logits
      pixel branch: features[mscm_stage] -> mask (MSCM eps) -> CAM phi -> HOG decoder h
                    -> target_pred (B, 3780)

The Mahalanobis image scorer models the projection by default, or the embedding taken before
the projector (`score.image_features`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from pitscope.config import ModelConfig
from pitscope.models.backbone import Backbone
from pitscope.models.decoder import HogDecoder
from pitscope.models.heads import Classifier, Projector
from pitscope.models.hog import HOG_DIM, RGB_SIZE
from pitscope.models.mscm import ChannelAttention, build_mask
from pitscope.models.segmentation import SegmentationHead
from pitscope.models.sspcab import SSPCAB, insert_sspcab

HOG_FEATURES = HOG_DIM  # 15 x 7 blocks x 36 values: the 128 x 64 pedestrian-window HOG
# cfg.target -> length of the vector the decoder predicts; "none" has no pixel branch. The "rgb"
# target (table 6) is the input shrunk to 3 x 35 x 36 = 3780 values, the HOG's length.
TARGET_FEATURES: dict[str, int] = {"hog": HOG_FEATURES, "rgb": 3 * RGB_SIZE[0] * RGB_SIZE[1]}
HEADS = ("binary", "multiclass")


class NetOutput(NamedTuple):
    """Everything one forward pass gives.

    logits:      (B,) for the binary head, (B, 1 + n_kinds) for the multiclass one;
                 None when cfg.classify is False.
    target_pred: (B, TARGET_FEATURES[cfg.target]); None when cfg.target is "none".
    embedding:   (B, 512) globally average-pooled layer4, before the projector.
    projection:  (B, projector_hidden) after the projector; None when cfg.classify is False.
    features:    the backbone's stages, see `Backbone.forward`.
    seg_logits:  (B, h, w) pseudo-defect logits at the first segment stage's resolution; None
                 unless cfg.segment.
    sspcab:      (block input, block output), both (B, 512, h, w), for the SSPCAB loss; None
                 unless cfg.sspcab.
    """

    logits: torch.Tensor | None
    target_pred: torch.Tensor | None
    embedding: torch.Tensor
    projection: torch.Tensor | None
    features: dict[str, torch.Tensor]
    seg_logits: torch.Tensor | None = None
    sspcab: tuple[torch.Tensor, torch.Tensor] | None = None


class DoubleSelfSupervisedNet(nn.Module):
    """Backbone, image branch (projector + classifier) and pixel branch (mask + CAM + decoder).

    n_kinds is the number of pseudo-defect kinds; it sizes the "multiclass" head (normal plus
    one class per kind, CutPaste's 3-way with noise and scar). A branch switched off in the
    config (`classify: false`, `target: none`) has no modules, so no unused parameters.
    """

    def __init__(self, cfg: ModelConfig, n_kinds: int = 1):
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(f"unknown head {cfg.head!r}; valid: {', '.join(HEADS)}")
        if cfg.target != "none" and cfg.target not in TARGET_FEATURES:
            raise ValueError(f"unknown target {cfg.target!r}; valid: {', '.join([*TARGET_FEATURES, 'none'])}")
        if n_kinds < 1:
            raise ValueError(f"n_kinds must be at least 1, got {n_kinds}")
        self.cfg = cfg
        self.backbone = Backbone(cfg.weights)
        self.embedding_dim = self.backbone.channels["layer4"]

        self.projector: Projector | None = None
        self.classifier: Classifier | None = None
        if cfg.classify:
            self.projector = Projector(self.embedding_dim, cfg.projector_hidden, cfg.projector_layers)
            n_classes = 1 if cfg.head == "binary" else 1 + n_kinds
            self.classifier = Classifier(self.projector.out_dim, n_classes)

        self.mask: nn.Module | None = None
        self.attention: ChannelAttention | None = None
        self.decoder: HogDecoder | None = None
        if cfg.target != "none":
            if cfg.mscm_stage not in self.backbone.channels:
                raise ValueError(f"unknown mscm_stage {cfg.mscm_stage!r}; valid: {', '.join(self.backbone.channels)}")
            channels = self.backbone.channels[cfg.mscm_stage]
            self.mask = build_mask(cfg.mask_type, channels, cfg.mscm_dilation)
            self.attention = ChannelAttention(channels, cfg.se_reduction)
            self.decoder = HogDecoder(channels, TARGET_FEATURES[cfg.target])

        self.segmenter: SegmentationHead | None = None
        if cfg.segment:
            self.segmenter = SegmentationHead(self.backbone.channels, cfg.segment_stages)

        if cfg.sspcab:
            insert_sspcab(self.backbone)

    @property
    def sspcab(self) -> SSPCAB | None:
        """The SSPCAB block inside the backbone's last stage, or None."""
        block = self.backbone.layer4[-1].conv1
        return block if isinstance(block, SSPCAB) else None

    def forward(self, x: torch.Tensor) -> NetOutput:
        """x (B, 3, H, W), ImageNet-normalised -> NetOutput."""
        sspcab: list[tuple[torch.Tensor, torch.Tensor]] = []
        block = self.sspcab
        if block is None:
            features = self.backbone(x)
        else:  # the block sits inside a torchvision BasicBlock: a hook, for this call only, hands out its input and output
            handle = block.register_forward_hook(lambda module, args, output: sspcab.append((args[0], output)))
            try:
                features = self.backbone(x)
            finally:
                handle.remove()
        embedding = features["layer4"].mean(dim=(2, 3))  # (B, 512, h, w) -> (B, 512)

        logits = projection = None
        if self.projector is not None and self.classifier is not None:
            projection = self.projector(embedding)  # (B, projector_hidden)
            logits = self.classifier(projection)  # (B,) or (B, 1 + n_kinds)

        target_pred = None
        if self.mask is not None and self.attention is not None and self.decoder is not None:
            masked = self.attention(self.mask(features[self.cfg.mscm_stage]))  # (B, C, h, w)
            target_pred = self.decoder(masked)  # (B, TARGET_FEATURES[target])

        seg_logits = self.segmenter(features) if self.segmenter is not None else None  # (B, h, w)
        return NetOutput(
            logits, target_pred, embedding, projection, features, seg_logits, sspcab[0] if sspcab else None
        )


class ScoringNetwork(nn.Module):
    """The part of a trained network that a detector's scoring reads when it reads backbone
    stages only: the backbone up to `last`, no heads. What a model file of such a detector keeps."""

    projector = None  # as a DoubleSelfSupervisedNet without its image branch

    def __init__(self, backbone: Backbone, last: str):
        super().__init__()
        self.backbone = backbone.truncate(last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone(x)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of `model` (only those with requires_grad if trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
