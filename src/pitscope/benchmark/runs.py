"""Running a suite: one run per variant, seed (and MVTec category), each trained or reused from its
result.json, then the suite's record written as OUTPUT/<suite>.json and .md."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pitscope.benchmark.provenance import commit, machine
from pitscope.benchmark.suites import (
    METRICS,
    PAPER,
    PAPER_EPOCHS,
    SUITES,
    TASK_ABLATIONS,
    TITLES,
    VARIANTS,
    Variant,
    paper_mvtec,
)
from pitscope.benchmark.tables import format_markdown
from pitscope.config import Config, load_config, rescale_images, to_dict
from pitscope.peers import CORESET_RATIO

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


@dataclass
class BenchmarkOptions:
    """What `run_suite` runs; the CLI fills it from its flags."""

    suite: str
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    preset: str | None = "cpu"
    budget: float | None = None  # training minutes per run, the same for every variant
    image_size: int | None = None  # None: the preset's
    data: str | None = None  # data.root: BSData folder, or the MVTec AD folder for `mvtec`
    categories: list[str] | None = None  # mvtec: these categories only (default: every one found)
    overrides: list[str] = field(default_factory=list)  # `section.key=value` for every run
    variants: list[str] | None = None  # train only these (any of VARIANTS); None: the suite's
    coreset_ratio: float = CORESET_RATIO  # PatchCore's share of training patch features kept
    collect: bool = False  # train nothing; tabulate the finished runs
    output: str = "benchmarks/results"
    runs_dir: str = "runs/bench"
    progress: bool = True
    command: str = ""  # the command line, recorded with the results


# -- one run ---------------------------------------------------------------------------------
def common_overrides(options: BenchmarkOptions) -> list[str]:
    """Overrides every run of a suite shares: data, image size, budget, then the user's."""
    common = []
    if options.suite == "mvtec":  # square images, trained whole
        common += ["data.format=mvtec", "data.image_width=null", "data.keep_aspect=false", "train.crop_size=null"]
    # rows without the classifier have no projector to score by: every row scores by the pooled
    # backbone stages, as the preset does unless it reads the projection
    if options.suite in TASK_ABLATIONS and load_config(options.preset).score.image_features == "projection":
        common.append("score.image_features=layer4")
    if options.data is not None:
        common.append(f"data.root={options.data}")
    if options.image_size is not None:
        size = options.image_size
        preset = load_config(options.preset, common)
        rescale_images(preset, size)  # the width, and the training crops, in the preset's ratio
        # CutPaste's crops keep their share of the image: 64 px every 16 px at 256 px
        common += [
            f"data.image_size={size}",
            f"data.image_width={preset.data.image_width or 'null'}",
            f"train.crop_size={preset.train.crop_size or 'null'}",
            f"score.patch_size={max(32, size // 4)}",
            f"score.patch_stride={max(4, size // 16)}",
        ]
    if options.budget is not None:
        common += [f"train.budget_minutes={options.budget}", f"train.epochs={PAPER_EPOCHS}"]
    return common + list(options.overrides)


def config_key(cfg: Config, variant: Variant, coreset_ratio: float = CORESET_RATIO) -> str:
    """A short hash of everything that makes a run: its config (less where it is written), its
    peer and PatchCore's coreset ratio."""
    values = to_dict(cfg)
    values.pop("output_dir")
    values["data"].pop("split_file")
    if not values["data"]["keep_aspect"]:
        values["data"].pop("keep_aspect")  # the keys of runs from before data.keep_aspect stay
    if not values["score"]["peak_region_max"]:
        values["score"].pop("peak_region_max")  # ... and from before score.peak_region_max
    values["peer"] = variant.peer
    if variant.peer == "patchcore":
        values["coreset_ratio"] = coreset_ratio
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def variant_config(options: BenchmarkOptions, name: str, seed: int, category: str | None = None) -> Config:
    """The config of one run, its output_dir under options.runs_dir named by variant, seed and key."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    extra = [f"data.category={category}"] if category is not None else []
    overrides = [*common_overrides(options), *extra]
    # a variant without the classifier has no projector: it scores by the pooled layer4 where the
    # run would otherwise read the projection
    without = "model.classify=false" in variant.overrides
    if without and load_config(options.preset, overrides).score.image_features == "projection":
        overrides.append("score.image_features=layer4")
    overrides += variant.overrides
    cfg = load_config(options.preset, [*overrides, f"seed={seed}"])
    runs = Path(options.runs_dir)
    if cfg.data.format == "bsdata":  # one split file for every run: the split is drawn from data.split_seed
        cfg.data.split_file = str(runs / f"bsdata_split{cfg.data.split_seed}_{cfg.data.n_train_normal}.json")
    where = f"{category}_" if category is not None else ""
    cfg.output_dir = str(runs / f"{where}{name}_seed{seed}_{config_key(cfg, variant, options.coreset_ratio)}")
    return cfg


def _percent(metrics: dict) -> dict:
    return {k: (None if v is None else round(100 * v, 2)) for k, v in metrics.items()}


class _Datasets:
    """Train and test splits built once per data config (and seed, for the generated data that
    depends on it), shared by the runs that use them; one pair in memory at a time."""

    def __init__(self, progress: bool):
        self.progress = progress
        self._cache: dict[str, tuple] = {}

    def get(self, cfg: Config):
        from pitscope.data import build_dataset, resolve_shape

        resolve_shape(cfg.data, cfg.seed)  # every run's config gets its shape, cached data or not
        values = asdict(cfg.data)
        values.pop("split_file")
        key = json.dumps([values, cfg.seed if cfg.data.format == "synthetic" else None], sort_keys=True)
        if key not in self._cache:
            self._cache.clear()
            splits = []
            for split in ("train", "test"):
                dataset = build_dataset(cfg.data, split, cfg.seed)
                for path, reason in dataset.check(progress=self.progress):
                    log.warning("skipped bad file: %s: %s", path, reason)
                splits.append(dataset)
            self._cache[key] = tuple(splits)
        return self._cache[key]


def _train_detector(cfg: Config, train_set, progress: bool) -> tuple:
    """Train (resuming a checkpoint left by an interrupted run) and fit: (detector, training, minutes)."""
    from pitscope.inference import Detector
    from pitscope.training import LAST_CHECKPOINT, train

    resume = (Path(cfg.output_dir) / LAST_CHECKPOINT).is_file()
    t0 = time.perf_counter()
    result = train(cfg, train_set, resume=resume, progress=progress, echo=lambda line: log.info("  %s", line))
    t1 = time.perf_counter()
    detector = Detector(cfg, result.n_kinds, net=result.model).fit(train_set, progress=progress)
    training = {
        "epochs": result.epochs_done,
        "steps": result.steps,
        "minutes": round(result.elapsed_s / 60, 2),
        "stopped_by_budget": result.stopped_by_budget,
        "resumed": resume,
    }
    detector.metadata["training"] = {"images": len(train_set), **training}
    detector.save(Path(cfg.output_dir) / "model.pt")
    return detector, training, {"train": (t1 - t0) / 60, "fit": (time.perf_counter() - t1) / 60}


def run_variant(
    cfg: Config, variant: Variant, datasets: _Datasets, progress: bool = True, coreset_ratio: float = CORESET_RATIO
) -> dict:
    """Train (or build the peer), fit, evaluate on the test split; write and return result.json.

    The result: {"metrics": {name: % or None}, "training": {...} or None, "minutes": {"train",
    "fit", "evaluate", "wall"}, "run_dir", "config_key", ...}. Minutes count this process only,
    without reading the images; training["minutes"] counts every resumed part. Once the result is
    written the training checkpoint goes (model.pt stays): it only served to resume.
    """
    from pitscope.evaluation import evaluate, write_evaluation
    from pitscope.metrics import evaluate_all
    from pitscope.training import LAST_CHECKPOINT

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = datasets.get(cfg)
    start = time.perf_counter()
    if variant.peer is None:
        detector, training, minutes = _train_detector(cfg, train_set, progress)
        t0 = time.perf_counter()
        result = evaluate(detector, test_set, progress=progress)
        write_evaluation(result, out / "eval")
        metrics = result["metrics"]
    else:
        from pitscope.peers import PeerModel

        training = None
        t0 = time.perf_counter()
        peer = PeerModel(variant.peer, cfg, coreset_ratio).fit(train_set, progress=progress)
        minutes = {"train": 0.0, "fit": (time.perf_counter() - t0) / 60}
        t0 = time.perf_counter()
        scores, maps = peer.score_dataset(test_set, progress=progress)
        masks = np.stack([test_set[i].mask for i in range(len(test_set))])
        metrics = evaluate_all(np.asarray(test_set.labels), scores, masks, maps)
    minutes["evaluate"] = (time.perf_counter() - t0) / 60
    minutes["wall"] = (time.perf_counter() - start) / 60
    result = {
        "seed": cfg.seed,
        "category": cfg.data.category if cfg.data.format == "mvtec" else None,
        "run_dir": str(out),
        "config_key": out.name.rsplit("_", 1)[-1],
        "metrics": _percent(metrics),
        "training": training,
        "minutes": {k: round(v, 2) for k, v in minutes.items()},
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }
    tmp = out / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / RESULT_FILE)
    (out / LAST_CHECKPOINT).unlink(missing_ok=True)
    return result


# -- a suite ---------------------------------------------------------------------------------
def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    if not known:
        return None, None
    std = float(np.std(known, ddof=1)) if len(known) > 1 else None
    return round(float(np.mean(known)), 2), (None if std is None else round(std, 2))


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each metric and of the time per run."""
    summary: dict[str, Any] = {}
    for name in METRICS:
        mean, std = _mean_std([r["metrics"].get(name) for r in runs])
        summary[name] = {"mean": mean, "std": std}
    trained = [r["training"] for r in runs if r.get("training")]
    summary["epochs"] = _mean_std([t["epochs"] for t in trained])[0]
    summary["train_minutes"] = _mean_std([t["minutes"] for t in trained])[0]
    summary["wall_minutes"] = _mean_std([r["minutes"]["wall"] for r in runs])[0]
    summary["seeds"] = sorted(r["seed"] for r in runs)
    return summary


def _categories(options: BenchmarkOptions) -> list[str | None]:
    if options.suite != "mvtec":
        return [None]
    from pitscope.data.mvtec import mvtec_categories

    if options.data is None:
        raise ValueError("the mvtec suite needs --data: the MVTec AD folder")
    found = mvtec_categories(options.data)
    if options.categories:
        unknown = [c for c in options.categories if c not in found]
        if unknown:
            raise ValueError(f"categories {unknown} are not in {options.data}; found: {', '.join(found)}")
        return list(options.categories)
    if not found:
        raise ValueError(f"no MVTec category (a folder with train/good) in {options.data}")
    return list(found)


def _run_seeds(
    options: BenchmarkOptions, name: str, category: str | None, datasets: _Datasets, runnable: bool
) -> tuple[list[dict], list[dict]]:
    """Every seed of one variant (and category): results finished earlier are read back, the rest
    run when `runnable`; returns (runs, failed), a failed run being one whose training diverged."""
    variant = VARIANTS[name]
    runs: list[dict] = []
    failed: list[dict] = []
    for seed in options.seeds:
        cfg = variant_config(options, name, seed, category)
        done = Path(cfg.output_dir) / RESULT_FILE
        what = f"[{options.suite}] {name}" + (f" {category}" if category else "") + f" seed {seed}"
        if done.is_file():
            runs.append(json.loads(done.read_text()))
            log.info("%s: finished earlier, %s", what, done)
            continue
        if not runnable:
            continue
        log.info("%s: running in %s", what, cfg.output_dir)
        try:
            runs.append(run_variant(cfg, variant, datasets, options.progress, options.coreset_ratio))
        except Exception as exc:  # one failed run (e.g. a diverged loss) must not end the suite
            from pitscope.training import TrainingDiverged

            if not isinstance(exc, TrainingDiverged):
                raise
            failed.append({"seed": seed, "error": str(exc)})
            log.warning("%s: failed: %s", what, exc)
            continue
        m = runs[-1]["metrics"]
        log.info(
            "%s: image %s, pixel %s, AUPRO %s (%.1f min)",
            what,
            m["image_auroc"],
            m["pixel_auroc"],
            m["aupro"],
            runs[-1]["minutes"]["wall"],
        )
    return runs, failed


def _suite_record(options: BenchmarkOptions, skipped: dict[str, str], rows: list[dict]) -> dict:
    """The suite's record: its rows with the commit, machine, command and shared settings."""
    shared = load_config(options.preset, common_overrides(options))
    return {
        "suite": options.suite,
        "title": TITLES[options.suite],
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "command": options.command,
        "preset": options.preset,
        "budget_minutes": options.budget,
        "image_size": shared.data.image_size,
        "patch": {"size": shared.score.patch_size, "stride": shared.score.patch_stride},
        "seeds": list(options.seeds),
        "overrides": list(options.overrides),
        "coreset_ratio": options.coreset_ratio,
        "skipped": skipped,
        "rows": rows,
    }


def run_suite(options: BenchmarkOptions) -> dict:
    """Run (or reuse) every run of the suite, write OUTPUT/<suite>.json and .md; return the record."""
    if options.suite not in SUITES:
        raise ValueError(f"unknown suite {options.suite!r}; valid: {', '.join(SUITES)}")
    unknown = [v for v in options.variants or [] if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    if not options.seeds:
        raise ValueError("name at least one seed")
    to_run = set() if options.collect else set(options.variants or SUITES[options.suite])
    names = list(dict.fromkeys([*SUITES[options.suite], *(options.variants or [])]))
    categories = _categories(options)
    datasets = _Datasets(options.progress)
    skipped: dict[str, str] = {}
    rows = []
    for name in names:
        variant = VARIANTS[name]
        if variant.peer is not None and name in to_run:
            from pitscope.peers import require_anomalib

            try:
                require_anomalib()
            except ImportError as exc:
                skipped[name] = str(exc)
                log.info("[%s] %s: skipped, %s", options.suite, name, exc)
        for category in categories:
            runs, failed = _run_seeds(options, name, category, datasets, name in to_run and name not in skipped)
            paper = PAPER.get(options.suite, {}).get(name) if category is None else paper_mvtec(name, category)
            rows.append(
                {
                    "variant": name,
                    "label": variant.label,
                    "category": category,
                    "overrides": list(variant.overrides),
                    "peer": variant.peer,
                    "paper": None if paper is None else {"image_auroc": paper[0], "pixel_auroc": paper[1]},
                    "summary": summarise(runs) if runs else None,
                    "runs": runs,
                    "failed": failed,
                }
            )
    record = _suite_record(options, skipped, rows)
    out = Path(options.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{options.suite}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{options.suite}.md").write_text(format_markdown(record))
    return record


# -- tables ----------------------------------------------------------------------------------
