"""`pitscope wear` and `history`: parts followed over time, and the recorded inspections."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

from pitscope.cli.common import limit, non_negative_int, positive_int, unit_fraction


def cmd_wear(args: argparse.Namespace) -> int:
    """Wear curves over BSData's wear-development sequences: the predicted pitting area of every
    image over time beside the true one, growth, agreement and an alert rule, per sequence.
    Each sequence is measured by a model that never trained on its images."""
    from pitscope.wear import AlertRule, format_summary, run_wear, run_wear_history

    rule = AlertRule(args.alert_area, args.alert_growth, args.alert_window_days, args.alert_confirm, args.alert_smooth)
    db = args.db or (os.environ.get("PITSCOPE_DB") if not args.models else None)
    if db and args.models:
        raise ValueError("give model files or --db, not both: --db reads the areas the history recorded")
    if db and args.calibrate_first:
        raise ValueError("--calibrate-first scores BSData's files with model files; --db reads recorded areas")
    if db:
        record = run_wear_history(db, args.part, args.out, root=args.root, rule=rule)
    elif not args.models:
        raise ValueError("give at least one model file, or --db with the inspection history to read")
    else:
        record = run_wear(
            args.models,
            args.out,
            root=args.root,
            rule=rule,
            allow_overlap=args.allow_overlap,
            progress=not args.quiet,
            echo=lambda line: print(line, file=sys.stderr),
            calibrate_first=args.calibrate_first,
            calibrate_quantile=args.calibrate_quantile,
        )
    print(format_summary(record))
    print(f"wear curves written to {Path(args.out)} (wear.json, summary.csv, sequences/)")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """The inspection history that `serve --db` and `predict --db` record: the newest inspections
        (filtered by part, capture time, decision, model, source), or every match as CSV; the parts,
        alerts or events; or delete what is older than a number of days.

    examples:
      pitscope history --db inspections.sqlite --part 277500_315 --limit 10
      pitscope history --db inspections.sqlite --part 277500_315 --watch 7
      pitscope history --db inspections.sqlite --decision defective --since 2020-08-28 --csv defective.csv
      pitscope history --db postgresql+psycopg://pitscope@db-host/pitscope --prune-older-than 365"""
    from pitscope.history.csv_export import COLUMNS, write_csv
    from pitscope.history.names import parse_time
    from pitscope.history.store import HistoryStore

    db = args.db or os.environ.get("PITSCOPE_DB")
    if not db:
        raise ValueError("give --db (an SQLite file or a PostgreSQL URL) or set PITSCOPE_DB")
    if not ("://" in db or Path(db).exists()):
        raise ValueError(f"{db}: no such database file")
    if args.watch is not None and (args.watch < 1 or not args.part):
        raise ValueError("--watch K needs --part and K >= 1: the median of one part's last K predicted areas")
    if args.watch is not None and (args.parts or args.alerts or args.events or args.prune_older_than is not None):
        raise ValueError(
            "--watch adds a column to the inspections' table or CSV; not with --parts, --alerts, --events or --prune-older-than"
        )
    store = HistoryStore(db)
    if args.prune_older_than is not None:
        result = store.prune(args.prune_older_than)
        print(
            f"deleted {result['inspections']} inspections recorded before {result['cutoff']} "
            f"and {result['copies']} stored image copies"
        )
        return 0
    if args.parts:
        for row in store.parts():
            last = row["last"].isoformat(timespec="seconds") if row["last"] else "-"
            print(
                f"{row['part']:<30} {row['inspections']:>8} inspections  last {last}  open alerts {row['open_alerts']}"
            )
        return 0
    if args.alerts or args.events:
        rows = store.alerts(part=args.part) if args.alerts else store.events()
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    filters = dict(
        part=args.part,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        decision=args.decision,
        model=args.model,
        source=args.source,
    )
    if args.csv:
        rows = store.inspections(limit=None, newest_first=False, **filters)
        columns: tuple[str, ...] = COLUMNS
        if args.watch is not None:
            _add_watched(store, rows, args.part, filters, args.watch)
            columns = (*COLUMNS, "watched_fraction")
        n = write_csv(rows, args.csv, columns)
        print(f"{n} inspections written to {args.csv}")
        return 0
    rows = store.inspections(limit=args.limit or None, **filters)
    watched = "" if args.watch is None else f" {'watch %':>7}"
    if args.watch is not None:
        _add_watched(store, rows, args.part, filters, args.watch)
    print(
        f"{'id':>8}  {'captured (UTC)':<19}  {'part':<16} {'score':>9} {'thresh':>8} {'decision':<9} "
        f"{'area %':>7}{watched}  name"
    )
    for row in rows:
        when = (row["captured_at"] or row["recorded_at"]).strftime("%Y-%m-%d %H:%M:%S")
        watched = "" if args.watch is None else f" {100 * row['watched_fraction']:>7.3f}"
        print(
            f"{row['id']:>8}  {when:<19}  {(row['part'] or '-')[:16]:<16} {row['score']:>9.4g} "
            f"{row['image_threshold']:>8.4g} {'defective' if row['is_defective'] else 'good':<9} "
            f"{100 * row['defect_fraction']:>7.3f}{watched}  {row['name'] or ''}"
        )
    print(f"{len(rows)} of {store.count(**filters)} matching inspections in {store.display_url}")
    return 0


def _add_watched(store, rows: list[dict], part: str, filters: dict, k: int) -> None:
    """Give each of a part's inspection rows `watched_fraction`: the median of its predicted area
    and the part's k - 1 inspections before it, whatever the other filters keep (the area
    `--alert-smooth k` watches)."""
    trend = store.trend(part, filters["since"], filters["until"], smooth=k)
    by_id = {p["id"]: p.get("watched_fraction", p["defect_fraction"]) for p in trend}
    for row in rows:
        row["watched_fraction"] = by_id.get(row["id"], row["defect_fraction"])  # deleted in between: its own


def add_parsers(sub) -> None:
    """Register `wear` and `history`."""
    p = sub.add_parser(
        "wear", help="pitting area over time along BSData's wear sequences", description=cmd_wear.__doc__
    )
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="model files; each sequence goes to the first one that did not train on its images "
        "(one model per fold of a split over sequences covers them all)",
    )
    p.add_argument("--out", default="wear", help="output folder (default: wear/)")
    p.add_argument(
        "--root",
        help="the BSData folder (default: data.root of the first model, $PITSCOPE_BSDATA, ../shared/datasets/bsdata)",
    )
    p.add_argument(
        "--alert-area",
        type=limit,
        default=0.005,
        metavar="FRACTION",
        help="alert when the predicted area is above this fraction of the surface (default: 0.005; off)",
    )
    p.add_argument(
        "--alert-growth",
        type=limit,
        default=0.001,
        metavar="FRACTION_PER_DAY",
        help="alert when the predicted area grows faster than this fraction of the surface a day (default: 0.001; off)",
    )
    p.add_argument(
        "--alert-window-days",
        type=float,
        default=1.0,
        metavar="DAYS",
        help="the growth is the slope over the images of the last DAYS days (default: 1)",
    )
    p.add_argument(
        "--alert-confirm",
        type=positive_int,
        default=1,
        metavar="K",
        help="alert on an image only when a condition held on it and on the K - 1 images before it (default: 1)",
    )
    p.add_argument(
        "--alert-smooth",
        type=positive_int,
        default=1,
        metavar="K",
        help="the area the rule watches, and the curve reports beside the predicted one, is the median of "
        "each image's predicted area and the K - 1 before it (default: 1, the predicted area itself)",
    )
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="measure a sequence with a model that trained on some of its images (said in the output) "
        "rather than leave it out",
    )
    p.add_argument(
        "--calibrate-first",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="give each sequence its own thresholds from its first K photos (as pitscope calibrate does), "
        "which are then not measured (default: 0, the model's thresholds)",
    )
    p.add_argument(
        "--calibrate-quantile",
        type=unit_fraction,
        metavar="Q",
        help="with --calibrate-first: the quantile of the K photos' scores and maps (default: the model's own)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--db",
        help="read each part's series from this inspection history instead of scoring "
        "BSData's files (true areas from --root's labels when given)",
    )
    p.add_argument("--part", action="append", help="with --db: a part to follow (repeat; default: every part)")
    p.set_defaults(func=cmd_wear)

    p = sub.add_parser(
        "history",
        help="the recorded inspections: list, export, prune",
        description=inspect.cleandoc(cmd_history.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", help="the history database: SQLite file or PostgreSQL URL (default: $PITSCOPE_DB)")
    p.add_argument("--part", help="only this part")
    p.add_argument("--since", help="captured at or after (ISO 8601)")
    p.add_argument("--until", help="captured before (ISO 8601)")
    p.add_argument("--decision", choices=["defective", "good"])
    p.add_argument("--model", help="model id (or its first characters)")
    p.add_argument("--source", choices=["cli", "http", "page"])
    p.add_argument("--limit", type=int, default=50, help="rows to show, newest first (default: 50; 0: all)")
    p.add_argument("--csv", metavar="FILE", help="write every matching inspection to FILE as CSV (oldest first)")
    p.add_argument(
        "--watch",
        type=int,
        metavar="K",
        help="with --part: add the watched area, the median of each inspection's predicted area and the "
        "part's K - 1 inspections before it (what --alert-smooth K alerts on); in the table and --csv",
    )
    p.add_argument("--parts", action="store_true", help="list the parts instead: inspections, last time, open alerts")
    p.add_argument("--alerts", action="store_true", help="list the alerts instead")
    p.add_argument("--events", action="store_true", help="list threshold changes and model loads instead")
    p.add_argument(
        "--prune-older-than",
        type=float,
        metavar="DAYS",
        help="delete inspections recorded more than DAYS days ago (and their stored image copies)",
    )
    p.set_defaults(func=cmd_history)
