"""Where the pits are: map and region settings compared on BSData's validation positions.

    python benchmarks/bsdata_localisation.py runs/hold/cpu_seed0/model.pt            # choose (validation only)
    python benchmarks/bsdata_localisation.py runs/hold/cpu_seed0/model.pt --test \\
        --set score.map_normalisation=... --set score.min_region_fraction=...       # measure the adopted settings
    python benchmarks/bsdata_localisation.py --merge benchmarks/results/A.json B.json --test-name C
                                                                                  # seeds side by side, and their mean

The models are trained with `data.holdout=positions`: the validation positions' photos never
train them. Without --test, every compared setting is scored on those photos only:
- the map: raw Mahalanobis distances ("none"), each map divided by its own mean ("image_mean"),
  and that map multiplied by the image score over the image threshold ("image_mean_score"), the
  raw map multiplied by it ("image_score") or by it up to 1 ("image_score_capped"), at each
  smoothing sigma;
- the predicted region at each map: the pixel threshold as a quantile of the held-back training
  images' map values or of their maxima, a minimum region size, regions on every image or
  only on images decided defective, (--cores) each region cut to its core, and (--peak-maxes) the
  largest share of the photo the peak's region of `defective_peak` may cover;
- (--sharpen) the map shown, which the pixel metrics rank: its broad background removed and each
  blob narrowed towards its peak; the regions are cut from the map before it, as the detector cuts them,
  or (--regions-from background) from the map after the background step and before the narrowing,
  their pixel threshold then taken of the held-back maps after the same step.
The maps' pixel metrics (AUROC, AP, AUPRO, F1-max) and the regions' metrics (pixel F1, IoU, the
area on defect-free photos, the area within 2x) go to benchmarks/results/<name>.json and .md.
--merge reads --test results (one network a seed) and writes their looks side by side with the
mean, standard deviation and range over the networks of each photo subset; it scores nothing.
With --test, the model is fitted again with the given settings (`refit`), scored once on the
test split (the test positions and, as their own row, the type-1 KGT* photos), and a line with
the commit, the config hash and the numbers is appended to benchmarks/results/bsdata_test_looks.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from bsdata_cpu import provenance  # this folder is on sys.path when run as a script
from bsdata_reference import reference_names

from pitscope.benchmark import commit, machine
from pitscope.benchmark.provenance import TEST_LOOKS, append_test_look
from pitscope.config import apply_overrides, to_dict
from pitscope.data import build_dataset
from pitscope.data.bsdata import bsdata_root
from pitscope.data.dataset import AnomalyDataset, Record
from pitscope.defect_regions import REGION_SETTINGS
from pitscope.defect_regions import REGIONS_ON as REGIONS_SHOWN
from pitscope.evaluation import evaluate, predicted_regions, write_evaluation
from pitscope.fitting import refit, with_references
from pitscope.inference import Detector
from pitscope.metrics import evaluate_all, region_metrics
from pitscope.scoring import gaussian_smooth, pixel_threshold_of, remove_background, score_factor, shown_map

RESULTS = Path(__file__).parent / "results"
LOOKS = RESULTS / TEST_LOOKS
NORMALISATIONS = ("none", "image_mean", "image_mean_score", "image_score", "image_score_capped")
SIGMAS = (2.0, 4.0, 8.0)
THRESHOLDS = (
    ("pixels", 0.99),
    ("pixels", 0.999),
    ("image_max", 0.5),
    ("image_max", 0.75),
    ("image_max", 0.9),
    ("image_max", 0.95),
    ("image_max", 0.99),
)  # (score.pixel_threshold_from, its quantile)
MIN_FRACTIONS = (0.0, 3e-4, 1e-3, 3e-3)
REGIONS_FROM = ("map", "background")  # the map before the steps to the map shown, or after its background step
REGIONS_ON = ("all", "defective")  # compared by default; --regions-on names others (`score.regions_on`)
PRESET_KEYS = (
    "smoothing_sigma",
    "map_normalisation",
    "map_background_window",
    "regions_after_background",
    "map_sharpen_window",
    "map_sharpen_power",
    "pixel_threshold_from",
    "pixel_threshold_quantile",
    "min_region_fraction",
    "region_core",
)  # the model's own region settings: the markdown lists its rows, one per compared regions_on
# what acts after the scorers and thresholds: set on a saved model without fitting it again
SHOWN_SETTINGS = (*REGION_SETTINGS, "map_background_window", "map_sharpen_window", "map_sharpen_power")
MAX_NORMAL_AREA = 0.01  # the 99th percentile of the predicted area on defect-free photos, at most


def raw_maps(detector: Detector, dataset, indices) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and unsmoothed, unnormalised maps (N, H, W) of dataset[indices], before
    any background step."""
    cfg = detector.cfg
    saved = cfg.score.smoothing_sigma, cfg.score.map_normalisation, cfg.score.regions_after_background
    cfg.score.smoothing_sigma, cfg.score.map_normalisation, cfg.score.regions_after_background = 0.0, "none", False
    try:
        subset = [dataset[i] for i in indices]
        scores, maps = detector.score_dataset(subset, progress=True)
    finally:
        cfg.score.smoothing_sigma, cfg.score.map_normalisation, cfg.score.regions_after_background = saved
    return scores, maps


def transform(maps: np.ndarray, scores: np.ndarray, threshold: float, sigma: float, normalisation: str) -> np.ndarray:
    """The maps as the detector would give them with these settings (smoothing, then normalisation):
    the maps the regions are cut from (`Detector.score_dataset`)."""
    out = gaussian_smooth(torch.from_numpy(maps), sigma).numpy()
    if normalisation in ("image_mean", "image_mean_score"):
        out = out / np.maximum(out.mean(axis=(1, 2), keepdims=True), 1e-12)
    factor = score_factor(normalisation, torch.from_numpy(np.asarray(scores, dtype=np.float64)), threshold)
    return out * factor.numpy().astype(out.dtype)[:, None, None]


def choose(
    detector: Detector,
    sigmas=SIGMAS,
    normalisations=NORMALISATIONS,
    progress: bool = True,
    references: Sequence[Path] = (),
    cores: Sequence[float] | None = None,
    regions_on: Sequence[str] = REGIONS_ON,
    peak_maxes: Sequence[float] | None = None,
    min_fractions: Sequence[float] = MIN_FRACTIONS,
    sharpens: Sequence[tuple[int, float, int]] | None = None,
    regions_from: Sequence[str] | None = None,
) -> dict:
    """Every map and region setting scored on the validation photos; with `references` (photos
    the detector was fitted on beside its training photos) those photos are not scored. cores:
    the score.region_core values compared (default: the detector's); regions_on: the
    score.regions_on values compared; peak_maxes: the score.peak_region_max values compared
    (default: the detector's; they change regions_on defective_peak only); min_fractions: the
    score.min_region_fraction values compared; sharpens: the (score.map_sharpen_window,
    score.map_sharpen_power, score.map_background_window) triples compared (default: the detector's);
    regions_from: which maps the regions and their pixel thresholds are cut from, each of REGIONS_FROM
    ("background": after the triple's background step, before the narrowing; skipped for a triple
    without a background step; default: the detector's, `score.regions_after_background`)."""
    cfg = detector.cfg
    train = build_dataset(cfg.data, "train", cfg.seed)
    if references:
        train = with_references(train, [Record(Path(r), 0) for r in references], cfg)
    train.check(progress=progress)  # as the fit did: the same images, so the same held-back ones
    val = build_dataset(cfg.data, "val", cfg.seed)
    if references:
        fitted = {Path(r).resolve() for r in references}
        val = AnomalyDataset(
            [r for r in val.records if r.path.resolve() not in fitted],
            size=val.size,
            on_bad_file=val.on_bad_file,
            cache=val.cache,
            name="bsdata-val-judged",
            has_masks=val.has_masks,
        )
    val.check(progress=progress)
    fit_idx, cal_idx = detector.split_calibration(len(train))
    cal_idx = cal_idx or fit_idx  # as the fit: no held-back images, the fitting ones
    threshold = float(detector.threshold)
    t0 = time.perf_counter()
    val_scores, val_raw = raw_maps(detector, val, range(len(val)))
    cal_scores, cal_raw = raw_maps(detector, train, cal_idx)
    bounds = list(peak_maxes or [cfg.score.peak_region_max])
    labels = np.asarray(val.labels)
    masks = np.stack([val[i].mask for i in range(len(val))])
    rows = []
    own_sharpen = (cfg.score.map_sharpen_window, cfg.score.map_sharpen_power, cfg.score.map_background_window)
    regions_from = regions_from or [own_regions_from(cfg.score.regions_after_background)]
    # the steps to the map shown change the pixel metrics alone: each sigma's maps and regions are measured once
    cut: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # normalisation -> (maps, held-back maps) at one sigma
    measured: dict[tuple, dict] = {}  # (normalisation, regions' map, region settings) -> region_metrics at one sigma
    stepped: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # (normalisation, background) -> maps after that step
    at_sigma = None
    for sigma, sharpen in itertools.product(sigmas, sharpens or [own_sharpen]):
        if sigma != at_sigma:
            cut.clear()
            measured.clear()
            stepped.clear()
            at_sigma = sigma
        for norm in normalisations:
            if norm not in cut:  # the regions are cut from these
                cut[norm] = (
                    transform(val_raw, val_scores, threshold, sigma, norm),
                    transform(cal_raw, cal_scores, threshold, sigma, norm),
                )
            maps, cal = cut[norm]
            window, power, background = sharpen
            shown = shown_map(torch.from_numpy(maps), background, window, power).numpy()  # the pixel metrics rank these
            pixel = evaluate_all(labels, val_scores, masks, shown)
            for source, (rule, q) in itertools.product(regions_from, THRESHOLDS):
                if source == "background" and not background:
                    continue
                step = background if source == "background" else 0
                if (norm, step) not in stepped:
                    stepped[norm, step] = (
                        (
                            remove_background(torch.from_numpy(maps), step).numpy(),
                            remove_background(torch.from_numpy(cal), step).numpy(),
                        )
                        if step
                        else (maps, cal)
                    )
                region_maps, region_cal = stepped[norm, step]
                pixel_threshold = pixel_threshold_of(region_cal, q, rule)
                for floor, on, core, peak_max in itertools.product(
                    min_fractions, regions_on, cores or [cfg.score.region_core], bounds
                ):
                    if on != "defective_peak":
                        if peak_max != bounds[0]:
                            continue  # the bound acts on defective_peak only: one row of the others
                        peak_max = 0.0
                    key = (norm, step, rule, q, floor, on, core, peak_max)
                    if key not in measured:
                        regions = predicted_regions(
                            region_maps, val_scores > threshold, pixel_threshold, floor, on, core, peak_max
                        )
                        measured[key] = region_metrics(labels, masks, regions)
                    rows.append(
                        {
                            "smoothing_sigma": sigma,
                            "map_normalisation": norm,
                            "map_background_window": sharpen[2],
                            "map_sharpen_window": sharpen[0],
                            "map_sharpen_power": sharpen[1],
                            "regions_from": source,
                            "pixel_rule": rule,
                            "pixel_quantile": q,
                            "min_region_fraction": floor,
                            "regions_on": on,
                            "region_core": core,
                            "peak_region_max": peak_max,
                            **{k: pixel[k] for k in ("pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max")},
                            **measured[key],
                        }
                    )
            print(
                f"sigma {sigma} {norm} sharpen {sharpen}: pixel AP {pixel['pixel_ap']:.4f} AUPRO {pixel['aupro']:.4f}",
                file=sys.stderr,
            )
    image = evaluate_all(labels, val_scores)
    return {
        "rows": rows,
        "image_auroc": image["image_auroc"],
        "seconds": round(time.perf_counter() - t0, 1),
        "counts": {"normal": int((labels == 0).sum()), "defective": int(labels.sum()), "calibration": len(cal_idx)},
    }


def earliest_references(model: Path, per_position: int, split: str = "val") -> list[Path]:
    """The files of the `per_position` earliest defect-free photos of each validation position
    (split "val"), or of each position a cross-position model is measured on (split "test")."""
    cfg = Detector.load(model).cfg
    photos = build_dataset(cfg.data, split, cfg.seed)
    positions = None
    if split == "test":
        if cfg.data.position_fold is None:
            raise SystemExit(
                f"{model}: --references with --test needs a cross-position model (data.position_fold): the "
                "test positions' photos already train a data.holdout=positions model"
            )
        split_file = Path(cfg.data.split_file)
        positions = json.loads(split_file.read_text())["positions"]["measured"]
    names = reference_names(photos, bsdata_root(cfg.data.root), per_position, positions)
    return [r.path for r in photos.records if r.path.name in names]


def sharpen_pair(text: str) -> tuple[int, float, int]:
    """ "WINDOW:POWER" or "WINDOW:POWER:BACKGROUND" -> (window, power, background), as
    score.map_sharpen_window, score.map_sharpen_power and score.map_background_window (0 without it)."""
    try:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError
        triple = int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WINDOW:POWER[:BACKGROUND] such as 61:1 or 61:1:91, got {text!r}"
        ) from None
    odd = all(w == 0 or (w > 0 and w % 2) for w in (triple[0], triple[2]))
    if not odd or triple[1] <= 0:
        raise argparse.ArgumentTypeError(f"the windows must be 0 or odd and the power above 0, got {text!r}")
    return triple


def best(rows: list[dict]) -> dict:
    """The row chosen: the highest pixel F1 of the regions among those whose 99th-percentile area on
    defect-free photos stays within MAX_NORMAL_AREA (ties: the higher median IoU)."""
    allowed = [r for r in rows if r["normal_area_p99"] is not None and r["normal_area_p99"] <= MAX_NORMAL_AREA]
    pool = allowed or rows
    chosen = max(pool, key=lambda r: (r["pixel_f1"] or 0.0, r["iou_median"] or 0.0))
    return {**chosen, "pixel_threshold_from": chosen["pixel_rule"], "within_area_limit": bool(allowed)}


def check_model(detector: Detector, path: Path) -> None:
    """Refuse a model whose validation photos may have trained it, or whose image score the raw
    maps would change (map_max reads its score from the smoothed, normalised map)."""
    if detector.cfg.data.holdout != "positions":
        raise SystemExit(f"{path}: trained without data.holdout=positions; its validation photos may have trained it")
    if detector.cfg.score.image_method != "embedding":
        raise SystemExit(f"{path}: score.image_method={detector.cfg.score.image_method}; this study needs embedding")


def refitted(
    model: Path,
    overrides: list[str],
    out_dir: Path | None = None,
    references: Sequence[Path] = (),
    device: str = "cpu",
) -> Detector:
    """The model's network with its scorers fitted again under `overrides` (score.* only) and
    with `references` beside its training photos (`pitscope refit --references`); saved to
    out_dir/model.pt when out_dir is given. Without either, the model as saved; with overrides of
    SHOWN_SETTINGS alone and no references, the model as saved with those settings (its scorers
    and thresholds do not depend on them). The network runs and the scorers are fitted on
    `device`."""
    old = Detector.load(model, device)
    check_model(old, model)
    if not overrides and not references:
        return old
    cfg = apply_overrides(old.cfg, overrides)
    if (
        to_dict(cfg)["model"] != to_dict(old.cfg)["model"]
        or to_dict(cfg)["train"] != to_dict(old.cfg)["train"]
        or to_dict(cfg)["data"] != to_dict(old.cfg)["data"]
    ):
        raise SystemExit("--set may change score.* only: the network and its data stay as trained")
    changed = {k for k, v in to_dict(cfg)["score"].items() if v != to_dict(old.cfg)["score"][k]}
    if references:
        detector = refit(old, cfg, model, progress=True, references=references)
    elif changed <= set(SHOWN_SETTINGS):
        detector = old
        detector.cfg = cfg
    else:
        detector = Detector(cfg, old.n_kinds, net=old.net)
        detector.metadata = {k: v for k, v in old.metadata.items() if k == "training"}
        detector.fit(build_dataset(cfg.data, "train", cfg.seed), progress=True)
    if out_dir is not None:
        detector.save(out_dir / "model.pt")
    return detector


def measure_test(model: Path, overrides: list[str], out_dir: Path, per_position: int = 0, device: str = "cpu") -> dict:
    """Refit the model with `overrides` (and, for a cross-position model, the `per_position`
    earliest defect-free photos of each measured position as references, which `evaluate` then
    leaves out), score the test split once, append the look to LOOKS."""
    references = earliest_references(model, per_position, "test") if per_position else []
    detector = refitted(model, overrides, out_dir, references=references, device=device)
    cfg = detector.cfg
    if not overrides and not references:
        detector.save(out_dir / "model.pt")
    test = build_dataset(cfg.data, "test", cfg.seed)
    result = evaluate(detector, test, progress=True)
    write_evaluation(result, out_dir / "eval")
    extra = {"references_per_position": per_position, "references": len(references)} if references else {}
    return log_look(model, cfg, overrides, result, **extra)


def log_look(model: Path, cfg, overrides: list[str], result: dict, **extra) -> dict:
    """Append one scoring of the test split (an `evaluate` result) to LOOKS; the line written."""
    return append_test_look(LOOKS, model, cfg, overrides, result, **extra)


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


REGION_HEADER = (
    "| sigma | maps | pixel threshold | min fraction | regions on | core | peak's region at most | pixel F1 | "
    "IoU median (q1-q3) | defect-free area median / p99 (%) | area within 2x |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
)


def maps_label(r: dict) -> str:
    """The map setting of a row: its normalisation, its background removal and its blobs' narrowing
    when there are any."""
    window, background = r.get("map_sharpen_window", 0), r.get("map_background_window", 0)
    return (
        r["map_normalisation"]
        + (f", background {background} px removed" if background else "")
        + (f", sharpened {window} px ^{r['map_sharpen_power']:g}" if window else "")
    )


def own_regions_from(after_background: bool) -> str:
    """The REGIONS_FROM value of a model with this `score.regions_after_background`."""
    return "background" if after_background else "map"


def region_line(r: dict) -> str:
    source = ", regions after the background step" if r.get("regions_from", "map") == "background" else ""
    return (
        f"| {r['smoothing_sigma']:g} | {maps_label(r)}{source} | {r['pixel_quantile']} of "
        f"{r.get('pixel_rule', 'pixels')} | "
        f"{r['min_region_fraction']:g} | {r['regions_on']} | {r.get('region_core', 0.0):g} | "
        f"{r.get('peak_region_max', 0.0):g} | {pct(r['pixel_f1'])} | "
        f"{pct(r['iou_median'])} ({pct(r['iou_q1'])}-{pct(r['iou_q3'])}) | "
        f"{pct(r['normal_area_median'])} / {pct(r['normal_area_p99'])} | {pct(r['area_within_2x'])} |"
    )


def preset_rows(run: dict) -> list[dict]:
    """The rows of `run` at the model's own region settings (run["preset"]), one per regions_on
    and peak bound compared."""
    own = run.get("preset")
    if not own:
        return []
    return [
        r
        for r in run["rows"]
        if r["smoothing_sigma"] == own["smoothing_sigma"]
        and r["map_normalisation"] == own["map_normalisation"]
        and r.get("map_sharpen_window", 0) == own.get("map_sharpen_window", 0)
        and r.get("map_sharpen_power", 1.0) == own.get("map_sharpen_power", 1.0)
        and r.get("map_background_window", 0) == own.get("map_background_window", 0)
        and r["pixel_rule"] == own["pixel_threshold_from"]
        and r["pixel_quantile"] == own["pixel_threshold_quantile"]
        and r["min_region_fraction"] == own["min_region_fraction"]
        and r["region_core"] == own["region_core"]
        and r.get("regions_from", "map") == own_regions_from(own.get("regions_after_background", False))
    ]


def write_markdown(record: dict, path: Path) -> None:
    lines = [
        "# BSData localisation settings, on the validation positions",
        "",
        provenance(record),
        "",
        f"Command: `{record['command']}`",
        "",
    ]
    for run in record["runs"]:
        c = run["counts"]
        scored = f", scored with `{' '.join(run['overrides'])}`" if run.get("overrides") else ""
        lines += [
            f"## {run['model']}{scored}",
            "",
            f"{c['normal']} defect-free and {c['defective']} pitting photos of the validation positions"
            + (
                f" (the scorers fitted with {run['references']} of their defect-free photos, each position's "
                "earliest, beside the training photos; those are not scored); "
                if run.get("references")
                else "; "
            )
            + f"pixel thresholds from {c['calibration']} held-back training photos. Image AUROC "
            f"{pct(run['image_auroc'])}.",
            "",
            "Maps (best region row of each):",
            "",
            "| sigma | maps | pixel AUROC | pixel AP | AUPRO | pixel F1-max |",
            "|---|---|---|---|---|---|",
        ]
        seen = set()
        for r in run["rows"]:
            key = (r["smoothing_sigma"], maps_label(r))
            if key in seen:
                continue
            seen.add(key)
            lines.append(
                f"| {r['smoothing_sigma']:g} | {maps_label(r)} | {pct(r['pixel_auroc'])} | "
                f"{pct(r['pixel_ap'])} | {pct(r['aupro'])} | {pct(r['pixel_f1_max'])} |"
            )
        lines += [
            "",
            "Regions, the best few by the rule (p99 area on defect-free photos <= 1%, then pixel F1):",
            "",
            *REGION_HEADER,
        ]
        ranked = sorted(
            run["rows"],
            key=lambda r: (
                r["normal_area_p99"] is None or r["normal_area_p99"] > MAX_NORMAL_AREA,
                -(r["pixel_f1"] or 0.0),
            ),
        )
        lines += [region_line(r) for r in ranked[:12]]
        own = preset_rows(run)
        if own:
            lines += ["", "At the model's own settings (every regions_on and peak bound compared):", "", *REGION_HEADER]
            lines += [region_line(r) for r in own]
        chosen = run["chosen"]
        if not chosen["within_area_limit"]:
            lines += ["", f"No setting kept the defect-free area's 99th percentile within {MAX_NORMAL_AREA:.0%}."]
        lines += [
            "",
            "Chosen: "
            + ", ".join(
                f"score.{k}={chosen[k]}"
                for k in (
                    "smoothing_sigma",
                    "map_normalisation",
                    "map_background_window",
                    "map_sharpen_window",
                    "map_sharpen_power",
                    "regions_from",
                    "min_region_fraction",
                    "regions_on",
                    "region_core",
                    "peak_region_max",
                    "pixel_threshold_from",
                )
                if k in chosen  # rows written before a setting existed lack it
            )
            + f", score.pixel_threshold_quantile={chosen['pixel_quantile']}.",
            "",
        ]
    path.write_text("\n".join(lines) + "\n")


TEST_COLUMNS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_f1",
    "iou_median",
    "normal_area_p99",
    "area_within_2x",
)


def write_test_markdown(record: dict, path: Path) -> None:
    """The looks of one --test run as a table: every test photo, then each subset."""
    lines = [
        "# BSData test photos, scored once",
        "",
        provenance(record),
        "",
        f"Command: `{record['command']}`",
        "",
        "| model | photos | " + " | ".join(TEST_COLUMNS) + " |",
        "|---|---|" + "---|" * len(TEST_COLUMNS),
    ]
    for look in record["looks"]:
        rows = [("all", look["metrics"], look["counts"])]
        rows += [(name, metrics, None) for name, metrics in look["subsets"].items()]
        for name, metrics, counts in rows:
            label = f"{name} ({counts['normal']} defect-free, {counts['defective']} pitting)" if counts else name
            lines.append(
                f"| {look['model']} | {label} | " + " | ".join(pct(metrics.get(k)) for k in TEST_COLUMNS) + " |"
            )
        at = look["at_threshold"]
        lines += [
            "",
            f"{look['model']}: at the stored threshold, {100 * at['true_positive_rate']:.1f}% of the pitting "
            f"photos and {100 * at['false_positive_rate']:.1f}% of the defect-free ones flagged; settings "
            f"`{' '.join(look['overrides'])}`.",
            "",
        ]
    path.write_text("\n".join(lines) + "\n")


def merged(records: list[dict], command: str) -> dict:
    """--test records (each a network's looks) as one record, with per-subset summaries over the looks."""
    looks = [look for record in records for look in record["looks"]]
    if len(looks) < 2:
        raise SystemExit("--merge needs at least two looks")
    models = [look["model"] for look in looks]
    if len(set(models)) < len(models):
        raise SystemExit(f"--merge: a network appears twice: {sorted(models)}")
    settings = {tuple(look["overrides"]) for look in looks}
    if len(settings) > 1:
        raise SystemExit(f"--merge: the looks were scored with different settings: {sorted(settings)}")
    subsets = {"all": [look["metrics"] for look in looks]}
    for look in looks:
        for name, metrics in look["subsets"].items():
            subsets.setdefault(name, []).append(metrics)
    summary = {}
    for name, rows in subsets.items():
        summary[name] = {}
        for key in TEST_COLUMNS:
            values = [row[key] for row in rows if row.get(key) is not None]
            if len(values) == len(rows):
                summary[name][key] = {
                    "mean": float(np.mean(values)),
                    "sd": float(np.std(values, ddof=1)),
                    "min": float(np.min(values)),
                    "max": float(np.max(values)),
                    "n": len(values),
                }
    return {
        "command": command,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "merged_from": [{k: r[k] for k in ("command", "commit", "date")} for r in records],
        "looks": looks,
        "summary": summary,
    }


def write_merged_markdown(record: dict, path: Path) -> None:
    """Per-network rows as --test writes them, then mean (sd) and range over the networks."""
    write_test_markdown(record, path)
    lines = [
        "",
        f"## Over the {len(record['looks'])} networks: mean (standard deviation), then range",
        "",
        "| photos | " + " | ".join(TEST_COLUMNS) + " |",
        "|---|" + "---|" * len(TEST_COLUMNS),
    ]
    for name, summary in record["summary"].items():
        cells = []
        for key in TEST_COLUMNS:
            m = summary.get(key)
            cells.append(
                "–"
                if m is None
                else f"{100 * m['mean']:.2f} ({100 * m['sd']:.2f}), {100 * m['min']:.2f}-{100 * m['max']:.2f}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Merged from:", ""]
    lines += [f"- `{r['command']}` (commit `{r['commit']}`, {r['date']})" for r in record["merged_from"]]
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument(
        "--merge", nargs="+", type=Path, metavar="RESULT_JSON", help="--test results to put side by side"
    )
    parser.add_argument("--test", action="store_true", help="refit with --set and score the test split once")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="score.* settings the model's scorers are fitted again with before it is scored",
    )
    parser.add_argument("--name", default="bsdata_localisation_validation")
    parser.add_argument("--test-name", help="with --test: also write benchmarks/results/<TEST_NAME>.json and .md")
    parser.add_argument("--out", type=Path, default=Path("runs/localisation"))
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS), help="smoothing sigmas compared")
    parser.add_argument("--normalisations", nargs="+", default=list(NORMALISATIONS), choices=NORMALISATIONS)
    parser.add_argument(
        "--references",
        type=int,
        default=0,
        metavar="K",
        help="fit the scorers again with the K earliest defect-free photos of each validation position (with "
        "--test: of each position a cross-position model is measured on) beside the training photos (`pitscope "
        "refit --references`), and score the other photos",
    )
    parser.add_argument(
        "--cores",
        type=float,
        nargs="+",
        help="score.region_core values compared (choosing only; default: the model's)",
    )
    parser.add_argument(
        "--regions-on",
        nargs="+",
        choices=REGIONS_SHOWN,
        default=list(REGIONS_ON),
        help="score.regions_on values compared (choosing only)",
    )
    parser.add_argument(
        "--peak-maxes",
        type=float,
        nargs="+",
        help="score.peak_region_max values compared for regions_on defective_peak (choosing only; default: the "
        "model's)",
    )
    parser.add_argument(
        "--min-fractions",
        type=float,
        nargs="+",
        default=list(MIN_FRACTIONS),
        help="score.min_region_fraction values compared (choosing only)",
    )
    parser.add_argument(
        "--sharpen",
        type=sharpen_pair,
        nargs="+",
        help="WINDOW:POWER[:BACKGROUND] of score.map_sharpen_window, score.map_sharpen_power and "
        "score.map_background_window (0 when left out) compared (choosing only; default: the model's; 0:1 leaves "
        "the maps as they are)",
    )
    parser.add_argument(
        "--regions-from",
        nargs="+",
        choices=REGIONS_FROM,
        help="the maps the regions and their pixel thresholds are cut from, compared (choosing only): the map "
        "before the steps to the map shown (map) or after its background step (background, for each --sharpen "
        "with one); default: the model's (score.regions_after_background)",
    )
    parser.add_argument(
        "--neighbourhoods",
        type=int,
        nargs="+",
        help="score.neighbourhood values compared on the same fitted Gaussians (choosing only; default: the model's)",
    )
    parser.add_argument(
        "--device", default="cpu", help="where the network runs and the scorers are fitted (cpu, cuda, cuda:N)"
    )
    args = parser.parse_args()
    if any(not 0.0 <= b <= 1.0 for b in args.peak_maxes or []):
        parser.error("--peak-maxes: each a share of the photo in [0, 1] (0: no bound)")
    if any(not 0.0 <= f < 1.0 for f in args.min_fractions):
        parser.error("--min-fractions: each a share of the photo in [0, 1)")
    if args.neighbourhoods and args.test:
        parser.error("--neighbourhoods compares settings on validation; with --test give --set score.neighbourhood=N")
    command = "python benchmarks/bsdata_localisation.py " + " ".join(sys.argv[1:])
    if args.merge:
        if args.models or args.test or not args.test_name:
            parser.error("--merge takes result files and --test-name, no models")
        record = merged([json.loads(path.read_text()) for path in args.merge], command)
        (RESULTS / f"{args.test_name}.json").write_text(json.dumps(record, indent=1) + "\n")
        write_merged_markdown(record, RESULTS / f"{args.test_name}.md")
        print((RESULTS / f"{args.test_name}.md").read_text())
        return 0
    if not args.models:
        parser.error("give the models to score (or --merge)")
    if args.test:
        looks = []
        for model in args.models:
            looks.append(
                measure_test(model, args.overrides, args.out / model.parent.name, args.references, args.device)
            )
            print(json.dumps(looks[-1], indent=1))
        if args.test_name:
            record = {
                "command": command,
                "commit": commit(),
                "date": time.strftime("%Y-%m-%d"),
                "machine": machine(),
                "looks": looks,
            }
            (RESULTS / f"{args.test_name}.json").write_text(json.dumps(record, indent=1) + "\n")
            write_test_markdown(record, RESULTS / f"{args.test_name}.md")
        return 0
    runs = []
    for model in args.models:
        references = earliest_references(model, args.references) if args.references else []
        detector = refitted(model, args.overrides, references=references, device=args.device)
        for radius in args.neighbourhoods or [detector.cfg.score.neighbourhood]:
            # the Gaussians and the image threshold do not depend on it; `choose` sets the pixel thresholds
            detector.cfg.score.neighbourhood = detector.pixel_scorer.radius = radius
            run = choose(
                detector,
                args.sigmas,
                args.normalisations,
                references=references,
                cores=args.cores,
                regions_on=args.regions_on,
                peak_maxes=args.peak_maxes,
                min_fractions=args.min_fractions,
                sharpens=args.sharpen,
                regions_from=args.regions_from,
            )
            run["preset"] = {k: getattr(detector.cfg.score, k) for k in PRESET_KEYS}
            run["references"] = len(references)
            overrides = [*args.overrides, f"score.neighbourhood={radius}"] if args.neighbourhoods else args.overrides
            runs.append({"model": str(model), "overrides": overrides, **run, "chosen": best(run["rows"])})
    record = {
        "command": command,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    write_markdown(record, RESULTS / f"{args.name}.md")
    print((RESULTS / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
