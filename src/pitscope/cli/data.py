"""`pitscope datasets`, `augment-preview` and `download`: the data before any model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pitscope.cli.common import add_config_args, config_from_args, print_skipped
from pitscope.config import rescale_images, validate


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
    cfg = config_from_args(args, overrides)
    cfg.data.cache = False
    rows = []
    problems = 0
    for split in ("train", "test"):
        dataset = build_dataset(cfg.data, split, cfg.seed)
        bad = dataset.check() if args.check else []
        problems += len(bad)
        counts = dataset.describe()
        rows.append({"split": split, **counts, "bad_files": len(bad)})
        print_skipped(bad)
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
    from pitscope.augment.preview import preview_training_images

    cfg = config_from_args(args)
    rescale_images(cfg, args.size)
    validate(cfg)
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "augment_preview.png"
    path = preview_training_images(cfg, out, n_images=args.n, n_variants=args.variants)
    print(f"wrote {path}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download a dataset for use with --set data.root=... (needs internet; BSData only)."""
    from pitscope.data.download import BSDATA_ARCHIVE, fetch_bsdata, mvtec_instructions

    if args.dataset == "mvtec":
        print(mvtec_instructions())
        return 0
    root = fetch_bsdata(args.dest, url=args.url or BSDATA_ARCHIVE["url"], sha256=args.sha256, progress=True)
    print(f"BSData is in {root}; use it with --set data.root={root} or PITSCOPE_BSDATA={root}")
    return 0


def add_parsers(sub) -> None:
    """Register `datasets`, `augment-preview` and `download`."""
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
    add_config_args(p, None)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser(
        "augment-preview",
        help="write a grid PNG of pseudo-defects",
        description=(cmd_augment_preview.__doc__ or "") + " Data and pseudo-defect kinds come from the config.",
    )
    p.add_argument("--out", help="PNG path (default: OUTPUT_DIR/augment_preview.png)")
    p.add_argument("--n", type=int, default=4, help="number of original images (rows)")
    p.add_argument("--variants", type=int, default=2, help="pseudo-defects per original")
    p.add_argument(
        "--size", type=int, default=256, help="images are resized to SIZE high first (the width in the config's ratio)"
    )
    add_config_args(p, None)
    p.set_defaults(func=cmd_augment_preview)

    p = sub.add_parser("download", help="download BSData (MVTec AD: instructions)", description=cmd_download.__doc__)
    p.add_argument("dataset", choices=["bsdata", "mvtec"])
    p.add_argument("dest", nargs="?", default="datasets", help="folder to extract into (default: datasets)")
    p.add_argument("--url", help="another address of the archive (e.g. a mirror or a file:// path)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive; a mismatch leaves nothing behind")
    p.set_defaults(func=cmd_download)
