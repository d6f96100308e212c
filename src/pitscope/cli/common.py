"""What several commands share: the config options, the history options, limits, skipped files."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Sequence

from pitscope.config import Config, load_config, preset_names


def add_set_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """`--set KEY=VALUE`, repeatable, into args.overrides."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_config_args(
    parser: argparse.ArgumentParser, default_preset: str | None, default_help: str | None = None
) -> None:
    """--config PRESET, --set KEY=VALUE (repeatable) and --output-dir; `default_help` says what a
    missing --config means where `default_preset` is None."""
    default_help = default_help or default_preset
    parser.add_argument(
        "--config",
        default=default_preset,
        metavar="PRESET",
        help=f"preset name ({', '.join(preset_names())}) or path to a YAML file"
        + (f" (default: {default_help})" if default_help else ""),
    )
    add_set_arg(parser, "override one config value, e.g. --set train.epochs=5 --set data.format=bsdata (repeatable)")
    parser.add_argument("--output-dir", help="where outputs go (overrides output_dir)")


def config_from_args(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    """The config of --config, with `extra` overrides, then --set, then --output-dir applied."""
    overrides = list(extra) + list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def limit(text: str) -> float | None:
    """An alert limit of `pitscope wear`: a number, or `off`."""
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or off, got {text!r}") from None


def alert_limit(text: str) -> float | None:
    """An alert limit of the history: a number >= 0, or `off`."""
    value = limit(text)
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or off, got {text!r}")
    return value


def _checked(text: str, kind: type, ok, expected: str):
    """`text` as `kind` when ok(value) holds; otherwise argparse's type error naming `expected`."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A count: an integer >= 0."""
    return _checked(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_int(text: str) -> int:
    """A count of at least one: an integer >= 1."""
    return _checked(text, int, lambda v: v >= 1, "an integer >= 1")


def unit_fraction(text: str) -> float:
    """A quantile: a number in [0, 1]."""
    return _checked(text, float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def add_history_args(p: argparse.ArgumentParser, source: str) -> None:
    """--db, --store-images, --part-from, --time-from, the alert rule and --webhook (serve, predict)."""
    from pitscope.history.names import BSDATA_PART, BSDATA_TIME

    g = p.add_argument_group("inspection history")
    g.add_argument(
        "--db",
        help="record every inspection in this database: an SQLite file path or a PostgreSQL "
        "URL (postgresql+psycopg://user@host/db); default: $PITSCOPE_DB, else none",
    )
    g.add_argument(
        "--store-images",
        choices=["none", "path", "copy"],
        default="none",
        help="what each inspection keeps of its photo: nothing, its file path, or a copy beside the "
        "SQLite file (DB.images/) (default: none)",
    )
    g.add_argument(
        "--part-from",
        metavar="REGEX",
        help=f"read the part id from the file name (first group); BSData: '{BSDATA_PART}'",
    )
    g.add_argument(
        "--time-from",
        metavar="REGEX",
        help=f"read the capture time from the file name (first group; yymmddhhmmss, yyyymmddhhmmss "
        f"or ISO 8601); BSData: '{BSDATA_TIME}'; else EXIF, else the {source}'s clock",
    )
    g.add_argument(
        "--alert-area",
        type=alert_limit,
        default=0.005,
        metavar="FRACTION",
        help="alert when a part's predicted area is above this fraction of the photo, or off (default 0.005)",
    )
    g.add_argument(
        "--alert-growth",
        type=alert_limit,
        default=0.001,
        metavar="PER_DAY",
        help="alert when it grows faster than this fraction per day, or off (default 0.001)",
    )
    g.add_argument("--alert-window-days", type=float, default=1.0, help="growth window in days (default 1)")
    g.add_argument(
        "--alert-confirm",
        type=positive_int,
        default=1,
        metavar="K",
        help="alert only when a condition held on a part's last K inspections, this one included (default 1)",
    )
    g.add_argument(
        "--alert-smooth",
        type=positive_int,
        default=1,
        metavar="K",
        help="the area the rule watches is the median of a part's last K inspections' areas, this one "
        "included (default 1: each inspection's own)",
    )
    g.add_argument(
        "--webhook", metavar="URL", help="POST each new alert as JSON to this URL (retried in the background)"
    )


def print_skipped(bad: Iterable[tuple[str, str]]) -> None:
    """One stderr line per file a dataset skipped: (path, reason) pairs."""
    for path, reason in bad:
        print(f"skipped bad file: {path}: {reason}", file=sys.stderr)
