"""`pitscope export`: a trained model as ONNX or TorchScript, checked against torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pitscope.data.types import BadImageError
from pitscope.export import (
    DEFAULT_OPSET,
    FORMATS,
    INPUT_NAME,
    OUTPUT_NAMES,
    ParityError,
    export_onnx,
    export_torchscript,
    output_paths,
    read_check_images,
)
from pitscope.inference import Detector


def cmd_export(args: argparse.Namespace) -> int:
    """Export a trained model to ONNX and/or TorchScript and check it against torch."""
    try:
        detector = Detector.load(args.model)
        formats = list(FORMATS) if args.format == "both" else [args.format]
        paths = output_paths(Path(args.model), formats, args.out)
        size = detector.cfg.data.shape
        images = None
        if args.check_images and args.check:
            images = read_check_images(args.check_images, size, args.check_limit)
    except (OSError, ValueError, BadImageError) as exc:
        print(f"pitscope export: error: {exc}", file=sys.stderr)
        return 2
    source = f"{len(images)} images from {', '.join(args.check_images)}" if images is not None else "random images"
    status = 0
    for fmt, path in paths.items():
        try:
            if fmt == "onnx":
                result = export_onnx(detector, path, opset=args.opset, check=args.check, images=images)
            else:
                result = export_torchscript(detector, path, check=args.check, images=images)
        except ParityError as exc:
            print(f"{fmt}: wrote {path}, but the parity check FAILED: {exc}", file=sys.stderr)
            status = max(status, 1)
            continue
        except (OSError, RuntimeError, ValueError) as exc:
            print(f"pitscope export: error: {fmt}: {exc}", file=sys.stderr)
            return 2
        print(f"{fmt}: wrote {path}" + (f" (opset {result['opset']})" if "opset" in result else ""))
        if args.check:
            print(
                f"  parity on {source}: max |score diff| {result['max_abs_diff_score']:.3g} "
                f"(tolerance {result['tolerance_score']:.3g}), max |map diff| {result['max_abs_diff_map']:.3g} "
                f"(tolerance {result['tolerance_map']:.3g}), decisions "
                + ("equal" if result["decisions_equal"] else "differ only at the threshold")
            )
            print(
                f"  regions: identical on {result['regions_equal_images']} of {result['n_images']} images, "
                f"lowest IoU {result['regions_min_iou']:.4f}, "
                f"at most {100 * result['regions_max_differing_fraction']:.3g}% of a photo differs"
            )
    return status


def add_parsers(sub) -> None:
    """Register `export`."""
    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX / TorchScript, with a parity check",
        description=(cmd_export.__doc__ or "")
        + f" Input '{INPUT_NAME}': float32 (B, 3, H, W) RGB in [0, 1] at the model's image size (height H, width W);"
        f" outputs {', '.join(OUTPUT_NAMES)}. Exit status 0 ok, 1 parity failure, 2 error.",
    )
    p.add_argument("model", help="model file written by train (OUTPUT_DIR/model.pt)")
    p.add_argument("--format", choices=[*FORMATS, "both"], default="onnx", help="default: onnx")
    p.add_argument(
        "--out",
        metavar="PATH_OR_DIR",
        help="output file (one format) or folder (default: beside the model, MODEL_STEM.onnx / .torchscript.pt)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument(
        "--check-images",
        nargs="+",
        metavar="DIR_OR_FILE",
        help="images (or folders of them) for the parity check, resized to the model's size (default: random noise)",
    )
    p.add_argument("--check-limit", type=int, default=8, help="use at most this many check images (default: 8)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the parity check")
    p.set_defaults(func=cmd_export)
