"""Fitting a Detector's two scorers and calibrating its two thresholds on defect-free training
images (the paper's §5), as functions of the detector; `Detector.fit` and its other fitting
methods call them.

Threshold: the `score.threshold_quantile` quantile of image scores of defect-free training images
that the scoring Gaussian did not see. `score.calibration_fraction` of the training images are held
back from fitting the scorers (`split_calibration`). By default (`score.threshold_from:
out_of_fold`) every training image is scored out of fold: by the scorers refitted on the other
folds (`calibration_folds`), each as large as the fitted one, so the quantile rests on all the
images rather than on the few held back (at 0.99 and 63 held-back images, it is one image's
score). For `image_method: embedding` that is the image Gaussian; for `map_max` with
`pixel_method: padim`, the pixel Gaussians, refitted from running sums less those of the fold (one
more pass of feature extraction over the training images). `held_back` uses the held-back images
only, as does map_max with the other pixel methods. (With `score.recompute_batchnorm`, the
BatchNorm statistics come from the fitting images (`recompute_batchnorm`), so their out-of-fold
scores are not quite as unseen as the held-back ones.) The pixel threshold that outlines the
predicted defect region is the `score.pixel_threshold_quantile` quantile of the map values of the
held-back images. `fit_scorers` writes one calibration record (`metadata["calibration"]`),
described in a line by `describe_calibration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from pitscope.config import SCORE_FACTORS, Config
from pitscope.data.types import Sample
from pitscope.scoring import (
    GaussianScorer,
    PatchGaussianScorer,
    StandardisedSumScorer,
    out_of_fold_block_distances,
    out_of_fold_scores,
    pixel_threshold_of,
)
from pitscope.seeding import numpy_rng
from pitscope.tensors import images_to_batch, iterate_batches
from pitscope.thresholds import CalibrationRecord, set_thresholds

STANDARDISATION_FOLDS = 10  # folds of a standardised image score whose threshold has no folds


class Detector(Protocol):
    """What fitting uses of a `pitscope.inference.Detector` (named so, without importing it)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def net(self) -> Any: ...
    @property
    def image_scorer(self) -> GaussianScorer | StandardisedSumScorer: ...
    @property
    def pixel_scorer(self) -> Any: ...
    @property
    def defect_probe(self) -> Any: ...
    @property
    def threshold(self) -> torch.Tensor: ...
    @property
    def pixel_threshold(self) -> torch.Tensor: ...
    @property
    def metadata(self) -> dict: ...

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]: ...

    def _score(
        self,
        x: torch.Tensor,
        embedding: torch.Tensor | None,
        patches: torch.Tensor | None,
        seg_logits: torch.Tensor | None,
        pixel_scorer: PatchGaussianScorer | None = None,
        by_score: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _times_score(self, maps: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


HIGHEST = 5  # training images with the highest out-of-fold scores, named in the calibration record
# Quantiles of the scores the image threshold is taken of, kept in the calibration record: the
# image threshold another score.threshold_quantile would give, read without fitting again (the
# pixel threshold, which maps with an image-score factor scale by the image threshold, is not).
QUANTILE_GRID = (0.5, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 0.999)


def _name(sample: Sample, index: int) -> str:
    """A training image's file name, or its index when it has no file."""
    return Path(sample.path).name if getattr(sample, "path", None) else f"#{index}"


def describe_calibration(record: dict) -> str:
    """One line on where a fit's image threshold came from (metadata["calibration"])."""
    if record.get("method") == "out_of_fold":
        return f"{record['quantile']:g} quantile of {record['images']} training images scored out of fold, {record['folds']} folds"
    held = "held-back" if record.get("held_back") else "fitting"
    return f"{record['quantile']:g} quantile of {record['images']} {held} images"


def split_calibration(detector: Detector, n: int) -> tuple[list[int], list[int]]:
    """Seeded split of n training images into (fit indices, calibration indices)."""
    cfg = detector.cfg
    n_cal = int(round(cfg.score.calibration_fraction * n))
    if n - n_cal < 2:
        n_cal = 0
    order = numpy_rng(cfg.seed, 7).permutation(n).tolist()
    return sorted(order[n_cal:]), sorted(order[:n_cal])


def calibration_folds(detector: Detector, n: int) -> list[list[int]]:
    """Seeded folds of n training images for the out-of-fold threshold: round(1 /
    calibration_fraction) of them (at least 2, at most n), so that the images outside one fold
    are about as many as `split_calibration` fits on (for calibration_fraction up to 0.5). No
    folds when it holds no image back, or when a fold would leave fewer than 2 images to fit."""
    cfg = detector.cfg
    if not split_calibration(detector, n)[1]:
        return []
    k = min(n, max(2, int(round(1.0 / cfg.score.calibration_fraction))))
    if n - -(-n // k) < 2:
        return []
    return _dealt(cfg.seed, 11, n, k)


def standardisation_folds(detector: Detector, n: int) -> list[list[int]]:
    """Seeded folds of n training images for a standardised image score when the threshold has
    none: 10 (fewer for fewer than 10 images, one image each), each leaving at least 2 to fit on."""
    if n < 3:
        raise ValueError(f"score.image_features=layer1+layer4 needs at least 3 training images, got {n}")
    return _dealt(detector.cfg.seed, 13, n, min(n, STANDARDISATION_FOLDS))


def _dealt(seed: int, stream: int, n: int, k: int) -> list[list[int]]:
    """range(n) in a seeded order (`numpy_rng(seed, stream)`), dealt round-robin into k folds."""
    order = numpy_rng(seed, stream).permutation(n).tolist()
    return [sorted(order[i::k]) for i in range(k)]


@torch.no_grad()
def recompute_batchnorm(
    detector: Detector, dataset: Sequence[Sample], indices: Sequence[int], progress: bool = True
) -> None:
    """Set the backbone's BatchNorm running statistics (and the projector's, when the image
    score reads the projection) to their average over `indices` of `dataset` (batches of
    train.batch_size in training mode, every batch weighted alike; a last batch of one image
    joins the one before). Fewer than 2 images leave them as they are."""
    net, cfg = detector.net, detector.cfg
    projector = net.projector if cfg.score.image_features == "projection" else None
    modules: list[nn.Module] = [net.backbone, *([projector] if projector is not None else [])]
    norms = [m for part in modules for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    indices = list(indices)
    if not norms or len(indices) < 2:
        return
    size = cfg.train.batch_size
    chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:  # training-mode BatchNorm needs 2 values a channel
        chunks[-2:] = [chunks[-2] + chunks[-1]]
    device = next(net.parameters()).device
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average instead of an exponential one
    for part in modules:
        part.train()
    try:
        for chunk in tqdm(chunks, desc="batch-norm statistics", disable=not progress, leave=False):
            x = images_to_batch([dataset[i].image for i in chunk]).to(device)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features = net.backbone(x)
            if projector is not None:
                projector(features["layer4"].mean(dim=(2, 3)))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.eval()


def _fit_on(
    detector: Detector, dataset: Sequence[Sample], fit_idx: list[int], keep_moments: bool, device, progress: bool
) -> list[torch.Tensor]:
    """Fit the image scorer and the pixel scorer on dataset[fit_idx]; the image embeddings (float64,
    on the CPU; none for map_max). keep_moments: the pixel Gaussians keep their sums (`finalize`)."""
    score = detector.cfg.score
    pixel_scorer = detector.pixel_scorer
    embeddings = []
    pixel_scorer._moments = None
    for _, x in iterate_batches(dataset, fit_idx, score.batch_size, "fitting scorers", progress):
        embedding, patches, _ = detector._features(x.to(device))
        if score.image_method != "map_max":
            assert embedding is not None, "the features hold an image embedding unless image_method is map_max"
            embeddings.append(embedding.double().cpu())
        if patches is not None:
            pixel_scorer.partial_fit(patches)
    if embeddings:
        detector.image_scorer.fit(torch.cat(embeddings))
    if keep_moments:  # padim: its sums stay for the out-of-fold refits
        pixel_scorer.finalize(keep_moments=True)
    elif score.pixel_method in ("padim", "patch"):
        pixel_scorer.finalize()
    return embeddings


@torch.inference_mode()
def fit_scorers(detector: Detector, dataset: Sequence[Sample], progress: bool = True) -> Detector:
    """Fit both scorers of `detector` on defect-free images and calibrate both thresholds; writes
    metadata["calibration"]. Returns the detector.

    With score.recompute_batchnorm the backbone's BatchNorm statistics are first recomputed on
    the fitting images (not the held-back calibration images)."""
    fit_idx, cal_idx = split_calibration(detector, len(dataset))
    score = detector.cfg.score
    folds = calibration_folds(detector, len(dataset)) if score.threshold_from == "out_of_fold" else []
    # map_max scores out of fold: the pixel Gaussians refitted without each fold, from sums
    oof_maps = bool(folds) and score.image_method == "map_max" and score.pixel_method == "padim"
    if score.recompute_batchnorm:
        with torch.inference_mode(False):
            recompute_batchnorm(detector, dataset, fit_idx, progress)
    detector.net.eval()
    device = next(detector.net.parameters()).device
    pixel_scorer = detector.pixel_scorer
    bs = score.batch_size
    trim = score.fit_trim > 0 and score.pixel_method == "padim"
    embeddings = _fit_on(detector, dataset, fit_idx, oof_maps or trim, device, progress)
    if trim:
        trim_pixel_gaussians(detector, dataset, fit_idx, progress)
    calibration = cal_idx if cal_idx else fit_idx
    held_scores, maps, held_embeddings, held_moments = [], [], [], None
    for _, x in iterate_batches(dataset, calibration, bs, "calibrating", progress):
        x = x.to(device)
        features = detector._features(x)
        s, m = detector._score(x, *features, by_score=False)
        held_scores.append(s.cpu())
        maps.append(m.cpu().float())
        if features[0] is not None:
            held_embeddings.append(features[0].double().cpu())
        if oof_maps:
            held_moments = pixel_scorer.moments(_padim_features(features), held_moments)
    oof = None
    image_scorer = detector.image_scorer
    staged = isinstance(image_scorer, StandardisedSumScorer) and score.image_method == "embedding"
    every = None  # every training image's embedding, in dataset order, for the out-of-fold scores
    if (folds or staged) and score.image_method == "embedding":
        every = torch.empty(len(dataset), embeddings[0].shape[1], dtype=torch.float64)
        every[fit_idx] = torch.cat(embeddings)
        if cal_idx:
            every[cal_idx] = torch.cat(held_embeddings)
    if staged:
        assert isinstance(image_scorer, StandardisedSumScorer) and every is not None
        # each block's centre and spread: its out-of-fold distances over every training image (the
        # threshold's folds, else seeded folds of their own); then the held-back scores again
        blocks = out_of_fold_block_distances(
            image_scorer, every, folds or standardisation_folds(detector, len(dataset)), score.shrinkage, score.ridge
        )
        image_scorer.set_standardisation(blocks)
        if folds:
            oof = image_scorer.combine(blocks)
        held = torch.cat(held_embeddings).to(image_scorer.centre_.device)
        held_scores = [image_scorer.score(held).cpu()]
    elif folds and every is not None:
        oof = out_of_fold_scores(every, folds, score.shrinkage, score.ridge)
    q = score.threshold_quantile
    record: CalibrationRecord = {
        "method": "held_back",
        "images": len(calibration),
        "held_back": bool(cal_idx),
        "quantile": q,
    }
    scores = torch.cat(held_scores).double()
    if oof_maps:
        kept = pixel_scorer._moments
        assert kept is not None and held_moments is not None, "finalize kept the sums; calibration added to them"
        total = kept.combined(held_moments)
        pixel_scorer.release_moments()
        del held_moments
        oof = out_of_fold_map_scores(detector, dataset, folds, total, progress)
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
    record = {
        **record,
        "threshold": None,
        "pixel_quantile": score.pixel_threshold_quantile,
        "pixel_rule": score.pixel_threshold_from,
        "pixel_threshold": None,
        "score_quantiles": {f"{p:g}": float(torch.quantile(scores, p)) for p in QUANTILE_GRID},
    }
    # the image threshold first: maps with an image-score factor are scaled by it before the pixel quantile
    set_thresholds(detector, record, image=float(torch.quantile(scores, q)))
    held_maps = torch.cat(maps)  # (n, H, W) of the calibration images
    if score.map_normalisation in SCORE_FACTORS and score.image_method != "map_max":
        held_maps = detector._times_score(held_maps, torch.cat(held_scores))
    pixel = pixel_threshold_of(held_maps.numpy(), score.pixel_threshold_quantile, score.pixel_threshold_from)
    set_thresholds(detector, record, pixel=pixel)
    return detector


@torch.inference_mode()
def trim_pixel_gaussians(detector: Detector, dataset: Sequence[Sample], fit_idx: list[int], progress: bool) -> None:
    """Fit the pixel Gaussians again without, at each row (map cell and channel group), the
    score.fit_trim share of dataset[fit_idx] furthest from the first fit there, by squared
    Mahalanobis distance. Needs the pixel scorer finalized with its sums kept; releases them.

    Two passes over the photos: the distances (rows x photos, float32), then the sums of the
    samples left out, taken from the kept sums."""
    pixel_scorer = detector.pixel_scorer
    kept = pixel_scorer._moments
    assert kept is not None, "the first fit kept its sums"
    n = len(fit_idx)
    left_out = int(round(detector.cfg.score.fit_trim * n))
    if left_out == 0 or n - left_out < 2:
        pixel_scorer.release_moments()
        return
    device = next(detector.net.parameters()).device
    bs = detector.cfg.score.batch_size
    distances = []
    for _, x in iterate_batches(dataset, fit_idx, bs, "trimming: distances", progress):
        features = detector._features(x.to(device))
        distances.append(pixel_scorer.row_distances(_padim_features(features)).float().cpu())
    every = torch.cat(distances, 1)  # (rows, photos)
    del distances
    # a row keeps its n - left_out nearest samples; ties at the cut are kept
    cut = every.kthvalue(n - left_out, dim=1).values  # (rows,)
    out, start = kept.empty(), 0
    for chunk, x in iterate_batches(dataset, fit_idx, bs, "trimming: refit", progress):
        features = detector._features(x.to(device))
        far = every[:, start : start + len(chunk)] > cut[:, None]
        out = pixel_scorer.moments(_padim_features(features), out, far.to(device))
        start += len(chunk)
    pixel_scorer.release_moments()
    pixel_scorer._from_moments(kept.combined(out, -1))


@torch.inference_mode()
def out_of_fold_map_scores(
    detector: Detector, dataset: Sequence[Sample], folds: list[list[int]], total, progress: bool
) -> torch.Tensor:
    """map_max scores (N,) of every training image, each by pixel Gaussians refitted from the
    sums `total` over all N images less those of its fold."""
    device = next(detector.net.parameters()).device
    scores = torch.empty(len(dataset), dtype=torch.float64)
    for fold in tqdm(folds, desc="out-of-fold maps", disable=not progress, leave=False):
        batches, part = [], total.empty()
        for chunk, x in iterate_batches(dataset, fold, detector.cfg.score.batch_size, "", False):
            x = x.to(device)
            features = detector._features(x)
            part = detector.pixel_scorer.moments(_padim_features(features), part)
            batches.append((chunk, x, features))
        scorer = detector.pixel_scorer.refitted(total.combined(part, -1))
        for chunk, x, features in batches:
            scores[chunk] = detector._score(x, *features, pixel_scorer=scorer)[0].double().cpu()
    return scores


def _padim_features(features: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
    """The stacked stage features (B, C, h, w) of `scoring_features`'s output, for the PaDiM
    sums of out-of-fold map scores (pixel_method padim, which always gives them)."""
    patches = features[1]
    assert patches is not None, "pixel_method padim gives stacked stage features"
    return patches
