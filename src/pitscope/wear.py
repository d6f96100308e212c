"""Wear curves: how the pitting at one spindle position grows, photograph after photograph.

BSData photographs 15 positions of one ball screw (its type 2) about every four hours for 19
days; `pitscope.data.sequences.read_sequences` reads each position's photographs in capture
order (one `WearSequence` each). BSData's first 57 photographs of a position are
1130x460 (`..._crop_2.jpg`), its last 12 are 1540x645 (`..._crop_1.jpg`) of the same field of
view. The ground truth is taken as labelled: 14 positions show pitting, one never does, and the
last photograph (day 18.8) of 10 pitted positions has no label file, so
their true area ends at zero.

Areas. The predicted area of an image is the number of pixels of its predicted region
(`Prediction.defect_region`, which `visualize.overlay` draws and `serve` reports),
with the map at the image's own size (`Detector.predict`). The true area is the number of
pixels inside the image's "Pitting" polygons, rasterised at its own size. Both are counted in
the image's native pixels; since the native size changes within a sequence, every comparison
over time (growth, agreement, the alert rule) uses the fraction of the inspected surface:
area / (width x height) of that image, the whole photograph being the inspected surface.

Honest measurement. A model must not measure images it trained on: `training_images` reads
which images trained a model (a BSData model's split file; a synthetic model trained on no
file) and `assign_models` gives each sequence to the first model that never saw any of its
images. `sequence_folds` and `fold_split` make the k-fold split over sequences that gives every
sequence such a model: fold i's model trains on the defect-free images of the other folds only.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import mean_absolute_error
from tqdm.auto import tqdm

from pitscope import __version__
from pitscope.config import Config
from pitscope.data.bsdata import bsdata_root, bsdata_split, read_polygons, read_split
from pitscope.data.dataset import Record, rasterise_polygons
from pitscope.data.sequences import SECONDS_PER_DAY, WearSequence, read_sequences
from pitscope.files import json_safe
from pitscope.growth import AlertRule, slope_per_day, trailing_growth

CURVE_FIELDS = ("file", "time", "days", "width", "height", "predicted_px", "predicted_fraction", "true_px",
                "true_fraction", "score", "threshold", "is_defective", "growth_per_day", "alert")
SUMMARY_FIELDS = ("sequence", "model", "overlap", "images", "first_flagged_days", "first_true_days",
                  "flag_lead_days", "growth_predicted_per_day", "growth_true_per_day", "spearman", "mae",
                  "first_alert_days", "alert_lead_days", "false_alerts", "clean_images")


# -- the split over sequences ----------------------------------------------------------------
def sequence_folds(sequences: Sequence[WearSequence], k: int, seed: int = 0) -> list[tuple[str, ...]]:
    """k folds of sequence names: a `default_rng(seed)` permutation of the sorted names, dealt
    round robin, each fold sorted. Every sequence is in exactly one fold."""
    names = sorted(s.name for s in sequences)
    if not 2 <= k <= len(names):
        raise ValueError(f"k: {k} folds need 2 <= k <= {len(names)} (the number of sequences)")
    order = np.random.default_rng(seed).permutation(len(names))
    return [tuple(sorted(names[i] for i in order[f::k])) for f in range(k)]


def fold_split(root: str | Path, sequences: Sequence[WearSequence], held_out: Iterable[str], seed: int = 0) -> dict:
    """A BSData split (as `bsdata_split` returns) that trains on every defect-free image of
    data/ outside the `held_out` sequences: "train" those, "test_normal" the defect-free images
    of the held-out sequences, "test_defect" every image with pitting. Write it with
    `bsdata.write_split` and train with data.split_file pointing there."""
    held_out = set(held_out)
    unknown = held_out - {s.name for s in sequences}
    if unknown:
        raise ValueError(f"held_out: no sequence named {', '.join(sorted(unknown))}")
    measured = {r.path.name for s in sequences if s.name in held_out for r in s.records}
    split = bsdata_split(root, n_train_normal=0, seed=seed)  # every defect-free image in test_normal
    normal = split["test_normal"]
    return {"seed": seed, "train": [n for n in normal if n not in measured],
            "test_normal": [n for n in normal if n in measured], "test_defect": split["test_defect"]}


def _split_path(cfg: Config, model_path: Path) -> Path | None:
    """The model's split file: as its config names it, else beside the model under that name."""
    if cfg.data.split_file is None:
        return None
    path = Path(cfg.data.split_file)
    return path if path.is_file() else model_path.parent / path.name


def training_images(cfg: Config, model_path: str | Path, root: str | Path) -> frozenset[Path]:
    """The images (resolved paths, as under root/data/) a model's training split held.

    A BSData model: the "train" list of its split file (BSData names one image wherever its copy
    lies). A synthetic model: none (its images are generated). Any other format: the files of its
    training split. Raises ValueError when a BSData model's split file cannot be found: without
    it, no one can tell which images trained the model.
    """
    model_path = Path(model_path)
    if cfg.data.format == "synthetic":
        return frozenset()
    if cfg.data.format == "bsdata":
        split_file = _split_path(cfg, model_path)
        if split_file is None or not split_file.is_file():
            raise ValueError(f"{model_path}: its split file ({cfg.data.split_file}) is missing, so which images "
                             "trained it is unknown; measure with a model whose split file is at hand")
        data = Path(root) / "data"
        return frozenset((data / name).resolve() for name in read_split(split_file)["train"])
    from pitscope.data import build_dataset

    return frozenset(Path(p).resolve() for p in build_dataset(cfg.data, "train", cfg.seed).paths)


def assign_models(
    sequences: Sequence[WearSequence], trained: Sequence[frozenset[Path]], allow_overlap: bool = False
) -> dict[str, tuple[int, int]]:
    """Which model measures which sequence: {sequence name: (model index, images it trained on)}.

    Each sequence goes to the first model (in `trained`'s order) that trained on none of its
    images. With none such, allow_overlap gives it to the first model that trained on the
    fewest of them (the overlap is recorded); otherwise the sequence is left out of the result.
    """
    assigned = {}
    for sequence in sequences:
        paths = {r.path.resolve() for r in sequence.records}
        overlaps = [len(paths & images) for images in trained]
        if not overlaps:
            continue
        best = int(np.argmin(overlaps))  # the first model with the fewest
        if overlaps[best] == 0 or allow_overlap:
            assigned[sequence.name] = (best, overlaps[best])
    return assigned


# -- areas -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AreaPoint:
    """One image of a wear curve. Areas in the image's native pixels (width x height)."""

    path: str
    time: datetime
    days: float  # since the sequence's first image
    width: int
    height: int
    predicted_px: int  # anomaly-map pixels above the pixel threshold
    true_px: int  # pixels inside the ground-truth polygons
    score: float
    threshold: float
    is_defective: bool  # score > threshold: the image is flagged

    @property
    def predicted_fraction(self) -> float:
        return self.predicted_px / (self.width * self.height)

    @property
    def true_fraction(self) -> float:
        return self.true_px / (self.width * self.height)


def area_point(record: Record, time: datetime, days: float, prediction) -> AreaPoint:
    """Reduce one `inference.Prediction` (map at the image's own size) of `record` to its areas."""
    height, width = prediction.anomaly_map.shape
    region = prediction.defect_region  # (H, W) bool
    truth = rasterise_polygons(record.polygons or (), height, width)  # (H, W) uint8 {0, 1}
    return AreaPoint(str(record.path), time, float(days), int(width), int(height), int(region.sum()),
                     int(truth.sum()), float(prediction.score), float(prediction.threshold),
                     bool(prediction.is_defective))


@dataclass(frozen=True)
class WearCurve:
    """The areas of one sequence's images, in capture order, as one model measured them.

    model: the model file; overlap: how many of the sequence's images that model trained on
    (0 unless measured with allow_overlap).
    """

    sequence: str
    names: tuple[str, ...]
    points: tuple[AreaPoint, ...]
    model: str
    overlap: int
    pixel_threshold: float

    @property
    def days(self) -> np.ndarray:
        """(N,) days since the first image."""
        return np.array([p.days for p in self.points])

    @property
    def predicted(self) -> np.ndarray:
        """(N,) predicted area fractions."""
        return np.array([p.predicted_fraction for p in self.points])

    @property
    def truth(self) -> np.ndarray:
        """(N,) true area fractions."""
        return np.array([p.true_fraction for p in self.points])


def measure_sequence(detector, sequence: WearSequence, model: str, overlap: int = 0) -> WearCurve:
    """Predict every image of `sequence` with `detector` (one batch of maps in memory at a time)."""
    days = sequence.days
    points = []
    batch = detector.cfg.score.batch_size
    for start in range(0, len(sequence.records), batch):
        records = sequence.records[start : start + batch]
        predictions = detector.predict([r.path for r in records])
        for i, (record, prediction) in enumerate(zip(records, predictions), start):
            points.append(area_point(record, sequence.times[i], days[i], prediction))
    return WearCurve(sequence.name, sequence.names, tuple(points), model, overlap, float(detector.pixel_threshold))


# -- growth and agreement --------------------------------------------------------------------
def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation of a and b (scipy), or None when either is constant or has
    fewer than 2 values (the correlation is undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def _first(days: np.ndarray, hits: np.ndarray) -> float | None:
    index = np.flatnonzero(hits)
    return float(days[index[0]]) if index.size else None


@dataclass(frozen=True)
class AlertOutcome:
    """The rule over one sequence.

    first_alert_days: day of the first alert (None: it never fires).
    first_true_days:  day of the first image whose ground truth shows pitting (None: none does).
    lead_days:        first_true_days - first_alert_days: > 0 the alert came that many days
                      before the ground truth first shows pitting, < 0 that many days after;
                      None when either is missing.
    false_alerts:     alerts on clean images.
    clean_images:     the images before the first one with pitting (all of them in a sequence
                      that never shows pitting): ground truth says there is nothing to find yet.
                      An alert there is false, an early warning included.
    """

    first_alert_days: float | None
    first_true_days: float | None
    lead_days: float | None
    false_alerts: int
    clean_images: int


def evaluate_alerts(days: Sequence[float], truth: Sequence[float], alerts: Sequence[bool]) -> AlertOutcome:
    """Compare alerts (N,) bool with the true area fractions (N,) over days (N,)."""
    days, truth, alerts = np.asarray(days, np.float64), np.asarray(truth, np.float64), np.asarray(alerts, bool)
    pitted = np.flatnonzero(truth > 0)
    clean = int(pitted[0]) if pitted.size else int(truth.size)
    first_alert, first_true = _first(days, alerts), _first(days, truth > 0)
    lead = None if first_alert is None or first_true is None else first_true - first_alert
    return AlertOutcome(first_alert, first_true, lead, int(alerts[:clean].sum()), clean)


# -- summaries -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequenceSummary:
    """Growth, agreement and the alert rule over one sequence. Fractions of the surface; days
    since the sequence's first image; growth in fraction of the surface per day.

    first_flagged_days: the first image the detector flags (score > threshold).
    flag_lead_days: first_true_days - first_flagged_days (> 0: flagged before pitting shows).
    growth_*_per_day: least-squares slope of the area fraction from the first image with true
    pitting on (`growth_from_days`), over the whole sequence when it never shows pitting.
    spearman: rank correlation of predicted and true area over the sequence (None if either is
    constant); mae: mean absolute error of the area fractions.
    """

    sequence: str
    names: tuple[str, ...]
    model: str
    overlap: int
    images: int
    start: str
    end: str
    first_flagged_days: float | None
    first_true_days: float | None
    flag_lead_days: float | None
    growth_from_days: float
    growth_predicted_per_day: float | None
    growth_true_per_day: float | None
    spearman: float | None
    mae: float
    max_predicted_fraction: float
    max_true_fraction: float
    alert: AlertOutcome


def summarise(curve: WearCurve, rule: AlertRule) -> SequenceSummary:
    """The growth summary and alert outcome of one curve."""
    days, predicted, truth = curve.days, curve.predicted, curve.truth
    flagged = np.array([p.is_defective for p in curve.points])
    first_flag, first_true = _first(days, flagged), _first(days, truth > 0)
    start = int(np.flatnonzero(truth > 0)[0]) if first_true is not None else 0
    return SequenceSummary(
        sequence=curve.sequence,
        names=curve.names,
        model=curve.model,
        overlap=curve.overlap,
        images=len(curve.points),
        start=curve.points[0].time.isoformat(),
        end=curve.points[-1].time.isoformat(),
        first_flagged_days=first_flag,
        first_true_days=first_true,
        flag_lead_days=None if first_flag is None or first_true is None else first_true - first_flag,
        growth_from_days=float(days[start]),
        growth_predicted_per_day=slope_per_day(days[start:], predicted[start:]),
        growth_true_per_day=slope_per_day(days[start:], truth[start:]),
        spearman=spearman(predicted, truth),
        mae=float(mean_absolute_error(truth, predicted)),
        max_predicted_fraction=float(predicted.max()),
        max_true_fraction=float(truth.max()),
        alert=evaluate_alerts(days, truth, rule.fires(days, predicted)),
    )


def _stats(values: Iterable[float | None]) -> dict:
    kept = [v for v in values if v is not None]
    return {"n": len(kept), "mean": float(np.mean(kept)) if kept else None,
            "median": float(np.median(kept)) if kept else None}


def overall(curves: Sequence[WearCurve], summaries: Sequence[SequenceSummary]) -> dict:
    """The figures across all sequences.

    spearman: mean and median of the per-sequence correlations (where defined) and the pooled
    correlation over every image; mae: over every image (each image weighs the same);
    flag_lead_days / alert lead_days: over the sequences with pitting where they are defined;
    alert: sequences with pitting the rule alerted on at all, false alerts over clean images,
    and the sequences without pitting it alerted on.
    """
    predicted = np.concatenate([c.predicted for c in curves]) if curves else np.zeros(0)
    truth = np.concatenate([c.truth for c in curves]) if curves else np.zeros(0)
    pitted = [s for s in summaries if s.first_true_days is not None]
    clean = [s for s in summaries if s.first_true_days is None]
    leads = [s.alert.lead_days for s in pitted]
    false_alerts = sum(s.alert.false_alerts for s in summaries)
    clean_images = sum(s.alert.clean_images for s in summaries)
    return {
        "sequences": len(summaries),
        "with_pitting": len(pitted),
        "without_pitting": len(clean),
        "images": int(truth.size),
        "trained_on_measured_images": sum(s.overlap for s in summaries),
        "spearman": {**_stats(s.spearman for s in summaries), "pooled": spearman(predicted, truth)},
        "mae": float(mean_absolute_error(truth, predicted)) if truth.size else None,
        "flag_lead_days": _stats(s.flag_lead_days for s in pitted),
        "alert": {
            "lead_days": _stats(leads),
            "alerted": sum(s.alert.first_alert_days is not None for s in pitted),
            "early": sum(lead is not None and lead > 0 for lead in leads),
            "late": sum(lead is not None and lead < 0 for lead in leads),
            "missed": sum(s.alert.first_alert_days is None for s in pitted),
            "false_alerts": false_alerts,
            "clean_images": clean_images,
            "false_alert_rate": false_alerts / clean_images if clean_images else None,
            "clean_sequences_alerted": sum(s.alert.first_alert_days is not None for s in clean),
        },
    }


# -- outputs ---------------------------------------------------------------------------------
def plot_curve(curve: WearCurve, rule: AlertRule) -> Figure:
    """Two panels over days: predicted and true area (% of the surface) with the rule's area
    limit, the first true pitting and the first alert; the image score with the threshold."""
    days, predicted, truth = curve.days, 100 * curve.predicted, 100 * curve.truth
    scores = np.array([p.score for p in curve.points])
    flagged = np.array([p.is_defective for p in curve.points])
    alerts = rule.fires(curve.days, curve.predicted)
    fig = Figure(figsize=(11, 5.2), layout="constrained")
    ax_area, ax_score = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    ax_area.plot(days, truth, "-o", c="#2ca02c", ms=3, lw=1.5, label="true (polygons)")
    ax_area.plot(days, predicted, "-o", c="#d62728", ms=3, lw=1.5, label="predicted (map > pixel threshold)")
    if rule.area_fraction_above is not None:
        ax_area.axhline(100 * rule.area_fraction_above, c="#d62728", ls="--", lw=1, label="alert area")
    first_true, first_alert = _first(days, truth > 0), _first(days, alerts)
    if first_true is not None:
        ax_area.axvline(first_true, c="#2ca02c", ls=":", lw=1.5, label=f"first true pitting (day {first_true:.1f})")
    if first_alert is not None:
        ax_area.axvline(first_alert, c="black", ls=":", lw=1.5, label=f"first alert (day {first_alert:.1f})")
    ax_area.set(ylabel="area (% of the surface)",
                title=f"{curve.sequence}: {len(curve.points)} images, measured by {Path(curve.model).parent.name}"
                + (f" (trained on {curve.overlap} of them)" if curve.overlap else ""))
    ax_area.set_ylim(bottom=0)
    ax_area.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax_score.plot(days, scores, c="#1f77b4", lw=1)
    ax_score.plot(days[flagged], scores[flagged], "o", c="#d62728", ms=3, label="flagged")
    ax_score.plot(days[~flagged], scores[~flagged], "o", c="#1f77b4", ms=3, label="passed")
    threshold = curve.points[0].threshold
    ax_score.axhline(threshold, c="black", ls="--", lw=1, label=f"threshold {threshold:.4g}")
    ax_score.set(xlabel="days since the first image", ylabel="image score")
    ax_score.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    for ax in (ax_area, ax_score):
        ax.grid(alpha=0.3)
    return fig


def _number(value):
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def write_curve_csv(curve: WearCurve, rule: AlertRule, path: Path) -> Path:
    """One row per image, CURVE_FIELDS, in capture order; growth_per_day is the rule's
    trailing growth of the predicted fraction (empty where undefined)."""
    growth = trailing_growth(curve.days, curve.predicted, rule.window_days)
    alerts = rule.fires(curve.days, curve.predicted)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CURVE_FIELDS)
        for p, g, alert in zip(curve.points, growth, alerts):
            writer.writerow([Path(p.path).name, p.time.isoformat(), p.days, p.width, p.height, p.predicted_px,
                             p.predicted_fraction, p.true_px, p.true_fraction, p.score, p.threshold,
                             int(p.is_defective), _number(float(g)), int(alert)])
    return path


def write_wear(
    out_dir: str | Path, curves: Sequence[WearCurve], rule: AlertRule, split: dict, root: Path,
    unmeasured: Sequence[dict] = (),
) -> Path:
    """Write the outputs of a wear run under out_dir; returns out_dir/wear.json.

    sequences/<name>.csv and .png per sequence (`write_curve_csv`, `plot_curve`), summary.csv
    (SUMMARY_FIELDS, one row per sequence) and wear.json: {"version", "root", "area_unit", "rule",
    "split", "overall", "sequences": [SequenceSummary as a dict], "curves": {name: {"days",
    "predicted_fraction", "true_fraction", "score", "alert"}}, "unmeasured"}.
    """
    out = Path(out_dir)
    (out / "sequences").mkdir(parents=True, exist_ok=True)
    summaries = [summarise(c, rule) for c in curves]
    for curve in curves:
        write_curve_csv(curve, rule, out / "sequences" / f"{curve.sequence}.csv")
        plot_curve(curve, rule).savefig(out / "sequences" / f"{curve.sequence}.png", dpi=90)
    with (out / "summary.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_FIELDS)
        for s in summaries:
            row = dataclasses.asdict(s)
            alert = row.pop("alert")
            row.update(first_alert_days=alert["first_alert_days"], alert_lead_days=alert["lead_days"],
                       false_alerts=alert["false_alerts"], clean_images=alert["clean_images"])
            writer.writerow([_number(row[f]) for f in SUMMARY_FIELDS])
    record = {
        "version": __version__,
        "root": str(root),
        "area_unit": "fraction of the image (width x height); *_px columns in the image's native pixels",
        "rule": {**dataclasses.asdict(rule), "text": rule.describe()},
        "split": split,
        "overall": overall(curves, summaries),
        "sequences": [dataclasses.asdict(s) for s in summaries],
        "curves": {c.sequence: {"days": c.days.tolist(), "predicted_fraction": c.predicted.tolist(),
                                "true_fraction": c.truth.tolist(), "score": [p.score for p in c.points],
                                "alert": rule.fires(c.days, c.predicted).tolist()} for c in curves},
        "unmeasured": list(unmeasured),
    }
    path = out / "wear.json"
    path.write_text(json.dumps(json_safe(record), indent=1, allow_nan=False))
    return path


# -- the whole run ---------------------------------------------------------------------------
def run_wear(
    models: Sequence[str | Path],
    out_dir: str | Path,
    root: str | Path | None = None,
    rule: AlertRule = AlertRule(),
    allow_overlap: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """Measure BSData's wear sequences with the given models and write the outputs (`write_wear`).

    root: the BSData folder; None takes the first model's data.root, then `bsdata_root`'s places.

    Every sequence is measured by a model that never trained on its images (`assign_models`;
    give one model per fold of a `sequence_folds` split to cover them all); a sequence no model
    qualifies for is left out and listed under "unmeasured", unless allow_overlap. Models are
    loaded one at a time. Returns the content of wear.json. Raises ValueError when no sequence
    can be measured.
    """
    from pitscope.inference import Detector

    if not models:
        raise ValueError("give at least one model")
    configs = [Detector.load(model).cfg for model in models]
    root = bsdata_root(root if root is not None else configs[0].data.root)
    sequences = read_sequences(root)
    trained = [training_images(cfg, model, root) for cfg, model in zip(configs, models)]
    assigned = assign_models(sequences, trained, allow_overlap)
    unmeasured = [{"sequence": s.name, "reason": "every model trained on some of its images"}
                  for s in sequences if s.name not in assigned]
    for item in unmeasured:
        echo(f"not measured: {item['sequence']}: {item['reason']} (give a model of its fold, or allow overlap)")
    if not assigned:
        raise ValueError(f"no sequence of {root} can be measured honestly: every model trained on images of every "
                         "sequence (train one model per fold of a split over sequences, or allow overlap)")
    split = {"models": [], "allow_overlap": allow_overlap}
    curves = []
    bar = tqdm(total=len(assigned), desc="sequences", disable=not progress)
    for index, model in enumerate(models):
        mine = [s for s in sequences if assigned.get(s.name, (None,))[0] == index]
        split["models"].append({"model": str(model), "training_images": len(trained[index]),
                                "sequences": [s.name for s in mine]})
        if not mine:
            continue
        detector = Detector.load(model)
        for sequence in mine:
            curves.append(measure_sequence(detector, sequence, str(model), assigned[sequence.name][1]))
            bar.update(1)
        del detector  # one model in memory at a time
    bar.close()
    curves.sort(key=lambda c: c.sequence)
    return json.loads(write_wear(out_dir, curves, rule, split, root, unmeasured).read_text())


def curves_from_history(store, parts: Sequence[str], root: str | Path | None = None) -> list[WearCurve]:
    """The wear curve of each part from an inspection history (`pitscope.history.store.HistoryStore`),
    in capture order: predicted areas, scores and decisions as recorded. The true area of an
    inspection comes from BSData's label of the photo of the same name under `root` (0 where
    there is none, or without root). Raises ValueError for a part with no inspection."""
    labels = Path(root) / "label" if root is not None else None
    curves = []
    for part in parts:
        rows = store.trend(part)
        if not rows:
            raise ValueError(f"no inspection of part {part!r} is recorded in {store.display_url}")
        first = rows[0]["time"]
        points = []
        for row in rows:
            width, height, threshold = row["width"], row["height"], row["image_threshold"]
            true_px = 0
            if labels is not None and row["name"]:
                label = labels / f"{Path(row['name']).stem}.json"
                if label.is_file():
                    true_px = int(rasterise_polygons(read_polygons(label), height, width).sum())
            days = (row["time"] - first).total_seconds() / SECONDS_PER_DAY
            points.append(AreaPoint(row["name"] or f"inspection {row['id']}", row["time"], days, width, height,
                                    int(row["defect_px"]), true_px, float(row["score"]), float(threshold),
                                    bool(row["is_defective"])))
        models = sorted({row["model_id"][:12] for row in rows})
        curves.append(WearCurve(part, (part,), tuple(points), ", ".join(models), 0,
                                float(rows[-1]["pixel_threshold"])))
    return curves


def run_wear_history(db: str, parts: Sequence[str] | None, out_dir: str | Path, root: str | Path | None = None,
                     rule: AlertRule = AlertRule()) -> dict:
    """`run_wear` on the series an inspection history recorded: one curve per part (every part
    with inspections when `parts` is None), written by `write_wear`. Returns wear.json's content."""
    from pitscope.history.store import HistoryStore

    store = HistoryStore(db, upgrade=False)
    try:
        parts = list(parts) if parts else [row["part"] for row in store.parts()]
        if not parts:
            raise ValueError(f"{store.display_url} holds no inspection with a part id")
        curves = curves_from_history(store, parts, root)
        split = {"database": store.display_url, "parts": parts}
        return json.loads(write_wear(out_dir, curves, rule, split, Path(root) if root else Path("."), []).read_text())
    finally:
        store.close()


def format_summary(record: dict) -> str:
    """The per-sequence table and the overall figures of a wear.json record, as plain text."""

    def num(value, scale=1.0, digits=2):
        return "n/a" if value is None else f"{scale * value:.{digits}f}"

    lines = [f"{'sequence':<34} {'images':>6} {'flag day':>8} {'pit day':>7} {'alert day':>9} {'lead':>6} "
             f"{'false':>5} {'spearman':>8} {'MAE %':>6} {'growth %/d pred/true':>20}"]
    for s in record["sequences"]:
        a = s["alert"]
        growth = f"{num(s['growth_predicted_per_day'], 100, 3)}/{num(s['growth_true_per_day'], 100, 3)}"
        lines.append(f"{s['sequence']:<34} {s['images']:>6} {num(s['first_flagged_days'], digits=1):>8} "
                     f"{num(s['first_true_days'], digits=1):>7} {num(a['first_alert_days'], digits=1):>9} "
                     f"{num(a['lead_days'], digits=1):>6} {a['false_alerts']:>5} {num(s['spearman']):>8} "
                     f"{num(s['mae'], 100, 3):>6} {growth:>20}")
    o, a = record["overall"], record["overall"]["alert"]
    lines += [
        f"{o['sequences']} sequences ({o['with_pitting']} with pitting), {o['images']} images; "
        f"Spearman mean {num(o['spearman']['mean'])} (median {num(o['spearman']['median'])}, "
        f"pooled {num(o['spearman']['pooled'])}); MAE {num(o['mae'], 100, 3)} % of the surface",
        f"alert ({record['rule']['text']}): {a['alerted']}/{o['with_pitting']} sequences with pitting alerted, "
        f"median lead {num(a['lead_days']['median'], digits=1)} days ({a['early']} early, {a['late']} late, "
        f"{a['missed']} missed); {a['false_alerts']} false alerts on {a['clean_images']} clean images; "
        f"{a['clean_sequences_alerted']}/{o['without_pitting']} sequences without pitting alerted",
    ]
    return "\n".join(lines)
