"""Running the service: under uvicorn in a thread (tests, scripts) or as `pitscope serve`, one
process or several workers that each build the app from the same settings."""

import logging
import os
import threading
from typing import TYPE_CHECKING

from pitscope.serve.app import _model_name, create_app
from pitscope.serve.uploads import MIB

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

SETTINGS_ENV = "PITSCOPE_SERVE_SETTINGS"  # the JSON settings each worker process builds its app from


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


def build_app(settings: dict) -> "FastAPI":
    """The app of `pitscope serve` from its settings (a JSON-able dict: model, device, api_key,
    max_upload_bytes, max_pixels, db, image_store, part_from, time_from, alert_area,
    alert_growth, alert_window_days, alert_confirm, alert_smooth, webhook): loads the model, opens the history when `db` is set."""
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
        window, confirm = settings.get("alert_window_days", 1.0), settings.get("alert_confirm", 1)
        smooth = settings.get("alert_smooth", 1)
        rule = None if area is None and growth is None else AlertRule(area, growth, window, confirm, smooth)
        recorder = Recorder(
            store, detector, _model_name(detector), rule=rule, webhook=settings.get("webhook"), by="pitscope serve"
        )
        part_from = compile_pattern(settings.get("part_from"), "--part-from")
        time_from = compile_pattern(settings.get("time_from"), "--time-from")
        if not store.writable:
            logger.error(
                "%s is read-only: predictions are answered but not recorded (recorded: false)", store.display_url
            )
    return create_app(
        detector,
        api_key=settings.get("api_key"),
        max_upload_bytes=int(settings.get("max_upload_bytes", 20 * MIB)),
        max_pixels=int(settings.get("max_pixels", 50_000_000)),
        model_path=settings["model"],
        recorder=recorder,
        part_from=part_from,
        time_from=time_from,
    )


def app_from_environment() -> "FastAPI":
    """uvicorn's app factory for worker processes: `build_app` of the JSON in $PITSCOPE_SERVE_SETTINGS."""
    import json

    return build_app(json.loads(os.environ[SETTINGS_ENV]))


def run_service(
    settings: dict, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "info"
) -> None:
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
    uvicorn.run(
        "pitscope.serve.service:app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level=log_level,
    )
