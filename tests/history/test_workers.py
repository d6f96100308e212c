"""`pitscope serve --db --workers 2` as real processes under concurrent load, on SQLite and
PostgreSQL: exactly one row per answer that says recorded, no error, no locked database; and a
kill -9 during the load loses no row an answer said was recorded."""

import datetime as dt
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from pitscope.data.synthetic import render_surface
from pitscope.history.store import HistoryStore

CLIENTS, REQUESTS = 8, 25


@pytest.fixture(scope="module")
def model(tmp_path_factory, fit_tiny_detector):
    return fit_tiny_detector(tmp_path_factory.mktemp("workers"))[1]


@pytest.fixture(scope="module")
def photos():
    out = []
    for seed in range(4):
        buffer = io.BytesIO()
        Image.fromarray(render_surface(np.random.default_rng(seed), 64, 64)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def start_server(model, db, log):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PITSCOPE_API_KEY": "k"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pitscope.cli",
            "serve",
            str(model),
            "--db",
            db,
            "--workers",
            "2",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("the server did not start")


def load(url, photos, answers, errors, stop=None):
    """CLIENTS threads x REQUESTS posts; fills answers (JSON) and errors (text)."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def client(c):
        with httpx.Client(base_url=url, headers={"X-API-Key": "k"}, timeout=60) as http:
            for r in range(REQUESTS):
                if stop is not None and stop.is_set():
                    return
                when = (start + dt.timedelta(minutes=r)).isoformat()
                try:
                    answer = http.post(
                        "/predict",
                        params={"part": f"part-{c}", "captured_at": when},
                        files={"file": ("p.png", photos[(c + r) % len(photos)], "image/png")},
                    )
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    continue
                if answer.status_code == 200:
                    answers.append(answer.json())
                else:
                    errors.append(f"{answer.status_code}: {answer.text}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def test_concurrent_load_on_two_workers_records_exactly_one_row_per_answer(model, photos, history_url, tmp_path):
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process, url = start_server(model, history_url, log)
        answers, errors = [], []
        try:
            for thread in load(url, photos, answers, errors):
                thread.join()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    server_log = log_path.read_text()
    assert errors == [] and len(answers) == CLIENTS * REQUESTS
    assert all(a["recorded"] for a in answers), [a.get("not_recorded_because") for a in answers if not a["recorded"]][
        :3
    ]
    assert "locked" not in server_log
    store = HistoryStore(history_url)
    rows = store.inspections(limit=None)
    assert sorted(r["id"] for r in rows) == sorted(a["inspection_id"] for a in answers)
    for c in range(CLIENTS):
        assert len(store.trend(f"part-{c}")) == REQUESTS


def test_kill_9_during_load_loses_no_recorded_row(model, photos, history_url, tmp_path):
    with (tmp_path / "server.log").open("w") as log:
        process, url = start_server(model, history_url, log)
        answers, errors = [], []
        stop = threading.Event()
        threads = load(url, photos, answers, errors, stop)
        while len(answers) < CLIENTS * REQUESTS // 3:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join()
    recorded = {a["inspection_id"] for a in answers if a["recorded"]}
    assert len(recorded) >= CLIENTS * REQUESTS // 3
    store = HistoryStore(history_url)  # opens cleanly after the kill
    ids = {r["id"] for r in store.inspections(limit=None)}
    assert recorded <= ids  # every answer that said recorded is there
    assert len(ids - recorded) <= CLIENTS  # at most the requests in flight when the server died
    if store.backend == "sqlite":
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
