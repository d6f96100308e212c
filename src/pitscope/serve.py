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

FastAPI and uvicorn (the `serve` extra) are imported inside `create_app` and `cmd_serve`, so
`pitscope` itself does not need them. (No `from __future__ import annotations` here: FastAPI
reads the endpoints' annotations, which name classes imported inside `create_app`.)
"""

import argparse
import base64
import datetime
import hmac
import io
import logging
import math
import os
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pitscope import __version__
from pitscope.data.imageio import to_rgb_array

if TYPE_CHECKING:
    from fastapi import FastAPI

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
) -> "FastAPI":
    """The FastAPI app serving `detector` (fitted: its threshold must be calibrated).

    api_key: when set, /predict, /model and PUT /threshold need it in the X-API-Key header
        (401 otherwise); /health and the page's files stay open. Without it PUT /threshold is
        refused (403).
    max_upload_bytes: largest accepted image file (413 above it).
    max_pixels: largest accepted width x height (422 above it, checked before decoding).
    model_path: the file `detector` was loaded from; PUT /threshold rewrites it (atomically) so
        a new threshold survives a restart. None: a new threshold lives in memory only.
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

    async def read_upload(request: Request) -> bytes:
        """The bytes of the multipart field `file`, refused as early as their size is known."""
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
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large)
        return data

    def score(data: bytes, threshold: float | None, pictures: str | None) -> tuple[dict, dict[str, bytes]]:
        """Decode, score under the lock, and describe one upload (runs in the threadpool).

        pictures: None, "overlay", "heatmap" or "both": which PNGs to draw.
        """
        try:
            image = decode_image(data, max_pixels)  # (H, W, 3) uint8
        except RejectedImage as exc:
            raise HTTPException(exc.status_code, exc.detail) from None
        with lock:
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
        }
        pngs = {}
        if pictures in ("overlay", "both"):
            from pitscope.visualize import overlay

            pngs["overlay"] = _png(overlay(image, prediction.anomaly_map, prediction.pixel_threshold, region=region))
        if pictures in ("heatmap", "both"):
            pngs["heatmap"] = _png(heatmap_image(prediction.anomaly_map, prediction.pixel_threshold))
        return result, pngs

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
    ):
        """Score one uploaded image (multipart field `file`).

        JSON: score, is_defective, threshold, pixel_threshold, width, height, defect_fraction and
        defect_px (the predicted region: connected areas above pixel_threshold, at least
        min_region_fraction of the photo, as a share and in pixels), region_count, regions (the
        largest 50: area_px, fraction, box [x0, y0, x1, y1) in the photo's pixels, peak) and model. With
        ?map=png (the overlay) or ?map=heatmap the answer is that PNG instead, with the score in
        X-Pitscope-* headers; ?map=embed adds "overlay" and "heatmap" PNG data: URLs to the JSON.
        """
        data = await read_upload(request)
        pictures = {"png": "overlay", "heatmap": "heatmap", "embed": "both"}.get(map_)
        result, pngs = await run_in_threadpool(score, data, threshold, pictures)
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
        }
        return Response(png, media_type="image/png", headers=headers)

    no_key = (
        "saving a threshold is switched off: this service runs without an API key, so anyone on the "
        "network could change it; restart it with --api-key (or PITSCOPE_API_KEY) to allow saving"
    )

    def refuse_without_key() -> None:
        if api_key is None:
            raise HTTPException(403, no_key)

    @app.put("/threshold", dependencies=[Depends(refuse_without_key), *guarded])
    def set_threshold(body: ThresholdUpdate) -> dict:
        """Store a new image threshold: in memory, and in the model file when the app knows it.

        Needs the API key (403 when the service has none). The previous calibration record is
        kept under metadata["calibration"]["replaces"]. A failed write leaves everything as it was.
        """
        threshold = float(body.threshold)
        with lock:
            previous = float(detector.threshold)
            calibration = detector.metadata.get("calibration")
            if isinstance(calibration, dict):
                calibration = {k: v for k, v in calibration.items() if k != "replaces"}
            detector.threshold.fill_(threshold)
            detector.metadata["calibration"] = {
                "source": "set by hand (PUT /threshold)",
                "threshold": threshold,
                "pixel_threshold": float(detector.pixel_threshold),
                "set_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "previous": {"threshold": previous},
                "replaces": calibration,
            }
            if model_path is not None:
                try:
                    detector.save(model_path)
                except OSError as exc:
                    detector.threshold.fill_(previous)
                    detector.metadata["calibration"] = calibration
                    logger.exception("could not write %s", model_path)
                    reason = exc.strerror or str(exc)
                    raise HTTPException(
                        500, f"the threshold was not changed: could not write the model file ({reason})"
                    ) from None
        logger.info("threshold changed from %r to %r", previous, threshold)
        saved_to = None if model_path is None else str(model_path)
        return {"threshold": threshold, "previous": previous, "saved_to": saved_to}

    return app


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a trained model over HTTP until interrupted: the inspection page at /, POST /predict,
    GET /model, PUT /threshold (with an API key only; rewrites MODEL), GET /health."""
    import uvicorn

    from pitscope.inference import Detector

    detector = Detector.load(args.model, device=args.device)
    api_key = args.api_key or os.environ.get("PITSCOPE_API_KEY") or None
    app = create_app(
        detector,
        api_key=api_key,
        max_upload_bytes=int(args.max_upload_mb * MIB),
        max_pixels=args.max_pixels,
        model_path=args.model,
    )
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `pitscope serve MODEL ...` to the CLI's subcommands."""
    p = sub.add_parser("serve", help="serve a trained model over HTTP", description=cmd_serve.__doc__)
    p.add_argument("model", help="model file written by train (OUTPUT_DIR/model.pt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--api-key",
        help="require this key in the X-API-Key header (default: $PITSCOPE_API_KEY; prefer the "
        "environment variable, a command line is visible to other users)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted image file in MiB (default: 20)")
    p.add_argument(
        "--max-pixels", type=int, default=50_000_000, help="largest accepted width x height (default: 50000000)"
    )
    p.add_argument("--device", default="cpu", help="torch device for the model, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)
    return p
