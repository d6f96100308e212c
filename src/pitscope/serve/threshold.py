"""PUT /threshold: a new image threshold, in memory, in the model file and in the history.

Refused (403) when the service has no API key, since anyone on the network could then change what
counts as a defect.
"""

import datetime
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pitscope.config import SCORE_FACTORS
from pitscope.scoring import moved_pixel_threshold
from pitscope.serve.access import key_header
from pitscope.thresholds import CalibrationRecord, set_thresholds

if TYPE_CHECKING:
    from pitscope.history.recorder import Recorder
    from pitscope.inference import Detector

logger = logging.getLogger(__name__)

NO_KEY = (
    "saving a threshold is switched off: this service runs without an API key, so anyone on the "
    "network could change it; restart it with --api-key (or PITSCOPE_API_KEY) to allow saving"
)


def store_threshold(
    detector: "Detector",
    threshold: float,
    model_path: str | Path | None,
    recorder: "Recorder | None",
    given_key: str | None,
) -> dict:
    """Set `detector`'s image threshold, record it in the history and write the model file; the
    caller holds the detector's lock. The history records who by `given_key`'s fingerprint. The previous calibration record is kept under
    metadata["calibration"]["replaces"]. A failed write leaves everything as it was (HTTPException
    503 when the history cannot record it, 500 when the file cannot be written).

    Maps with an image-score factor (`score.map_normalisation` in `SCORE_FACTORS`) are scaled by
    score / threshold, so the pixel threshold moves with the image threshold (times previous /
    new): regions stay as they were on every photo whose factor is score / threshold under both,
    which for image_score_capped are the photos below both thresholds (`pitscope calibrate`
    derives both from photos instead). Such maps need a positive threshold (422)."""
    from fastapi import HTTPException

    previous = float(detector.threshold)
    pixel_previous = float(detector.pixel_threshold)
    pixel = None
    if detector.cfg.score.map_normalisation in SCORE_FACTORS:
        try:
            pixel = moved_pixel_threshold(detector.cfg.score.map_normalisation, previous, pixel_previous, threshold)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
    version = None
    if recorder is not None:
        from pitscope.history.recorder import key_fingerprint
        from pitscope.history.store import HistoryUnavailable

        try:
            version = recorder.set_threshold(
                threshold,
                pixel_previous if pixel is None else pixel,
                by=key_fingerprint(given_key),
                how="PUT /threshold",
            )
        except HistoryUnavailable as exc:
            raise HTTPException(
                503, f"the threshold was not changed: the history cannot record the change ({exc})"
            ) from None
    calibration = detector.metadata.get("calibration")
    if isinstance(calibration, dict):
        calibration = {k: v for k, v in calibration.items() if k != "replaces"}
    record: CalibrationRecord = {
        "source": "set by hand (PUT /threshold)",
        "threshold": threshold,
        "pixel_threshold": None,
        "set_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "previous": {"threshold": previous}
        if pixel is None
        else {"threshold": previous, "pixel_threshold": pixel_previous},
        "replaces": calibration,
    }
    replaced = set_thresholds(detector, record, image=threshold, pixel=pixel)
    if model_path is not None:
        try:
            detector.save(model_path)
        except OSError as exc:
            detector.threshold.fill_(previous)
            detector.pixel_threshold.fill_(pixel_previous)
            detector.metadata["calibration"] = replaced
            if recorder is not None and version is not None:  # the history: the previous one in force again
                recorder.set_threshold(
                    previous,
                    pixel_previous,
                    by="pitscope",
                    how="restored: the model file could not be written",
                )
            logger.exception("could not write %s", model_path)
            reason = exc.strerror or str(exc)
            raise HTTPException(
                500, f"the threshold was not changed: could not write the model file ({reason})"
            ) from None
    answer = {
        "threshold": threshold,
        "pixel_threshold": float(detector.pixel_threshold),
        "previous": previous,
        "saved_to": None if model_path is None else str(model_path),
    }
    if version is not None:
        answer["threshold_version"] = version.version
    return answer


def add_threshold_route(
    app,
    detector: "Detector",
    lock: threading.Lock,
    api_key: str | None,
    model_path: str | Path | None,
    recorder: "Recorder | None",
    guarded: list,
) -> None:
    """PUT /threshold on `app`: needs the API key, refused (403) when the service has none."""
    from fastapi import Depends, HTTPException
    from pydantic import BaseModel, Field

    class ThresholdUpdate(BaseModel):
        threshold: float = Field(allow_inf_nan=False, strict=True, description="the new image threshold")

    def refuse_without_key() -> None:
        if api_key is None:
            raise HTTPException(403, NO_KEY)

    @app.put("/threshold", dependencies=[Depends(refuse_without_key), *guarded])
    def set_threshold(body: ThresholdUpdate, given_key: str | None = Depends(key_header())) -> dict:
        """Store a new image threshold: in memory, and in the model file when the app knows it.

        Needs the API key (403 when the service has none). The previous calibration record is
        kept under metadata["calibration"]["replaces"]. A failed write leaves everything as it was.
        """
        threshold = float(body.threshold)
        with lock:
            answer = store_threshold(detector, threshold, model_path, recorder, given_key)
        logger.info("threshold changed from %r to %r", answer["previous"], threshold)
        return answer
