"""The inspection history under load, after a kill -9, and at a million rows: SQLite and PostgreSQL.

    python benchmarks/history_load.py            # full run: writes benchmarks/results/history_load.json and .md
    python benchmarks/history_load.py --quick    # smoke run (fewer requests and rows), results to the temp folder
    python benchmarks/history_load.py --backends sqlite --out /tmp/history_load.json

Per backend (an SQLite file in a temporary folder; a fresh database on a throwaway PostgreSQL
server started with .ci/postgres):

1. Load: `python -m pitscope.cli serve MODEL --db URL --workers 4` in its own process group,
   then 8 client threads x 200 POST /predict (64 x 64 PNGs, `part=part-{client}`, increasing
   `captured_at`). Counted: answers, HTTP errors, `recorded` true / false, "database is locked"
   in any answer or the server log, requests/s and latency. Then the database must hold exactly
   one row per answer that said `recorded: true` (the same ids, the same part) and no other.
2. Kill -9: the same on a fresh database, the server's whole process group killed with SIGKILL
   once a third of the requests were answered. Every id answered `recorded: true` must be in the
   database, which must open with HistoryStore (SQLite: `PRAGMA integrity_check` = ok). Rows
   beyond the answered ones are requests committed but not answered before the kill, not losses.
3. Scale: single inserts through `HistoryStore.record_inspection` (one transaction each, the
   store's own settings: SQLite WAL, synchronous=FULL), without and with the service's alert rule,
   in interleaved blocks; then a bulk load of 1,000,000 inspections over 1000 parts (SQLite:
   executemany in 10k-row transactions; PostgreSQL: COPY), and `trend(part)`,
   `inspections(part=, limit=50)` and `count(part=)` timed on 20 random parts, with the query
   plans of the very statements the store runs (captured from the engine).

The model is a tiny untrained detector (64 px, scorers fitted on 12 synthetic images, as in the
tests): this measures the history, not the model. Server and clients share the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa
import torch
from PIL import Image
from tiny_model import tiny_model  # this folder is on sys.path when run as a script

from pitscope.benchmark import commit, machine
from pitscope.data.synthetic import render_surface
from pitscope.growth import AlertRule
from pitscope.history import HistoryError, schema
from pitscope.history.store import HistoryStore

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
POSTGRES_SCRIPT = REPO / ".ci" / "postgres"
SERVER_COMMAND = "python -m pitscope.cli serve MODEL --db URL --workers {workers} --port PORT --log-level warning"
LOCKED = "database is locked"
INDEX = "ix_inspections_part_captured"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SERVICE_RULE = AlertRule(0.005, 0.001, 1.0)  # `pitscope serve`'s default alert rule


# -- setting up ------------------------------------------------------------------------------
def photos(n: int = 8) -> list[bytes]:
    """n synthetic 64 x 64 ball-screw photographs as PNG files."""
    rng = np.random.default_rng(0)
    files = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(render_surface(rng, 64, 64)).save(buffer, "PNG")
        files.append(buffer.getvalue())
    return files


class Backend:
    """Fresh databases on one backend: SQLite files in `folder`, or databases on a PostgreSQL server."""

    def __init__(self, name: str, folder: Path, server_url: str | None = None):
        self.name, self.folder, self.server_url = name, folder, server_url

    def fresh(self, label: str) -> str:
        if self.name == "sqlite":
            return str(self.folder / f"{label}.sqlite")
        admin = sa.create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{label}"')
            connection.exec_driver_sql(f'CREATE DATABASE "{label}"')
        admin.dispose()
        return sa.make_url(self.server_url).set(database=label).render_as_string(hide_password=False)


def start_postgres() -> tuple[str, str]:
    out = subprocess.run([str(POSTGRES_SCRIPT)], capture_output=True, text=True, check=True)
    url, folder = out.stdout.split()
    return url, folder


def postgres_version(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        version = connection.exec_driver_sql("SHOW server_version").scalar_one()
    engine.dispose()
    return version


# -- the service -----------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, db: str, workers: int, log: Path, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """`pitscope serve` in its own process group; returns once GET /health answers 200."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "pitscope.cli",
        "serve",
        str(model),
        "--db",
        db,
        "--workers",
        str(workers),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with log.open("w") as log_file:
        server = subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    kill_group(server)
    raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def kill_group(server: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(server.pid, sig)
    except ProcessLookupError:
        pass
    server.wait()


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the group (uvicorn stops its workers), SIGKILL after 30 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        kill_group(server)


def run_clients(
    url: str, files: list[bytes], clients: int, requests: int, answered: list[int] | None = None
) -> tuple[list[dict], float]:
    """clients threads x requests sequential POST /predict each -> (one dict per request tried, wall s).
    A client stops at its first transport error (the server is gone). answered[0] counts 200s live."""
    results: list[dict] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for j in range(requests):
                captured = (START + dt.timedelta(minutes=10 * j, seconds=index)).isoformat()
                params = {"part": f"part-{index}", "captured_at": captured}
                t0 = time.perf_counter()
                record = {"client": index, "request": j}
                try:
                    response = http.post(
                        "/predict",
                        params=params,
                        files={"file": (f"part-{index}-{j}.png", files[(index + j) % len(files)], "image/png")},
                    )
                    record.update(status=response.status_code, locked=LOCKED in response.text)
                    if response.status_code == 200:
                        body = response.json()
                        record.update(
                            recorded=body.get("recorded"),
                            inspection_id=body.get("inspection_id"),
                            part=body.get("part"),
                            reason=body.get("not_recorded_because"),
                        )
                    else:
                        record["error"] = f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    record.update(status=None, error=f"{type(exc).__name__}: {exc}", locked=False)
                record["latency_s"] = time.perf_counter() - t0
                with lock:
                    results.append(record)
                    if answered is not None and record["status"] == 200:
                        answered[0] += 1
                if record["status"] is None:
                    return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def percentiles_ms(seconds: list[float], qs=(50, 95)) -> dict[str, float | None]:
    if not seconds:
        return {f"p{q}": None for q in qs}
    ms = np.array(seconds) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in qs}


def answer_counts(results: list[dict], log_text: str) -> dict:
    ok = [r for r in results if r["status"] == 200]
    errors = [r["error"] for r in results if r.get("error")]
    return {
        "requests": len(results),
        "answers": len(ok),
        "http_errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "recorded_true": sum(r["recorded"] is True for r in ok),
        "recorded_false": sum(r["recorded"] is not True for r in ok),
        "not_recorded_reasons": sorted({r["reason"] for r in ok if r.get("reason")})[:5],
        "locked_in_answers": sum(r["locked"] for r in results),
        "locked_in_server_log": log_text.count(LOCKED),
    }


def server_log_summary(log_text: str, scratch: Path) -> list[str]:
    """The first distinct error lines of the server log, temporary paths replaced."""
    lines = [
        line.strip().replace(str(scratch), "<tmp>")
        for line in log_text.splitlines()
        if "error" in line.lower() or "traceback" in line.lower() or LOCKED in line
    ]
    return list(dict.fromkeys(lines))[:8]


def compare_rows(db: str, results: list[dict]) -> dict:
    """The database against the answers: ids answered recorded, rows, missing and extra ids."""
    answered = {r["inspection_id"]: r["part"] for r in results if r["status"] == 200 and r["recorded"] is True}
    ids_answered = [r["inspection_id"] for r in results if r["status"] == 200 and r["recorded"] is True]
    store = HistoryStore(db)
    try:
        rows = store.inspections(limit=None)
    finally:
        store.close()
    in_db = {row["id"]: row["part"] for row in rows}
    return {
        "rows": len(rows),
        "answered_ids_duplicated": len(ids_answered) - len(set(ids_answered)),
        "answered_missing_from_db": len(set(answered) - set(in_db)),
        "rows_not_answered": len(set(in_db) - set(answered)),
        "part_mismatches": sum(in_db[i] != part for i, part in answered.items() if i in in_db),
    }


def load_run(backend: Backend, model: Path, files: list[bytes], args, scratch: Path) -> dict:
    db = backend.fresh("pitscope_load")
    log = scratch / f"{backend.name}-load.log"
    server, url = start_server(model, db, args.workers, log, args.startup_timeout)
    try:
        results, wall = run_clients(url, files, args.clients, args.requests)
    finally:
        stop_server(server)
    log_text = log.read_text()
    counts = answer_counts(results, log_text)
    latencies = [r["latency_s"] for r in results if r["status"] == 200]
    return {
        **counts,
        "wall_s": round(wall, 2),
        "requests_per_s": round(counts["answers"] / wall, 2),
        "latency_ms": percentiles_ms(latencies),
        "database": compare_rows(db, results),
        "server_log_errors": server_log_summary(log_text, scratch),
    }


def kill_run(backend: Backend, model: Path, files: list[bytes], args, scratch: Path) -> dict:
    """The load on a fresh database, the server's process group killed (SIGKILL) a third of the way."""
    db = backend.fresh("pitscope_kill")
    log = scratch / f"{backend.name}-kill.log"
    server, url = start_server(model, db, args.workers, log, args.startup_timeout)
    total = args.clients * args.requests
    answered = [0]
    outcome: dict = {}
    clients = threading.Thread(
        target=lambda: outcome.update(
            zip(("results", "wall"), run_clients(url, files, args.clients, args.requests, answered))
        )
    )
    clients.start()
    while answered[0] < total // 3 and clients.is_alive():
        time.sleep(0.005)
    answered_at_kill = answered[0]
    kill_group(server)
    clients.join()
    results = outcome["results"]
    counts = answer_counts(results, log.read_text())
    record = {"answered_when_killed": answered_at_kill, **counts}
    try:
        record["database"] = compare_rows(db, results)
        record["opens_with_history_store"] = True
    except (HistoryError, sa.exc.SQLAlchemyError, OSError) as exc:  # the point of the test: say how it failed
        record["opens_with_history_store"] = False
        record["open_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if backend.name == "sqlite":
        connection = sqlite3.connect(db)
        try:
            record["integrity_check"] = "; ".join(r[0] for r in connection.execute("PRAGMA integrity_check"))
        finally:
            connection.close()
    if "database" in record:
        record["rows_beyond_answered"] = record["database"]["rows"] - counts["recorded_true"]
    return record


# -- scale -----------------------------------------------------------------------------------
def insert_rate(store: HistoryStore, mid: str, threshold, n: int) -> dict:
    """n single-inspection transactions through record_inspection, half without a rule and half
    with the service's alert rule, in interleaved blocks of 50."""
    times: dict[str, list[float]] = {"no_rule": [], "service_rule": []}
    for k in range(n):
        kind = "no_rule" if (k // 50) % 2 == 0 else "service_rule"
        t0 = time.perf_counter()
        store.record_inspection(
            model=mid,
            threshold=threshold,
            source="http",
            image_sha256=f"{k:064x}",
            width=64,
            height=64,
            score=0.4,
            image_threshold=threshold.image_threshold,
            is_defective=False,
            defect_px=k % 7,
            pixel_threshold=threshold.pixel_threshold,
            duration_ms=5.0,
            part=f"insert-part-{k % 8}",
            captured_at=START + dt.timedelta(minutes=k),
            rule=SERVICE_RULE if kind == "service_rule" else None,
        )
        times[kind].append(time.perf_counter() - t0)
    return {
        kind: {"inserts": len(t), "per_s": round(len(t) / sum(t), 1), **percentiles_ms(t)}
        for kind, t in times.items()
        if t
    }


COLUMNS = (
    "recorded_at",
    "captured_at",
    "source",
    "part",
    "name",
    "image_sha256",
    "width",
    "height",
    "score",
    "image_threshold",
    "is_defective",
    "defect_px",
    "defect_fraction",
    "pixel_threshold",
    "model_id",
    "threshold_id",
    "duration_ms",
)


def bulk_rows(start: int, stop: int, n_parts: int, mid: str, threshold) -> list[tuple]:
    """Rows start..stop of the bulk history: in capture order, the parts interleaved (row i is part
    i % n_parts at hour i // n_parts), as a service inspecting every part in turn would write them."""
    rng = np.random.default_rng(start)
    scores = rng.uniform(0.0, 1.0, stop - start)
    rows = []
    for i, score in zip(range(start, stop), scores):
        when = START + dt.timedelta(hours=i // n_parts)
        defect_px = int(score * 40)
        rows.append(
            (
                when,
                when,
                "http",
                f"p-{i % n_parts:04d}",
                None,
                f"{i:064x}",
                64,
                64,
                float(score),
                threshold.image_threshold,
                bool(score > threshold.image_threshold),
                defect_px,
                defect_px / 4096,
                threshold.pixel_threshold,
                mid,
                threshold.id,
                5.0,
            )
        )
    return rows


def bulk_load(store: HistoryStore, n_rows: int, n_parts: int, mid: str, threshold, chunk: int = 10_000) -> dict:
    t0 = time.perf_counter()
    if store.backend == "sqlite":
        method = f"executemany, {chunk} rows per transaction"
        for start in range(0, n_rows, chunk):
            rows = [
                dict(zip(COLUMNS, r)) for r in bulk_rows(start, min(start + chunk, n_rows), n_parts, mid, threshold)
            ]
            with store.engine.begin() as connection:
                connection.execute(schema.inspections.insert(), rows)
    else:
        method = f"COPY (psycopg), {10 * chunk} rows per transaction"
        raw = store.engine.raw_connection()
        try:
            for start in range(0, n_rows, 10 * chunk):
                with raw.cursor() as cursor, cursor.copy(f"COPY inspections ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in bulk_rows(start, min(start + 10 * chunk, n_rows), n_parts, mid, threshold):
                        copy.write_row(row)
                raw.commit()
        finally:
            raw.close()
    seconds = time.perf_counter() - t0
    return {
        "rows": n_rows,
        "parts": n_parts,
        "method": method,
        "seconds": round(seconds, 1),
        "rows_per_s": round(n_rows / seconds),
    }


def captured_statements(engine: sa.Engine, call) -> list[tuple]:
    """The statements `call()` sends to the database, with their parameters."""
    seen: list[tuple] = []

    def listener(_conn, _cursor, statement, parameters, _context, _many):
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        call()
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    return seen


def query_plan(store: HistoryStore, call) -> str:
    """The plan of the (last) statement `call()` runs: SQLite EXPLAIN QUERY PLAN, PostgreSQL EXPLAIN."""
    statement, parameters = [
        (s, p)
        for s, p in captured_statements(store.engine, call)
        if "inspections" in s and s.lstrip().upper().startswith("SELECT")
    ][-1]
    prefix = "EXPLAIN QUERY PLAN " if store.backend == "sqlite" else "EXPLAIN "
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql(prefix + statement, parameters).all()
    return "\n".join(str(r[-1]) for r in rows)


def time_queries(store: HistoryStore, warmup: str, parts: list[str]) -> dict:
    """trend, inspections(limit=50) and count of each part in turn (after one call each on `warmup`)."""
    calls = {
        "trend": lambda p: store.trend(p),
        "inspections_limit_50": lambda p: store.inspections(part=p, limit=50),
        "count": lambda p: store.count(part=p),
    }
    for call in calls.values():
        call(warmup)
    times: dict[str, list[float]] = {name: [] for name in calls}
    sizes = []
    for part in parts:
        for name, call in calls.items():
            t0 = time.perf_counter()
            out = call(part)
            times[name].append(time.perf_counter() - t0)
            if name == "trend":
                sizes.append(len(out))
    summary = {
        name: {
            "median_ms": round(1000 * statistics.median(t), 2),
            "p95_ms": round(float(np.percentile(np.array(t) * 1000, 95)), 2),
        }
        for name, t in times.items()
    }
    summary["trend"]["points_per_part"] = int(statistics.median(sizes))
    return summary


def scale_run(backend: Backend, args) -> dict:
    db = backend.fresh("pitscope_scale")
    store = HistoryStore(db)
    try:
        mid, threshold = store.register_model({"w": torch.zeros(1)}, "history_load benchmark", 0.5, 0.5)
        inserts = insert_rate(store, mid, threshold, args.inserts)
        bulk = bulk_load(store, args.rows, args.parts, mid, threshold)
        rows = store.count()
        read_statements = [
            " ".join(s.split()[:2]) for s, _ in captured_statements(store.engine, lambda: store.count(part="p-0000"))
        ]
        part = "p-0000"
        plans = {
            name: query_plan(store, call)
            for name, call in {
                "trend": lambda: store.trend(part),
                "inspections_limit_50": lambda: store.inspections(part=part, limit=50),
                "count": lambda: store.count(part=part),
            }.items()
        }
        analyzed = None
        if store.backend == "postgresql":  # what autovacuum does after a large load; plans before and after
            with store.engine.connect() as connection:
                connection.exec_driver_sql("ANALYZE inspections")
                connection.commit()
            analyzed = {"trend": query_plan(store, lambda: store.trend(part))}
        rng = np.random.default_rng(1)
        warmup, *parts = [f"p-{k:04d}" for k in rng.choice(args.parts, size=args.queries + 1, replace=False)]
        queries = time_queries(store, warmup, parts)
    finally:
        store.close()
    trend_plan = (analyzed or plans)["trend"]
    return {
        "single_inserts": inserts,
        "bulk": bulk,
        "rows_in_database": rows,
        "statements_of_a_read": read_statements,
        "queries": queries,
        "queried_parts": len(parts),
        "plans": plans,
        "plans_after_analyze": analyzed,
        "trend_uses_index": INDEX in trend_plan,
    }


# -- the record ------------------------------------------------------------------------------
def versions(postgres: str | None) -> dict:
    import psycopg

    return {
        "os": platform.platform(),
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "sqlite": sqlite3.sqlite_version,
        "psycopg": psycopg.__version__,
        "postgresql": postgres,
    }


def write_markdown(record: dict, path: Path) -> None:
    m, p = record["machine"], record["parameters"]
    lines = [
        "# Inspection history under load, after kill -9, and at scale",
        "",
        (
            f"Commit `{record['commit']}`, {record['date']}. {m['cpu']}, {m['cpu_count']} cores, {m['os']}, "
            f"Python {m['python']}, SQLAlchemy {m['sqlalchemy']}, SQLite {m['sqlite']}"
            + (
                f", PostgreSQL {m['postgresql']} (psycopg {m['psycopg']}, server from `.ci/postgres`, fsync on)"
                if m["postgresql"]
                else ""
            )
            + ". Server and clients share the machine. Tiny untrained 64 px model."
        ),
        "",
        "    " + record["invocation"],
        "    " + record["server_command"],
        "",
        f"## Load: {p['clients']} clients x {p['requests']} POST /predict, {p['workers']} workers, one database",
        "",
        (
            "| backend | requests | answers | errors | recorded true / false | rows | answered ids missing | "
            'rows not answered | "locked" (answers / log) | req/s | p50 ms | p95 ms |'
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in record["backends"].items():
        r, d = b["load"], b["load"]["database"]
        lines.append(
            f"| {name} | {r['requests']} | {r['answers']} | {r['http_errors']} | {r['recorded_true']} / "
            f"{r['recorded_false']} | {d['rows']} | {d['answered_missing_from_db']} | {d['rows_not_answered']} "
            f"| {r['locked_in_answers']} / {r['locked_in_server_log']} | {r['requests_per_s']} "
            f"| {r['latency_ms']['p50']} | {r['latency_ms']['p95']} |"
        )
    lines += [
        "",
        "## kill -9 of the server's process group after a third of the answers",
        "",
        (
            "| backend | answered recorded true | rows after | answered ids missing | rows beyond answered "
            "(in flight) | opens with HistoryStore | integrity_check |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name, b in record["backends"].items():
        k, d = b["kill"], b["kill"].get("database", {})
        lines.append(
            f"| {name} | {k['recorded_true']} | {d.get('rows', '-')} | {d.get('answered_missing_from_db', '-')} "
            f"| {k.get('rows_beyond_answered', '-')} | {'yes' if k['opens_with_history_store'] else 'NO'} "
            f"| {k.get('integrity_check', 'n/a')} |"
        )
    lines += [
        "",
        f"## Scale: {p['inserts']} single inserts, then {p['rows']:,} rows over {p['parts']} parts",
        "",
        (
            "| backend | inserts/s (no rule) | inserts/s (service rule) | bulk load | rows/s | trend median / p95 ms "
            "| points per part | inspections(limit 50) median ms | count median ms | trend uses the index |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in record["backends"].items():
        s, q = b["scale"], b["scale"]["queries"]
        ins = s["single_inserts"]
        lines.append(
            f"| {name} | {ins['no_rule']['per_s']} | {ins.get('service_rule', {}).get('per_s', '-')} "
            f"| {s['bulk']['method']}, {s['bulk']['seconds']} s | {s['bulk']['rows_per_s']} "
            f"| {q['trend']['median_ms']} / {q['trend']['p95_ms']} | {q['trend']['points_per_part']} "
            f"| {q['inspections_limit_50']['median_ms']} | {q['count']['median_ms']} "
            f"| {'yes' if s['trend_uses_index'] else 'NO'} |"
        )
    lines += [
        "",
        (
            "Single inserts: one `record_inspection` transaction each, in alternating blocks of 50, on 8 "
            'parts, one capture a minute; "service rule" passes `pitscope serve`\'s default alert rule '
            "(area 0.5 %, growth 0.1 %/day over 1 day), so each insert also reads the part's inspections of "
            "the last day (up to 180 here) and fits their growth inside the transaction. Bulk rows: the "
            "parts interleaved in capture order, one capture per part an hour."
        ),
    ]
    reads = "; ".join(
        f"{name}: `{', '.join(b['scale']['statements_of_a_read'])}`" for name, b in record["backends"].items()
    )
    lines += ["", f"Statements one read (`count(part=...)`) sends, from the engine: {reads}."]
    lines += [
        "",
        (
            f"Queries timed on {p['queries']} random parts after one warm-up call. Plans of the statements "
            "`HistoryStore.trend` runs (PostgreSQL: after `ANALYZE inspections`, as autovacuum would; "
            "the JSON has the plans before it and those of the other two queries):"
        ),
        "",
    ]
    for name, b in record["backends"].items():
        plan = (b["scale"]["plans_after_analyze"] or b["scale"]["plans"])["trend"]
        lines += [f"{name}:", "", *["    " + line for line in plan.splitlines()], ""]
    path.write_text("\n".join(lines))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 20 requests per client, 200 inserts, 20,000 rows; results to the temp folder unless --out",
    )
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--requests", type=int, help="requests per client (default 200; --quick 20)")
    parser.add_argument("--workers", type=int, default=4, help="server worker processes (default 4)")
    parser.add_argument("--inserts", type=int, help="single inserts (default 2000; --quick 200)")
    parser.add_argument("--rows", type=int, help="bulk-loaded inspections (default 1,000,000; --quick 20,000)")
    parser.add_argument("--parts", type=int, default=1000, help="parts of the bulk rows (default 1000)")
    parser.add_argument("--queries", type=int, default=20, help="parts whose queries are timed (default 20)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument("--out", help="JSON path, the .md beside it (default benchmarks/results/history_load.json)")
    args = parser.parse_args()
    quick = args.quick
    args.requests = args.requests or (20 if quick else 200)
    args.inserts = args.inserts or (200 if quick else 2000)
    args.rows = args.rows or (20_000 if quick else 1_000_000)
    default_out = Path(tempfile.gettempdir()) / "history_load_quick.json" if quick else RESULTS / "history_load.json"
    args.out = Path(args.out) if args.out else default_out
    return args


def main() -> int:
    args = parse_args()
    backends: dict[str, dict] = {}
    pg_version = None
    with tempfile.TemporaryDirectory(prefix="pitscope-history-load-") as tmp:
        scratch = Path(tmp)
        model = tiny_model(scratch)
        files = photos()
        for name in args.backends:
            pg_folder = None
            try:
                if name == "postgresql":
                    server_url, pg_folder = start_postgres()
                    pg_version = postgres_version(server_url)
                    backend = Backend(name, scratch, server_url)
                else:
                    backend = Backend(name, scratch)
                print(f"[{time.strftime('%H:%M:%S')}] {name}: load", flush=True)
                load = load_run(backend, model, files, args, scratch)
                print(f"[{time.strftime('%H:%M:%S')}] {name}: kill -9", flush=True)
                kill = kill_run(backend, model, files, args, scratch)
                print(f"[{time.strftime('%H:%M:%S')}] {name}: scale", flush=True)
                scale = scale_run(backend, args)
            finally:
                if pg_folder:
                    subprocess.run([str(POSTGRES_SCRIPT), "stop", pg_folder], capture_output=True, check=False)
            backends[name] = {"load": load, "kill": kill, "scale": scale}
            print(json.dumps(backends[name], indent=1, default=str), flush=True)
    script = os.path.relpath(Path(sys.argv[0]).resolve(), REPO)
    record = {
        "benchmark": "history_load",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {**machine(), **versions(pg_version), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "invocation": shlex.join(["python", script, *sys.argv[1:]]),
        "server_command": SERVER_COMMAND.format(workers=args.workers),
        "parameters": {
            k: getattr(args, k)
            for k in ("quick", "clients", "requests", "workers", "inserts", "rows", "parts", "queries")
        },
        "model": "tiny untrained detector (64 px, scorers fitted on 12 synthetic images)",
        "backends": backends,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str))
    write_markdown(record, args.out.with_suffix(".md"))
    print(args.out.with_suffix(".md").read_text())
    failed = any(
        b["load"]["http_errors"]
        or b["load"]["recorded_false"]
        or b["load"]["database"]["rows_not_answered"]
        or b["load"]["database"]["answered_missing_from_db"]
        or b["kill"].get("database", {}).get("answered_missing_from_db", 1)
        for b in backends.values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
