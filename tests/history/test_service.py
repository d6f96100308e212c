"""The service with a history: every answer that says recorded is in the database, the part and
capture time come from the query, the form or the file name, thresholds are versioned, alerts
are raised, listed, acknowledged and sent to a webhook. On SQLite and PostgreSQL.
"""

import datetime as dt
import http.server
import io
import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pitscope.data.synthetic import render_surface
from pitscope.growth import AlertRule
from pitscope.history.names import BSDATA_PART, BSDATA_TIME, compile_pattern
from pitscope.history.recorder import Recorder
from pitscope.history.store import HistoryStore
from pitscope.serve import create_app

KEY = "secret-key"
BSDATA_NAME = "01_200828110014_277500_315_crop_2.png"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, fit_tiny_detector):
    detector, model, _ = fit_tiny_detector(tmp_path_factory.mktemp("history-serve"))
    return detector, model


def png(seed: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render_surface(np.random.default_rng(seed), size, size)).save(buffer, "PNG")
    return buffer.getvalue()


def service(fitted, url, rule=AlertRule(), webhook=None, **kwargs):
    detector, model = fitted
    detector = type(detector).load(model)  # each app its own copy: PUT /threshold changes it
    recorder = Recorder(HistoryStore(url), detector, "tiny", rule=rule, webhook=webhook)
    app = create_app(
        detector,
        api_key=KEY,
        recorder=recorder,
        part_from=compile_pattern(BSDATA_PART, "p"),
        time_from=compile_pattern(BSDATA_TIME, "t"),
        **kwargs,
    )
    return TestClient(app, headers={"X-API-Key": KEY}), recorder


def post(client, data, name="photo.png", **params):
    return client.post("/predict", params=params, files={"file": (name, data, "image/png")})


def test_every_recorded_answer_is_a_row_with_what_the_answer_said(fitted, history_url):
    client, recorder = service(fitted, history_url)
    with client:
        answers = [post(client, png(i), part="p1", captured_at=f"2020-08-28T1{i}:00:00Z").json() for i in range(3)]
    rows = recorder.store.inspections(newest_first=False)
    assert [a["recorded"] for a in answers] == [True] * 3
    assert [a["inspection_id"] for a in answers] == [r["id"] for r in rows]
    for answer, row in zip(answers, rows):
        assert row["score"] == pytest.approx(answer["score"])
        assert row["is_defective"] == answer["is_defective"]
        assert row["defect_px"] == answer["defect_px"]
        assert row["defect_fraction"] == pytest.approx(answer["defect_fraction"])
        assert row["image_threshold"] == answer["threshold"] and row["pixel_threshold"] == answer["pixel_threshold"]
        assert (row["width"], row["height"], row["source"], row["part"]) == (64, 64, "http", "p1")
        assert row["model_id"] == recorder.model_id and row["threshold_version"] == answer["threshold_version"] == 1
        assert row["duration_ms"] > 0 and len(row["image_sha256"]) == 64
    assert rows[1]["captured_at"] == dt.datetime(2020, 8, 28, 11, tzinfo=dt.UTC)


def test_part_and_time_from_query_then_form_then_file_name(fitted, tmp_path):
    client, recorder = service(fitted, tmp_path / "h.sqlite")
    with client:
        post(client, png(0), name=BSDATA_NAME)
        client.post(
            "/predict",
            files={"file": (BSDATA_NAME, png(1), "image/png")},
            data={"part": "from-form", "captured_at": "2021-01-02T03:04:05+01:00"},
        )
        post(client, png(2), name=BSDATA_NAME, part="from-query", source="page")
        assert post(client, png(3), captured_at="yesterday").status_code == 422
    first, second, third = recorder.store.inspections(newest_first=False)
    assert (first["part"], first["captured_at"]) == ("277500_315", dt.datetime(2020, 8, 28, 11, 0, 14, tzinfo=dt.UTC))
    assert first["name"] == BSDATA_NAME
    assert (second["part"], second["captured_at"]) == ("from-form", dt.datetime(2021, 1, 2, 2, 4, 5, tzinfo=dt.UTC))
    assert (third["part"], third["source"]) == ("from-query", "page")
    assert recorder.store.count() == 3  # the refused upload was not recorded


def test_a_threshold_change_is_a_version_and_an_event_and_later_rows_name_it(fitted, history_url):
    client, recorder = service(fitted, history_url)
    with client:
        before = post(client, png(0)).json()
        changed = client.put("/threshold", json={"threshold": 123.5}).json()
        after = post(client, png(0)).json()
        info = client.get("/model").json()
    assert changed["threshold_version"] == 2 and info["history"]["threshold_version"] == 2
    assert (before["threshold_version"], after["threshold_version"]) == (1, 2)
    assert after["threshold"] == 123.5 and not after["is_defective"]
    event = [e for e in recorder.store.events() if e["kind"] == "threshold_change"][0]
    assert event["old"]["image_threshold"] == before["threshold"] and event["new"]["image_threshold"] == 123.5
    assert event["by"].startswith("key:") and KEY not in event["by"]
    rows = recorder.store.inspections(newest_first=False)
    assert [r["image_threshold"] for r in rows] == [before["threshold"], 123.5]


def test_a_second_worker_uses_the_threshold_the_first_stored(fitted, tmp_path):
    url = tmp_path / "h.sqlite"
    first, _ = service(fitted, url)
    second, _ = service(fitted, url)
    with first, second:
        first.put("/threshold", json={"threshold": 77.0})
        answer = post(second, png(0)).json()
    assert answer["threshold"] == 77.0 and answer["threshold_version"] == 2


def test_a_second_worker_uses_the_pixel_threshold_another_writer_stored(fitted, tmp_path):
    url = tmp_path / "h.sqlite"
    first, recorder = service(fitted, url)
    second, _ = service(fitted, url)
    with first, second:
        stored = recorder.set_threshold(77.0, 0.5, by="test", how="pitscope calibrate")
        answer = post(second, png(0)).json()
    assert (answer["threshold"], answer["pixel_threshold"]) == (77.0, 0.5)
    assert answer["threshold_version"] == stored.version


def test_readers_page_filter_and_trend(fitted, history_url):
    client, recorder = service(fitted, history_url, rule=None)
    with client:
        for i in range(5):  # captured in the order 4, 3, 2, 1, 0
            post(client, png(i), part="p1" if i % 2 == 0 else "p2", captured_at=f"2020-08-28T1{4 - i}:00:00Z")
        page = client.get("/inspections", params={"part": "p1", "limit": 2}).json()
        rest = client.get("/inspections", params={"part": "p1", "limit": 2, "offset": 2}).json()
        since = client.get("/inspections", params={"since": "2020-08-28T13:00:00Z"}).json()
        trend = client.get("/parts/p1/trend").json()
        parts = client.get("/parts").json()["parts"]
        assert client.get("/parts/nope/trend").status_code == 404
        assert client.get("/inspections", params={"since": "soon"}).status_code == 422
        assert client.get("/inspections", headers={"X-API-Key": "wrong"}).status_code == 401
    assert page["total"] == 3 and len(page["items"]) == 2 and len(rest["items"]) == 1
    assert [r["id"] for r in page["items"]] == [5, 3]  # newest recorded first
    assert since["total"] == 2  # captured 13:00 and 14:00
    assert [p["time"][:19] for p in trend["points"]] == [
        "2020-08-28T10:00:00",
        "2020-08-28T12:00:00",
        "2020-08-28T14:00:00",
    ]
    assert [(p["part"], p["inspections"]) for p in parts] == [("p1", 3), ("p2", 2)]


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver on 127.0.0.1 that fails its first `fail` requests with 503."""

    received: list = []
    fail = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if Receiver.fail > 0:
            Receiver.fail -= 1
            self.send_response(503)
        else:
            Receiver.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alerts_are_raised_once_acknowledged_and_sent_to_the_webhook(fitted, history_url, monkeypatch):
    import pitscope.history.recorder as recorder_module

    monkeypatch.setattr(recorder_module, "WEBHOOK_FIRST_PAUSE_S", 0.01)
    Receiver.received, Receiver.fail = [], 2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    # an area limit of 0: every inspection with any predicted area fires the area condition
    client, recorder = service(fitted, history_url, rule=AlertRule(0.0, None), webhook=webhook)
    recorder.sender.first_pause_s = 0.01
    with client:
        answers = []
        for i in range(40):  # until two uploads have a predicted region
            answers.append(post(client, png(i), part="p1").json())
            if sum(a["defect_px"] > 0 for a in answers) == 2:
                break
        assert sum(a["defect_px"] > 0 for a in answers) == 2, "the test needs two uploads with a predicted region"
        raised = [alert for a in answers for alert in a["alerts"]]
        assert len(raised) == 1  # later firings are suppressed while it is open
        alert_id = raised[0]["id"]
        listed = client.get("/alerts", params={"open": True}).json()["alerts"]
        assert [a["id"] for a in listed] == [alert_id]
        acked = client.post(f"/alerts/{alert_id}/ack", params={"by": "ana"}).json()
        assert acked["acknowledged_by"].endswith("(ana)") and acked["acknowledged_at"]
        assert client.post("/alerts/999/ack").status_code == 404
        assert client.get("/alerts", params={"open": True}).json()["alerts"] == []
    assert recorder.sender.join(10)
    server.shutdown()
    assert [r["alert"]["id"] for r in Receiver.received] == [alert_id]  # delivered after two 503s
    assert recorder.sender.delivered == 1 and recorder.sender.failed == 0


def test_a_deleted_database_gives_recorded_false_and_predictions_go_on(fitted, tmp_path):
    path = tmp_path / "h.sqlite"
    client, recorder = service(fitted, path)
    with client:
        assert post(client, png(0)).json()["recorded"] is True
        path.unlink()
        answer = post(client, png(1))
    assert answer.status_code == 200
    body = answer.json()
    assert body["recorded"] is False and body["inspection_id"] is None
    assert "deleted" in body["not_recorded_because"]


def test_without_a_database_answers_say_not_recorded_and_history_is_404(fitted):
    with TestClient(create_app(fitted[0])) as client:
        answer = client.post("/predict", files={"file": ("a.png", png(0), "image/png")}).json()
        assert answer["recorded"] is False
        assert "--db" in client.get("/inspections").json()["detail"]


def test_a_restart_finds_the_history_and_the_threshold_version_in_force(fitted, history_url, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(fitted[1].read_bytes())
    db = history_url
    client, _ = service((fitted[0], model), db, model_path=model)
    with client:
        post(client, png(0), part="p1")
        assert client.put("/threshold", json={"threshold": 1.55}).json()["threshold_version"] == 2
    client, recorder = service((fitted[0], model), db, model_path=model)  # the service restarted
    with client:
        answer = post(client, png(1), part="p1").json()
        assert client.get("/parts/p1/trend").json()["points"][0]["id"] == 1
    assert answer["threshold_version"] == 2 and answer["inspection_id"] == 2
    assert [v.version for v in recorder.store.thresholds(recorder.model_id)] == [1, 2]
    assert sum(e["kind"] == "model_load" for e in recorder.store.events()) == 2


def test_a_postgresql_database_dropped_while_serving_gives_recorded_false(fitted, postgres_server):
    import uuid

    import sqlalchemy as sa

    name = f"pitscope_drop_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    client, recorder = service(fitted, url)
    with client:
        assert post(client, png(0)).json()["recorded"] is True
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        answer = post(client, png(1))
        assert answer.status_code == 200 and answer.json()["recorded"] is False
        assert answer.json()["not_recorded_because"]
    recorder.store.close()
    admin.dispose()


def test_stored_copies_keep_the_photo_and_its_map(fitted, tmp_path):
    detector, model = fitted
    detector = type(detector).load(model)
    store = HistoryStore(tmp_path / "h.sqlite", image_store="copy")
    app = create_app(detector, api_key=KEY, recorder=Recorder(store, detector, "tiny"))
    data = png(0)
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        post(client, data, part="p1")
    (row,) = store.inspections()
    assert (store.copies_dir / row["image_ref"]).read_bytes() == data
    heatmap = Image.open(store.copies_dir / row["map_ref"])
    assert heatmap.size == (64, 64) and row["map_ref"] != row["image_ref"]
    assert store.prune(0)["copies"] == 2 and not (store.copies_dir / row["image_ref"]).exists()


def test_a_database_that_cannot_be_written_from_the_start_still_serves(fitted, tmp_path):
    """A read-only history (the store's own detection is tested in test_faults): the service
    starts, scores, and says recorded: false with the reason."""
    detector, model = fitted
    detector = type(detector).load(model)
    store = HistoryStore(tmp_path / "h.sqlite")
    store.writable = False
    recorder = Recorder(store, detector, "tiny")
    with TestClient(create_app(detector, recorder=recorder)) as client:
        answer = client.post("/predict", files={"file": ("a.png", png(0), "image/png")})
        info = client.get("/model").json()
    assert answer.status_code == 200 and answer.json()["recorded"] is False
    assert "read-only" in answer.json()["not_recorded_because"]
    assert info["history"]["threshold_version"] == 0 and info["history"]["writable"] is False
    assert store.count() == 0


def test_serve_passes_the_alert_rule_it_was_given_to_the_history(fitted, history_url, monkeypatch, capsys):
    """`pitscope serve --alert-confirm K --alert-smooth M` reach the recorder's rule, which the trend
    answers with."""
    import pitscope.serve as serve_module
    from pitscope.cli import main
    from pitscope.serve.service import build_app

    _, model = fitted
    given = {}
    monkeypatch.setattr(serve_module, "run_service", lambda settings, **kw: given.update(settings))
    args = ["serve", str(model), "--db", history_url, "--alert-area", "0", "--alert-growth", "off"]
    assert main([*args, "--alert-confirm", "2", "--alert-smooth", "3"]) == 0
    client = TestClient(build_app(given))
    with client:
        assert post(client, png(0), part="p1").status_code == 200
        rule = client.get("/parts/p1/trend").json()["rule"]
    assert rule["confirm_images"] == 2 and rule["growth_per_day_above"] is None and "2 images in a row" in rule["text"]
    assert rule["smooth_images"] == 3 and "median of the last 3 images" in rule["text"]
    with pytest.raises(SystemExit):
        main([*args, "--alert-confirm", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--alert-smooth", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err
