"""A detector's two thresholds and the record of how they were set (`metadata["calibration"]`).

Three writers set them: the fit (`scorer_fitting.fit_scorers`), `pitscope calibrate`
(`calibration.calibrate(..., apply=True)`) and the service (`serve.threshold.store_threshold`,
PUT /threshold). Each builds the fields of its own record; `set_thresholds` fills the detector's
buffers and writes the record, so that a threshold changes in one way only.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict

import torch


class Detector(Protocol):
    """What setting thresholds uses of a `pitscope.inference.Detector` (named so, without importing it)."""

    @property
    def threshold(self) -> torch.Tensor: ...
    @property
    def pixel_threshold(self) -> torch.Tensor: ...
    @property
    def metadata(self) -> dict: ...


class CalibrationRecord(TypedDict, total=False):
    """How a detector's thresholds were set, as `metadata["calibration"]` holds it (JSON-serialisable).

    Every writer's record holds "threshold" and "pixel_threshold"; the other keys are its own.
    """

    # the fit (`fit_scorers`)
    method: str  # "held_back" or "out_of_fold": whose scores the image quantile was taken of
    images: int  # images whose scores set the image threshold (calibrate: defect-free images scored)
    folds: int  # out_of_fold: folds the training images were scored in
    quantile: float  # the quantile of their scores that is the image threshold
    held_back: bool  # images were held back from fitting the scorers
    highest: list[dict[str, Any]]  # out_of_fold: [{"image": name, "score": s}] of the highest scores
    pixel_images: int  # out_of_fold: images whose maps set the pixel threshold
    pixel_rule: str  # score.pixel_threshold_from: which map values the pixel quantile is taken of
    score_quantiles: dict[str, float]  # {"0.95": s, ...}: quantiles of those scores (`QUANTILE_GRID`)
    probe: dict[str, int]  # score.defect_probe: {"photos", "marked_positions", "defect_free_images"} it was fitted on
    # every writer; None given to `set_thresholds`: the detector's value after the fill
    threshold: float | None  # the image threshold
    pixel_quantile: float  # the quantile of the maps' values that is the pixel threshold
    pixel_threshold: float | None  # the map value that outlines the predicted regions
    # `pitscope calibrate` and PUT /threshold
    source: str  # "pitscope calibrate" or "set by hand (PUT /threshold)"
    defect_images: int  # calibrate with defective images: how many were scored
    f1_threshold: float  # calibrate with defective images: the F1-optimal image threshold
    pixel_f1_threshold: float  # calibrate with masks: the F1-optimal pixel threshold
    previous: dict[str, float]  # the thresholds before: {"threshold", and calibrate "pixel_threshold"}
    set_at: str  # PUT /threshold: when, ISO 8601 in UTC
    replaces: dict[str, Any] | None  # PUT /threshold: the record it replaced, less its own "replaces"


def set_thresholds(
    detector: Detector, record: CalibrationRecord, image: float | None = None, pixel: float | None = None
) -> CalibrationRecord | None:
    """Set the detector's image and pixel thresholds (those given) and record how.

    `metadata["calibration"]` becomes a copy of `record` in which a "threshold" or
    "pixel_threshold" that is None or missing holds the detector's value after the fill (a key
    the record holds keeps its place). Returns the record it replaced (None when there was none),
    so that a writer whose change fails can put it back.
    """
    if image is not None:
        detector.threshold.fill_(image)
    if pixel is not None:
        detector.pixel_threshold.fill_(pixel)
    written = CalibrationRecord(**record)
    if written.get("threshold") is None:
        written["threshold"] = float(detector.threshold)
    if written.get("pixel_threshold") is None:
        written["pixel_threshold"] = float(detector.pixel_threshold)
    replaced = detector.metadata.get("calibration")
    detector.metadata["calibration"] = written
    return replaced
