"""`pitscope predict` and `calibrate`: a trained model on new images."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pitscope.cli.common import add_history_args, print_skipped

PREDICT_EPILOG = """\
exit status:
  0  every image was scored and none is defective
  1  at least one image is defective (score > threshold)
  2  an error: no model, no images, or some image could not be read (its row in
     predictions.csv says status=error; the other images are still scored)

outputs in --out: predictions.csv and predictions.jsonl (path, status, score, threshold,
is_defective, reason, map, overlay), and with --save-maps maps/<name>.npy (float32 anomaly
map shown, at the image's size; the regions and the pixel threshold belong to the map before the
preset's background step and narrowing) and maps/<name>_overlay.png (predicted region in red)."""


def cmd_predict(args: argparse.Namespace) -> int:
    """Score images with a trained model; write predictions.csv, predictions.jsonl and maps."""
    from pitscope.inference import Detector
    from pitscope.predict import expand_inputs, run_predict

    detector = Detector.load(args.model, device=_device(args.device))
    paths = expand_inputs(args.paths)
    recorder, history = _recorder(args, detector, "pitscope predict")
    summary = run_predict(
        detector,
        paths,
        args.out,
        threshold=args.threshold,
        save_maps=args.save_maps,
        progress=not args.quiet,
        stop_at_first_defect=args.fail_on_defect,
        recorder=recorder,
        part=args.part,
        **history,
    )
    for item in summary["failed"]:
        print(f"unreadable image: {item['path']}: {item['reason']}", file=sys.stderr)
    stopped = " (stopped at the first defective image)" if summary["stopped_early"] else ""
    print(
        f"{summary['images']} images: {summary['defective']} defective, {summary['errors']} unreadable{stopped}; "
        f"results in {Path(args.out) / 'predictions.csv'}"
    )
    if recorder is not None:
        scored = summary["images"] - summary["errors"]
        print(f"{summary['recorded']} of {scored} inspections recorded in {recorder.store.display_url}")
        if summary["recorded"] < scored:
            print("some inspections were not recorded (the reasons are logged above)", file=sys.stderr)
            return 2
    if summary["errors"]:
        return 2
    return 1 if summary["defective"] else 0


def _recorder(args: argparse.Namespace, detector, by: str):
    """(Recorder or None, {"part_from", "time_from"}) from --db (or $PITSCOPE_DB) and its options."""
    from pitscope.history.names import compile_pattern

    db = getattr(args, "db", None) or os.environ.get("PITSCOPE_DB") or None
    if db is None:
        return None, {}
    from pitscope.growth import AlertRule
    from pitscope.history.recorder import Recorder
    from pitscope.history.store import HistoryStore

    store = HistoryStore(db, image_store=getattr(args, "store_images", "none"))
    area, growth = getattr(args, "alert_area", None), getattr(args, "alert_growth", None)
    rule = (
        None
        if area is None and growth is None
        else AlertRule(area, growth, args.alert_window_days, args.alert_confirm, args.alert_smooth)
    )
    recorder = Recorder(
        store,
        detector,
        detector.metadata.get("name") or Path(args.model).parent.name or "model",
        rule=rule,
        webhook=getattr(args, "webhook", None),
        by=by,
    )
    patterns = {
        "part_from": compile_pattern(getattr(args, "part_from", None), "--part-from"),
        "time_from": compile_pattern(getattr(args, "time_from", None), "--time-from"),
    }
    return recorder, patterns


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Re-derive the model's thresholds from defect-free images (and report F1-optimal ones)."""
    from pitscope.calibration import calibrate, write_calibration
    from pitscope.inference import Detector
    from pitscope.predict import expand_inputs

    detector = Detector.load(args.model)
    good = expand_inputs([args.good])
    defects = expand_inputs([args.defects]) if args.defects else None
    if args.masks and not defects:
        raise ValueError("--masks needs --defects")
    result = calibrate(
        detector,
        good,
        defects,
        mask_paths=args.masks,
        quantile=args.quantile,
        pixel_quantile=args.pixel_quantile,
        apply=args.write,
        progress=not args.quiet,
    )
    print_skipped((item["path"], item["reason"]) for item in result["skipped"])
    print(json.dumps(result, indent=2))
    if args.write:
        db = args.db or os.environ.get("PITSCOPE_DB") or None
        recorded = write_calibration(
            detector, args.model, result, db=db, by=f"pitscope calibrate ({os.environ.get('USER', 'unknown user')})"
        )
        if recorded is not None:
            version, where = recorded
            print(f"recorded as threshold version {version} in {where}", file=sys.stderr)
        print(
            f"wrote threshold {result['threshold']:.6g} and pixel threshold {result['pixel_threshold']:.6g} "
            f"to {args.model}",
            file=sys.stderr,
        )
    else:
        print(f"{args.model} left unchanged (use --write to save these thresholds)", file=sys.stderr)
    return 0


def _device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (use --device cpu)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def add_parsers(sub) -> None:
    """Register `predict` and `calibrate`."""
    p = sub.add_parser(
        "predict",
        help="score new images with a trained model",
        description=cmd_predict.__doc__,
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model file written by train (OUTPUT_DIR/model.pt)")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATHS",
        help="image files, folders of images, or glob patterns (quote them: 'parts/*.png')",
    )
    p.add_argument("--out", default="predictions", help="output folder (default: predictions/)")
    p.add_argument("--threshold", type=float, help="image threshold instead of the model's calibrated one")
    p.add_argument(
        "--save-maps", action="store_true", help="also write each anomaly map (.npy) and an overlay PNG under OUT/maps/"
    )
    p.add_argument(
        "--fail-on-defect", action="store_true", help="stop at the first defective image (exit status 1 straight away)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--part", help="the part or position every image shows (for the history)")
    add_history_args(p, source="run")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "calibrate",
        help="re-derive a model's thresholds from defect-free images",
        description=(cmd_calibrate.__doc__ or "")
        + " Prints the result as JSON; --write saves the thresholds into MODEL.",
    )
    p.add_argument("model", metavar="MODEL", help="model file written by train (OUTPUT_DIR/model.pt)")
    p.add_argument("good", metavar="GOOD_DIR", help="defect-free images the model was not trained on (folder or glob)")
    p.add_argument("--defects", metavar="DIR", help="defective images: also report the F1-optimal image threshold")
    p.add_argument(
        "--masks",
        metavar="DIR",
        help="masks of the --defects images (<stem>.png or <stem>_mask.png): also the pixel threshold",
    )
    p.add_argument(
        "--quantile", type=float, help="image threshold quantile (default: the model's score.threshold_quantile)"
    )
    p.add_argument(
        "--pixel-quantile",
        type=float,
        help="pixel threshold quantile (default: the model's score.pixel_threshold_quantile)",
    )
    p.add_argument("--write", action="store_true", help="save the new thresholds into MODEL (atomically)")
    p.add_argument(
        "--db",
        help="with --write: record the change as a new threshold version in this history "
        "database (default: $PITSCOPE_DB)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_calibrate)
