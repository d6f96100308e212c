"""Recording a Detector's inspections: the model and its thresholds, each scored photo, live
alerts and their webhook.

`Recorder(store, detector)` registers the model (its id, a `model_load` event, and the
thresholds its file carries as a threshold version when they are new). `record` writes one
inspection and evaluates the wear rule for its part; it returns the inspection id, or None when
the database could not take it (the reason is logged, and the caller answers `recorded:
false`). Several service workers share one database: `thresholds()` reads the version in force,
so a threshold one worker stores is the one every worker uses from its next request.

Alerts raised are POSTed as JSON to `webhook` by a background thread, so an answer never waits
on the receiver: each is tried `WEBHOOK_TRIES` times with a growing pause; what still fails is
logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from pitscope.growth import AlertRule
from pitscope.history.store import HistoryStore, HistoryUnavailable, ThresholdVersion, model_id, now

logger = logging.getLogger(__name__)

WEBHOOK_TRIES = 4
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_FIRST_PAUSE_S = 0.5


def key_fingerprint(api_key: str | None) -> str:
    """Who acted, without the secret: `key:<first 8 hex of SHA-256(key)>`, or `no key`."""
    if not api_key:
        return "no key"
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:8]


class WebhookSender:
    """POSTs alerts as JSON to `url` from a daemon thread, with retries (see the module docstring)."""

    def __init__(self, url: str, tries: int = WEBHOOK_TRIES, first_pause_s: float = WEBHOOK_FIRST_PAUSE_S):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook: {url!r} is not an http:// or https:// URL")
        self.url, self.tries, self.first_pause_s = url, tries, first_pause_s
        self.queue: queue.Queue = queue.Queue()
        self.delivered = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="pitscope-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: dict) -> None:
        self.queue.put(alert)

    def _post(self, alert: dict) -> None:
        body = json.dumps({"alert": alert}, default=str).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
            if response.status >= 300:
                raise urllib.error.HTTPError(self.url, response.status, "not 2xx", response.headers, None)

    def _run(self) -> None:
        while True:
            alert = self.queue.get()
            pause = self.first_pause_s
            for attempt in range(1, self.tries + 1):
                try:
                    self._post(alert)
                    self.delivered += 1
                    break
                except (OSError, urllib.error.URLError) as exc:
                    if attempt == self.tries:
                        self.failed += 1
                        logger.error(
                            "webhook %s: alert %s not delivered after %d tries: %s",
                            self.url,
                            alert.get("id"),
                            self.tries,
                            exc,
                        )
                    else:
                        time.sleep(pause)
                        pause *= 2
            self.queue.task_done()

    def join(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued alert was delivered or given up (True), or timeout_s passed."""
        deadline = time.monotonic() + timeout_s
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.queue.unfinished_tasks


@dataclass
class Recorded:
    """What `Recorder.record` did: the inspection id (None: not recorded), why not, alerts raised."""

    inspection_id: int | None
    reason: str | None = None
    alerts: tuple[dict, ...] = ()

    @property
    def recorded(self) -> bool:
        return self.inspection_id is not None


class Recorder:
    """A Detector's link to a HistoryStore (see the module docstring).

    rule: the wear alert rule evaluated on each inspection with a part id (None: no alerts).
    webhook: URL the raised alerts are POSTed to (None: none).
    """

    def __init__(
        self,
        store: HistoryStore,
        detector,
        name: str,
        rule: AlertRule | None = AlertRule(),
        webhook: str | None = None,
        by: str = "pitscope",
    ):
        self.store = store
        self.rule = rule
        self.sender = WebhookSender(webhook) if webhook else None
        self._dtype = detector.threshold.dtype
        state = detector.state_dict()
        try:
            self.model_id, self._threshold = store.register_model(
                state,
                name,
                float(detector.threshold),
                float(detector.pixel_threshold),
                training=detector.metadata.get("training"),
                by=by,
            )
        except HistoryUnavailable as exc:  # a read-only database: score on, record nothing
            logger.error("history: the model could not be registered, so no inspection will be recorded: %s", exc)
            self.model_id = model_id(state)
            self._threshold = ThresholdVersion(
                0,
                self.model_id,
                0,
                float(detector.threshold),
                float(detector.pixel_threshold),
                by,
                f"not recorded: {exc}",
                now(),
            )

    def thresholds(self) -> ThresholdVersion:
        """The threshold version in force (read from the database; the last one read if it cannot be)."""
        try:
            current = self.store.current_threshold(self.model_id)
        except Exception as exc:  # a database that went away: keep scoring with what we had
            logger.warning("history: cannot read the thresholds (%s); using version %d", exc, self._threshold.version)
            return self._threshold
        if current is not None:
            self._threshold = current
        return self._threshold

    def set_threshold(self, image_threshold: float, pixel_threshold: float, by: str, how: str) -> ThresholdVersion:
        """Store a new threshold version (raises HistoryUnavailable when the database cannot take it),
        rounded as the model file keeps it, so a reload finds the same version in force."""
        import torch

        image_threshold, pixel_threshold = (
            torch.tensor(float(v), dtype=self._dtype).item() for v in (image_threshold, pixel_threshold)
        )
        self._threshold = self.store.set_threshold(self.model_id, image_threshold, pixel_threshold, by, how)
        return self._threshold

    def record(
        self,
        prediction,
        *,
        source: str,
        data: bytes | None = None,
        image_sha256: str | None = None,
        width: int,
        height: int,
        defect_px: int,
        duration_ms: float,
        threshold: ThresholdVersion,
        part: str | None = None,
        name: str | None = None,
        captured_at: dt.datetime | None = None,
        image_path: str | None = None,
        suffix: str = ".png",
        map_png: bytes | None = None,
    ) -> Recorded:
        """Write one inspection of `prediction` (scored with `threshold`). Never raises for a
        database that cannot take it: the result says so. With image copies on, the photo's bytes
        and `map_png` (its anomaly map as a picture) are kept and referenced by the row."""
        if image_sha256 is None:
            image_sha256 = hashlib.sha256(data or b"").hexdigest()
        try:
            image_ref = map_ref = None
            if self.store.image_store == "copy" and data is not None:
                image_ref = self.store.store_image(data, suffix)
                if map_png is not None:
                    map_ref = self.store.store_image(map_png, ".png")
            elif self.store.image_store == "path":
                image_ref = image_path
            inspection, alerts = self.store.record_inspection(
                model=self.model_id,
                threshold=threshold,
                source=source,
                image_sha256=image_sha256,
                width=width,
                height=height,
                score=float(prediction.score),
                image_threshold=float(prediction.threshold),
                is_defective=bool(prediction.is_defective),
                defect_px=int(defect_px),
                pixel_threshold=float(prediction.pixel_threshold),
                duration_ms=duration_ms,
                part=part,
                name=name,
                captured_at=captured_at,
                image_ref=image_ref,
                map_ref=map_ref,
                rule=self.rule,
            )
        except (HistoryUnavailable, OSError) as exc:
            logger.error("history: inspection not recorded: %s", exc)
            return Recorded(None, str(exc))
        if self.sender is not None:
            for alert in alerts:
                self.sender.send(alert)
        return Recorded(inspection, None, tuple(alerts))
