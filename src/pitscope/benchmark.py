"""Benchmark suites: the paper's comparisons rerun with one command, on one split, one ResNet-18
and one training budget, with the paper's numbers beside ours.

    pitscope benchmark --suite table3 --seeds 0 1 --budget 45

Suites (`SUITES`): `table3` (ours vs CutPaste vs SSPCAB vs anomalib's PaDiM and PatchCore),
`table6` (HOG vs RGB target), `table7` (the two tasks), `table8` (pseudo-defect kinds), `table9`
(feature mask), `cutpaste` (CutPaste's three variants) on BSData, and `mvtec` (tables 4-5:
per category, means of objects, textures and all) on a user's own MVTec AD copy.

Every variant (`VARIANTS`) is a list of config overrides on one preset (`cpu` by default;
`paper` is the paper's 800 GPU epochs); `--budget M` gives every run the same M training
minutes (epochs capped at the paper's 800, so the clock is what stops them). A run lives in
RUNS_DIR/<variant>_seed<S>_<key>, the key a hash of its whole config: a finished run's
result.json is reused, an interrupted one resumes from its checkpoint, and the same variant is
trained once for every suite it appears in. The suite's table goes to OUTPUT/<suite>.json and
OUTPUT/<suite>.md with the commit, the machine and the command.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pitscope.config import Config, load_config, to_dict
from pitscope.peers import CORESET_RATIO

log = logging.getLogger(__name__)

# -- the paper's numbers ---------------------------------------------------------------------
# (image AUROC, pixel AUROC) in %, from X. Wang et al., "A Double Self-Supervised Model for Pitting
# Detection on Ball Screws", IEEE Access 12, 2024 (shared/paper/), BSData, tables 3 and 6-9.
PAPER: dict[str, dict[str, tuple[float, float]]] = {
    # Table 3: against CutPaste [9] and SSPCAB [7], same ResNet-18 and settings.
    "table3": {"ours": (97.42, 94.57), "cutpaste": (95.63, 93.89), "sspcab": (95.82, 94.01)},
    # Table 6: RGB vs HOG target of the masked task; its HOG row equals table 7's "HOG" row,
    # so it is measured without the noise-patch classifier.
    "table6": {"rgb_only": (94.63, 93.55), "hog_only": (95.16, 93.75)},
    # Table 7: "HOG" alone, "NP" (the pseudo-defect classifier) alone, both.
    "table7": {"hog_only": (95.16, 93.75), "classify_only": (96.08, 94.02), "ours": (97.42, 94.57)},
    # Table 8: pseudo-defect kinds ("Noise + Scar patch" is the full model).
    "table8": {
        "scar": (95.49, 94.23), "normal": (95.43, 93.89), "scar_normal": (96.04, 94.53),
        "noise": (97.19, 93.85), "ours": (97.42, 94.57),
    },
    # Table 9: feature mask of the masked task ("No", "Dropout" p = 0.5, "Mask" 50%, "MSCM").
    "table9": {
        "mask_none": (96.75, 93.05), "mask_dropout": (96.45, 92.86), "mask_rectangle": (96.84, 93.24),
        "ours": (97.42, 94.57),
    },
}

MVTEC_OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
# MVTec AD per category, in the order MVTEC_OBJECTS + MVTEC_TEXTURES, from the same paper: table 4
# (image AUROC: "ours", CutPaste [9], SSPCAB [7]) and table 5 (pixel AUROC: "Ours", CutPaste [9],
# PaDiM [42] with ResNet-18).
_TABLE4 = {
    "ours": (100.00, 95.60, 85.84, 99.64, 96.48, 95.23, 81.88, 99.72, 96.71, 98.90, 97.19, 98.07, 100.00, 99.86, 99.03),
    "cutpaste": (98.30, 80.60, 96.20, 97.30, 99.30, 92.40, 86.30, 98.30, 95.50, 99.40, 93.10, 99.90, 100.00, 93.40, 98.60),
    "sspcab": (98.60, 82.90, 98.10, 98.30, 99.60, 95.30, 90.80, 98.80, 96.50, 99.10, 90.70, 99.90, 100.00, 94.00, 99.20),
}
_TABLE5 = {
    "ours": (96.64, 96.83, 97.72, 98.03, 96.48, 97.30, 98.32, 97.45, 97.28, 97.73, 98.79, 96.54, 99.10, 95.54, 95.38),
    "cutpaste": (97.60, 90.00, 97.40, 97.30, 93.10, 95.70, 96.70, 98.10, 93.00, 99.30, 98.30, 97.50, 99.50, 90.50, 95.50),
    "padim": (98.10, 95.80, 98.30, 97.70, 96.70, 94.70, 97.40, 98.70, 97.20, 98.20, 98.90, 94.90, 99.10, 91.20, 93.60),
}


def paper_mvtec(variant: str, category: str) -> tuple[float | None, float | None]:
    """The paper's (image, pixel) AUROC for a variant on an MVTec AD category; None where not reported."""
    categories = MVTEC_OBJECTS + MVTEC_TEXTURES
    if category not in categories:
        return None, None
    i = categories.index(category)
    image, pixel = _TABLE4.get(variant), _TABLE5.get(variant)
    return (image[i] if image else None), (pixel[i] if pixel else None)


# -- variants and suites ---------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One row of a table: config overrides on the preset, or an anomalib peer (pitscope.peers)."""

    label: str
    overrides: tuple[str, ...] = ()
    peer: str | None = None


# CutPaste (Li et al. 2021): the image classifier alone, no pixel branch; images scored by a
# Gaussian on the image embedding (score.image_features), pixels by patch-level scores (pitscope.patches).
_CUTPASTE = ("model.target=none", "score.pixel_method=patch")
_THREE_WAY = ("model.head=multiclass", "augment.kinds=[normal, scar]")

VARIANTS: dict[str, Variant] = {
    "ours": Variant("pitscope: noise + scar classifier, HOG target, MSCM"),
    "cutpaste": Variant("CutPaste 3-way (normal / cut-paste / scar)", (*_CUTPASTE, *_THREE_WAY)),
    "cutpaste_normal": Variant("CutPaste binary, normal patch", (*_CUTPASTE, "augment.kinds=[normal]")),
    "cutpaste_scar": Variant("CutPaste binary, scar patch", (*_CUTPASTE, "augment.kinds=[scar]")),
    "sspcab": Variant("CutPaste 3-way + SSPCAB", (*_CUTPASTE, *_THREE_WAY, "model.sspcab=true")),
    "padim": Variant("PaDiM (anomalib), ResNet-18", peer="padim"),
    "patchcore": Variant("PatchCore (anomalib), ResNet-18", peer="patchcore"),
    "hog_only": Variant("HOG target only, no classifier", ("model.classify=false", "score.image_features=layer4")),
    "rgb_only": Variant("RGB target only, no classifier",
                        ("model.classify=false", "model.target=rgb", "score.image_features=layer4")),
    "classify_only": Variant("pseudo-defect classifier only, no HOG", ("model.target=none",)),
    "scar": Variant("scar patch", ("augment.kinds=[scar]",)),
    "normal": Variant("normal patch", ("augment.kinds=[normal]",)),
    "scar_normal": Variant("scar + normal patch", ("augment.kinds=[scar, normal]",)),
    "noise": Variant("noise patch", ("augment.kinds=[noise]",)),
    "mask_none": Variant("no mask", ("model.mask_type=none",)),
    "mask_dropout": Variant("dropout 0.5", ("model.mask_type=dropout",)),
    "mask_rectangle": Variant("rectangle, 50% of the map", ("model.mask_type=rectangle",)),
}

SUITES: dict[str, tuple[str, ...]] = {
    "table3": ("ours", "cutpaste", "sspcab", "padim", "patchcore"),
    "table6": ("hog_only", "rgb_only"),
    "table7": ("hog_only", "classify_only", "ours"),
    "table8": ("scar", "normal", "scar_normal", "noise", "ours"),
    "table9": ("mask_none", "mask_dropout", "mask_rectangle", "ours"),
    "cutpaste": ("cutpaste_normal", "cutpaste_scar", "cutpaste"),
    "mvtec": ("ours",),
}
# Suites that switch the image classifier off in some rows: every row scores images by the pooled
# layer4, so that the rows differ by their training alone.
TASK_ABLATIONS = ("table6", "table7")
TITLES: dict[str, str] = {
    "table3": "Table 3: ours vs CutPaste vs SSPCAB, and anomalib's PaDiM and PatchCore (BSData)",
    "table6": "Table 6: HOG vs RGB target of the masked task (BSData)",
    "table7": "Table 7: the two self-supervised tasks (BSData)",
    "table8": "Table 8: pseudo-defect kinds (BSData)",
    "table9": "Table 9: feature mask of the masked task (BSData)",
    "cutpaste": "CutPaste's variants with patch-level localisation (BSData)",
    "mvtec": "Tables 4 and 5: MVTec AD per category",
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")
PAPER_EPOCHS = 800  # the cap on epochs when --budget sets the training time
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
    if options.suite == "mvtec":
        common.append("data.format=mvtec")
    if options.suite in TASK_ABLATIONS:  # rows without the classifier have no projector to score by
        common.append("score.image_features=layer4")
    if options.data is not None:
        common.append(f"data.root={options.data}")
    if options.image_size is not None:
        size = options.image_size
        # CutPaste's crops keep their share of the image: 64 px every 16 px at 256 px
        common += [f"data.image_size={size}", f"score.patch_size={max(32, size // 4)}",
                   f"score.patch_stride={max(4, size // 16)}"]
    if options.budget is not None:
        common += [f"train.budget_minutes={options.budget}", f"train.epochs={PAPER_EPOCHS}"]
    return common + list(options.overrides)


def config_key(cfg: Config, variant: Variant, coreset_ratio: float = CORESET_RATIO) -> str:
    """A short hash of everything that makes a run: its config (less where it is written), its
    peer and PatchCore's coreset ratio."""
    values = to_dict(cfg)
    values.pop("output_dir")
    values["data"].pop("split_file")
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
    cfg = load_config(options.preset, [*common_overrides(options), *extra, *variant.overrides, f"seed={seed}"])
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
        from pitscope.data import build_dataset

        values = to_dict(cfg.data)
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
    training = {"epochs": result.epochs_done, "steps": result.steps, "minutes": round(result.elapsed_s / 60, 2),
                "stopped_by_budget": result.stopped_by_budget, "resumed": resume}
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
    from pitscope.evaluation import evaluate
    from pitscope.metrics import evaluate_all
    from pitscope.training import LAST_CHECKPOINT

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = datasets.get(cfg)
    start = time.perf_counter()
    if variant.peer is None:
        detector, training, minutes = _train_detector(cfg, train_set, progress)
        t0 = time.perf_counter()
        metrics = evaluate(detector, test_set, out / "eval", progress=progress)["metrics"]
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
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return round(float(np.mean(values)), 2), (None if std is None else round(std, 2))


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each metric and of the time per run."""
    summary = {}
    for name in METRICS:
        mean, std = _mean_std([r["metrics"].get(name) for r in runs])
        summary[name] = {"mean": mean, "std": std}
    trained = [r["training"] for r in runs if r.get("training")]
    summary["epochs"] = _mean_std([t["epochs"] for t in trained])[0]
    summary["train_minutes"] = _mean_std([t["minutes"] for t in trained])[0]
    summary["wall_minutes"] = _mean_std([r["minutes"]["wall"] for r in runs])[0]
    summary["seeds"] = sorted(r["seed"] for r in runs)
    return summary


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = models[0] if models else cpu
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# What a result depends on: the package, the benchmark scripts (not their results), pyproject.toml
CODE_PATHS = (":(top)src", ":(top)benchmarks", ":(top,exclude)benchmarks/results", ":(top)pyproject.toml")


def commit(here: Path | None = None) -> str:
    """The short commit of the checkout holding `here` (default: the pitscope package), with "+dirty"
    if the package, the benchmark scripts or pyproject.toml have uncommitted changes or files git
    does not track yet (ignored files aside); "unknown" outside a git checkout."""
    here = Path(__file__).resolve().parent if here is None else here
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=all", "--",
                                *CODE_PATHS], capture_output=True, text=True)
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


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
    return found


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
            runs, failed = [], []
            for seed in options.seeds:
                cfg = variant_config(options, name, seed, category)
                done = Path(cfg.output_dir) / RESULT_FILE
                what = f"[{options.suite}] {name}" + (f" {category}" if category else "") + f" seed {seed}"
                if done.is_file():
                    runs.append(json.loads(done.read_text()))
                    log.info("%s: finished earlier, %s", what, done)
                    continue
                if name not in to_run or name in skipped:
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
                log.info("%s: image %s, pixel %s, AUPRO %s (%.1f min)", what, m["image_auroc"], m["pixel_auroc"],
                         m["aupro"], runs[-1]["minutes"]["wall"])
            paper = PAPER.get(options.suite, {}).get(name) if category is None else paper_mvtec(name, category)
            rows.append({
                "variant": name, "label": variant.label, "category": category, "overrides": list(variant.overrides),
                "peer": variant.peer, "paper": None if paper is None else {"image_auroc": paper[0], "pixel_auroc": paper[1]},
                "summary": summarise(runs) if runs else None, "runs": runs, "failed": failed,
            })
    shared = load_config(options.preset, common_overrides(options))
    record = {
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
    out = Path(options.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{options.suite}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{options.suite}.md").write_text(format_markdown(record))
    return record


# -- tables ----------------------------------------------------------------------------------
def _cell(stat: dict | None) -> str:
    if not stat or stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.2f}" + (f" ± {stat['std']:.2f}" if stat["std"] is not None else "")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _header(record: dict) -> list[str]:
    m = record["machine"]
    budget = f"{record['budget_minutes']} training minutes per run" if record["budget_minutes"] is not None else "the preset's own epochs and budget"
    return [
        f"# {record['title']}",
        "",
        f"Commit `{record['commit']}`, {record['date']}; {m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}" + (f", {m['cuda']}" if m["cuda"] else ", no GPU") + ".",
        f"Preset `{record['preset']}`, {budget}, {record['image_size']} px, seeds {', '.join(map(str, record['seeds']))}"
        + (f", overrides `{' '.join(record['overrides'])}`" if record["overrides"] else "") + ".",
        "AUROC and AUPRO in %, mean ± standard deviation over the seeds; the paper trained 800 epochs on a GPU.",
        "",
    ]


def _footer(record: dict) -> list[str]:
    lines = [""]
    if any("score.pixel_method=patch" in row["overrides"] for row in record["rows"]):
        patch = record["patch"]
        lines.append(f"- Patch-level maps (CutPaste, SSPCAB): crops of {patch['size']} px every {patch['stride']} px, "
                     "embedded by the trained network, one Gaussian over the crops of the training images; a pixel "
                     "scores the mean of the crops covering it.")
    if any(row["peer"] for row in record["rows"]):
        lines.append("- Peers: anomalib's torch models on the same split, image size and ResNet-18 weights "
                     f"(`model.weights`; none = the untrained pitscope network's initialisation), maps normalised as "
                     f"ours; PatchCore keeps {record['coreset_ratio']:g} of the training patch features.")
    for name, reason in record["skipped"].items():
        lines.append(f"- `{name}` skipped: {reason}")
    for row in record["rows"]:
        for failure in row["failed"]:
            lines.append(f"- `{row['variant']}` seed {failure['seed']} failed: {failure['error']}")
    lines += ["", "Command:", "", f"    {record['command']}", ""]
    return lines


def _beats(record: dict) -> list[str]:
    """One line per metric: in how many rows with a paper number our mean reaches it."""
    lines = []
    for metric, name in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")):
        pairs = [(r["summary"][metric]["mean"], r["paper"][metric]) for r in record["rows"]
                 if r["summary"] and r["paper"] and r["paper"][metric] is not None and r["summary"][metric]["mean"] is not None]
        if pairs:
            lines.append(f"- {name}: at or above the paper in {sum(a >= b for a, b in pairs)} of {len(pairs)} rows")
    return ["", *lines] if lines else []


def format_markdown(record: dict) -> str:
    """The suite's table: per variant, ours (mean ± std) beside the paper's, AUPRO, epochs and time."""
    if record["suite"] == "mvtec":
        return _format_mvtec(record)
    lines = _header(record) + [
        "| variant | image AUROC | paper | pixel AUROC | paper | AUPRO | epochs | train min | min per run | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        s, paper = row["summary"], row["paper"] or {}
        if s is None:
            lines.append(f"| {row['label']} (`{row['variant']}`) | not run | {_number(paper.get('image_auroc'))} | | "
                         f"{_number(paper.get('pixel_auroc'))} | | | | | |")
            continue
        epochs = "" if s["epochs"] is None else f"{s['epochs']:g}"
        lines.append(
            f"| {row['label']} (`{row['variant']}`) | {_cell(s['image_auroc'])} | {_number(paper.get('image_auroc'))} "
            f"| {_cell(s['pixel_auroc'])} | {_number(paper.get('pixel_auroc'))} | {_cell(s['aupro'])} "
            f"| {epochs} | {_number(s['train_minutes'])} | {_number(s['wall_minutes'])} | {len(s['seeds'])} |"
        )
    return "\n".join(lines + _beats(record) + _footer(record))


def _format_mvtec(record: dict) -> str:
    """Tables 4-5's layout: per variant, each category, then the means of objects, textures and all."""
    lines = _header(record)
    for variant in dict.fromkeys(r["variant"] for r in record["rows"]):
        rows = {r["category"]: r for r in record["rows"] if r["variant"] == variant}
        lines += [
            f"## {VARIANTS[variant].label} (`{variant}`)",
            "",
            "| category | image AUROC | paper (table 4) | pixel AUROC | paper (table 5) | AUPRO | train min |",
            "|---|---|---|---|---|---|---|",
        ]
        groups = [("objects", [c for c in rows if c in MVTEC_OBJECTS]), ("textures", [c for c in rows if c in MVTEC_TEXTURES]),
                  ("other", [c for c in rows if c not in MVTEC_OBJECTS + MVTEC_TEXTURES])]
        for group, categories in groups:
            for category in categories:
                s, paper = rows[category]["summary"], rows[category]["paper"] or {}
                if s is None:
                    continue
                lines.append(f"| {category} | {_cell(s['image_auroc'])} | {_number(paper.get('image_auroc'))} | "
                             f"{_cell(s['pixel_auroc'])} | {_number(paper.get('pixel_auroc'))} | {_cell(s['aupro'])} | "
                             f"{_number(s['train_minutes'])} |")
            if categories and group != "other":
                lines.append(_mean_row(f"mean of {group}", [rows[c] for c in categories]))
        lines.append(_mean_row("mean of all", list(rows.values())))
        lines.append("")
    return "\n".join(lines + _footer(record))


def _mean_row(name: str, rows: list[dict]) -> str:
    """Means over categories of the per-category means (ours), and of the paper's numbers where it
    reports every one of these categories."""
    cells = []
    for metric in ("image_auroc", "pixel_auroc"):
        ours = [r["summary"][metric]["mean"] for r in rows if r["summary"] and r["summary"][metric]["mean"] is not None]
        paper = [(r["paper"] or {}).get(metric) for r in rows]
        cells += [_number(float(np.mean(ours))) if ours else "n/a",
                  _number(float(np.mean(paper))) if paper and None not in paper else ""]
    aupro = [r["summary"]["aupro"]["mean"] for r in rows if r["summary"] and r["summary"]["aupro"]["mean"] is not None]
    return f"| **{name}** | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {_number(float(np.mean(aupro))) if aupro else 'n/a'} | |"
