"""HTTP service around one Detector: `POST /predict`, `GET /model`, `PUT /threshold`, `GET /health`,
and the inspection page at `/` (FastAPI).

Inference is serialised: one Detector instance, one `threading.Lock`, and each request's decode
and scoring run in Starlette's threadpool, so the event loop keeps accepting requests (and
answering /health) while an image is scored. Requests queue on the lock rather than being
batched: a batching queue would pay off mainly on a GPU, and a lock keeps latency simple.

Uploads are untrusted. Before anything is decoded the service checks, in this order: the
Content-Length and the bytes actually streamed against `max_upload_bytes` (413), that the
upload is a PNG, JPEG, BMP or TIFF image (415), and the pixel count the header declares against
`max_pixels` (422, before any pixel is decoded: a decompression bomb costs nothing). Decoding
then refuses truncated or corrupt files (422). Every error is JSON {"detail": "..."}.

The inspection page (`/`, assets under `/static/`) is plain HTML, JS and CSS from the package
folder `pitscope/web/`: nothing is fetched from elsewhere, so it works on a network without
internet, and its Content-Security-Policy forbids any other origin. The page and its assets are
open; the calls it makes need the API key like any other client.

Changing the stored threshold (`PUT /threshold`) is refused (403) when the service has no API
key, since anyone on the network could then change what counts as a defect.

FastAPI and uvicorn (the `serve` extra) are imported inside `create_app` and `run_service`, so
`pitscope` itself does not need them. (No `from __future__ import annotations` here: FastAPI
reads the endpoints' annotations, which name classes imported inside `create_app`.)
"""

import base64
import datetime
import hmac
import io
import logging
import math
import os
import threading
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pitscope import __version__
from pitscope.data.imageio import to_rgb_array

if TYPE_CHECKING:
    import re

    from fastapi import FastAPI

    from pitscope.history.recorder import Recorder
    from pitscope.inference import Detector

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
API_KEY_HEADER = "X-API-Key"
MIN_SIDE = 32  # the smallest image side scored: below it a photo holds nothing to inspect
MAX_REGIONS = 50  # regions listed in one answer, largest first; region_count counts them all
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
# Multipart framing around the file (boundaries, part headers, a long file name) may add this
# many bytes to the request body beyond max_upload_bytes.
FORM_OVERHEAD_BYTES = 64 * 1024
WEB_DIR = resources.files("pitscope") / "web"  # the inspection page: index.html, app.js, style.css
# The page and its assets come from this service alone; images shown are data: or blob: URLs.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class RejectedImage(ValueError):
    """An upload the service refuses, with the HTTP status that says why."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def serve_in_thread(app, host: str = "127.0.0.1", timeout_s: float = 20.0):
    """Run `app` under uvicorn on a free port of `host` in a daemon thread, for tests and scripts.

    Returns (base URL, stop): stop() ends the server and waits for its thread. Raises
    RuntimeError when the server has not started within timeout_s.
    """
    import socket
    import time

    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://{host}:{sock.getsockname()[1]}", stop


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an uploaded file into (H, W, 3) uint8 RGB, or raise RejectedImage.

    Only PNG, JPEG, BMP and TIFF are opened (Pillow's other plugins, EPS through Ghostscript
    among them, never see the bytes). The size declared in the header is checked against
    `max_pixels` before the pixels are decoded. 16-bit greyscale is scaled to 8 bits, alpha is
    dropped and the EXIF orientation applied, as `pitscope.data.imageio.read_image` does.
    """
    if not data:
        raise RejectedImage(422, "the uploaded file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise RejectedImage(415, f"not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard (about 179 megapixels) fired first: say the service's limit
        raise RejectedImage(422, f"image dimensions too large: over the limit of {max_pixels} pixels "
                                 f"({max_pixels / 1e6:g} megapixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise RejectedImage(422, f"truncated or corrupt image header: {exc}") from None
    with image:
        width, height = image.size
        if min(width, height) < MIN_SIDE:
            raise RejectedImage(422, f"image is {width}x{height} pixels: too small to inspect "
                                     f"(each side needs at least {MIN_SIDE} pixels)")
        if width * height > max_pixels:
            raise RejectedImage(
                422,
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels",
            )
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise RejectedImage(422, f"truncated or corrupt image: {exc}") from None
        return to_rgb_array(image)


def _model_name(detector: "Detector") -> str:
    """metadata["name"] if the model has one, else its data format (and MVTec category)."""
    data = detector.cfg.data
    default = f"pitscope-{data.format}" + (f"-{data.category}" if data.category else "")
    return detector.metadata.get("name") or default


def heatmap_image(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """(H, W) anomaly map -> (H, W, 3) uint8 jet colours on a fixed scale, 0 to 2 x pixel_threshold.

    The same scale on every image, so colours compare across uploads: the pixel threshold (the
    edge of the predicted region) is mid-scale (green), values at twice it or more are dark red.
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
    from typing import Literal

    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import APIKeyHeader
    from pydantic import BaseModel, Field
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.staticfiles import StaticFiles

    if not math.isfinite(float(detector.threshold)) or not math.isfinite(float(detector.pixel_threshold)):
        raise ValueError("the detector has no calibrated threshold: fit it (or load a saved model) first")
    if api_key == "":
        raise ValueError("api_key must not be empty (pass None for no key)")
    if max_upload_bytes <= 0 or max_pixels <= 0:
        raise ValueError(f"max_upload_bytes and max_pixels must be positive, got {max_upload_bytes} and {max_pixels}")

    detector.eval()
    lock = threading.Lock()
    model = {"name": _model_name(detector), "version": detector.metadata.get("version") or __version__}
    too_large = f"upload too large: the limit is {max_upload_bytes} bytes ({max_upload_bytes / MIB:.3g} MiB)"
    no_file = "no image: send it as the multipart/form-data field 'file' (e.g. curl -F file=@part.png)"

    class ThresholdUpdate(BaseModel):
        threshold: float = Field(allow_inf_nan=False, strict=True, description="the new image threshold")

    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the server's API key")

    async def require_key(given: str | None = Depends(key_header)) -> None:
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, f"missing or wrong API key (send it in the {API_KEY_HEADER} header)")

    guarded = [Depends(require_key)] if api_key else []

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's list of errors as one readable line, so every error detail is a string."""
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        """A generic 500; Starlette then re-raises `exc`, so the server (uvicorn) logs its traceback."""
        return JSONResponse({"detail": "internal server error (logged on the server)"}, status_code=500)

    app = FastAPI(
        title="pitscope",
        version=__version__,
        description="Surface-defect detection: upload an image, get its anomaly score and defect region.",
        exception_handlers={RequestValidationError: validation_error, Exception: server_error},
    )

    def limited_receive(request: Request):
        """The request's `receive`, raising 413 once more body than allowed has arrived."""
        received = 0

        async def receive():
            nonlocal received
            message = await request.receive()
            received += len(message.get("body", b""))
            if received > max_upload_bytes + FORM_OVERHEAD_BYTES:
                raise HTTPException(413, too_large)
            return message

        return receive

    async def read_upload(request: Request) -> tuple[bytes, str | None, dict[str, str]]:
        """The bytes and file name of the multipart field `file` and the form's text fields,
        refused as early as their size is known."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes + FORM_OVERHEAD_BYTES:
            raise HTTPException(413, too_large)  # refused before reading the body
        limited = Request(request.scope, limited_receive(request))
        async with limited.form(max_files=1, max_fields=16) as form:
            upload = form.get("file")
            if upload is None:
                raise HTTPException(422, no_file)
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "the field 'file' must be a file upload, not a text value")
            data = await upload.read(max_upload_bytes + 1)
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            filename = upload.filename
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large)
        return data, filename, fields

    def score(data: bytes, threshold: float | None, pictures: str | None,
              meta: dict | None = None) -> tuple[dict, dict[str, bytes]]:
        """Decode, score under the lock, describe and record one upload (runs in the threadpool).

        pictures: None, "overlay", "heatmap" or "both": which PNGs to draw.
        meta: what the history records beside the result: source, part, name, captured_at.
        """
        started = time.perf_counter()
        try:
            image = decode_image(data, max_pixels)  # (H, W, 3) uint8
        except RejectedImage as exc:
            raise HTTPException(exc.status_code, exc.detail) from None
        version = None
        if recorder is not None:
            version = recorder.thresholds()
            if threshold is None:
                threshold = version.image_threshold
        with lock:
            if version is not None and float(detector.threshold) != version.image_threshold:
                detector.threshold.fill_(version.image_threshold)  # another worker stored a new one
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
            "model": model,
            "recorded": False,
        }
        if recorder is not None and meta is not None:
            keep_map = recorder.store.image_store == "copy"
            map_png = _png(heatmap_image(prediction.anomaly_map, prediction.pixel_threshold)) if keep_map else None
            done = recorder.record(
                prediction, source=meta["source"], data=data, width=image.shape[1], height=image.shape[0],
                defect_px=int(region.sum()), duration_ms=1000 * (time.perf_counter() - started), threshold=version,
                part=meta.get("part"), name=meta.get("name"), captured_at=meta.get("captured_at"),
                suffix=Path(meta.get("name") or "upload.png").suffix or ".png", map_png=map_png)
            result.update(recorded=done.recorded, inspection_id=done.inspection_id, part=meta.get("part"),
                          threshold_version=version.version, alerts=list(done.alerts))
            if not done.recorded:
                result["not_recorded_because"] = done.reason
        pngs = {}
        if pictures in ("overlay", "both"):
            from pitscope.visualize import overlay

            pngs["overlay"] = _png(overlay(image, prediction.anomaly_map, prediction.pixel_threshold, region=region))
        if pictures in ("heatmap", "both"):
            pngs["heatmap"] = _png(heatmap_image(prediction.anomaly_map, prediction.pixel_threshold))
        return result, pngs

    def upload_meta(source: str, part: str | None, captured: str | None, filename: str | None,
                    fields: dict[str, str], data: bytes) -> dict:
        """Source, part id, file name and capture time of an upload: from the query, else the form,
        else the file name (part_from, time_from), else (the time) the photo's EXIF; 422 for a
        capture time that is not one."""
        from pitscope.history.names import exif_time, parse_time, part_from_name, time_from_name

        part = (part or fields.get("part") or "").strip() or part_from_name(filename or "", part_from)
        captured = (captured or fields.get("captured_at") or "").strip()
        try:
            when = parse_time(captured) if captured else time_from_name(filename or "", time_from)
        except ValueError as exc:
            raise HTTPException(422, f"captured_at: {exc}") from None
        if when is None:
            try:
                with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                    when = exif_time(image)
            except (OSError, ValueError, Image.DecompressionBombError):
                pass  # decode_image says what is wrong with the file
        if part is not None and len(part) > 200:
            raise HTTPException(422, "part: at most 200 characters")
        return {"source": source, "part": part, "name": filename, "captured_at": when}

    def page_file(name: str, media_type: str) -> Response:
        return Response(
            (WEB_DIR / name).read_bytes(),
            media_type=media_type,
            headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
                     "Cache-Control": "no-cache"},
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        """No icon: an empty answer, so browsers stop asking and logs hold no 404."""
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        """The inspection page (its calls to /model, /predict and /threshold carry the key)."""
        return page_file("index.html", "text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")

    @app.get("/health")
    def health() -> dict:
        """Liveness: answers without the API key and without touching the model."""
        return {"status": "ok"}

    @app.get("/model", dependencies=guarded)
    def model_info() -> dict:
        """What is served: name, version, input size, thresholds, calibration, training, limits."""
        with lock:  # a consistent view while PUT /threshold changes threshold and calibration
            return describe_model()

    def describe_model() -> dict:
        info = {
            **model,
            "image_size": detector.cfg.data.image_size,
            "threshold": float(detector.threshold),
            "pixel_threshold": float(detector.pixel_threshold),
            "calibration": detector.metadata.get("calibration"),
            "training": detector.metadata.get("training"),
            "data_format": detector.cfg.data.format,
            "limits": {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels},
            # PUT /threshold: allowed only with an API key; saved to the model file if it is known.
            "threshold_saving": {"allowed": api_key is not None, "to_file": model_path is not None},
        }
        if "metrics" in detector.metadata:
            info["metrics"] = detector.metadata["metrics"]
        elif model_path is not None and (evaluation := stored_evaluation(model_path)) is not None:
            info["metrics"] = evaluation
        if recorder is not None:
            version = recorder.thresholds()
            info["threshold"] = version.image_threshold
            info["history"] = {"database": recorder.store.display_name, "model_id": recorder.model_id,
                               "threshold_version": version.version, "writable": recorder.store.writable,
                               "rule": None if recorder.rule is None else recorder.rule.describe()}
        return info

    @app.post(
        "/predict",
        dependencies=guarded,
        openapi_extra={
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
        },
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
        part: str | None = Query(None, description="the part or position inspected (else the form field "
                                 "`part`, else read from the file name when the service has --part-from)"),
        captured_at: str | None = Query(None, description="when the photo was taken, ISO 8601 (else the form "
                                        "field `captured_at`, else the file name with --time-from)"),
        source: Literal["http", "page"] = Query("http", description="who sends it: a client, or the page"),
    ):
        """Score one uploaded image (multipart field `file`).

        JSON: score, is_defective, threshold, pixel_threshold, width, height, defect_fraction and
        defect_px (the predicted region: connected areas above pixel_threshold, at least
        min_region_fraction of the photo, as a share and in pixels), region_count, regions (the
        largest 50: area_px, fraction, box [x0, y0, x1, y1) in the photo's pixels, peak) and model. With
        ?map=png (the overlay) or ?map=heatmap the answer is that PNG instead, with the score in
        X-Pitscope-* headers; ?map=embed adds "overlay" and "heatmap" PNG data: URLs to the JSON.
        recorded says whether the inspection is in the history (with a database: also
        inspection_id, part, threshold_version, alerts raised, and not_recorded_because).
        """
        data, filename, fields = await read_upload(request)
        meta = upload_meta(source, part, captured_at, filename, fields, data) if recorder is not None else None
        pictures = {"png": "overlay", "heatmap": "heatmap", "embed": "both"}.get(map_)
        result, pngs = await run_in_threadpool(score, data, threshold, pictures, meta)
        if map_ is None:
            return result
        if map_ == "embed":
            encoded = {k: "data:image/png;base64," + base64.b64encode(v).decode("ascii") for k, v in pngs.items()}
            return {**result, **encoded}
        png = pngs[pictures]
        headers = {
            "X-Pitscope-Score": repr(result["score"]),
            "X-Pitscope-Is-Defective": str(result["is_defective"]).lower(),
            "X-Pitscope-Defect-Fraction": repr(result["defect_fraction"]),
            "X-Pitscope-Recorded": str(result["recorded"]).lower(),
        }
        if result.get("inspection_id") is not None:
            headers["X-Pitscope-Inspection-Id"] = str(result["inspection_id"])
        return Response(png, media_type="image/png", headers=headers)

    no_key = (
        "saving a threshold is switched off: this service runs without an API key, so anyone on the "
        "network could change it; restart it with --api-key (or PITSCOPE_API_KEY) to allow saving"
    )

    def refuse_without_key() -> None:
        if api_key is None:
            raise HTTPException(403, no_key)

    @app.put("/threshold", dependencies=[Depends(refuse_without_key), *guarded])
    def set_threshold(body: ThresholdUpdate, given_key: str | None = Depends(key_header)) -> dict:
        """Store a new image threshold: in memory, and in the model file when the app knows it.

        Needs the API key (403 when the service has none). The previous calibration record is
        kept under metadata["calibration"]["replaces"]. A failed write leaves everything as it was.
        """
        threshold = float(body.threshold)
        with lock:
            version = None
            if recorder is not None:
                from pitscope.history.recorder import key_fingerprint
                from pitscope.history.store import HistoryUnavailable

                try:
                    version = recorder.set_threshold(threshold, float(detector.pixel_threshold),
                                                     by=key_fingerprint(given_key), how="PUT /threshold")
                except HistoryUnavailable as exc:
                    raise HTTPException(503, f"the threshold was not changed: the history cannot record the "
                                             f"change ({exc})") from None
            previous = float(detector.threshold)
            calibration = detector.metadata.get("calibration")
            if isinstance(calibration, dict):
                calibration = {k: v for k, v in calibration.items() if k != "replaces"}
            detector.threshold.fill_(threshold)
            detector.metadata["calibration"] = {
                "source": "set by hand (PUT /threshold)",
                "threshold": threshold,
                "pixel_threshold": float(detector.pixel_threshold),
                "set_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "previous": {"threshold": previous},
                "replaces": calibration,
            }
            if model_path is not None:
                try:
                    detector.save(model_path)
                except OSError as exc:
                    detector.threshold.fill_(previous)
                    detector.metadata["calibration"] = calibration
                    if version is not None:  # the history says what is in force: the previous one again
                        recorder.set_threshold(previous, float(detector.pixel_threshold), by="pitscope",
                                               how="restored: the model file could not be written")
                    logger.exception("could not write %s", model_path)
                    reason = exc.strerror or str(exc)
                    raise HTTPException(
                        500, f"the threshold was not changed: could not write the model file ({reason})"
                    ) from None
        logger.info("threshold changed from %r to %r", previous, threshold)
        saved_to = None if model_path is None else str(model_path)
        answer = {"threshold": threshold, "previous": previous, "saved_to": saved_to}
        if version is not None:
            answer["threshold_version"] = version.version
        return answer

    if recorder is not None:
        add_history_routes(app, recorder, guarded, lock)
    else:
        @app.get("/inspections", dependencies=guarded, include_in_schema=False)
        @app.get("/parts", dependencies=guarded, include_in_schema=False)
        @app.get("/alerts", dependencies=guarded, include_in_schema=False)
        def no_history() -> None:
            raise HTTPException(404, "this service keeps no history: start it with --db PATH_OR_URL")

    return app


def _jsonable(row: dict) -> dict:
    """A history row for JSON: times as ISO 8601 text."""
    return {k: (v.isoformat() if isinstance(v, datetime.datetime) else v) for k, v in row.items()}


def add_history_routes(app, recorder: "Recorder", guarded: list, lock: threading.Lock) -> None:
    """GET /inspections, /parts, /parts/{part}/trend, /alerts and POST /alerts/{id}/ack on `app`."""
    from typing import Literal

    from fastapi import Depends, HTTPException, Query
    from fastapi.security import APIKeyHeader

    from pitscope.history.names import parse_time
    from pitscope.history.recorder import key_fingerprint
    from pitscope.history.store import HistoryUnavailable

    store = recorder.store
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)

    def time_or_422(name: str, text: str | None):
        if text is None:
            return None
        try:
            return parse_time(text)
        except ValueError as exc:
            raise HTTPException(422, f"{name}: {exc}") from None

    @app.get("/inspections", dependencies=guarded)
    def inspections(
        part: str | None = None,
        since: str | None = Query(None, description="capture time from (ISO 8601)"),
        until: str | None = Query(None, description="capture time before (ISO 8601)"),
        decision: Literal["defective", "good"] | None = None,
        model: str | None = Query(None, description="model id or its first characters"),
        source: Literal["cli", "http", "page"] | None = None,
        limit: int = Query(50, ge=1, le=1000),
        offset: int = Query(0, ge=0),
    ) -> dict:
        """Recorded inspections, newest first, a page at a time: {"total", "limit", "offset", "items"}."""
        filters = dict(part=part, since=time_or_422("since", since), until=time_or_422("until", until),
                       decision=decision, model=model, source=source)
        items = store.inspections(limit=limit, offset=offset, **filters)
        return {"total": store.count(**filters), "limit": limit, "offset": offset,
                "items": [_jsonable(r) for r in items]}

    @app.get("/parts", dependencies=guarded)
    def parts() -> dict:
        """Every part with inspections: part, inspections, last (capture time), open_alerts."""
        return {"parts": [_jsonable(r) for r in store.parts()]}

    @app.get("/parts/{part:path}/trend", dependencies=guarded)
    def trend(part: str, since: str | None = None, until: str | None = None) -> dict:
        """A part's inspections in capture order, the thresholds in force and its alerts:
        {"part", "points": [{id, time, score, image_threshold, is_defective, defect_px,
        defect_fraction, ...}], "alerts": [...], "rule"}; 404 for a part never inspected."""
        points = store.trend(part, time_or_422("since", since), time_or_422("until", until))
        if not points and store.count(part=part) == 0:
            raise HTTPException(404, f"no inspection of part {part!r} is recorded")
        return {"part": part, "points": [_jsonable(p) for p in points],
                "alerts": [_jsonable(a) for a in store.alerts(part=part)],
                "rule": None if recorder.rule is None else {
                    "area_fraction_above": recorder.rule.area_fraction_above,
                    "growth_per_day_above": recorder.rule.growth_per_day_above,
                    "window_days": recorder.rule.window_days, "text": recorder.rule.describe()}}

    @app.get("/alerts", dependencies=guarded)
    def alerts(part: str | None = None, open: bool = Query(False, description="only those not acknowledged")) -> dict:
        """Alerts, newest first."""
        return {"alerts": [_jsonable(a) for a in store.alerts(part=part, unacknowledged=open)]}

    @app.post("/alerts/{alert_id}/ack", dependencies=guarded)
    def acknowledge(alert_id: int, given_key: str | None = Depends(key_header),
                    by: str | None = Query(None, max_length=200, description="who acknowledges (a name)")) -> dict:
        """Acknowledge an alert (a second call keeps the first acknowledgement); 404 if there is none."""
        who = key_fingerprint(given_key) + (f" ({by})" if by else "")
        try:
            alert = store.acknowledge(alert_id, who)
        except HistoryUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return _jsonable(alert)


SETTINGS_ENV = "PITSCOPE_SERVE_SETTINGS"  # the JSON settings each worker process builds its app from


def build_app(settings: dict) -> "FastAPI":
    """The app of `pitscope serve` from its settings (a JSON-able dict: model, device, api_key,
    max_upload_bytes, max_pixels, db, image_store, part_from, time_from, alert_area,
    alert_growth, alert_window_days, webhook): loads the model, opens the history when `db` is set."""
    from pitscope.inference import Detector

    detector = Detector.load(settings["model"], device=settings.get("device", "cpu"))
    recorder = None
    part_from = time_from = None
    if settings.get("db"):
        from pitscope.growth import AlertRule
        from pitscope.history.names import compile_pattern
        from pitscope.history.recorder import Recorder
        from pitscope.history.store import HistoryStore

        store = HistoryStore(settings["db"], image_store=settings.get("image_store", "none"))
        area, growth = settings.get("alert_area", 0.005), settings.get("alert_growth", 0.001)
        rule = None if area is None and growth is None else AlertRule(area, growth, settings.get("alert_window_days", 1.0))
        recorder = Recorder(store, detector, _model_name(detector), rule=rule, webhook=settings.get("webhook"),
                            by="pitscope serve")
        part_from = compile_pattern(settings.get("part_from"), "--part-from")
        time_from = compile_pattern(settings.get("time_from"), "--time-from")
        if not store.writable:
            logger.error("%s is read-only: predictions are answered but not recorded (recorded: false)",
                         store.display_url)
    return create_app(detector, api_key=settings.get("api_key"),
                      max_upload_bytes=int(settings.get("max_upload_bytes", 20 * MIB)),
                      max_pixels=int(settings.get("max_pixels", 50_000_000)), model_path=settings["model"],
                      recorder=recorder, part_from=part_from, time_from=time_from)


def app_from_environment() -> "FastAPI":
    """uvicorn's app factory for worker processes: `build_app` of the JSON in $PITSCOPE_SERVE_SETTINGS."""
    import json

    return build_app(json.loads(os.environ[SETTINGS_ENV]))


def run_service(settings: dict, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
                log_level: str = "info") -> None:
    """Serve `build_app(settings)` with uvicorn on host:port until interrupted.

    The app is built (the model loaded and checked) once in this process before any worker starts;
    with workers above 1 each worker builds its own from the settings (JSON in
    $PITSCOPE_SERVE_SETTINGS), and they need settings["db"] to share their thresholds.
    """
    import json

    import uvicorn

    if workers > 1 and settings.get("db") is None:
        raise ValueError("--workers above 1 needs --db: the workers share their thresholds through the database")
    if settings.get("api_key") is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", host)
    app = build_app(settings)  # loads and checks everything once, in this process, before any worker starts
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    del app
    os.environ[SETTINGS_ENV] = json.dumps(settings)
    uvicorn.run("pitscope.serve:app_from_environment", factory=True, workers=workers, host=host, port=port,
                log_level=log_level)
