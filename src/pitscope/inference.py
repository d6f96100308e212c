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
image threshold. The predicted regions are the connected parts of the map above the pixel
threshold (`pitscope.defect_regions`, `Prediction.regions`).
Threshold: the `score.threshold_quantile` quantile of image scores of defect-free training images
that the scoring Gaussian did not see. `score.calibration_fraction` of the training images are held
back from fitting the scorers. By default (`score.threshold_from: out_of_fold`) every training image
is scored out of fold: by the scorers refitted on the other folds, each as large as the fitted
one, so the quantile rests on all the images rather than on the few held back (at 0.99 and 63
held-back images, it is one image's score). For `image_method: embedding` that is the image
Gaussian; for `map_max` with `pixel_method: padim`, the pixel Gaussians, refitted from running sums
less those of the fold (one more pass of feature extraction over the training images). `held_back`
uses the held-back images only, as does map_max with the other pixel methods. (With
`score.recompute_batchnorm`, the BatchNorm statistics come from the fitting images, so their
out-of-fold scores are not quite as unseen as the held-back ones.) The pixel threshold that
outlines the predicted defect region is the
`score.pixel_threshold_quantile` quantile of the map values of the held-back images.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from pitscope.config import Config, from_dict
from pitscope.data.imageio import read_image, to_rgb_array
from pitscope.data.types import Sample
from pitscope.model_file import read_model_file, save_model_file, scored_stage
from pitscope.models.backbone import STAGES
from pitscope.models.network import DoubleSelfSupervisedNet, ScoringNetwork
from pitscope.patches import SharedGaussianScorer, patch_embeddings, patch_map
from pitscope.prediction import Prediction
from pitscope.scoring import (
    GaussianScorer,
    PatchGaussianScorer,
    gaussian_smooth,
    out_of_fold_scores,
    pixel_threshold_of,
)
from pitscope.seeding import numpy_rng
from pitscope.tensors import images_to_batch, resize_image
from pitscope.upgrade import upgrade

HIGHEST = 5  # training images with the highest out-of-fold scores, named in the calibration record


def _name(sample: Sample, index: int) -> str:
    """A training image's file name, or its index when it has no file."""
    return Path(sample.path).name if getattr(sample, "path", None) else f"#{index}"


def describe_calibration(record: dict) -> str:
    """One line on where a fit's image threshold came from (metadata["calibration"])."""
    if record.get("method") == "out_of_fold":
        return f"{record['quantile']:g} quantile of {record['images']} training images scored out of fold, {record['folds']} folds"
    held = "held-back" if record.get("held_back") else "fitting"
    return f"{record['quantile']:g} quantile of {record['images']} {held} images"


def iterate_batches(
    dataset: Sequence[Sample], indices: Sequence[int], batch_size: int, desc: str, progress: bool
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, normalised images (B, 3, H, W)) over dataset[indices] with a progress bar."""
    starts = range(0, len(indices), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = list(indices[start : start + batch_size])
        yield chunk, images_to_batch([dataset[i].image for i in chunk])


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
        self.image_scorer = GaussianScorer(cfg.score.shrinkage, cfg.score.ridge)
        self.pixel_scorer = (
            SharedGaussianScorer(cfg.score.shrinkage, cfg.score.ridge)
            if cfg.score.pixel_method == "patch"
            else PatchGaussianScorer(
                cfg.score.shrinkage, cfg.score.ridge, n_channels=cfg.score.pixel_channels, seed=cfg.seed
            )
        )
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))
        self.metadata: dict = {}

    # -- features ---------------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x (B, 3, H, W) -> (image embedding (B, 512 or projector_hidden), stacked patch features
        (B, C, h, w) for PaDiM or crop embeddings (B, 512, gh, gw) for "patch" or None, segmentation
        logits (B, h', w') or None). The image embedding is the pooled layer4 or its projection
        (`score.image_features`)."""
        project = self.cfg.score.image_features == "projection"
        if self.cfg.score.pixel_method == "segmentation":
            out = self.net(x)
            features, seg_logits = out.features, out.seg_logits
            embedding = out.projection if project else out.embedding
        else:  # the other training heads are not needed: the backbone gives all else that scoring uses
            if self.cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features = self.net.backbone(x)
            embedding, seg_logits = None, None  # map_max: no image embedding
            if self.cfg.score.image_method != "map_max":
                embedding = features["layer4"].mean(dim=(2, 3))  # (B, 512) as the net's
                if project:
                    projector = self.net.projector
                    assert projector is not None, "the config refuses image_features=projection without model.classify"
                    embedding = projector(embedding)  # (B, projector_hidden), as the net's projection
        stacked = None
        if self.cfg.score.pixel_method == "padim":
            stages = [features[name] for name in self.cfg.score.pixel_stages]
            size = stages[0].shape[-2:]
            stacked = torch.cat(
                [
                    s if s.shape[-2:] == size else F.interpolate(s, size=size, mode="bilinear", align_corners=False)
                    for s in stages
                ],
                dim=1,
            )  # (B, sum of channels, h, w)
        elif self.cfg.score.pixel_method == "patch":
            stacked = patch_embeddings(self.net.backbone, x, self.cfg.score.patch_size, self.cfg.score.patch_stride)
        return embedding, stacked, seg_logits

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) normalised -> (image scores (B,), anomaly maps (B, H, W))."""
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
        by_score=False leaves out the image-score factor of map_normalisation image_mean_score
        (the fit applies it once the threshold is known)."""
        scores = None
        if self.cfg.score.image_method != "map_max":
            assert embedding is not None, "_features gives an image embedding unless image_method is map_max"
            scores = self.image_scorer.score(embedding)  # (B,)
        if patches is not None:
            maps = (pixel_scorer or self.pixel_scorer).score_map(patches)  # (B, h, w) Mahalanobis distances
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
        elif by_score and self.cfg.score.map_normalisation == "image_mean_score":
            maps = self._times_score(maps, scores)
        return scores, maps

    def _times_score(self, maps: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """maps (B, H, W) x image score / image threshold (B,): how anomalous the image is as a whole
        scales where within it, so a defect-free image's map stays low against a pitted one's."""
        return maps * (scores / float(self.threshold)).to(maps.dtype)[:, None, None]

    # -- fitting ----------------------------------------------------------------------------
    def split_calibration(self, n: int) -> tuple[list[int], list[int]]:
        """Seeded split of n training images into (fit indices, calibration indices)."""
        n_cal = int(round(self.cfg.score.calibration_fraction * n))
        if n - n_cal < 2:
            n_cal = 0
        order = numpy_rng(self.cfg.seed, 7).permutation(n).tolist()
        return sorted(order[n_cal:]), sorted(order[:n_cal])

    def calibration_folds(self, n: int) -> list[list[int]]:
        """Seeded folds of n training images for the out-of-fold threshold: round(1 /
        calibration_fraction) of them (at least 2, at most n), so that the images outside one fold
        are about as many as `split_calibration` fits on (for calibration_fraction up to 0.5). No
        folds when it holds no image back, or when a fold would leave fewer than 2 images to fit."""
        if not self.split_calibration(n)[1]:
            return []
        k = min(n, max(2, int(round(1.0 / self.cfg.score.calibration_fraction))))
        if n - -(-n // k) < 2:
            return []
        order = numpy_rng(self.cfg.seed, 11).permutation(n).tolist()
        return [sorted(order[i::k]) for i in range(k)]

    @torch.no_grad()
    def recompute_batchnorm(self, dataset: Sequence[Sample], indices: Sequence[int], progress: bool = True) -> None:
        """Set the backbone's BatchNorm running statistics (and the projector's, when the image
        score reads the projection) to their average over `indices` of `dataset` (batches of
        train.batch_size in training mode, every batch weighted alike; a last batch of one image
        joins the one before). Fewer than 2 images leave them as they are."""
        projector = self.net.projector if self.cfg.score.image_features == "projection" else None
        modules: list[nn.Module] = [self.net.backbone, *([projector] if projector is not None else [])]
        norms = [m for part in modules for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        indices = list(indices)
        if not norms or len(indices) < 2:
            return
        size = self.cfg.train.batch_size
        chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
        if len(chunks) > 1 and len(chunks[-1]) == 1:  # training-mode BatchNorm needs 2 values a channel
            chunks[-2:] = [chunks[-2] + chunks[-1]]
        device = next(self.net.parameters()).device
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average instead of an exponential one
        for part in modules:
            part.train()
        try:
            for chunk in tqdm(chunks, desc="batch-norm statistics", disable=not progress, leave=False):
                x = images_to_batch([dataset[i].image for i in chunk]).to(device)
                if self.cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                features = self.net.backbone(x)
                if projector is not None:
                    projector(features["layer4"].mean(dim=(2, 3)))
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            self.net.eval()

    @torch.inference_mode()
    def fit(self, dataset: Sequence[Sample], progress: bool = True) -> Detector:
        """Fit both scorers on defect-free images and calibrate the threshold. Returns self.

        With score.recompute_batchnorm the backbone's BatchNorm statistics are first recomputed on
        the fitting images (not the held-back calibration images)."""
        fit_idx, cal_idx = self.split_calibration(len(dataset))
        score = self.cfg.score
        folds = self.calibration_folds(len(dataset)) if score.threshold_from == "out_of_fold" else []
        # map_max scores out of fold: the pixel Gaussians refitted without each fold, from sums
        oof_maps = bool(folds) and score.image_method == "map_max" and score.pixel_method == "padim"
        if score.recompute_batchnorm:
            with torch.inference_mode(False):
                self.recompute_batchnorm(dataset, fit_idx, progress)
        self.net.eval()
        device = next(self.net.parameters()).device
        embeddings = []
        self.pixel_scorer._moments = None
        bs = score.batch_size
        for _, x in iterate_batches(dataset, fit_idx, bs, "fitting scorers", progress):
            embedding, patches, _ = self._features(x.to(device))
            if score.image_method != "map_max":
                embeddings.append(embedding.double().cpu())
            if patches is not None:
                self.pixel_scorer.partial_fit(patches)
        if embeddings:
            self.image_scorer.fit(torch.cat(embeddings))
        if oof_maps:  # padim: its sums stay for the out-of-fold refits
            self.pixel_scorer.finalize(keep_moments=True)
        elif score.pixel_method in ("padim", "patch"):
            self.pixel_scorer.finalize()
        calibration = cal_idx if cal_idx else fit_idx
        held_scores, maps, held_embeddings, held_moments = [], [], [], None
        for _, x in iterate_batches(dataset, calibration, bs, "calibrating", progress):
            x = x.to(device)
            features = self._features(x)
            s, m = self._score(x, *features, by_score=False)
            held_scores.append(s.cpu())
            maps.append(m.cpu().float())
            if features[0] is not None:
                held_embeddings.append(features[0].double().cpu())
            if oof_maps:
                held_moments = self.pixel_scorer.moments(_padim_features(features), held_moments)
        q = score.threshold_quantile
        record = {"method": "held_back", "images": len(calibration), "held_back": bool(cal_idx), "quantile": q}
        scores = torch.cat(held_scores).double()
        oof = None
        if folds and score.image_method == "embedding":
            every = torch.empty(len(dataset), embeddings[0].shape[1], dtype=torch.float64)
            every[fit_idx] = torch.cat(embeddings)
            every[cal_idx] = torch.cat(held_embeddings)
            oof = out_of_fold_scores(every, folds, score.shrinkage, score.ridge)
        elif oof_maps:
            kept = self.pixel_scorer._moments
            assert kept is not None and held_moments is not None, "finalize kept the sums; calibration added to them"
            total = kept.combined(held_moments)
            self.pixel_scorer.release_moments()
            del held_moments
            oof = self._out_of_fold_map_scores(dataset, folds, total, progress)
        if oof is not None:
            scores = oof
            top = scores.argsort(descending=True)[:HIGHEST].tolist()
            record = {
                "method": "out_of_fold",
                "images": len(dataset),
                "folds": len(folds),
                "quantile": q,
                "highest": [{"image": _name(dataset[i], i), "score": round(float(scores[i]), 4)} for i in top],
                "pixel_images": len(calibration),
                "held_back": bool(cal_idx),
            }
        self.threshold.fill_(float(torch.quantile(scores, q)))
        held_maps = torch.cat(maps)  # (n, H, W) of the calibration images
        if score.map_normalisation == "image_mean_score" and score.image_method != "map_max":
            held_maps = self._times_score(held_maps, torch.cat(held_scores))
        self.pixel_threshold.fill_(
            pixel_threshold_of(held_maps.numpy(), score.pixel_threshold_quantile, score.pixel_threshold_from)
        )
        self.metadata["calibration"] = {
            **record,
            "threshold": float(self.threshold),
            "pixel_quantile": score.pixel_threshold_quantile,
            "pixel_rule": score.pixel_threshold_from,
            "pixel_threshold": float(self.pixel_threshold),
        }
        return self

    @torch.inference_mode()
    def _out_of_fold_map_scores(
        self, dataset: Sequence[Sample], folds: list[list[int]], total, progress: bool
    ) -> torch.Tensor:
        """map_max scores (N,) of every training image, each by pixel Gaussians refitted from the
        sums `total` over all N images less those of its fold."""
        device = next(self.net.parameters()).device
        scores = torch.empty(len(dataset), dtype=torch.float64)
        for fold in tqdm(folds, desc="out-of-fold maps", disable=not progress, leave=False):
            batches, part = [], total.empty()
            for chunk, x in iterate_batches(dataset, fold, self.cfg.score.batch_size, "", False):
                x = x.to(device)
                features = self._features(x)
                part = self.pixel_scorer.moments(_padim_features(features), part)
                batches.append((chunk, x, features))
            scorer = self.pixel_scorer.refitted(total.combined(part, -1))
            for chunk, x, features in batches:
                scores[chunk] = self._score(x, *features, pixel_scorer=scorer)[0].double().cpu()
        return scores

    @torch.inference_mode()
    def score_dataset(self, dataset: Sequence[Sample], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Scores (N,) and maps (N, H, W) float32 of every image of `dataset`."""
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
        threshold: overrides the calibrated threshold for this call.
        """
        single = not isinstance(inputs, (list, tuple)) and not (isinstance(inputs, np.ndarray) and inputs.ndim == 4)
        items = [inputs] if single else list(inputs)
        t = float(self.threshold) if threshold is None else float(threshold)
        if np.isnan(t):
            raise ValueError("the threshold is NaN (an uncalibrated model?): pass threshold= or run pitscope calibrate")
        self.eval()
        size = self.cfg.data.image_size
        device = next(self.net.parameters()).device
        predictions = []
        for start in range(0, len(items), self.cfg.score.batch_size):
            # decode one batch at a time: a long list of paths never sits in memory at full size
            chunk = [
                read_image(item) if isinstance(item, (str, Path)) else to_rgb_array(item)
                for item in items[start : start + self.cfg.score.batch_size]
            ]
            x = images_to_batch([resize_image(im, size) for im in chunk]).to(device)
            scores, maps = self(x)
            for image, score, amap in zip(chunk, scores.tolist(), maps):
                h, w = image.shape[:2]
                full = F.interpolate(amap[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                predictions.append(
                    Prediction(
                        score,
                        full.float().cpu().numpy(),
                        score > t,
                        t,
                        float(self.pixel_threshold),
                        self.cfg.score.min_region_fraction,
                        self.cfg.score.regions_on,
                    )
                )
        return predictions[0] if single else predictions

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write config, weights, scorers, threshold, metadata and version to one file, atomically
        (the layout: `pitscope.model_file`)."""
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


def _padim_features(features: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
    """The stacked stage features (B, C, h, w) of `Detector._features`'s output, for the PaDiM
    sums of out-of-fold map scores (pixel_method padim, which always gives them)."""
    patches = features[1]
    assert patches is not None, "pixel_method padim gives stacked stage features"
    return patches


def _check_scoring_network(net: ScoringNetwork, cfg: Config) -> None:
    """Refuse settings whose scoring reads more of the network than `net` kept."""
    stage = scored_stage(cfg)
    if stage is None or STAGES.index(stage) > STAGES.index(net.backbone.last):
        raise ValueError(
            f"this model keeps its network only up to {net.backbone.last} (all its scoring reads), so it "
            "cannot be fitted with image_method embedding, another pixel method or deeper pixel stages; "
            "refit the training checkpoint (checkpoint_last.pt) instead, or train again"
        )
