"""The `pitscope` command: builds a config from presets and flags, then calls library functions.

This package is the only place that parses arguments and prints a command's output. Each module
registers its commands with `add_parsers(sub)`; `build_parser` assembles them in the order the
help lists them, and `main` runs one, turning the errors a user can fix into a message and exit
status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pitscope import __version__
from pitscope.cli import benchmark, data, export, history, predict, report, serve, train
from pitscope.config import ConfigError
from pitscope.history import HistoryError, HistoryUnavailable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pitscope",
        description="Find pitting and other surface defects on machine parts, trained on defect-free images alone.",
    )
    parser.add_argument("--version", action="version", version=f"pitscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    data.add_parsers(sub)
    train.add_parsers(sub)
    predict.add_parsers(sub)
    export.add_parsers(sub)
    serve.add_parsers(sub)
    report.add_parsers(sub)
    benchmark.add_parsers(sub)
    history.add_parsers(sub)
    train.add_demo_parser(sub)
    return parser


class _TerminalHandler(logging.StreamHandler):
    """The CLI's handler of pitscope's log records (told apart from any other handler)."""


def _log_to_terminal() -> None:
    """pitscope's log records at INFO and above, as plain lines on stderr (once per process)."""
    logger = logging.getLogger("pitscope")
    if not any(isinstance(h, _TerminalHandler) for h in logger.handlers):
        handler = _TerminalHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.command == "datasets" and args.format != "synthetic" and not args.root:
        parser.error("datasets: ROOT is required unless --format synthetic")
    _log_to_terminal()
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, HistoryError, HistoryUnavailable) as exc:
        print(f"pitscope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pitscope {args.command}: interrupted", file=sys.stderr)
        return 130
