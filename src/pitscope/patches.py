"""Patch-level anomaly maps, CutPaste's localisation (Li et al. 2021, section 4.3).

Square crops of `patch_size` pixels, `stride` apart (64 and 16 at 256 x 256 by default: a
13 x 13 grid of 169 crops), are each embedded by the same network as whole images (the pooled
layer4 of a crop); one Gaussian, shared by every grid position, is fitted on the crops of the
defect-free images; a crop's score is its Mahalanobis distance; a pixel's score is the mean score
of the crops that cover it. The caller then smooths the map with a Gaussian (CutPaste's
receptive-field upsampling with Gaussian smoothing; `score.smoothing_sigma`).

Compute: every crop is a forward pass of (patch_size / image_size)^2 of an image's cost, so
the default grid costs about 169 / 16 = 10.6 whole-image passes per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pitscope.scoring import PatchGaussianScorer

CHUNK = 256  # crops per forward pass


def patch_starts(size: int, patch_size: int, stride: int) -> list[int]:
    """Start offsets of the crops along one side: every `stride`, plus one flush with the far
    edge when the stride does not land there, so every pixel is covered."""
    if not 1 <= patch_size <= size:
        raise ValueError(f"patch_size must lie in 1..{size}, got {patch_size}")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    starts = list(range(0, size - patch_size + 1, stride))
    if starts[-1] != size - patch_size:
        starts.append(size - patch_size)
    return starts


def extract_patches(x: Tensor, patch_size: int, stride: int) -> Tensor:
    """x (B, C, H, W) -> crops (B, gh, gw, C, P, P), crop (i, j) starting at (rows[i], cols[j])
    of `patch_starts`."""
    rows = patch_starts(x.shape[-2], patch_size, stride)
    cols = patch_starts(x.shape[-1], patch_size, stride)
    crops = [x[:, :, r : r + patch_size, c : c + patch_size] for r in rows for c in cols]  # gh*gw x (B, C, P, P)
    return torch.stack(crops, dim=1).unflatten(1, (len(rows), len(cols)))


@torch.no_grad()
def patch_embeddings(backbone: torch.nn.Module, x: Tensor, patch_size: int, stride: int) -> Tensor:
    """The pooled layer4 of every crop of x (B, 3, H, W), as a grid (B, D, gh, gw): the embedding
    the network gives a whole image. `backbone` returns a dict of stages (`Backbone`); crops go
    through it CHUNK at a time.
    """
    crops = extract_patches(x, patch_size, stride)  # (B, gh, gw, 3, P, P)
    b, gh, gw = crops.shape[:3]
    flat = crops.flatten(0, 2)  # (B*gh*gw, 3, P, P)
    embedded = torch.cat(
        [backbone(flat[i : i + CHUNK])["layer4"].mean(dim=(2, 3)) for i in range(0, len(flat), CHUNK)]
    )  # (N, D)
    return embedded.unflatten(0, (b, gh, gw)).permute(0, 3, 1, 2)  # (B, D, gh, gw)


def patch_map(scores: Tensor, size: tuple[int, int], patch_size: int, stride: int) -> Tensor:
    """Crop scores (B, gh, gw) -> pixel map (B, H, W): each pixel the mean of the crops covering it."""
    rows = patch_starts(size[0], patch_size, stride)
    cols = patch_starts(size[1], patch_size, stride)
    if tuple(scores.shape[1:]) != (len(rows), len(cols)):
        raise ValueError(f"scores are a {tuple(scores.shape[1:])} grid, expected {(len(rows), len(cols))} for {size}")
    total = scores.new_zeros(scores.shape[0], *size)  # (B, H, W)
    count = scores.new_zeros(size)  # (H, W)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            total[:, r : r + patch_size, c : c + patch_size] += scores[:, i, j, None, None]
            count[r : r + patch_size, c : c + patch_size] += 1
    return total / count


class SharedGaussianScorer(PatchGaussianScorer):
    """One Gaussian shared by every position of a feature grid (B, D, gh, gw), over all D channels.

    The `PatchGaussianScorer` contract and state at a single position: `partial_fit` takes each
    grid position of each image as one sample, `score_map` returns (B, gh, gw) distances.
    """

    def __init__(self, shrinkage: str = "ledoit_wolf", ridge: float = 0.01):
        super().__init__(shrinkage, ridge, n_channels=None)

    @staticmethod
    def _samples(features: Tensor) -> Tensor:
        """(B, D, gh, gw) -> (B*gh*gw, D, 1, 1)."""
        return features.permute(0, 2, 3, 1).flatten(0, 2)[:, :, None, None]

    def partial_fit(self, features: Tensor) -> SharedGaussianScorer:
        """Accumulate every grid position of features (B, D, gh, gw) as a sample. Returns self."""
        if features.ndim != 4:
            raise ValueError(f"expected a feature grid of shape (B, D, gh, gw), got {tuple(features.shape)}")
        super().partial_fit(self._samples(features))
        return self

    def score_map(self, features: Tensor, squared: bool = False) -> Tensor:
        """Mahalanobis distance of every position of features (B, D, gh, gw): (B, gh, gw)."""
        b, _, gh, gw = features.shape
        return super().score_map(self._samples(features), squared).reshape(b, gh, gw)
