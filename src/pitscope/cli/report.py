"""`pitscope report`: the HTML report of one model, or of several side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from pitscope.cli.common import add_set_arg


def cmd_report(args: argparse.Namespace) -> int:
    """Write an HTML report (report.html, self-contained) and its numbers (report.json) of a
    model on its test split; several models (one per MVTec category) add the per-category table."""
    from pitscope.report import build_category_report, build_report, load_category_runs

    progress = not args.quiet
    out = Path(args.out) if args.out else Path(args.models[0]).parent / "report"
    runs = load_category_runs(args.models, args.overrides, progress)
    if args.wear and len(args.models) > 1:
        raise ValueError("--wear goes with one model")
    if len(args.models) == 1:
        run = next(iter(runs))
        path = build_report(run.detector, run.dataset, out, run.run_dir, progress, args.gallery_size, args.wear)
    else:
        path = build_category_report(runs, out, progress, args.gallery_size)
    print(f"report written to {path} (numbers in {path.with_suffix('.json')})")
    return 0


def add_parsers(sub) -> None:
    """Register `report`."""
    p = sub.add_parser("report", help="write an HTML report of a model's test results", description=cmd_report.__doc__)
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="model file written by train; several (one per MVTec category) give the per-category table",
    )
    p.add_argument("--out", help="output folder (default: beside the first model, report/)")
    add_set_arg(p, "override every model's data config, e.g. --set data.root=/other/copy")
    p.add_argument("--gallery-size", type=int, default=6, help="most images per gallery group (default: 6)")
    p.add_argument("--wear", metavar="DIR", help="BSData: add the wear curves `pitscope wear` wrote to DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_report)
