"""Write docs/cli.md, the command-line reference, from pitscope's own argument parser.

    python docs/cli_reference.py          # rewrite docs/cli.md
    python docs/cli_reference.py --check  # exit 1 when docs/cli.md is not current

tests/test_docs.py runs the check, so the reference never drifts from the code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DOC = Path(__file__).with_name("cli.md")
WIDTH = "100"  # help is wrapped to the terminal's width: fix it so the text is the same everywhere


def reference() -> str:
    os.environ["COLUMNS"] = WIDTH
    from pitscope.cli import build_parser

    parser = build_parser()
    parser.prog = "pitscope"
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = [
        "# Command-line reference",
        "",
        "Every `pitscope` command and option, as `pitscope COMMAND --help` prints them. "
        "Written by `python docs/cli_reference.py` from the parser itself.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    for name, sub in subparsers.choices.items():
        lines += [f"## pitscope {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that docs/cli.md is current")
    args = parser.parse_args()
    text = reference()
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is not current: run python docs/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
