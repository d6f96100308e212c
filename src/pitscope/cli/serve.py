"""`pitscope serve`: a trained model over HTTP."""

from __future__ import annotations

import argparse
import os

from pitscope.cli.common import add_history_args


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a trained model over HTTP until interrupted: the inspection page at /, POST /predict,
    GET /model, PUT /threshold (with an API key only; rewrites MODEL), GET /health; with --db,
    every inspection is recorded and GET /inspections, /parts, /parts/{part}/trend, /alerts and
    POST /alerts/{id}/ack answer."""
    from pitscope.serve import MIB, run_service

    api_key = args.api_key or os.environ.get("PITSCOPE_API_KEY") or None
    db = args.db or os.environ.get("PITSCOPE_DB") or None
    settings = {
        "model": str(args.model),
        "device": args.device,
        "api_key": api_key,
        "max_upload_bytes": int(args.max_upload_mb * MIB),
        "max_pixels": args.max_pixels,
        "db": db,
        "image_store": args.store_images,
        "part_from": args.part_from,
        "time_from": args.time_from,
        "alert_area": args.alert_area,
        "alert_growth": args.alert_growth,
        "alert_window_days": args.alert_window_days,
        "alert_confirm": args.alert_confirm,
        "alert_smooth": args.alert_smooth,
        "webhook": args.webhook,
    }
    run_service(settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


def add_parsers(sub) -> None:
    """Register `serve`."""
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
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each with its own copy of the model (default: 1; above 1 needs --db)",
    )
    add_history_args(p, source="service")
    p.set_defaults(func=cmd_serve)
