"""`pitscope benchmark`: the paper's comparisons rerun, tabulated beside its numbers."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pitscope.benchmark import PAPER_EPOCHS, SUITES, VARIANTS, BenchmarkOptions, format_markdown, run_suite
from pitscope.cli.common import add_set_arg
from pitscope.peers import CORESET_RATIO


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Run a benchmark suite and write its table (JSON and Markdown) with the paper's numbers beside ours."""
    if args.suite == "few_labels":
        return _few_labels(args)
    if args.base or args.k or args.anchor_seeds != [0]:
        raise SystemExit("pitscope benchmark: --base and --k belong to --suite few_labels")
    options = BenchmarkOptions(
        suite=args.suite,
        seeds=args.seeds,
        preset=args.preset,
        budget=args.budget,
        image_size=args.image_size,
        data=args.data,
        categories=args.categories,
        overrides=args.overrides,
        variants=args.variants,
        coreset_ratio=args.coreset_ratio,
        collect=args.collect,
        output=args.output,
        runs_dir=args.runs_dir,
        progress=not args.quiet,
        command=shlex.join(["pitscope", *sys.argv[1:]]),
    )
    record = run_suite(options)
    print(format_markdown(record))
    print(f"written to {Path(options.output) / options.suite}.json and .md")
    return 0


def _few_labels(args: argparse.Namespace) -> int:
    """The few_labels suite: a defect probe per k and seed on a position-split model (`--base`)."""
    from pitscope.benchmark.few_labels import FewLabelsOptions, format_few_labels, run_few_labels

    if not args.base:
        raise SystemExit(
            "pitscope benchmark --suite few_labels needs --base MODEL: a model trained with data.holdout=positions, "
            "e.g. pitscope train --config cpu --set data.holdout=positions"
        )
    options = FewLabelsOptions(
        base=args.base,
        ks=args.k or [0, 5, 20],
        seeds=args.seeds,
        anchor_seeds=args.anchor_seeds,
        output=args.output,
        runs_dir=str(Path(args.runs_dir) / "few_labels"),
        progress=not args.quiet,
        command=shlex.join(["pitscope", *sys.argv[1:]]),
    )
    record = run_few_labels(options)
    print(format_few_labels(record))
    print(f"written to {Path(options.output) / 'few_labels'}.json and .md")
    return 0


def add_parsers(sub) -> None:
    """Register `benchmark --suite NAME ...`."""
    p = sub.add_parser(
        "benchmark",
        help="rerun the paper's comparisons (tables 3-9, MVTec AD) and tabulate them",
        description=(cmd_benchmark.__doc__ or "")
        + " Suites: "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in SUITES.items())
        + "; few_labels: a defect probe fitted on k labelled BSData photos, against k (--base, --k).",
    )
    p.add_argument("--suite", required=True, choices=[*SUITES, "few_labels"])
    p.add_argument("--base", metavar="MODEL", help="few_labels: the model trained with data.holdout=positions")
    p.add_argument("--k", type=int, nargs="+", help="few_labels: numbers of labelled photos (default: 0 5 20)")
    p.add_argument(
        "--anchor-seeds",
        type=int,
        nargs="*",
        default=[0],
        help="few_labels: the seeds whose k get the supervised-only anchor too (default: 0)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="default: 0 1")
    p.add_argument(
        "--preset", default="cpu", help="config preset every variant starts from (default: cpu; paper: a GPU job)"
    )
    p.add_argument(
        "--budget",
        type=float,
        metavar="MINUTES",
        help=f"training minutes per run, the same for every variant (epochs capped at {PAPER_EPOCHS})",
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="images resized to SIZE high, the width in the preset's ratio (default: the preset's)",
    )
    p.add_argument("--data", help="dataset folder: BSData (default: found as for train) or MVTec AD for --suite mvtec")
    p.add_argument("--categories", nargs="+", help="mvtec: only these categories (default: every one under --data)")
    p.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help=f"train only these variants, the others' finished runs still tabulated; any of {', '.join(VARIANTS)}",
    )
    p.add_argument(
        "--coreset-ratio",
        type=float,
        default=CORESET_RATIO,
        help=f"PatchCore: share of the training patch features kept (default: {CORESET_RATIO}, anomalib's; "
        "its greedy selection grows with the square of the patch count: 0.01 on a CPU at 256 px)",
    )
    p.add_argument("--collect", action="store_true", help="train nothing; tabulate the finished runs")
    add_set_arg(p, "override a config value for every run (repeatable)")
    p.add_argument(
        "--output", default="benchmarks/results", help="where <suite>.json and .md go (default: benchmarks/results)"
    )
    p.add_argument(
        "--runs-dir", default="runs/bench", help="where the runs live and are reused from (default: runs/bench)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_benchmark)
