"""Load test of `pitscope serve`: N clients x M requests against the real server on 127.0.0.1.

    python benchmarks/load_test.py                                  # 8 clients x 200 requests
    python benchmarks/load_test.py --model runs/demo/model.pt       # a trained model instead
    python benchmarks/load_test.py --clients 4 --requests 25 --out /tmp/load_test.json

Without --model a tiny detector is saved to a temporary folder (untrained ResNet-18 at 64 px,
scorers fitted on 12 synthetic images, as in the tests; nothing is trained): this measures the
service, not the model. The server is `python -m pitscope.cli serve MODEL --host 127.0.0.1
--port FREE` in a subprocess, stopped whatever happens. Each client is a thread with its own
httpx connection posting PNGs of synthetic ball-screw photographs (500 x 200, half with
pitting), one after another. Recorded: throughput, latency p50/p90/p99, errors (any non-200 or
failed request; must be 0, else the exit status is 1) and the server's resident memory
(VmRSS) before the first request and after the last, with its peak (VmHWM).
Results: benchmarks/results/load_test.json and .md, or --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from tiny_model import tiny_model  # this folder is on sys.path when run as a script

from pitscope.data.synthetic import SyntheticDataset

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def uploads(n: int = 8) -> list[bytes]:
    """PNG files of n synthetic 500 x 200 photographs, the second half with pitting."""
    images = SyntheticDataset(n_normal=n // 2, n_defect=n - n // 2, height=200, width=500, seed=0)
    files = []
    for sample in images:
        buffer = io.BytesIO()
        Image.fromarray(sample.image).save(buffer, "PNG")
        files.append(buffer.getvalue())
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, in MiB (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MiB
    return fields


def wait_until_healthy(url: str, server: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def run_clients(url: str, files: list[bytes], clients: int, requests: int) -> tuple[list[float], list[str], float]:
    """clients threads x requests sequential POSTs each -> (latencies of the 200s in s, errors, wall s)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for j in range(requests):
                data = files[(index + j) % len(files)]
                t0 = time.perf_counter()
                try:
                    response = http.post("/predict", files={"file": ("part.png", data, "image/png")})
                    error = None if response.status_code == 200 else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - t0
                with lock:
                    if error:
                        errors.append(error)
                    else:
                        latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    """Mean, p50, p90, p99 and max of latencies given in seconds, in milliseconds."""
    if not latencies:
        return dict.fromkeys(("mean", "p50", "p90", "p99", "max"))
    ms = np.array(latencies) * 1000.0
    stats = {"mean": ms.mean(), **{f"p{q}": np.percentile(ms, q) for q in (50, 90, 99)}, "max": ms.max()}
    return {k: round(float(v), 1) for k, v in stats.items()}


def measure(model: Path, args: argparse.Namespace, scratch: Path) -> dict:
    """Start the server, warm it up, run the clients, read its memory; always stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "pitscope.cli",
        "serve",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    log = scratch / "server.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(url, server, log, args.startup_timeout)
        files = uploads()
        info = httpx.get(f"{url}/model", timeout=10).json()
        before = memory_mb(server.pid)
        run_clients(url, files, clients=1, requests=args.warmup)
        latencies, errors, wall = run_clients(url, files, args.clients, args.requests)
        after = memory_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {
        "server_command": shlex.join(["python", *cmd[1:]]),
        "model": {"name": info["name"], "version": info["version"], "image_size": info["image_size"]},
        "uploads": {
            "files": len(files),
            "width": 500,
            "height": 200,
            "mean_bytes": int(np.mean([len(f) for f in files])),
        },
        "clients": args.clients,
        "requests_per_client": args.requests,
        "warmup_requests": args.warmup,
        "total": args.clients * args.requests,
        "ok": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 2),
        "latency_ms": latency_summary(latencies),
        "server_memory_mb": {"before": before.get("VmRSS"), "after": after.get("VmRSS"), "peak": after.get("VmHWM")},
    }


def write_markdown(record: dict, path: Path) -> None:
    r, lat, mem = record["result"], record["result"]["latency_ms"], record["result"]["server_memory_mb"]
    m = record["machine"]
    lines = [
        "# Load test of `pitscope serve`",
        "",
        f"Commit `{record['commit']}`, {record['date']}, {m['platform']}, {m['cpu_count']} CPUs "
        f"(OMP_NUM_THREADS={m['omp_num_threads']}), torch {m['torch']}. Model: {record['model']} "
        f"(input {r['model']['image_size']} px); uploads: {r['uploads']['width']} x {r['uploads']['height']} PNG, "
        f"{r['uploads']['mean_bytes'] // 1024} KiB on average. Server and clients share the machine.",
        "",
        "| clients x requests | ok | errors | throughput (req/s) | p50 ms | p90 ms | p99 ms | max ms "
        "| server RSS before / after / peak (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['clients']} x {r['requests_per_client']} | {r['ok']} | {r['errors']} | {r['throughput_rps']} "
        f"| {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} "
        f"| {mem['before']} / {mem['after']} / {mem['peak']} |",
        "",
        "Commands:",
        "",
        f"    {record['invocation']}",
        f"    {r['server_command']}",
        "",
    ]
    if r["error_examples"]:
        lines += ["Errors (first distinct ones):", "", *[f"    {e}" for e in r["error_examples"]], ""]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model file to serve (default: a tiny untrained one, saved to a temp folder)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (threads), default 8")
    parser.add_argument("--requests", type=int, default=200, help="requests per client, default 200")
    parser.add_argument("--warmup", type=int, default=4, help="requests before measuring, default 4")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for /health")
    parser.add_argument("--out", default=str(RESULTS / "load_test.json"), help="JSON path; the .md goes beside it")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.warmup < 0:
        parser.error("--clients and --requests must be at least 1, --warmup at least 0")

    with tempfile.TemporaryDirectory(prefix="pitscope-load-") as tmp:
        scratch = Path(tmp)
        model = Path(args.model).resolve() if args.model else tiny_model(scratch)
        result = measure(model, args, scratch)
    record = {
        "benchmark": "load_test",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join(["python", *sys.argv]),
        "model": str(args.model) if args.model else "tiny untrained detector (64 px, 12 synthetic images)",
        "result": result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    write_markdown(record, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
