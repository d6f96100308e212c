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

FastAPI and uvicorn (the `serve` extra) are imported inside the functions that build and run the
app, so `pitscope` itself does not need them.

The modules: `app` (`create_app`, /predict, /model, /health, the scoring of one upload),
`uploads` (limits and decoding), `page` (the inspection page), `access` (the API key),
`threshold` (PUT /threshold), `history_routes` (the routes reading the history) and `service`
(running it: in a thread, or as `pitscope serve` with workers).
"""

from pitscope.serve.access import API_KEY_HEADER
from pitscope.serve.app import MAX_REGIONS, create_app, heatmap_image, stored_evaluation
from pitscope.serve.history_routes import add_history_routes
from pitscope.serve.page import PAGE_POLICY, WEB_DIR
from pitscope.serve.service import SETTINGS_ENV, app_from_environment, build_app, run_service, serve_in_thread
from pitscope.serve.uploads import ACCEPTED_FORMATS, FORM_OVERHEAD_BYTES, MIB, MIN_SIDE, RejectedImage, decode_image

__all__ = [
    "ACCEPTED_FORMATS",
    "API_KEY_HEADER",
    "FORM_OVERHEAD_BYTES",
    "MAX_REGIONS",
    "MIB",
    "MIN_SIDE",
    "PAGE_POLICY",
    "SETTINGS_ENV",
    "WEB_DIR",
    "RejectedImage",
    "add_history_routes",
    "app_from_environment",
    "build_app",
    "create_app",
    "decode_image",
    "heatmap_image",
    "run_service",
    "serve_in_thread",
    "stored_evaluation",
]
