"""The routes that read the inspection history: GET /inspections, /parts, /parts/{part}/trend,
/alerts and POST /alerts/{id}/ack; 404 from the first three where the service keeps none."""

import datetime
import threading
from typing import TYPE_CHECKING

from pitscope.serve.access import key_header

if TYPE_CHECKING:
    from pitscope.history.recorder import Recorder


def _jsonable(row: dict) -> dict:
    """A history row for JSON: times as ISO 8601 text."""
    return {k: (v.isoformat() if isinstance(v, datetime.datetime) else v) for k, v in row.items()}


def add_no_history_routes(app, guarded: list) -> None:
    """GET /inspections, /parts and /alerts answering 404: this service keeps no history."""
    from fastapi import HTTPException

    @app.get("/inspections", dependencies=guarded, include_in_schema=False)
    @app.get("/parts", dependencies=guarded, include_in_schema=False)
    @app.get("/alerts", dependencies=guarded, include_in_schema=False)
    def no_history() -> None:
        raise HTTPException(404, "this service keeps no history: start it with --db PATH_OR_URL")


def _time_or_422(name: str, text: str | None):
    """`text` parsed as a time (None stays None); a 422 naming the parameter if it is not one."""
    from fastapi import HTTPException

    from pitscope.history.names import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: {exc}") from None


def _rule_json(recorder: "Recorder") -> dict | None:
    """The recorder's alert rule for JSON, or None when it has none."""
    rule = recorder.rule
    if rule is None:
        return None
    return {
        "area_fraction_above": rule.area_fraction_above,
        "growth_per_day_above": rule.growth_per_day_above,
        "window_days": rule.window_days,
        "confirm_images": rule.confirm_images,
        "smooth_images": rule.smooth_images,
        "text": rule.describe(),
    }


def add_history_routes(app, recorder: "Recorder", guarded: list, lock: threading.Lock) -> None:
    """GET /inspections, /parts, /parts/{part}/trend, /alerts and POST /alerts/{id}/ack on `app`."""
    _add_inspection_routes(app, recorder, guarded)
    _add_alert_routes(app, recorder, guarded)


def _add_inspection_routes(app, recorder: "Recorder", guarded: list) -> None:
    """GET /inspections, /parts and /parts/{part}/trend on `app`."""
    from typing import Literal

    from fastapi import HTTPException, Query

    store = recorder.store

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
        filters = dict(
            part=part,
            since=_time_or_422("since", since),
            until=_time_or_422("until", until),
            decision=decision,
            model=model,
            source=source,
        )
        items = store.inspections(limit=limit, offset=offset, **filters)
        return {
            "total": store.count(**filters),
            "limit": limit,
            "offset": offset,
            "items": [_jsonable(r) for r in items],
        }

    @app.get("/parts", dependencies=guarded)
    def parts() -> dict:
        """Every part with inspections: part, inspections, last (capture time), open_alerts."""
        return {"parts": [_jsonable(r) for r in store.parts()]}

    @app.get("/parts/{part:path}/trend", dependencies=guarded)
    def trend(part: str, since: str | None = None, until: str | None = None) -> dict:
        """A part's inspections in capture order, the thresholds in force and its alerts:
        {"part", "points": [{id, time, score, image_threshold, is_defective, defect_px,
        defect_fraction, ...}], "alerts": [...], "rule"}, each point with watched_fraction when the
        rule watches a median of the last images; 404 for a part never inspected."""
        smooth = recorder.rule.smooth_images if recorder.rule is not None else 1
        points = store.trend(part, _time_or_422("since", since), _time_or_422("until", until), smooth=smooth)
        if not points and store.count(part=part) == 0:
            raise HTTPException(404, f"no inspection of part {part!r} is recorded")
        return {
            "part": part,
            "points": [_jsonable(p) for p in points],
            "alerts": [_jsonable(a) for a in store.alerts(part=part)],
            "rule": _rule_json(recorder),
        }


def _add_alert_routes(app, recorder: "Recorder", guarded: list) -> None:
    """GET /alerts and POST /alerts/{id}/ack on `app`."""
    from fastapi import Depends, HTTPException, Query

    from pitscope.history.recorder import key_fingerprint
    from pitscope.history.store import HistoryUnavailable

    store = recorder.store
    header = key_header()

    @app.get("/alerts", dependencies=guarded)
    def alerts(part: str | None = None, open: bool = Query(False, description="only those not acknowledged")) -> dict:
        """Alerts, newest first."""
        return {"alerts": [_jsonable(a) for a in store.alerts(part=part, unacknowledged=open)]}

    @app.post("/alerts/{alert_id}/ack", dependencies=guarded)
    def acknowledge(
        alert_id: int,
        given_key: str | None = Depends(header),
        by: str | None = Query(None, max_length=200, description="who acknowledges (a name)"),
    ) -> dict:
        """Acknowledge an alert (a second call keeps the first acknowledgement); 404 if there is none."""
        who = key_fingerprint(given_key) + (f" ({by})" if by else "")
        try:
            alert = store.acknowledge(alert_id, who)
        except HistoryUnavailable as exc:
            raise HTTPException(503, str(exc)) from None
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return _jsonable(alert)
