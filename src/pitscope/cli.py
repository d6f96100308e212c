"""The `pitscope` command: builds a config from presets and flags, then calls library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pitscope import __version__
from pitscope.config import Config, ConfigError, load_config, preset_names, save_config


def _add_config_args(parser: argparse.ArgumentParser, default_preset: str | None) -> None:
    parser.add_argument(
        "--config",
        default=default_preset,
        metavar="PRESET",
        help=f"preset name ({', '.join(preset_names())}) or path to a YAML file"
        + (f" (default: {default_preset})" if default_preset else ""),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=5 --set data.format=bsdata (repeatable)",
    )
    parser.add_argument("--output-dir", help="where outputs go (overrides output_dir)")


def _config_from_args(args: argparse.Namespace, extra: list[str] = ()) -> Config:
    overrides = list(extra) + list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def cmd_datasets(args: argparse.Namespace) -> int:
    """Print counts per split and class, and check every file of the layout."""
    from pitscope.data import build_dataset

    overrides = [f"data.format={args.format}"]
    if args.format != "synthetic":
        overrides.append(f"data.root={args.root}")
    if args.category:
        overrides.append(f"data.category={args.category}")
    if args.test_normal_dir:
        overrides.append(f"data.test_normal_dir={args.test_normal_dir}")
    if args.test_defect_dir:
        overrides.append(f"data.test_defect_dir={args.test_defect_dir}")
    if args.mask_dir:
        overrides.append(f"data.mask_dir={args.mask_dir}")
    if args.refuse_bad_files:
        overrides.append("data.on_bad_file=error")
    cfg = _config_from_args(args, overrides)
    cfg.data.cache = False
    rows = []
    problems = 0
    for split in ("train", "test"):
        dataset = build_dataset(cfg.data, split, cfg.seed)
        bad = dataset.check(progress=not args.no_check_progress) if args.check else []
        problems += len(bad)
        counts = dataset.describe()
        rows.append({"split": split, **counts, "bad_files": len(bad)})
        for path, reason in bad:
            print(f"skipped bad file: {path}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'split':<6} {'total':>6} {'normal':>7} {'defective':>10} {'bad files':>10}")
        for row in rows:
            print(
                f"{row['split']:<6} {row['total']:>6} {row['normal']:>7} {row['defective']:>10} {row['bad_files']:>10}"
            )
    return 1 if problems and args.strict else 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    """Write a grid PNG of originals, pseudo-defects and their masks."""
    import numpy as np

    from pitscope.augment import PseudoDefects
    from pitscope.augment.preview import preview_grid
    from pitscope.data import build_dataset

    cfg = _config_from_args(args)
    cfg.data.image_size = args.size
    dataset = build_dataset(cfg.data, "train", cfg.seed)
    if len(dataset) == 0:
        raise ConfigError("the training split has no images to preview")
    rng = np.random.default_rng(cfg.seed)
    picks = sorted(rng.choice(len(dataset), size=min(args.n, len(dataset)), replace=False).tolist())
    images = [dataset[i].image for i in picks]
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "augment_preview.png"
    path = preview_grid(images, PseudoDefects(cfg.augment), rng, out, n_variants=args.variants)
    save_config(cfg, path.with_suffix(".config.yaml"))
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pitscope",
        description="Find pitting and other surface defects on machine parts, trained on defect-free images alone.",
    )
    parser.add_argument("--version", action="version", version=f"pitscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("datasets", help="count and check a dataset folder", description=cmd_datasets.__doc__)
    p.add_argument("root", nargs="?", default=None, help="dataset folder (not needed for --format synthetic)")
    p.add_argument("--format", required=True, choices=["bsdata", "mvtec", "folder", "synthetic"])
    p.add_argument("--category", help="mvtec: category folder under ROOT")
    p.add_argument("--test-normal-dir", help="folder: defect-free test images")
    p.add_argument("--test-defect-dir", help="folder: defective test images")
    p.add_argument("--mask-dir", help="folder: masks of the defective images (same stem)")
    p.add_argument("--no-check", dest="check", action="store_false", help="only count, do not decode every file")
    p.add_argument("--refuse-bad-files", action="store_true", help="stop at the first bad file instead of skipping")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any file was skipped")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.add_argument("--no-check-progress", action="store_true", help=argparse.SUPPRESS)
    _add_config_args(p, None)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser(
        "augment-preview",
        help="write a grid PNG of pseudo-defects",
        description=cmd_augment_preview.__doc__ + " Data and pseudo-defect kinds come from the config.",
    )
    p.add_argument("--out", help="PNG path (default: OUTPUT_DIR/augment_preview.png)")
    p.add_argument("--n", type=int, default=4, help="number of original images (rows)")
    p.add_argument("--variants", type=int, default=2, help="pseudo-defects per original")
    p.add_argument("--size", type=int, default=256, help="images are resized to SIZE x SIZE first")
    _add_config_args(p, None)
    p.set_defaults(func=cmd_augment_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.command == "datasets" and args.format != "synthetic" and not args.root:
        parser.error("datasets: ROOT is required unless --format synthetic")
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"pitscope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pitscope {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
