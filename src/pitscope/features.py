"""The features that scoring reads from the network: one function, used by every caller.

`scoring_features` runs as much of the network as the scoring settings (`cfg.score`) read: the
whole network for the segmentation map, else the backbone (and the projector when the image score
reads the projection), then stacks the PaDiM stages or embeds CutPaste's crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pitscope.config import Config
from pitscope.models.network import DoubleSelfSupervisedNet, ScoringNetwork
from pitscope.patches import patch_embeddings


def scoring_features(
    net: DoubleSelfSupervisedNet | ScoringNetwork, cfg: Config, x: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """x (B, 3, H, W) normalised -> (image embedding (B, 512 or projector_hidden) or None for
    image_method map_max, stacked patch features (B, C, h, w) for PaDiM or crop embeddings
    (B, 512, gh, gw) for "patch" or None, segmentation logits (B, h', w') or None). The image
    embedding is the pooled layer4, its projection, or the pooled layer1 and layer4 side by side
    (`score.image_features`)."""
    score = cfg.score
    project = score.image_features == "projection"
    if score.pixel_method == "segmentation":
        out = net(x)
        features, seg_logits = out.features, out.seg_logits
        embedding = out.projection if project else out.embedding
        if score.image_features == "layer1+layer4":
            embedding = torch.cat([out.features["layer1"].mean(dim=(2, 3)), out.embedding], dim=1)  # (B, 64 + 512)
    else:  # the other training heads are not needed: the backbone gives all else that scoring uses
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = net.backbone(x)
        embedding, seg_logits = None, None  # map_max: no image embedding
        if score.image_method != "map_max":
            embedding = features["layer4"].mean(dim=(2, 3))  # (B, 512) as the net's
            if score.image_features == "layer1+layer4":
                embedding = torch.cat([features["layer1"].mean(dim=(2, 3)), embedding], dim=1)  # (B, 64 + 512)
            elif project:
                projector = net.projector
                assert projector is not None, "the config refuses image_features=projection without model.classify"
                embedding = projector(embedding)  # (B, projector_hidden), as the net's projection
    stacked = None
    if score.pixel_method == "padim":
        stages = [features[name] for name in score.pixel_stages]
        size = stages[0].shape[-2:]
        stacked = torch.cat(
            [
                s if s.shape[-2:] == size else F.interpolate(s, size=size, mode="bilinear", align_corners=False)
                for s in stages
            ],
            dim=1,
        )  # (B, sum of channels, h, w)
    elif score.pixel_method == "patch":
        stacked = patch_embeddings(net.backbone, x, score.patch_size, score.patch_stride)
    return embedding, stacked, seg_logits
