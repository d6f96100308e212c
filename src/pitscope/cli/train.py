"""`pitscope train`, `evaluate`, `refit`, `finetune` and `demo`: making a model and measuring it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pitscope.cli.common import add_config_args, add_set_arg, config_from_args, print_skipped
from pitscope.config import Config, ConfigError, apply_overrides, load_config, parse_override, save_config, to_dict

if TYPE_CHECKING:
    from pitscope.inference import Detector


def _print_calibration(detector, path: Path) -> None:
    """The fitted threshold, where it came from, and the training images that scored highest."""
    from pitscope.scorer_fitting import describe_calibration

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


def _evaluate_and_print(
    detector, cfg: Config, out_dir: Path, progress: bool, report_run_dir: Path | None = None, split: str = "test"
) -> dict:
    from pitscope.data import build_dataset, prepare_split_file
    from pitscope.evaluation import evaluate, format_table, write_evaluation

    prepare_split_file(cfg)
    dataset = build_dataset(cfg.data, split, cfg.seed)
    print_skipped(dataset.check(progress=progress))
    if report_run_dir is None:
        result = evaluate(detector, dataset, progress=progress)
        write_evaluation(result, out_dir)
    else:
        from pitscope.report import report_from_evaluation

        result, report = report_from_evaluation(detector, dataset, out_dir, report_run_dir, progress)
    print(format_table(result, cfg.data.format))
    print(f"metrics written to {out_dir / 'metrics.json'}")
    if report_run_dir is not None:
        print(f"report written to {report}")
    return result


# The preset `train` starts from without --config, by the photos' format (data.format); any other
# format starts from the `cpu` preset.
FORMAT_PRESETS = {"folder": "surface", "mvtec": "surface"}


def default_preset(overrides: list[str]) -> str:
    """The preset for `train` without --config: by the data.format the --set overrides give."""
    fmt = "bsdata"  # the cpu preset's own
    for text in overrides:
        key, value = parse_override(text)
        if key == "data.format":
            fmt = value
    return FORMAT_PRESETS.get(fmt, "cpu")


def _run_config(args: argparse.Namespace) -> Path | None:
    """For --resume without --config: the config.yaml the run being resumed wrote, if there is one.
    The run's folder is --output-dir, or the output_dir of the preset `train` would start from."""
    if args.output_dir:
        out_dir = Path(args.output_dir)
    else:
        out_dir = Path(load_config(default_preset(args.overrides), args.overrides).output_dir)
    path = out_dir / "config.yaml"
    return path if path.is_file() else None


def cmd_train(args: argparse.Namespace) -> int:
    """Train the double self-supervised model on defect-free images, fit its scorers and threshold.
    With --resume and no --config, the run continues with the settings it was started with
    (OUTPUT_DIR/config.yaml), after any --set."""
    if args.config is None and args.resume:
        saved = _run_config(args)
        if saved is not None:
            args.config = str(saved)
            if not args.quiet:
                print(f"resuming with the run's own settings, {saved} (--config names another)")
    if args.config is None:
        args.config = default_preset(args.overrides)
        if not args.quiet:
            print(f"preset {args.config} (the default for these photos; --config names another)")
    cfg = config_from_args(args)
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
    from pitscope.defect_regions import REGION_SETTINGS
    from pitscope.inference import Detector

    detector = Detector.load(args.model)
    cfg = apply_overrides(detector.cfg, args.overrides)
    # the data may change; of the scoring, only what acts after the fitted scorers may
    # the maps the pixel threshold was calibrated on, and the steps to the map shown alone
    map_settings = {"map_normalisation", "smoothing_sigma", "regions_after_background"}
    shown = {"map_background_window", "map_sharpen_window", "map_sharpen_power"}
    if detector.cfg.score.regions_after_background or cfg.score.regions_after_background:
        shown.discard("map_background_window")  # a step of the regions' map
        map_settings.add("map_background_window")
    post_hoc = {*map_settings, *shown, "image_method", *REGION_SETTINGS}
    _refuse_trained_changes(cfg, detector.cfg, "evaluate", f"data.* and score.{{{', '.join(sorted(post_hoc))}}}")
    changed = [k for k, v in to_dict(cfg)["score"].items() if v != to_dict(detector.cfg)["score"][k]]
    if set(changed) - post_hoc:
        raise ConfigError(
            f"evaluate: score.{', score.'.join(sorted(set(changed) - post_hoc))} cannot change after fitting "
            f"(pitscope refit fits the scorers again); only score.{', score.'.join(sorted(post_hoc))}"
        )
    if cfg.score.image_method != "map_max" and not detector.image_scorer.is_fitted:
        raise ConfigError(
            "evaluate: this model scores images by its map's maximum and has no fitted image "
            "embedding scorer; score.image_method=embedding needs pitscope refit on its training "
            "checkpoint"
        )
    if set(changed) & map_settings:
        print(
            "evaluate: the stored pixel threshold was calibrated on the model's own maps; the region numbers "
            "at it do not describe these maps (pitscope refit calibrates it for them)",
            file=sys.stderr,
        )
    detector.cfg = cfg
    out_dir = Path(args.output_dir) if args.output_dir else Path(args.model).parent / "eval"
    save_config(cfg, out_dir / "config.yaml")
    report_run_dir = Path(args.model).parent if args.report else None
    _evaluate_and_print(
        detector, cfg, out_dir, progress=not args.quiet, report_run_dir=report_run_dir, split=args.split
    )
    return 0


def cmd_refit(args: argparse.Namespace) -> int:
    """Fit a trained model's scorers again with other scoring settings (score.*), keeping its network.

    MODEL may also be a training checkpoint (checkpoint_last.pt, snapshots/epoch_NNNN.pt).
    """
    from pitscope.fitting import load_model_or_checkpoint, refit

    out = Path(args.output)
    if out.resolve() == Path(args.model).resolve():
        raise ConfigError("refit: --output must differ from MODEL (the original stays as it was)")
    old = load_model_or_checkpoint(args.model)
    cfg = apply_overrides(old.cfg, args.overrides)
    _refuse_trained_changes(cfg, old.cfg, "refit", "score.* and data.*")
    if to_dict(cfg) == to_dict(old.cfg):
        print("refit: no setting changed; fitting again with the model's own settings", file=sys.stderr)
    progress = not args.quiet
    detector = refit(old, cfg, args.model, progress=progress, references=args.references)
    if "references" in detector.metadata:
        print(f"refit: {len(detector.metadata['references'])} reference photo(s) fitted beside the training photos")
    detector.save(out)
    _print_calibration(detector, out)
    if args.evaluate:
        eval_dir = out.parent / f"{out.stem}_eval"
        save_config(detector.cfg, eval_dir / "config.yaml")
        _evaluate_and_print(detector, detector.cfg, eval_dir, progress=progress)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Teach a model what its marked defects look like, from a few photos whose defects are marked.
    --route probe (the default): a classifier fitted on the marked photos turns the model's
    features and distances into the probability of a defect, which becomes its map; its network,
    Gaussians and image threshold stay, and the pixel threshold is set again (a few minutes).
    --route network: each marked defect is cut out and pasted onto the defect-free training photos
    as one more pseudo-defect kind, the network trains further and a segmentation head learns to
    outline them; then fit and calibrate as train does. Writes OUTPUT_DIR/model.pt (MODEL stays as
    it is). DEFECTS: a folder of photos, each with its mask in DEFECTS/masks/<stem>.png (or
    <stem>_mask.png) or a labelme file <stem>.json or label/<stem>.json."""
    from pitscope.fitting import FINETUNE, PROBE_KEYS, finetune, finetune_probe

    detector: Detector | None
    if args.route == "probe":
        print(
            f"finetune: a defect probe on the maps of {args.model} (settings it takes: {', '.join(PROBE_KEYS)})",
            file=sys.stderr,
        )
        detector = finetune_probe(args.model, args.defects, args.output_dir, args.overrides, progress=not args.quiet)
    else:
        print(f"finetune: starting from {args.model} with {' '.join('--set ' + o for o in FINETUNE)}", file=sys.stderr)
        detector = finetune(args.model, args.defects, args.output_dir, args.overrides, progress=not args.quiet)
    if detector is None:
        return 0
    path = Path(args.output_dir) / "model.pt"
    _print_calibration(detector, path)
    print(
        f"trained with {len(detector.metadata.get('labelled_defects', []))} labelled photos; evaluate leaves them out"
    )
    if args.evaluate:
        _evaluate_and_print(detector, detector.cfg, Path(args.output_dir) / "eval", progress=not args.quiet)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small model on the built-in synthetic ball-screw images (no download), measure it on
    their test split, write its HTML report and pictures of a few test images, and say how to
    inspect images with it in the browser."""
    import time

    from pitscope.data import build_dataset
    from pitscope.demo import overlay_pictures

    start = time.perf_counter()
    cfg = config_from_args(args)
    progress = not args.quiet
    detector, model = _train_and_fit(cfg, resume=False, progress=progress)
    if detector is None:
        return 0
    out = Path(cfg.output_dir)
    _evaluate_and_print(detector, detector.cfg, out / "eval", progress, report_run_dir=out)
    test = build_dataset(detector.cfg.data, "test", detector.cfg.seed)
    pictures = overlay_pictures(detector, test, out / "pictures")
    print(
        f"pictures of the first {sum(p.label for p in pictures)} defective and "
        f"{sum(1 - p.label for p in pictures)} defect-free test images (left: the image; right: the predicted "
        f"region in red, the true defect outlined in green) written to {out / 'pictures'}:"
    )
    for p in pictures:
        truth = "defective" if p.label else "defect-free"
        decision = "flagged" if p.is_defective else "passed"
        print(f"  {p.path.name}: {truth}, score {p.score:.4g}, {decision} at threshold {float(detector.threshold):.4g}")
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min")
    print(f"inspect images with this model in the browser: pitscope serve {model}, then open http://127.0.0.1:8000/")
    return 0


def add_parsers(sub) -> None:
    """Register `train`, `evaluate`, `refit` and `finetune` (`demo` comes last in the help: `add_demo_parser`)."""
    p = sub.add_parser("train", help="train a model on defect-free images", description=cmd_train.__doc__)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint_last.pt")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(p, None, "cpu; surface with --set data.format=folder or mvtec")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="measure a trained model on its test split", description=cmd_evaluate.__doc__)
    p.add_argument("model", help="model file written by train (OUTPUT_DIR/model.pt)")
    add_set_arg(
        p,
        "override the model's data config (data.*), or score.map_normalisation / smoothing_sigma / "
        "map_background_window / map_sharpen_window / map_sharpen_power / image_method / min_region_fraction / "
        "regions_on / region_core / peak_region_max",
    )
    p.add_argument("--output-dir", help="where metrics.json and scores.csv go (default: beside the model, eval/)")
    p.add_argument("--report", action="store_true", help="also write an HTML report to OUTPUT_DIR/report/report.html")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="test, or val: the images that choose settings (synthetic; bsdata with data.holdout=positions)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "refit", help="fit a model's scorers again with other score.* settings", description=cmd_refit.__doc__
    )
    p.add_argument(
        "model",
        help="model file written by train (OUTPUT_DIR/model.pt), or a training checkpoint "
        "(OUTPUT_DIR/checkpoint_last.pt, OUTPUT_DIR/snapshots/epoch_NNNN.pt)",
    )
    p.add_argument("--output", required=True, help="where the refitted model goes (a new file; MODEL is left as it is)")
    add_set_arg(p, "a scoring (score.*) or data (data.*) setting, e.g. --set score.pixel_channels=null")
    p.add_argument(
        "--references",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="defect-free photos (image files or folders of them) fitted beside the training photos, e.g. a new "
        "camera position's first good photos: no training, the scorers learn their look",
    )
    p.add_argument(
        "--evaluate", action="store_true", help="evaluate on the test split afterwards (OUTPUT's stem + _eval/)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_refit)

    p = sub.add_parser(
        "finetune",
        help="train a model further with a few photos whose defects are marked",
        description=cmd_finetune.__doc__,
    )
    p.add_argument("model", help="model file written by train (OUTPUT_DIR/model.pt)")
    p.add_argument("--defects", required=True, metavar="DIR", help="the labelled defective photos and their masks")
    p.add_argument("--output-dir", required=True, help="where the new model.pt goes (not MODEL's folder)")
    p.add_argument(
        "--route",
        choices=("probe", "network"),
        default="probe",
        help="probe: a classifier on the model's maps (minutes); network: the network trained further (default: probe)",
    )
    add_set_arg(
        p,
        "a setting over the model's: --route probe takes only pitscope.fitting.PROBE_KEYS "
        "(e.g. --set score.pixel_threshold_quantile=0.99); --route network any (e.g. --set train.epochs=3)",
    )
    p.add_argument("--evaluate", action="store_true", help="evaluate on the test split afterwards (OUTPUT_DIR/eval)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune)


def add_demo_parser(sub) -> None:
    """Register `demo`."""
    p = sub.add_parser(
        "demo",
        help="train, evaluate and report a small model on built-in synthetic data (about 3 minutes on 2 cores)",
        description=cmd_demo.__doc__,
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(p, "demo")
    p.set_defaults(func=cmd_demo)
