"""Databases HistoryStore must refuse or stop writing to, each with its own message (SQLite, and a
PostgreSQL server nobody listens on)."""

import ctypes
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pitscope.history.store import HistoryError, HistoryStore, HistoryUnavailable


def _state() -> dict:
    return {"w": torch.ones(3), "threshold": torch.tensor(1.0), "pixel_threshold": torch.tensor(0.5)}


def _record(store: HistoryStore, mid: str, threshold) -> int:
    inspection, _ = store.record_inspection(
        model=mid,
        threshold=threshold,
        source="cli",
        image_sha256="ab" * 32,
        width=10,
        height=10,
        score=0.5,
        image_threshold=1.0,
        is_defective=False,
        defect_px=0,
        pixel_threshold=0.5,
        duration_ms=1.0,
    )
    return inspection


def _history(path: Path, inspections: int = 1) -> str:
    """A closed history database at `path` with one model and `inspections` inspections; the model id."""
    store = HistoryStore(path)
    try:
        mid, threshold = store.register_model(_state(), "tiny", 1.0, 0.5)
        for _ in range(inspections):
            _record(store, mid, threshold)
    finally:
        store.close()
    return mid


# -- refused on opening ----------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n")
    with pytest.raises(HistoryError, match="not an SQLite database"):
        HistoryStore(path)
    assert path.read_text() == "these are my notes, not a database\n"


def test_a_database_from_a_newer_pitscope_is_refused(tmp_path):
    path = tmp_path / "h.sqlite"
    _history(path)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    connection.close()
    with pytest.raises(HistoryError, match="newer") as refused:
        HistoryStore(path)
    assert "9999" in str(refused.value)


def test_a_database_of_other_tables_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    connection.close()
    with pytest.raises(HistoryError, match="not a pitscope history.*customers"):
        HistoryStore(path)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(HistoryError, match="does not exist"):
        HistoryStore(tmp_path / "no such folder" / "h.sqlite")
    assert not (tmp_path / "no such folder").exists()


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(HistoryError, match="is a folder"):
        HistoryStore(tmp_path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://user@localhost/history", "SQLite or PostgreSQL"),
    ],
)
def test_databases_that_keep_no_history_here_are_refused(spec, message):
    with pytest.raises(HistoryError, match=message):
        HistoryStore(spec)


def test_an_unreachable_postgresql_server_is_refused_quickly():
    with socket.socket() as probe:  # a free port: nobody listens on it once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(HistoryError, match="cannot open the database"):
        HistoryStore(f"postgresql+psycopg://pitscope:secret@127.0.0.1:{port}/history?connect_timeout=2")
    assert time.monotonic() - start < 10


def test_messages_hide_the_password():
    with pytest.raises(HistoryError) as refused:
        HistoryStore("mysql://user:secret@localhost/history")
    assert "secret" not in str(refused.value)


# -- read-only databases ---------------------------------------------------------------------
# Root writes through any file mode. So the reading side runs in a subprocess, and as root that
# subprocess gives up the two capabilities that let root ignore file modes (CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH): it stays root, owner of the files, and the owner's mode bits apply to it
# as to anyone. Dropping a capability from the bounding set needs no tool, only prctl.

READER = r"""
import json, sys
from pitscope.history.store import HistoryStore, HistoryUnavailable
path, mid = sys.argv[1:]
try:
    store = HistoryStore(path)
except Exception as exc:
    print(json.dumps({"open": f"{type(exc).__name__}: {exc}"}))
    sys.exit()
out = {"writable": store.writable, "count": store.count()}
try:
    store.record_inspection(model=mid, threshold=store.current_threshold(mid), source="cli", image_sha256="ab" * 32,
                            width=10, height=10, score=0.5, image_threshold=1.0, is_defective=False, defect_px=0,
                            pixel_threshold=0.5, duration_ms=1.0)
    out["write"] = "recorded"
except HistoryUnavailable as exc:
    out["write"] = f"HistoryUnavailable: {exc}"
out["count_after"] = store.count()
print(json.dumps(out))
"""
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _without_file_mode_override() -> None:
    """preexec_fn: drop the capabilities that let root ignore file modes, for the program it runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {capability})")


def _read_bound_by_file_modes(path: Path, mid: str) -> dict:
    """Open `path` in a subprocess that file modes bind (see above), try to record one inspection, and
    report: the open error, or writable, count, the write's outcome and the count after it."""
    as_root = os.geteuid() == 0
    try:
        done = subprocess.run(
            [sys.executable, "-c", READER, str(path), mid],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_without_file_mode_override if as_root else None,
        )
    except subprocess.SubprocessError as exc:
        pytest.skip(f"running as root and cannot give up CAP_DAC_OVERRIDE here: {exc}")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_read_only_file_opens_for_reading_and_refuses_writes(tmp_path):
    path = tmp_path / "h.sqlite"
    mid = _history(path, inspections=2)
    path.chmod(0o444)
    out = _read_bound_by_file_modes(path, mid)
    assert "open" not in out, out
    assert (out["writable"], out["count"], out["count_after"]) == (False, 2, 2)
    assert out["write"].startswith("HistoryUnavailable") and "read-only" in out["write"]


def test_a_read_only_file_in_a_read_only_folder_opens_for_reading_and_refuses_writes(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "h.sqlite"
    mid = _history(path, inspections=2)
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        out = _read_bound_by_file_modes(path, mid)
    finally:
        folder.chmod(0o755)
    assert "open" not in out, out
    assert (out["writable"], out["count"], out["count_after"]) == (False, 2, 2)
    assert out["write"].startswith("HistoryUnavailable") and "read-only" in out["write"]


# -- the file changes under an open store ----------------------------------------------------


def test_a_database_deleted_while_open_stops_taking_writes(tmp_path):
    path = tmp_path / "h.sqlite"
    store = HistoryStore(path)
    try:
        mid, threshold = store.register_model(_state(), "tiny", 1.0, 0.5)
        _record(store, mid, threshold)
        path.unlink()
        with pytest.raises(HistoryUnavailable, match="deleted"):
            _record(store, mid, threshold)
    finally:
        store.close()


def _replace_with_another_history(path: Path) -> None:
    other = path.with_name("other.sqlite")
    _history(other, inspections=0)
    os.replace(other, path)


def test_a_database_replaced_while_open_stops_taking_writes(tmp_path):
    path = tmp_path / "h.sqlite"
    store = HistoryStore(path)
    try:
        mid, threshold = store.register_model(_state(), "tiny", 1.0, 0.5)
        _replace_with_another_history(path)
        with pytest.raises(HistoryUnavailable, match="replaced"):
            _record(store, mid, threshold)
    finally:
        store.close()


def test_a_database_replaced_before_its_first_write_stops_taking_writes(tmp_path):
    path = tmp_path / "h.sqlite"
    mid = _history(path)
    store = HistoryStore(path)
    try:
        threshold = store.current_threshold(mid)
        _replace_with_another_history(path)
        with pytest.raises(HistoryUnavailable, match="replaced"):
            _record(store, mid, threshold)
    finally:
        store.close()
