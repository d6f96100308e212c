"""A trained detector: network + fitted Mahalanobis scorers + calibrated threshold.

Image score (`score.image_method`): "embedding" — Mahalanobis distance of an image embedding to a
Gaussian fitted on the defect-free training images (Rippel et al. 2021, SPEC 5): by default
(`score.image_features: projection`) the output of the image branch's projector, which training
shapes to tell normal images from pseudo-defects, or the pooled layer4 it reads (`layer4`);
"map_max" — the largest value of the anomaly map, for small local defects on varied surfaces.
Anomaly map (`score.pixel_method`): "padim" — a Gaussian per spatial position over the stacked
backbone stages `score.pixel_stages`, upsampled to the first stage's resolution (SPEC 5a), with a
random subset of `score.pixel_channels` channels; "segmentation" — the probability map of the
head trained to segment pseudo-defects (SPEC 5b, needs `model.segment`); "patch" — CutPaste's
patch-level scores: crops embedded by the network, one Gaussian over all crops, each pixel the
mean score of the crops covering it (`pitscope.patches`). Any map is upsampled
to the model's input size and smoothed with `score.smoothing_sigma` (in pixels at that size).
With `score.map_normalisation: image_mean` (the default) each map is then divided by its own
mean: the map says where, within the image, the surface departs most from the defect-free
Gaussians, while the image score carries how anomalous the image is as a whole; a photo of a
part no training image shows has a raw map high everywhere, which would rank its clean pixels
above the pits of other photos. `image_mean_score` multiplies that by the image score over the
image threshold; `image_score` multiplies the raw map by it, and `image_score_capped` by it up to
1, so that only photos the image decision passes are scaled down. The predicted regions are the connected parts of the map above the pixel
threshold (`pitscope.defect_regions`, `Prediction.regions`). The map shown and ranked pixel by pixel
(`Prediction.anomaly_map`, the pixel metrics of `pitscope.evaluation`) is that map with its broad
background removed (`score.map_background_window`) and each blob narrowed towards its peak
(`score.map_sharpen_window`) when these are set (`pitscope.scoring.shown_maps`);
`forward` and `score_dataset` give the map the regions are cut from, which with
`score.regions_after_background` has the background step and leaves the map shown the narrowing.
Threshold: the `score.threshold_quantile` quantile of image scores of defect-free training images
that the scoring Gaussians did not see; the pixel threshold, a quantile of the held-back maps. With
`score.defect_probe` a classifier fitted on photos with marked defects turns each position's
features and distance into the probability of a defect, and that is the map
(`pitscope.defect_probe`). The features come from `pitscope.features.scoring_features`; fitting
the scorers and calibrating the thresholds, from `pitscope.scorer_fitting` (`Detector.fit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pitscope import scorer_fitting
from pitscope.config import SCORE_FACTORS, Config, from_dict
from pitscope.data.imageio import input_to_rgb
from pitscope.data.types import Sample
from pitscope.defect_probe import DefectProbe
from pitscope.features import scoring_features
from pitscope.model_file import read_model_file, save_model_file, scored_stage
from pitscope.models.backbone import STAGES
from pitscope.models.network import DoubleSelfSupervisedNet, ScoringNetwork
from pitscope.patches import SharedGaussianScorer, patch_map
from pitscope.prediction import Prediction
from pitscope.scoring import (
    GaussianScorer,
    PatchGaussianScorer,
    StandardisedSumScorer,
    gaussian_smooth,
    moved_pixel_threshold,
    region_background,
    remove_background,
    score_factor,
    shown_map,
    shown_steps,
    shows_another_map,
)
from pitscope.tensors import images_to_batch, iterate_batches, resize_image
from pitscope.upgrade import upgrade


class Detector(nn.Module):
    """Network, image scorer, pixel scorer and threshold, saved and loaded as one file."""

    threshold: torch.Tensor  # () buffer: the image threshold
    pixel_threshold: torch.Tensor  # () buffer: the map value that outlines the predicted regions
    net: DoubleSelfSupervisedNet | ScoringNetwork

    def __init__(self, cfg: Config, n_kinds: int, net: DoubleSelfSupervisedNet | ScoringNetwork | None = None):
        super().__init__()
        self.cfg = cfg
        self.n_kinds = n_kinds
        self.net = net if net is not None else DoubleSelfSupervisedNet(cfg.model, n_kinds)
        if isinstance(self.net, ScoringNetwork):
            _check_scoring_network(self.net, cfg)
        if cfg.train.channels_last:  # NHWC: faster convolutions on CPU and GPU; values unchanged
            self.net = self.net.to(memory_format=torch.channels_last)
        self.image_scorer: GaussianScorer | StandardisedSumScorer = (
            StandardisedSumScorer(
                [self.net.backbone.channels[s] for s in ("layer1", "layer4")], cfg.score.shrinkage, cfg.score.ridge
            )
            if cfg.score.image_features == "layer1+layer4"
            else GaussianScorer(cfg.score.shrinkage, cfg.score.ridge)
        )
        self.pixel_scorer = (
            SharedGaussianScorer(cfg.score.shrinkage, cfg.score.ridge)
            if cfg.score.pixel_method == "patch"
            else PatchGaussianScorer(
                cfg.score.shrinkage,
                cfg.score.ridge,
                n_channels=cfg.score.pixel_channels,
                seed=cfg.seed,
                radius=cfg.score.neighbourhood,
                groups=cfg.score.channel_groups,
            )
        )
        # score.defect_probe: a classifier fitted on marked defects draws the maps from the
        # Gaussians' distances and the features (`pitscope.probe_fitting`)
        self.defect_probe = DefectProbe() if cfg.score.defect_probe else None
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))
        self.metadata: dict = {}
        # a network handed over on a GPU (straight from training) keeps its scorers beside it
        parameter = next(self.net.parameters(), None)
        if parameter is not None:
            self.to(parameter.device)

    # -- features ---------------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """x (B, 3, H, W) -> `pitscope.features.scoring_features` of this detector's network."""
        return scoring_features(self.net, self.cfg, x)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) normalised -> (image scores (B,), anomaly maps (B, H, W)): the maps the
        regions are cut from, which `pitscope.scoring.shown_maps` takes to the maps shown."""
        return self._score(x, *self._features(x))

    def _score(
        self,
        x: torch.Tensor,
        embedding: torch.Tensor | None,
        patches: torch.Tensor | None,
        seg_logits: torch.Tensor | None,
        pixel_scorer: PatchGaussianScorer | None = None,
        by_score: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` from the images x and their `_features`; `pixel_scorer` replaces the fitted one;
        by_score=False leaves out the image-score factor of map_normalisation (`SCORE_FACTORS`)
        (the fit applies it once the threshold is known, `predict` with the threshold it is given)."""
        scores = None
        if self.cfg.score.image_method != "map_max":
            assert embedding is not None, "_features gives an image embedding unless image_method is map_max"
            scores = self.image_scorer.score(embedding)  # (B,)
        if patches is not None:
            maps = (pixel_scorer or self.pixel_scorer).score_map(patches)  # (B, h, w) Mahalanobis distances
            if self.defect_probe is not None and self.defect_probe.is_fitted:
                maps = self.defect_probe(patches, maps)  # (B, h, w) P(defect)
            if self.cfg.score.pixel_method == "patch":
                size = (x.shape[-2], x.shape[-1])
                maps = patch_map(maps, size, self.cfg.score.patch_size, self.cfg.score.patch_stride)
        else:
            assert seg_logits is not None, "_features gives segmentation logits where it gives no patch features"
            maps = torch.sigmoid(seg_logits)  # (B, h, w) pseudo-defect probabilities
        maps = F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        maps = gaussian_smooth(maps, self.cfg.score.smoothing_sigma)  # (B, H, W)
        if self.cfg.score.map_normalisation in ("image_mean", "image_mean_score"):
            maps = maps / maps.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)  # where, within the image
        if scores is None:  # map_max
            scores = maps.amax(dim=(1, 2))  # (B,) the strongest local anomaly
        elif by_score and self.cfg.score.map_normalisation in SCORE_FACTORS:
            maps = self._times_score(maps, scores)
        # with score.regions_after_background the regions' map is less its background (a positive
        # factor per map commutes with it, so the factor may come before or after)
        return scores, remove_background(maps, region_background(self.cfg.score))

    def _times_score(self, maps: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """maps (B, H, W) x the factor of `score.map_normalisation` (B,), from the image score over
        the image threshold (`pitscope.scoring.score_factor`): how anomalous the image is as a whole
        scales where within it, so a defect-free image's map stays low against a pitted one's."""
        factor = score_factor(self.cfg.score.map_normalisation, scores, float(self.threshold))
        return maps * factor.to(maps.dtype)[:, None, None]

    # -- fitting ----------------------------------------------------------------------------
    def split_calibration(self, n: int) -> tuple[list[int], list[int]]:
        """Seeded split of n training images into (fit indices, calibration indices)."""
        return scorer_fitting.split_calibration(self, n)

    def calibration_folds(self, n: int) -> list[list[int]]:
        """Seeded folds of n training images for the out-of-fold threshold
        (`pitscope.scorer_fitting.calibration_folds`)."""
        return scorer_fitting.calibration_folds(self, n)

    def recompute_batchnorm(self, dataset: Sequence[Sample], indices: Sequence[int], progress: bool = True) -> None:
        """The backbone's (and projector's) BatchNorm statistics averaged over dataset[indices]
        (`pitscope.scorer_fitting.recompute_batchnorm`)."""
        scorer_fitting.recompute_batchnorm(self, dataset, indices, progress)

    def fit(self, dataset: Sequence[Sample], progress: bool = True) -> Detector:
        """Fit both scorers on defect-free images and calibrate both thresholds
        (`pitscope.scorer_fitting.fit_scorers`). Returns self."""
        scorer_fitting.fit_scorers(self, dataset, progress)
        return self

    @torch.inference_mode()
    def score_dataset(self, dataset: Sequence[Sample], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and maps (N, H, W) float32 of every image of `dataset` (the maps the regions are
        cut from, as `forward`)."""
        self.net.eval()
        device = next(self.net.parameters()).device
        scores, maps = [], []
        for _, x in iterate_batches(dataset, range(len(dataset)), self.cfg.score.batch_size, "scoring", progress):
            s, m = self(x.to(device))
            scores.append(s.float().cpu().numpy())
            maps.append(m.float().cpu().numpy())
        return np.concatenate(scores), np.concatenate(maps)

    # -- prediction -------------------------------------------------------------------------
    @overload
    def predict(self, inputs: str | Path | Image.Image | np.ndarray, threshold: float | None = None) -> Prediction: ...

    @overload
    def predict(self, inputs: list[Any] | tuple[Any, ...], threshold: float | None = None) -> list[Prediction]: ...

    @torch.inference_mode()
    def predict(self, inputs, threshold: float | None = None) -> Prediction | list[Prediction]:
        """Score images given as paths, PIL images or arrays; maps come at each input's own size.

        inputs: one image (a path, a PIL image, an array (H, W), (H, W, 1|3|4), uint8 or uint16),
            a list of them, or an array batch (B, H, W, C). One image gives one Prediction, a
            list or batch gives a list (type checkers take any array for one image: pass
            list(batch) to have a batch typed as a list).
        threshold: overrides the calibrated threshold for this call. Maps with an image-score
            factor (`score.map_normalisation` in `SCORE_FACTORS`) take their factor from it, and
            the pixel threshold moves with it (times calibrated / given), as PUT /threshold moves
            the stored one.
        """
        single = not isinstance(inputs, (list, tuple)) and not (isinstance(inputs, np.ndarray) and inputs.ndim == 4)
        items = [inputs] if single else list(inputs)
        t = float(self.threshold) if threshold is None else float(threshold)
        if np.isnan(t):
            raise ValueError("the threshold is NaN (an uncalibrated model?): pass threshold= or run pitscope calibrate")
        normalisation = self.cfg.score.map_normalisation
        pixel_t = moved_pixel_threshold(normalisation, float(self.threshold), float(self.pixel_threshold), t)
        factored = normalisation in SCORE_FACTORS
        self.eval()
        size = self.cfg.data.shape
        device = next(self.net.parameters()).device
        predictions = []
        for start in range(0, len(items), self.cfg.score.batch_size):
            # decode one batch at a time: a long list of paths never sits in memory at full size
            chunk = [input_to_rgb(item) for item in items[start : start + self.cfg.score.batch_size]]
            x = images_to_batch([resize_image(im, size) for im in chunk]).to(device)
            scores, maps = self._score(x, *self._features(x), by_score=not factored)
            if factored:
                maps = maps * score_factor(self.cfg.score.map_normalisation, scores, t).to(maps.dtype)[:, None, None]
            changed = shows_another_map(self.cfg.score)
            shown = shown_map(maps, *shown_steps(self.cfg.score))  # (B, H, W)
            for image, score, amap, seen in zip(chunk, scores.tolist(), maps, shown):
                h, w = image.shape[:2]
                full = _to_size(amap, (h, w))
                predictions.append(
                    Prediction(
                        score,
                        _to_size(seen, (h, w)) if changed else full,
                        score > t,
                        t,
                        pixel_t,
                        self.cfg.score.min_region_fraction,
                        self.cfg.score.regions_on,
                        self.cfg.score.region_core,
                        self.cfg.score.peak_region_max,
                        full if changed else None,
                    )
                )
        return predictions[0] if single else predictions

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write config, weights, scorers, threshold, metadata and version to one file, atomically
        (the layout: `pitscope.model_file`)."""
        if self.defect_probe is not None and self.defect_probe.inputs != "both":
            raise ValueError("a defect probe over the features alone is for measuring; it is not saved")
        return save_model_file(self, Path(path))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Detector:
        """An unfitted detector around the network of a training checkpoint (checkpoint_last.pt or
        a snapshot): fit it before scoring. metadata["training"] says how far it was trained."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path} is not a pitscope checkpoint: {exc}") from exc
        if not isinstance(state, dict) or "model" not in state or "config" not in state:
            raise ValueError(f"{path} is not a pitscope training checkpoint (a model file? use Detector.load)")
        state = upgrade(state, "checkpoint", source=str(path))
        cfg = from_dict(state["config"])
        cfg.model.weights = "none"
        net = DoubleSelfSupervisedNet(cfg.model, state["n_kinds"])
        net.load_state_dict(state["model"])
        detector = cls(cfg, state["n_kinds"], net=net.eval())
        detector.metadata["training"] = {
            "epochs": state.get("epoch"),
            "steps": state.get("step"),
            "minutes": round(state.get("elapsed_s", 0.0) / 60, 2),
        }
        return detector.to(device).eval()

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Detector:
        """Rebuild a detector from `save`'s file with torch.load(weights_only=True)."""
        state = read_model_file(Path(path), device)
        cfg = from_dict(state["config"])
        cfg.model.weights = "none"  # the saved state holds the trained weights
        detector = cls(cfg, state["n_kinds"])
        if state.get("network"):  # the backbone up to the stage scored, no heads
            detector.net = ScoringNetwork(detector.net.backbone, state["network"]["kept_stage"])
        detector.load_state_dict(state["state_dict"])
        detector.metadata = state.get("metadata", {})
        detector.metadata["version"] = state.get("version")
        return detector.to(device).eval()


def _check_scoring_network(net: ScoringNetwork, cfg: Config) -> None:
    """Refuse settings whose scoring reads more of the network than `net` kept."""
    stage = scored_stage(cfg)
    if stage is None or STAGES.index(stage) > STAGES.index(net.backbone.last):
        raise ValueError(
            f"this model keeps its network only up to {net.backbone.last} (all its scoring reads), so it "
            "cannot be fitted with image_method embedding, another pixel method or deeper pixel stages; "
            "refit the training checkpoint (checkpoint_last.pt) instead, or train again"
        )


def _to_size(amap: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One map (H, W) -> float32 (h, w) numpy, bilinear."""
    return F.interpolate(amap[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].float().cpu().numpy()
