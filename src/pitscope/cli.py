"""The `pitscope` command: builds a config from presets and flags, then calls library functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pitscope import __version__
from pitscope.config import Config, ConfigError, apply_overrides, load_config, preset_names, save_config, to_dict
from pitscope.history import HistoryError, HistoryUnavailable


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


def cmd_download(args: argparse.Namespace) -> int:
    """Download a dataset for use with --set data.root=... (needs internet; BSData only)."""
    from pitscope.data.download import BSDATA_ARCHIVE, fetch_bsdata, mvtec_instructions

    if args.dataset == "mvtec":
        print(mvtec_instructions())
        return 0
    root = fetch_bsdata(args.dest, url=args.url or BSDATA_ARCHIVE["url"], sha256=args.sha256, progress=True)
    print(f"BSData is in {root}; use it with --set data.root={root} or PITSCOPE_BSDATA={root}")
    return 0


def _print_calibration(detector, path: Path) -> None:
    """The fitted threshold, where it came from, and the training images that scored highest."""
    from pitscope.inference import describe_calibration

    record = detector.metadata["calibration"]
    print(f"threshold {float(detector.threshold):.4g} ({describe_calibration(record)}); saved {path}")
    if record.get("highest"):
        top = ", ".join(f"{h['image']} {h['score']:.4g}" for h in record["highest"][:3])
        print(f"training images scored highest out of fold (worth a look for defects): {top}")


def _train_and_fit(cfg: Config, resume: bool, progress: bool):
    """`fitting.fit`, then the threshold and where the model went; (detector, path), or
    (None, None) on the processes of a torchrun other than rank 0."""
    from pitscope.fitting import fit

    detector = fit(cfg, resume=resume, progress=progress)
    if detector is None:
        return None, None
    path = Path(cfg.output_dir) / "model.pt"
    _print_calibration(detector, path)
    return detector, path


def _evaluate_and_print(detector, cfg: Config, out_dir: Path, progress: bool, report_run_dir: Path | None = None,
                        split: str = "test") -> dict:
    from pitscope.data import build_dataset, prepare_split_file
    from pitscope.evaluation import evaluate, format_table

    prepare_split_file(cfg)
    dataset = build_dataset(cfg.data, split, cfg.seed)
    for path, reason in dataset.check(progress=progress):
        print(f"skipped bad file: {path}: {reason}", file=sys.stderr)
    if report_run_dir is None:
        result = evaluate(detector, dataset, out_dir, progress=progress)
    else:
        from pitscope.report import report_from_evaluation

        result, report = report_from_evaluation(detector, dataset, out_dir, report_run_dir, progress)
    print(format_table(result, cfg.data.format))
    print(f"metrics written to {out_dir / 'metrics.json'}")
    if report_run_dir is not None:
        print(f"report written to {report}")
    return result


def cmd_train(args: argparse.Namespace) -> int:
    """Train the double self-supervised model on defect-free images, fit its scorers and threshold."""
    cfg = _config_from_args(args)
    detector, _ = _train_and_fit(cfg, resume=args.resume, progress=not args.quiet)
    if args.evaluate and detector is not None:
        _evaluate_and_print(detector, cfg, Path(cfg.output_dir) / "eval", progress=not args.quiet)
    return 0


def _refuse_trained_changes(cfg: Config, trained: Config, command: str, allowed: str) -> None:
    """model.*, train.* and augment.* made the network: a command that keeps it cannot change them."""
    for key in ("model", "train", "augment"):
        if to_dict(cfg)[key] != to_dict(trained)[key]:
            raise ConfigError(f"{command}: {key}.* cannot change after training; only {allowed}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a model on its dataset's test split: image/pixel AUROC, AUPRO, AP, F1-max."""
    from pitscope.inference import Detector

    detector = Detector.load(args.model)
    cfg = apply_overrides(detector.cfg, args.overrides)
    # the data may change; of the scoring, only what acts after the fitted scorers may
    post_hoc = {"map_normalisation", "smoothing_sigma", "image_method", "min_region_fraction", "regions_on"}
    _refuse_trained_changes(cfg, detector.cfg, "evaluate", f"data.* and score.{{{', '.join(sorted(post_hoc))}}}")
    changed = [k for k, v in to_dict(cfg)["score"].items() if v != to_dict(detector.cfg)["score"][k]]
    if set(changed) - post_hoc:
        raise ConfigError(f"evaluate: score.{', score.'.join(sorted(set(changed) - post_hoc))} cannot change after fitting "
                          f"(pitscope refit fits the scorers again); only score.{', score.'.join(sorted(post_hoc))}")
    if set(changed) & {"map_normalisation", "smoothing_sigma"}:
        print("evaluate: the stored pixel threshold was calibrated on the model's own maps; the region numbers "
              "at it do not describe these maps (pitscope refit calibrates it for them)", file=sys.stderr)
    detector.cfg = cfg
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.model).parent / "eval"
    save_config(cfg, out_dir / "config.yaml")
    report_run_dir = Path(args.model).parent if args.report else None
    _evaluate_and_print(detector, cfg, out_dir, progress=not args.quiet, report_run_dir=report_run_dir, split=args.split)
    return 0


def _load_model_or_checkpoint(path: str):
    """A saved model (model.pt), or the network of a training checkpoint or snapshot."""
    import torch

    from pitscope.inference import Detector

    if not Path(path).is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        keys = torch.load(path, map_location="cpu", weights_only=True, mmap=True).keys()
    except Exception as exc:
        raise ValueError(f"{path} is not a pitscope model file: {exc}") from exc
    return Detector.from_checkpoint(path) if "model" in keys and "state_dict" not in keys else Detector.load(path)


def cmd_refit(args: argparse.Namespace) -> int:
    """Fit a trained model's scorers again with other scoring settings (score.*), keeping its network.

    MODEL may also be a training checkpoint (checkpoint_last.pt, snapshots/epoch_NNNN.pt).
    """
    from pitscope.data import build_dataset
    from pitscope.inference import Detector

    out = Path(args.output)
    if out.resolve() == Path(args.model).resolve():
        raise ConfigError("refit: --output must differ from MODEL (the original stays as it was)")
    old = _load_model_or_checkpoint(args.model)
    cfg = apply_overrides(old.cfg, args.overrides)
    _refuse_trained_changes(cfg, old.cfg, "refit", "score.* and data.*")
    if cfg.score.image_size is not None:  # fitted and scored at this size
        cfg.data.image_size = cfg.score.image_size
    if to_dict(cfg) == to_dict(old.cfg):
        print("refit: no setting changed; fitting again with the model's own settings", file=sys.stderr)
    detector = Detector(cfg, old.n_kinds, net=old.net)
    detector.metadata = {k: v for k, v in old.metadata.items() if k in ("training",)}
    detector.metadata["refit_from"] = str(args.model)
    progress = not args.quiet
    dataset = build_dataset(cfg.data, "train", cfg.seed)
    for path, reason in dataset.check(progress=progress):
        print(f"skipped bad file: {path}: {reason}", file=sys.stderr)
    detector.fit(dataset, progress=progress)
    detector.save(out)
    _print_calibration(detector, out)
    if args.evaluate:
        eval_dir = out.parent / f"{out.stem}_eval"
        save_config(cfg, eval_dir / "config.yaml")
        _evaluate_and_print(detector, cfg, eval_dir, progress=progress)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small model on the built-in synthetic ball-screw images (no download), measure it on
    their test split, write its HTML report and pictures of a few test images, and say how to
    inspect images with it in the browser."""
    import time

    from pitscope.data import build_dataset
    from pitscope.demo import overlay_pictures

    start = time.perf_counter()
    cfg = _config_from_args(args)
    progress = not args.quiet
    detector, model = _train_and_fit(cfg, resume=False, progress=progress)
    if detector is None:
        return 0
    out = Path(cfg.output_dir)
    _evaluate_and_print(detector, detector.cfg, out / "eval", progress, report_run_dir=out)
    test = build_dataset(detector.cfg.data, "test", detector.cfg.seed)
    pictures = overlay_pictures(detector, test, out / "pictures")
    print(f"pictures of the first {sum(p.label for p in pictures)} defective and "
          f"{sum(1 - p.label for p in pictures)} defect-free test images (left: the image; right: the predicted "
          f"region in red, the true defect outlined in green) written to {out / 'pictures'}:")
    for p in pictures:
        truth = "defective" if p.label else "defect-free"
        decision = "flagged" if p.is_defective else "passed"
        print(f"  {p.path.name}: {truth}, score {p.score:.4g}, {decision} at threshold {float(detector.threshold):.4g}")
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min")
    print(f"inspect images with this model in the browser: pitscope serve {model}, then open http://127.0.0.1:8000/")
    return 0


def _limit(text: str) -> float | None:
    """An alert limit: a number >= 0, or `off`."""
    if text.strip().lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or off, got {text!r}") from None


def cmd_wear(args: argparse.Namespace) -> int:
    """Wear curves over BSData's wear-development sequences: the predicted pitting area of every
    image over time beside the true one, growth, agreement and an alert rule, per sequence.
    Each sequence is measured by a model that never trained on its images."""
    from pitscope.wear import AlertRule, format_summary, run_wear, run_wear_history

    rule = AlertRule(args.alert_area, args.alert_growth, args.alert_window_days)
    db = args.db or (os.environ.get("PITSCOPE_DB") if not args.models else None)
    if db and args.models:
        raise ValueError("give model files or --db, not both: --db reads the areas the history recorded")
    if db:
        record = run_wear_history(db, args.part, args.out, root=args.root, rule=rule)
    elif not args.models:
        raise ValueError("give at least one model file, or --db with the inspection history to read")
    else:
        record = run_wear(args.models, args.out, root=args.root, rule=rule, allow_overlap=args.allow_overlap,
                          progress=not args.quiet, echo=lambda line: print(line, file=sys.stderr))
    print(format_summary(record))
    print(f"wear curves written to {Path(args.out)} (wear.json, summary.csv, sequences/)")
    return 0


HISTORY_COLUMNS = ("id", "recorded_at", "captured_at", "source", "part", "name", "image_sha256", "image_ref", "width",
                   "height", "score", "image_threshold", "is_defective", "defect_px", "defect_fraction",
                   "pixel_threshold", "map_ref", "model_id", "threshold_id", "threshold_version", "duration_ms")


def cmd_history(args: argparse.Namespace) -> int:
    """The inspection history that `serve --db` and `predict --db` record: the newest inspections
    (filtered by part, capture time, decision, model, source), or every match as CSV; the parts,
    alerts or events; or delete what is older than a number of days.

examples:
  pitscope history --db inspections.sqlite --part 277500_315 --limit 10
  pitscope history --db inspections.sqlite --decision defective --since 2020-08-28 --csv defective.csv
  pitscope history --db postgresql+psycopg://pitscope@db-host/pitscope --prune-older-than 365"""
    import csv

    from pitscope.history.names import parse_time
    from pitscope.history.store import HistoryStore

    db = args.db or os.environ.get("PITSCOPE_DB")
    if not db:
        raise ValueError("give --db (an SQLite file or a PostgreSQL URL) or set PITSCOPE_DB")
    if not ("://" in db or Path(db).exists()):
        raise ValueError(f"{db}: no such database file")
    store = HistoryStore(db)
    if args.prune_older_than is not None:
        result = store.prune(args.prune_older_than)
        print(f"deleted {result['inspections']} inspections recorded before {result['cutoff']} "
              f"and {result['copies']} stored image copies")
        return 0
    if args.parts:
        for row in store.parts():
            last = row["last"].isoformat(timespec="seconds") if row["last"] else "-"
            print(f"{row['part']:<30} {row['inspections']:>8} inspections  last {last}  open alerts {row['open_alerts']}")
        return 0
    if args.alerts or args.events:
        rows = store.alerts(part=args.part) if args.alerts else store.events()
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    filters = dict(part=args.part, since=parse_time(args.since) if args.since else None,
                   until=parse_time(args.until) if args.until else None, decision=args.decision, model=args.model,
                   source=args.source)
    if args.csv:
        rows = store.inspections(limit=None, newest_first=False, **filters)
        with open(args.csv, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(HISTORY_COLUMNS)
            for row in rows:
                writer.writerow(["" if row.get(k) is None else row[k].isoformat() if hasattr(row[k], "isoformat")
                                 else row[k] for k in HISTORY_COLUMNS])
        print(f"{len(rows)} inspections written to {args.csv}")
        return 0
    rows = store.inspections(limit=args.limit or None, **filters)
    print(f"{'id':>8}  {'captured (UTC)':<19}  {'part':<16} {'score':>9} {'thresh':>8} {'decision':<9} {'area %':>7}  name")
    for row in rows:
        when = (row["captured_at"] or row["recorded_at"]).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{row['id']:>8}  {when:<19}  {(row['part'] or '-')[:16]:<16} {row['score']:>9.4g} "
              f"{row['image_threshold']:>8.4g} {'defective' if row['is_defective'] else 'good':<9} "
              f"{100 * row['defect_fraction']:>7.3f}  {row['name'] or ''}")
    print(f"{len(rows)} of {store.count(**filters)} matching inspections in {store.display_url}")
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

    p = sub.add_parser("download", help="download BSData (MVTec AD: instructions)", description=cmd_download.__doc__)
    p.add_argument("dataset", choices=["bsdata", "mvtec"])
    p.add_argument("dest", nargs="?", default="datasets", help="folder to extract into (default: datasets)")
    p.add_argument("--url", help="another address of the archive (e.g. a mirror or a file:// path)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive; a mismatch leaves nothing behind")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("train", help="train a model on defect-free images", description=cmd_train.__doc__)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint_last.pt")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_args(p, "cpu")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="measure a trained model on its test split", description=cmd_evaluate.__doc__)
    p.add_argument("model", help="model file written by train (OUTPUT_DIR/model.pt)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override the model's data config (data.*), or score.map_normalisation / smoothing_sigma / "
        "image_method / min_region_fraction / regions_on",
    )
    p.add_argument("--output-dir", help="where metrics.json and scores.csv go (default: beside the model, eval/)")
    p.add_argument("--report", action="store_true", help="also write an HTML report to OUTPUT_DIR/report/report.html")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test, or val: the images that choose settings (synthetic; bsdata with data.holdout=positions)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("refit", help="fit a model's scorers again with other score.* settings", description=cmd_refit.__doc__)
    p.add_argument("model", help="model file written by train (OUTPUT_DIR/model.pt), or a training checkpoint "
                                 "(OUTPUT_DIR/checkpoint_last.pt, OUTPUT_DIR/snapshots/epoch_NNNN.pt)")
    p.add_argument("--output", required=True, help="where the refitted model goes (a new file; MODEL is left as it is)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a scoring (score.*) or data (data.*) setting, e.g. --set score.pixel_channels=null")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split afterwards (OUTPUT's stem + _eval/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_refit)

    from pitscope.benchmark import add_benchmark_parser
    from pitscope.export import add_export_parser
    from pitscope.predict import add_calibrate_parser, add_predict_parser
    from pitscope.report import add_report_parser
    from pitscope.serve import add_serve_parser

    add_predict_parser(sub)
    add_calibrate_parser(sub)
    add_export_parser(sub)
    add_serve_parser(sub)
    add_report_parser(sub)
    add_benchmark_parser(sub)

    p = sub.add_parser("wear", help="pitting area over time along BSData's wear sequences", description=cmd_wear.__doc__)
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model files; each sequence goes to the first one that did not train on its images "
                        "(one model per fold of a split over sequences covers them all)")
    p.add_argument("--out", default="wear", help="output folder (default: wear/)")
    p.add_argument("--root", help="the BSData folder (default: data.root of the first model, $PITSCOPE_BSDATA, "
                                  "../shared/datasets/bsdata)")
    p.add_argument("--alert-area", type=_limit, default=0.005, metavar="FRACTION",
                   help="alert when the predicted area is above this fraction of the surface (default: 0.005; off)")
    p.add_argument("--alert-growth", type=_limit, default=0.001, metavar="FRACTION_PER_DAY",
                   help="alert when the predicted area grows faster than this fraction of the surface a day "
                        "(default: 0.001; off)")
    p.add_argument("--alert-window-days", type=float, default=1.0, metavar="DAYS",
                   help="the growth is the slope over the images of the last DAYS days (default: 1)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="measure a sequence with a model that trained on some of its images (said in the output) "
                        "rather than leave it out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--db", help="read each part's series from this inspection history instead of scoring "
                                "BSData's files (true areas from --root's labels when given)")
    p.add_argument("--part", action="append", help="with --db: a part to follow (repeat; default: every part)")
    p.set_defaults(func=cmd_wear)

    p = sub.add_parser("history", help="the recorded inspections: list, export, prune", description=cmd_history.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", help="the history database: SQLite file or PostgreSQL URL (default: $PITSCOPE_DB)")
    p.add_argument("--part", help="only this part")
    p.add_argument("--since", help="captured at or after (ISO 8601)")
    p.add_argument("--until", help="captured before (ISO 8601)")
    p.add_argument("--decision", choices=["defective", "good"])
    p.add_argument("--model", help="model id (or its first characters)")
    p.add_argument("--source", choices=["cli", "http", "page"])
    p.add_argument("--limit", type=int, default=50, help="rows to show, newest first (default: 50; 0: all)")
    p.add_argument("--csv", metavar="FILE", help="write every matching inspection to FILE as CSV (oldest first)")
    p.add_argument("--parts", action="store_true", help="list the parts instead: inspections, last time, open alerts")
    p.add_argument("--alerts", action="store_true", help="list the alerts instead")
    p.add_argument("--events", action="store_true", help="list threshold changes and model loads instead")
    p.add_argument("--prune-older-than", type=float, metavar="DAYS",
                   help="delete inspections recorded more than DAYS days ago (and their stored image copies)")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("demo", help="train, evaluate and report a small model on built-in synthetic data (about 2 minutes)", description=cmd_demo.__doc__)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_args(p, "demo")
    p.set_defaults(func=cmd_demo)
    return parser


def _log_to_terminal() -> None:
    """pitscope's log records at INFO and above, as plain lines on stderr (once per process)."""
    logger = logging.getLogger("pitscope")
    if not any(getattr(h, "_pitscope_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._pitscope_cli = True
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


if __name__ == "__main__":
    sys.exit(main())
