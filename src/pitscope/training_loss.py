"""What one training step learns from: pairs of a normal image and its pseudo-defective copy, and
the joint loss over them (paper eq. 1-5).

L = L_CE + lambda * L_MSE, plus the segmentation and SSPCAB terms when the network has those heads.
The pseudo-defect of image i in epoch e is drawn from numpy_rng(seed, e, i).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pitscope.augment import PseudoDefects
from pitscope.config import Config
from pitscope.data.types import Sample
from pitscope.models.hog import hog_features, rgb_target
from pitscope.models.network import NetOutput
from pitscope.models.segmentation import focal_loss
from pitscope.models.sspcab import reconstruction_loss
from pitscope.seeding import numpy_rng
from pitscope.tensors import denormalise, image_to_tensor


class PseudoDefectPairs(Dataset):
    """Item i of epoch e: (normal (3,H,W), pseudo-defective (3,H,W), mask (H,W), kind).

    Indexed by (e, i), or by i alone for the epoch last given to set_epoch. With `crop`, the
    normal image is first a random crop x crop square of the sample (drawn from the item's own
    seeded generator), so H = W = crop. In the maker's first augment.opening_epochs epochs the
    pseudo-defect is strong Perlin noise alone (`opening_maker`), labelled as the maker's noise."""

    def __init__(self, dataset: Sequence[Sample], maker: PseudoDefects, seed: int, crop: int | None = None):
        self.dataset = dataset
        self.maker = maker
        self.seed = seed
        self.crop = crop
        self.epoch = 0
        self.opening_epochs = maker.cfg.opening_epochs
        self.opening = opening_maker(maker) if self.opening_epochs else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        normal = self.dataset[index].image
        rng = numpy_rng(self.seed, epoch, index)
        if self.crop is not None:
            h, w = normal.shape[:2]
            if self.crop > min(h, w):
                raise ValueError(f"train.crop_size {self.crop} is larger than a training image ({h} x {w})")
            top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
            normal = normal[top : top + self.crop, left : left + self.crop]
        if self.opening is not None and epoch < self.opening_epochs:
            image, mask, _ = self.opening(normal, rng)
            kind = 1 + self.maker.kinds.index("noise")
        else:
            image, mask, kind = self.maker(normal, rng)
        return (
            image_to_tensor(normal),
            image_to_tensor(image),
            torch.from_numpy(mask.astype(np.float32)),
            kind,
        )


def opening_maker(maker: PseudoDefects) -> PseudoDefects:
    """The pseudo-defects of the opening epochs (augment.opening_epochs): Perlin noise alone,
    its texture weighing 0.5-1 over the photo."""
    return PseudoDefects(replace(maker.cfg, kinds=["noise"], alpha_min=0.0, alpha_max=0.5))


def pixel_target(cfg: Config, x: torch.Tensor) -> torch.Tensor | None:
    """The pixel branch's target for normalised input x (B, 3, H, W): (B, 3780) or None."""
    if cfg.model.target == "none":
        return None
    with torch.autocast(x.device.type, enabled=False):  # targets in float32 under mixed precision
        images = denormalise(x.float())  # (B, 3, H, W) in [0, 1]
        if cfg.model.target == "hog":
            return hog_features(images)
        return rgb_target(images)


def compute_loss(
    model: Callable[[torch.Tensor], NetOutput], cfg: Config, batch
) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint loss of one batch of pairs; returns (loss, its parts as floats). model: the network,
    or its DistributedDataParallel or compiled wrapper."""
    normal, defective, mask, kind = batch
    b = normal.shape[0]
    x = torch.cat([normal, defective])  # (2B, 3, H, W)
    out: NetOutput = model(x)
    parts: dict[str, float] = {}
    loss = x.new_zeros(())
    if out.logits is not None:
        if cfg.model.head == "binary":
            labels = torch.cat([x.new_zeros(b), x.new_ones(b)])  # (2B,)
            ce = F.binary_cross_entropy_with_logits(out.logits.reshape(-1), labels)
        else:
            labels = torch.cat([torch.zeros(b, dtype=torch.long), kind.long()]).to(x.device)  # (2B,)
            ce = F.cross_entropy(out.logits, labels)
        loss = loss + ce
        parts["ce"] = float(ce.detach())
    if out.target_pred is not None:
        with torch.no_grad():
            hog = pixel_target(cfg, x)  # (2B, 3780)
        if hog is None:
            raise ValueError("the network predicts a pixel target but model.target is none")
        mse = F.mse_loss(out.target_pred.float(), hog)
        loss = loss + cfg.model.loss_lambda * mse
        parts["mse"] = float(mse.detach())
    if out.seg_logits is not None:
        logits = F.interpolate(out.seg_logits[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        target = torch.cat([torch.zeros_like(mask), mask])  # (2B, H, W): normal images have no defect
        seg = focal_loss(logits, target)
        loss = loss + cfg.model.segment_weight * seg
        parts["seg"] = float(seg.detach())
    if out.sspcab is not None:
        rec = reconstruction_loss(*out.sspcab)
        loss = loss + cfg.model.sspcab_weight * rec
        parts["sspcab"] = float(rec.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts
