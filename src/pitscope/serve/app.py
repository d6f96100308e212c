"""The FastAPI app around one Detector: `create_app`, its `/predict`, `/model` and `/health`, and
the scoring of one upload under the detector's lock. (No `from __future__ import annotations`:
FastAPI reads the endpoints' annotations, which name classes imported inside `create_app`.)"""

import base64
import io
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pitscope import __version__
from pitscope.serve.access import guarded_by
from pitscope.serve.history_routes import add_history_routes, add_no_history_routes
from pitscope.serve.page import add_page_routes
from pitscope.serve.threshold import add_threshold_route
from pitscope.serve.uploads import MIB, RejectedImage, decode_image, read_upload, upload_meta

if TYPE_CHECKING:
    import re

    from fastapi import FastAPI

    from pitscope.history.recorder import Recorder
    from pitscope.inference import Detector

MAX_REGIONS = 50  # regions listed in one answer, largest first; region_count counts them all
PREDICT_BODY = {  # /predict's request body in the OpenAPI schema: the multipart field `file`
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def _model_name(detector: "Detector") -> str:
    """metadata["name"] if the model has one, else its data format (and MVTec category)."""
    data = detector.cfg.data
    default = f"pitscope-{data.format}" + (f"-{data.category}" if data.category else "")
    return detector.metadata.get("name") or default


def heatmap_image(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """(H, W) anomaly map -> (H, W, 3) uint8 jet colours on a fixed scale, 0 to 2 x pixel_threshold.

    The same scale on every image, so colours compare across uploads: the pixel threshold (the
    edge of the predicted region on the map the regions are cut from) is mid-scale
    (green), values at twice it or more are dark red. The map shown lies at or below the map the
    regions are cut from at every pixel (the background step lowers each blob to its height above
    its surroundings), so a region's peak may show below mid-scale.
    """
    from pitscope.visualize import heatmap

    return heatmap(anomaly_map, vmin=0.0, vmax=2.0 * max(float(pixel_threshold), 1e-12))


def stored_evaluation(model_path: str | Path) -> dict | None:
    """The evaluation `pitscope train --evaluate`, `evaluate` and `demo` wrote beside a model
    (eval/metrics.json): its metrics, counts, threshold and rates at the threshold, and the
    file it came from; None when there is none or it cannot be read."""
    import json

    path = Path(model_path).parent / "eval" / "metrics.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        return None
    keep = ("metrics", "counts", "threshold", "at_threshold", "image_auroc_interval")
    return {**{k: record[k] for k in keep if k in record}, "file": f"{path.parent.name}/{path.name}"}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Served:
    """What one app serves and under which limits (`create_app`'s arguments, checked)."""

    detector: "Detector"
    lock: threading.Lock
    model: dict  # name and version, in every answer
    api_key: str | None
    max_upload_bytes: int
    max_pixels: int
    model_path: str | Path | None
    recorder: "Recorder | None"


def score_upload(
    served: Served, data: bytes, threshold: float | None, pictures: str | None, meta: dict | None = None
) -> tuple[dict, dict[str, bytes]]:
    """Decode, score under the lock, describe and record one upload (runs in the threadpool).

    pictures: None, "overlay", "heatmap" or "both": which PNGs to draw.
    meta: what the history records beside the result: source, part, name, captured_at.
    """
    from fastapi import HTTPException

    detector, recorder = served.detector, served.recorder
    started = time.perf_counter()
    try:
        image = decode_image(data, served.max_pixels)  # (H, W, 3) uint8
    except RejectedImage as exc:
        raise HTTPException(exc.status_code, exc.detail) from None
    version = None
    if recorder is not None:
        version = recorder.thresholds()
        if threshold is None:
            threshold = version.image_threshold
    with served.lock:
        if version is not None:  # another worker (or pitscope calibrate --db) may have stored new ones
            if float(detector.threshold) != version.image_threshold:
                detector.threshold.fill_(version.image_threshold)
            if float(detector.pixel_threshold) != version.pixel_threshold:
                detector.pixel_threshold.fill_(version.pixel_threshold)
        prediction = detector.predict(image, threshold=threshold)
    region, regions = prediction.outline()  # (H, W) bool, largest first
    result = {
        "score": float(prediction.score),
        "is_defective": bool(prediction.is_defective),
        "threshold": float(prediction.threshold),
        "pixel_threshold": float(prediction.pixel_threshold),
        "width": image.shape[1],
        "height": image.shape[0],
        "defect_fraction": float(region.mean()),
        "defect_px": int(region.sum()),
        "region_count": len(regions),
        "regions": [r.to_dict() for r in regions[:MAX_REGIONS]],
        "peak": prediction.peak(),
        "model": served.model,
        "recorded": False,
    }
    if recorder is not None and version is not None and meta is not None:
        keep_map = recorder.store.image_store == "copy"
        map_png = _png(heatmap_image(prediction.anomaly_map, prediction.pixel_threshold)) if keep_map else None
        done = recorder.record(
            prediction,
            source=meta["source"],
            data=data,
            width=image.shape[1],
            height=image.shape[0],
            defect_px=int(region.sum()),
            duration_ms=1000 * (time.perf_counter() - started),
            threshold=version,
            part=meta.get("part"),
            name=meta.get("name"),
            captured_at=meta.get("captured_at"),
            suffix=Path(meta.get("name") or "upload.png").suffix or ".png",
            map_png=map_png,
        )
        result.update(
            recorded=done.recorded,
            inspection_id=done.inspection_id,
            part=meta.get("part"),
            threshold_version=version.version,
            alerts=list(done.alerts),
        )
        if not done.recorded:
            result["not_recorded_because"] = done.reason
    pngs = {}
    if pictures in ("overlay", "both"):
        from pitscope.visualize import overlay

        pngs["overlay"] = _png(overlay(image, prediction.anomaly_map, prediction.pixel_threshold, region=region))
    if pictures in ("heatmap", "both"):
        pngs["heatmap"] = _png(heatmap_image(prediction.anomaly_map, prediction.pixel_threshold))
    return result, pngs


def describe_model(served: Served) -> dict:
    """GET /model's answer: name, version, input size, thresholds, calibration, training, limits,
    metrics (stored in the model, else beside it) and, with a history, its threshold version."""
    detector, recorder, model_path = served.detector, served.recorder, served.model_path
    info = {
        **served.model,
        "image_size": detector.cfg.data.image_size,
        # (height, width) the network sees; image_size is its height
        "image_shape": list(detector.cfg.data.shape),
        "threshold": float(detector.threshold),
        "pixel_threshold": float(detector.pixel_threshold),
        "calibration": detector.metadata.get("calibration"),
        "training": detector.metadata.get("training"),
        # the photos with marked defects that trained the model (none: defect-free photos only)
        "labelled_defects": [d["name"] for d in detector.metadata.get("labelled_defects", [])],
        # true: those photos fitted the defect probe that draws the maps (`pitscope finetune`)
        "defect_probe": detector.defect_probe is not None and detector.defect_probe.is_fitted,
        # the defect-free photos fitted beside the training photos (`pitscope refit --references`), by file name
        "reference_photos": [Path(r["path"]).name for r in detector.metadata.get("references", [])],
        "data_format": detector.cfg.data.format,
        "limits": {"max_upload_bytes": served.max_upload_bytes, "max_pixels": served.max_pixels},
        # PUT /threshold: allowed only with an API key; saved to the model file if it is known.
        "threshold_saving": {"allowed": served.api_key is not None, "to_file": model_path is not None},
    }
    if "metrics" in detector.metadata:
        info["metrics"] = detector.metadata["metrics"]
    elif model_path is not None and (evaluation := stored_evaluation(model_path)) is not None:
        info["metrics"] = evaluation
    if recorder is not None:
        version = recorder.thresholds()
        info["threshold"] = version.image_threshold
        info["history"] = {
            "database": recorder.store.display_name,
            "model_id": recorder.model_id,
            "threshold_version": version.version,
            "writable": recorder.store.writable,
            "rule": None if recorder.rule is None else recorder.rule.describe(),
        }
    return info


def _new_app() -> "FastAPI":
    """A FastAPI app whose every error answer is JSON {"detail": "one readable line"}."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's list of errors as one readable line, so every error detail is a string."""
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        """A generic 500; Starlette then re-raises `exc`, so the server (uvicorn) logs its traceback."""
        return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)

    return FastAPI(
        title="pitscope",
        version=__version__,
        description="Surface-defect detection: upload an image, get its anomaly score and defect region.",
        exception_handlers={RequestValidationError: validation_error, Exception: server_error},
    )


def add_predict_route(app, served: Served, guarded: list, part_from=None, time_from=None) -> None:
    """POST /predict on `app`."""
    from typing import Literal

    from fastapi import Query, Request
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    @app.post(
        "/predict",
        dependencies=guarded,
        openapi_extra=PREDICT_BODY,
        responses={
            200: {
                "content": {"image/png": {}},
                "description": "JSON, or with ?map=png the overlay PNG, ?map=heatmap the heatmap PNG, "
                "?map=embed JSON with both as data: URLs",
            }
        },
    )
    async def predict(
        request: Request,
        threshold: float | None = Query(None, allow_inf_nan=False, description="overrides the calibrated threshold"),
        map_: Literal["png", "heatmap", "embed"] | None = Query(
            None,
            alias="map",
            description="png: the image with the predicted region in red instead of JSON; heatmap: the "
            "anomaly map in colour (0 to 2 x pixel_threshold); embed: JSON with both as PNG data: URLs",
        ),
        part: str | None = Query(
            None,
            description="the part or position inspected (else the form field "
            "`part`, else read from the file name when the service has --part-from)",
        ),
        captured_at: str | None = Query(
            None,
            description="when the photo was taken, ISO 8601 (else the form "
            "field `captured_at`, else the file name with --time-from)",
        ),
        source: Literal["http", "page"] = Query("http", description="who sends it: a client, or the page"),
    ):
        """Score one uploaded image (multipart field `file`).

        JSON: score, is_defective, threshold, pixel_threshold, width, height, defect_fraction and
        defect_px (the predicted region: connected areas above pixel_threshold, at least
        min_region_fraction of the photo, as a share and in pixels), region_count, regions (the
        largest 50: area_px, fraction, box [x0, y0, x1, y1) in the photo's pixels, peak), peak (where the
        map is highest: x, y, value) and model. With
        ?map=png (the overlay) or ?map=heatmap the answer is that PNG instead, with the score in
        X-Pitscope-* headers; ?map=embed adds "overlay" and "heatmap" PNG data: URLs to the JSON.
        recorded says whether the inspection is in the history (with a database: also
        inspection_id, part, threshold_version, alerts raised, and not_recorded_because).
        """
        data, filename, fields = await read_upload(request, served.max_upload_bytes)
        meta = None
        if served.recorder is not None:
            meta = upload_meta(source, part, captured_at, filename, fields, data, part_from, time_from)
        drawn = {"png": "overlay", "heatmap": "heatmap", "embed": "both"}
        pictures = None if map_ is None else drawn[map_]
        result, pngs = await run_in_threadpool(score_upload, served, data, threshold, pictures, meta)
        if map_ is None:
            return result
        if map_ == "embed":
            encoded = {k: "data:image/png;base64," + base64.b64encode(v).decode("ascii") for k, v in pngs.items()}
            return {**result, **encoded}
        headers = {
            "X-Pitscope-Score": repr(result["score"]),
            "X-Pitscope-Is-Defective": str(result["is_defective"]).lower(),
            "X-Pitscope-Defect-Fraction": repr(result["defect_fraction"]),
            "X-Pitscope-Recorded": str(result["recorded"]).lower(),
        }
        if result.get("inspection_id") is not None:
            headers["X-Pitscope-Inspection-Id"] = str(result["inspection_id"])
        return Response(pngs[drawn[map_]], media_type="image/png", headers=headers)


def create_app(
    detector: "Detector",
    api_key: str | None = None,
    max_upload_bytes: int = 20 * MIB,
    max_pixels: int = 50_000_000,
    model_path: str | Path | None = None,
    recorder: "Recorder | None" = None,
    part_from: "re.Pattern | None" = None,
    time_from: "re.Pattern | None" = None,
) -> "FastAPI":
    """The FastAPI app serving `detector` (fitted: its threshold must be calibrated).

    api_key: when set, /predict, /model and PUT /threshold need it in the X-API-Key header
        (401 otherwise); /health and the page's files stay open. Without it PUT /threshold is
        refused (403).
    max_upload_bytes: largest accepted image file (413 above it).
    max_pixels: largest accepted width x height (422 above it, checked before decoding).
    model_path: the file `detector` was loaded from; PUT /threshold rewrites it (atomically) so
        a new threshold survives a restart. None: a new threshold lives in memory only.
    recorder: the inspection history (`pitscope.history.recorder.Recorder`): every scored upload
        is recorded, PUT /threshold stores a threshold version, and GET /inspections, /parts,
        /parts/{part}/trend, /alerts and POST /alerts/{id}/ack answer. None: nothing is recorded
        and those answer 404.
    part_from, time_from: patterns reading an upload's part id and capture time from its file
        name when the request gives none (`pitscope.history.names`).
    """
    if not math.isfinite(float(detector.threshold)) or not math.isfinite(float(detector.pixel_threshold)):
        raise ValueError("the detector has no calibrated threshold: fit it (or load a saved model) first")
    if api_key == "":
        raise ValueError("api_key must not be empty (pass None for no key)")
    if max_upload_bytes <= 0 or max_pixels <= 0:
        raise ValueError(f"max_upload_bytes and max_pixels must be positive, got {max_upload_bytes} and {max_pixels}")

    detector.eval()
    model = {"name": _model_name(detector), "version": detector.metadata.get("version") or __version__}
    served = Served(detector, threading.Lock(), model, api_key, max_upload_bytes, max_pixels, model_path, recorder)
    guarded = guarded_by(api_key)
    app = _new_app()
    add_page_routes(app)

    @app.get("/health")
    def health() -> dict:
        """Liveness: answers without the API key and without touching the model."""
        return {"status": "ok"}

    @app.get("/model", dependencies=guarded)
    def model_info() -> dict:
        """What is served: name, version, input size, thresholds, calibration, training, limits."""
        with served.lock:  # a consistent view while PUT /threshold changes threshold and calibration
            return describe_model(served)

    add_predict_route(app, served, guarded, part_from, time_from)
    add_threshold_route(app, detector, served.lock, api_key, model_path, recorder, guarded)
    if recorder is not None:
        add_history_routes(app, recorder, guarded, served.lock)
    else:
        add_no_history_routes(app, guarded)
    return app
