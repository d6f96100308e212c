"""Fitting a Detector's defect probe (`pitscope.defect_probe`) on photos with marked defects, after
its pixel Gaussians are fitted, and calibrating the pixel threshold on the probe's maps.

The positives are the marked photos' positions, weighted by the share of each position's cell
the mask covers; the negatives are their unmarked positions and every position of half the
held-back defect-free training images (the even ones; the Gaussians never saw them, so their
distances are as large as an unseen photo's). The other half of the held-back images sets the
pixel threshold, by the detector's own rule, on maps none of their positions trained.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pitscope.data.labelled import LabelledDefect
from pitscope.data.types import Sample
from pitscope.defect_probe import DefectProbe, probe_inputs
from pitscope.scorer_fitting import Detector, split_calibration
from pitscope.scoring import pixel_threshold_of
from pitscope.seeding import numpy_rng
from pitscope.tensors import images_to_batch, iterate_batches, resize_image
from pitscope.thresholds import CalibrationRecord, set_thresholds

log = logging.getLogger(__name__)

# Unmarked positions kept per marked photo and per defect-free image (drawn at random): enough to
# hold every kind of surface, few enough for the L-BFGS to see them all at once.
NEGATIVES_PER_IMAGE = 4096


def probe_inputs_of(detector: Detector, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised images (B, 3, H, W) -> the probe's inputs (B, h, w, D) and the map size (h, w)."""
    _, patches, _ = detector._features(x)
    assert patches is not None, "the defect probe reads the PaDiM stage features"
    distances = detector.pixel_scorer.score_map(patches)  # (B, h, w)
    return probe_inputs(patches.float(), distances.float()), tuple(distances.shape[-2:])


def _draw(n: int, k: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.as_tensor(np.sort(rng.choice(n, size=min(k, n), replace=False)))


@torch.inference_mode()
def marked_samples(
    detector: Detector, defects: Sequence[LabelledDefect], size: tuple[int, int], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's samples from marked photos resized to `size` (height, width): every position
    the mask touches and NEGATIVES_PER_IMAGE others of each photo. (inputs (N, D), targets (N,):
    the marked share of each position's cell), on the CPU."""
    device = next(detector.net.parameters()).device
    inputs, targets = [], []
    for defect in defects:
        x = images_to_batch([resize_image(defect.image, size)]).to(device)
        features, (h, w) = probe_inputs_of(detector, x)
        mask = torch.as_tensor(defect.mask, dtype=torch.float32)[None, None]
        share = F.adaptive_avg_pool2d(F.interpolate(mask, size=size, mode="area"), (h, w))
        share = share.flatten().to(device)  # (h*w,) the marked share of each position's cell
        marked = torch.nonzero(share > 0).flatten()
        unmarked = torch.nonzero(share == 0).flatten()
        unmarked = unmarked[_draw(len(unmarked), NEGATIVES_PER_IMAGE, rng).to(unmarked.device)]
        keep = torch.cat([marked, unmarked])
        inputs.append(features.reshape(h * w, -1)[keep].cpu())
        targets.append(share[keep].cpu())
    return torch.cat(inputs), torch.cat(targets)


@torch.inference_mode()
def unmarked_samples(
    detector: Detector, dataset: Sequence[Sample], indices: Sequence[int], rng: np.random.Generator, progress: bool
) -> torch.Tensor:
    """NEGATIVES_PER_IMAGE random positions' probe inputs of each defect-free image
    dataset[indices]: (N, D) on the CPU."""
    device = next(detector.net.parameters()).device
    inputs = []
    for _, x in iterate_batches(dataset, indices, detector.cfg.score.batch_size, "probe negatives", progress):
        features, (h, w) = probe_inputs_of(detector, x.to(device))
        for flat in features.reshape(len(x), h * w, -1):
            inputs.append(flat[_draw(h * w, NEGATIVES_PER_IMAGE, rng).to(flat.device)].cpu())
    return torch.cat(inputs)


@torch.inference_mode()
def fit_defect_probe(
    detector: Detector, defects: Sequence[LabelledDefect], dataset: Sequence[Sample], progress: bool = True
) -> DefectProbe:
    """Fit `detector.defect_probe` on the marked photos `defects` and the held-back images of its
    defect-free training `dataset`, then set its pixel threshold on the probe's maps; the image
    threshold stays. Needs fitted pixel Gaussians (pixel_method padim). Returns the probe."""
    probe = detector.defect_probe
    if probe is None:
        raise ValueError("this detector has no defect probe: set score.defect_probe=true")
    if not defects:
        raise ValueError("the defect probe needs at least one photo with marked defects")
    _, held = split_calibration(detector, len(dataset))
    if len(held) < 2:
        raise ValueError(f"the defect probe needs held-back training images; {len(dataset)} hold back {len(held)}")
    negatives = held[0::2]  # the odd ones set the pixel threshold (`set_pixel_threshold`)
    rng = numpy_rng(detector.cfg.seed, 11)
    height, width = dataset[0].image.shape[:2]
    marked_x, marked_y = marked_samples(detector, defects, (height, width), rng)
    free_x = unmarked_samples(detector, dataset, negatives, rng, progress)
    x_all, y_all = torch.cat([marked_x, free_x]), torch.cat([marked_y, torch.zeros(len(free_x))])
    probe.fit(x_all, y_all)
    fitted_on = {
        "photos": len(defects),
        "marked_positions": int((y_all > 0).sum()),
        "defect_free_images": len(negatives),
    }
    log.info("defect probe fitted: %s", fitted_on)
    set_pixel_threshold(detector, dataset, progress, probe=fitted_on)
    return probe


@torch.inference_mode()
def set_pixel_threshold(
    detector: Detector, dataset: Sequence[Sample], progress: bool = True, probe: dict | None = None
) -> None:
    """Set the detector's pixel threshold by its own rule on its maps of the odd held-back images
    of `dataset` (those the probe's negatives leave out), recording `probe` (what it was fitted on)."""
    _, held = split_calibration(detector, len(dataset))
    calibration = held[1::2]
    device = next(detector.net.parameters()).device
    maps = []
    for _, x in iterate_batches(dataset, calibration, detector.cfg.score.batch_size, "pixel threshold", progress):
        x = x.to(device)
        maps.append(detector._score(x, *detector._features(x))[1].cpu().float())  # as served
    score = detector.cfg.score
    record: CalibrationRecord = {
        **detector.metadata["calibration"],
        "pixel_images": len(calibration),
        "pixel_quantile": score.pixel_threshold_quantile,
        "pixel_rule": score.pixel_threshold_from,
        "pixel_threshold": None,
    }
    record.pop("probe", None)
    if probe is not None:
        record["probe"] = probe
    pixel = pixel_threshold_of(torch.cat(maps).numpy(), score.pixel_threshold_quantile, score.pixel_threshold_from)
    set_thresholds(detector, record, pixel=pixel)
