"""Writing the report: one run's page (`build_report`, `report_from_evaluation`), several runs on
one page (`build_category_report`), and the runs loaded from model files."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pitscope import __version__
from pitscope.data.types import SampleSet
from pitscope.evaluation import METRIC_NAMES, PAPER_BSDATA, evaluate, regions_at_settings, write_evaluation
from pitscope.files import TRAIN_LOG, json_safe
from pitscope.inference import Detector
from pitscope.report.analysis import (
    HISTOGRAM_BINS,
    MVTEC_TEXTURES,
    _pr,
    _pro,
    _roc,
    _ScoresKept,
    category_means,
    pick_gallery,
    pixel_sample,
    read_train_log,
)
from pitscope.report.figures import _jpeg_uri, _pct, gallery_tile, heatmap_scale
from pitscope.report.sections import (
    METRIC_LABELS,
    _cell,
    _curves_section,
    _e,
    _gallery_section,
    _histogram_section,
    _metrics_section,
    _page,
    _subtitle,
    _tile_html,
    _training_section,
)
from pitscope.report.wear_section import _wear_section, read_wear
from pitscope.scoring import shown_maps

log = logging.getLogger(__name__)


class CategoryRun(NamedTuple):
    """One model and its test split in a per-category report (run_dir: where train_log.csv is)."""

    name: str
    detector: Detector
    dataset: SampleSet
    run_dir: Path | None = None


# -- one run ---------------------------------------------------------------------------------
def _analyse(
    detector: Detector,
    dataset: SampleSet,
    run_dir: Path | None,
    progress: bool,
    gallery_size: int,
    eval_dir: Path | None = None,
    key: str = "",
) -> tuple[dict, str, dict]:
    """Score `dataset` once (through `evaluate`; `write_evaluation` writes its files to eval_dir if given) and
    return (the report's numbers as a JSON-ready dict, its HTML sections with ids ending in `key`,
    evaluate's result)."""
    if gallery_size < 0:
        raise ValueError(f"gallery_size: must be >= 0, got {gallery_size}")
    kept = _ScoresKept(detector)
    result = evaluate(kept, dataset, progress=progress)
    if eval_dir is not None:
        write_evaluation(result, eval_dir)
    scores, maps = kept.scores, kept.maps  # (N,), (N, H, W)
    assert scores is not None and maps is not None  # evaluate scored the dataset
    labels = np.asarray(dataset.labels)
    threshold, pixel_threshold = result["threshold"], float(detector.pixel_threshold)
    masks = None
    if getattr(dataset, "has_masks", True) and result["metrics"]["pixel_auroc"] is not None:
        masks = np.stack([dataset[i].mask for i in range(len(dataset))])  # (N, H, W)

    flagged = scores > threshold
    region = regions_at_settings(
        maps, flagged, pixel_threshold, detector.cfg.score
    )  # (N, H, W) bool, as the pages draw them
    maps = shown_maps(maps, detector.cfg.score)  # the curves and heatmaps: the map shown, as the metrics
    curves, pixel_at_threshold = _curves(labels, scores, masks, maps, region)
    picks = pick_gallery(labels, scores, threshold, gallery_size)
    paths = list(dataset.paths)
    log_path = run_dir / TRAIN_LOG if run_dir is not None else None
    log = read_train_log(log_path) if log_path is not None else None
    record = json_safe(
        {
            "dataset": _dataset_info(detector, dataset),
            "metrics": result["metrics"],
            "subsets": result.get("subsets", {}),
            "image_auroc_interval": result["image_auroc_interval"],
            "paper": dict(PAPER_BSDATA) if detector.cfg.data.format == "bsdata" else None,
            "counts": result["counts"],
            "threshold": threshold,
            "pixel_threshold": pixel_threshold,
            "at_threshold": result["at_threshold"],
            "pixel_at_threshold": pixel_at_threshold,
            "confusion": _confusion(labels, flagged),
            "seconds": result["seconds"],
            "curves": curves,
            "histogram": _histogram(labels, scores),
            "images": [
                {"path": p, "label": int(lab), "score": float(s), "is_defective": bool(f)}
                for p, lab, s, f in zip(paths, labels, scores, flagged)
            ],
            "gallery": {group: [paths[i] for i in index] for group, index in picks.items()},
            "training": {
                "log": str(log_path) if log is not None else None,
                "metadata": detector.metadata.get("training"),
            },
        }
    )

    scale = heatmap_scale(maps, pixel_threshold)
    tiles = _gallery_tiles(dataset, picks, maps, region, scores, threshold, pixel_threshold, scale)
    body = _body(record, tiles, scale, key, log_path, log, detector)
    return record, body, result


def _dataset_info(detector: Detector, dataset: SampleSet) -> dict:
    """The report's "dataset" entry: format, name, root, category and image size."""
    return {
        "format": detector.cfg.data.format,
        "name": getattr(dataset, "name", ""),
        "root": detector.cfg.data.root,
        "category": detector.cfg.data.category,
        "image_size": detector.cfg.data.image_size,
        "image_shape": list(detector.cfg.data.shape),
    }


def _body(
    record: dict,
    tiles: dict[str, list[str]],
    scale: tuple[float, float],
    key: str,
    log_path: Path | None,
    log: dict[str, list[float]] | None,
    detector: Detector,
) -> str:
    """One run's HTML sections (ids ending in `key`): metrics, curves, histogram, gallery, training."""
    return (
        _metrics_section(record, key)
        + _curves_section(record, key)
        + _histogram_section(record, key)
        + _gallery_section(tiles, scale, key)
        + _training_section(
            log_path,
            log,
            detector.metadata.get("training"),
            key,
            detector.metadata.get("labelled_defects"),
            probe=detector.defect_probe is not None and detector.defect_probe.is_fitted,
        )
    )


def _confusion(labels: np.ndarray, flagged: np.ndarray) -> dict[str, int]:
    """Counts of the four outcomes of labels (N,) 0/1 against flagged (N,) bool."""
    return {
        "true_positives": int(((labels == 1) & flagged).sum()),
        "false_negatives": int(((labels == 1) & ~flagged).sum()),
        "false_positives": int(((labels == 0) & flagged).sum()),
        "true_negatives": int(((labels == 0) & ~flagged).sum()),
    }


def _curves(
    labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray, region: np.ndarray
) -> tuple[dict, dict | None]:
    """(the image ROC and PR curves, and with masks (N, H, W) the pixel ROC, PR and PRO curves;
    with masks, the true and false positive rates of the predicted region (N, H, W) bool)."""
    curves = {"image_roc": _roc(labels, scores), "image_pr": _pr(labels, scores)}
    if masks is None:
        return curves, None
    truth, values, weights, counts = pixel_sample(masks, maps)
    curves.update(
        pixel_roc=_roc(truth, values, weights),
        pixel_pr=_pr(truth, values, weights),
        pixel_sampling=counts,
        pro=_pro(masks, maps),
    )
    defect = masks > 0
    pixel_at_threshold = {
        "true_positive_rate": float(region[defect].mean()),
        "false_positive_rate": float(region[~defect].mean()),
    }
    return curves, pixel_at_threshold


def _histogram(labels: np.ndarray, scores: np.ndarray) -> dict[str, list]:
    """Shared bin edges over all scores (N,) and the counts of the normal and defective ones."""
    edges = np.histogram_bin_edges(scores, bins=HISTOGRAM_BINS)
    return {
        "edges": edges.tolist(),
        "normal": np.histogram(scores[labels == 0], edges)[0].tolist(),
        "defective": np.histogram(scores[labels == 1], edges)[0].tolist(),
    }


def _gallery_tiles(
    dataset: SampleSet,
    picks: dict,
    maps: np.ndarray,
    region: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    pixel_threshold: float,
    scale: tuple[float, float],
) -> dict[str, list[str]]:
    """{group: the HTML tiles of its picked images}, each drawn with its map (H, W) and region."""
    labels, paths = dataset.labels, list(dataset.paths)
    tiles: dict[str, list[str]] = {}
    for group, index in picks.items():
        tiles[group] = []
        for i in index:
            sample = dataset[i]
            tile = gallery_tile(sample.image, sample.mask, maps[i], pixel_threshold, *scale, region=region[i])
            tiles[group].append(_tile_html(_jpeg_uri(tile), paths[i], int(labels[i]), float(scores[i]), threshold))
    return tiles


SECTIONS = ("metrics", "curves", "histogram", "gallery", "training")  # ids of a one-run page, in order


def _write(out_dir: Path, page: str, record: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _one_run(
    detector, dataset, out_dir, run_dir, progress, gallery_size, eval_dir=None, wear_dir=None
) -> tuple[dict, Path]:
    wear = read_wear(wear_dir, detector.cfg.data.format) if wear_dir is not None else None
    record, body, result = _analyse(
        detector, dataset, Path(run_dir) if run_dir else None, progress, gallery_size, eval_dir=eval_dir
    )
    sections = list(SECTIONS)
    if wear is not None:
        body += _wear_section(wear, Path(wear_dir))
        sections.append("wear")
        record["wear"] = {key: wear[key] for key in ("rule", "split", "overall", "sequences")}
    title = f"pitscope report: {detector.cfg.data.category or detector.cfg.data.format}"
    page = _page(title, _subtitle(detector, dataset), [(s, s) for s in sections], body)
    return result, _write(Path(out_dir), page, {"title": title, "version": __version__, **record})


def build_report(
    detector: Detector,
    dataset: SampleSet,
    out_dir: str | Path,
    run_dir: str | Path | None = None,
    progress: bool = True,
    gallery_size: int = 6,
    wear_dir: str | Path | None = None,
) -> Path:
    """Score `dataset` with `detector` and write out_dir/report.html and out_dir/report.json.

    run_dir: the training run's folder; its train_log.csv gives the training curves (none
    drawn without it). gallery_size: most images per gallery group. wear_dir: the output folder
    of `pitscope wear` for a BSData model; adds the wear section (`read_wear`). Returns the
    HTML's path. Raises ValueError, as `evaluate` does, for a split without both classes.
    """
    return _one_run(detector, dataset, out_dir, run_dir, progress, gallery_size, wear_dir=wear_dir)[1]


def report_from_evaluation(
    detector: Detector,
    dataset: SampleSet,
    out_dir: str | Path,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict, Path]:
    """`pitscope evaluate --report`: evaluate's files (metrics.json, scores.csv) in out_dir and
    the report in out_dir/report/, from one scoring pass. Returns (evaluate's result, report path)."""
    out_dir = Path(out_dir)
    return _one_run(detector, dataset, out_dir / "report", run_dir, progress, 6, eval_dir=out_dir)


# -- several runs (one per MVTec category) ---------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "category"


def category_table(metrics: Mapping[str, Mapping[str, float | None]], counts: Mapping[str, int] | None = None) -> str:
    """The per-category table (id="categories"): one row per category, in %, grouped into
    textures and objects with their mean rows when both are present, then the mean of all."""
    means = category_means(metrics)
    head = "<tr><th>category</th>" + "".join(f"<th>{_e(METRIC_LABELS[m])}</th>" for m in METRIC_NAMES)
    head += "<th>test images</th></tr>" if counts else "</tr>"

    def row(name, values, cls="", link=True):
        label = f'<a href="#category-{_slug(name)}">{_e(name)}</a>' if link else _e(name)
        cells = "".join(_cell(m, values.get(m), "pct") for m in METRIC_NAMES)
        if counts:
            cells += _cell("images", counts[name], "int") if link else "<td></td>"
        return f'<tr class="{cls}" data-category="{_e(name)}">' + f"<td>{label}</td>{cells}</tr>"

    rows = []
    if "textures" in means:
        for group in ("textures", "objects"):
            rows += [row(c, metrics[c]) for c in metrics if (c in MVTEC_TEXTURES) == (group == "textures")]
            rows.append(row(f"mean ({group})", means[group], "mean", link=False))
    else:
        rows += [row(c, metrics[c]) for c in metrics]
    rows.append(row("mean (all)", means["all"], "mean", link=False))
    return (
        '<section id="categories"><h2>Per category (%)</h2><table class="categories">'
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Means are plain averages over categories (textures: carpet, grid, leather, tile, wood; '
        "every other category counts as an object), as in the paper's tables 4 and 5.</p></section>"
    )


def build_category_report(
    runs: Iterable[CategoryRun], out_dir: str | Path, progress: bool = True, gallery_size: int = 6
) -> Path:
    """One page for several runs, one per category: the per-category table with mean rows,
    then each category's full report (metrics, curves, histogram, gallery, training) folded.

    runs may be a generator: each run is scored, drawn and let go before the next is loaded.
    Writes out_dir/report.html and out_dir/report.json ({"categories": {name: report numbers},
    "means": category_means(...)}). Returns the HTML's path.
    """
    records, bodies = {}, []
    for run in runs:
        if run.name in records:
            raise ValueError(f"category {run.name!r} given twice")
        key = f"-{_slug(run.name)}"
        record, body, _ = _analyse(
            run.detector, run.dataset, Path(run.run_dir) if run.run_dir else None, progress, gallery_size, key=key
        )
        records[run.name] = record
        c, m = record["counts"], record["metrics"]
        bodies.append(
            f'<details id="category{key}"><summary>{_e(run.name)}: image AUROC {_pct(m["image_auroc"])}, '
            f"pixel AUROC {_pct(m['pixel_auroc'])} ({c['normal']} defect-free + {c['defective']} "
            f"defective images)</summary>{body}</details>"
        )
    if not records:
        raise ValueError("no run to report")
    metrics = {name: r["metrics"] for name, r in records.items()}
    table = category_table(metrics, {name: r["counts"]["images"] for name, r in records.items()})
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"pitscope report: {len(records)} categories"
    page = _page(
        title,
        _e(f"pitscope {__version__} · {generated}"),
        [("categories", "per category")],
        table + '<h2 style="margin-top:22px">Each category (click to open)</h2>' + "".join(bodies),
    )
    means = json_safe(category_means(metrics))
    record = {"title": title, "version": __version__, "categories": records, "means": means}
    return _write(Path(out_dir), page, record)


# -- runs from model files -------------------------------------------------------------------
def load_category_runs(models: Sequence[str], overrides: Sequence[str], progress: bool) -> Iterable[CategoryRun]:
    """Load each model and its test split in turn (lazily: one model in memory at a time)."""
    from pitscope.config import apply_overrides
    from pitscope.data import build_dataset, prepare_split_file

    seen: dict[str, int] = {}
    for model in models:
        detector = Detector.load(model)
        cfg = apply_overrides(detector.cfg, list(overrides))
        detector.cfg.data = cfg.data
        prepare_split_file(cfg)
        dataset = build_dataset(cfg.data, "test", cfg.seed)
        for path, reason in dataset.check(progress=progress):
            log.warning("skipped bad file: %s: %s", path, reason)
        name = cfg.data.category or Path(model).resolve().parent.name
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}-{seen[name]}"
        yield CategoryRun(name, detector, dataset, Path(model).parent)
