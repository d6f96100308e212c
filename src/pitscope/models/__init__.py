"""The network of the paper (fig. 3) and its parts, in plain torch."""

from pitscope.models.backbone import STAGES, Backbone, build_resnet18, imagenet_cache_path
from pitscope.models.decoder import HogDecoder
from pitscope.models.heads import Classifier, Projector
from pitscope.models.mscm import (
    MASKS,
    ChannelAttention,
    FeatureDropout,
    MaskedSplitConv,
    NoMask,
    RectangleMask,
    build_mask,
)
from pitscope.models.network import (
    HOG_FEATURES,
    TARGET_FEATURES,
    DoubleSelfSupervisedNet,
    NetOutput,
    count_parameters,
)

__all__ = [
    "MASKS",
    "HOG_FEATURES",
    "STAGES",
    "TARGET_FEATURES",
    "Backbone",
    "ChannelAttention",
    "Classifier",
    "DoubleSelfSupervisedNet",
    "FeatureDropout",
    "HogDecoder",
    "MaskedSplitConv",
    "NetOutput",
    "NoMask",
    "Projector",
    "RectangleMask",
    "build_mask",
    "build_resnet18",
    "count_parameters",
    "imagenet_cache_path",
]
