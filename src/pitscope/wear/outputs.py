"""The files of a wear run: a CSV and a plot per sequence, summary.csv and wear.json."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pitscope import __version__
from pitscope.files import json_safe
from pitscope.growth import AlertRule, trailing_growth
from pitscope.wear.curves import WearCurve
from pitscope.wear.summary import first_day, overall, summarise

CURVE_FIELDS = (
    "file",
    "time",
    "days",
    "width",
    "height",
    "predicted_px",
    "predicted_fraction",
    "watched_fraction",
    "true_px",
    "true_fraction",
    "score",
    "threshold",
    "is_defective",
    "growth_per_day",
    "alert",
)
SUMMARY_FIELDS = (
    "sequence",
    "model",
    "overlap",
    "references",
    "images",
    "first_flagged_days",
    "first_true_days",
    "flag_lead_days",
    "growth_predicted_per_day",
    "growth_true_per_day",
    "spearman",
    "spearman_watched",
    "mae",
    "first_alert_days",
    "alert_lead_days",
    "false_alerts",
    "clean_images",
)


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
    if rule.smooth_images > 1:
        watched = 100 * rule.watched(curve.predicted)
        ax_area.plot(days, watched, "-", c="#7f0000", lw=2, label=f"median of the last {rule.smooth_images} images")
    if rule.area_fraction_above is not None:
        ax_area.axhline(100 * rule.area_fraction_above, c="#d62728", ls="--", lw=1, label="alert area")
    first_true, first_alert = first_day(days, truth > 0), first_day(days, alerts)
    if first_true is not None:
        ax_area.axvline(first_true, c="#2ca02c", ls=":", lw=1.5, label=f"first true pitting (day {first_true:.1f})")
    if first_alert is not None:
        ax_area.axvline(first_alert, c="black", ls=":", lw=1.5, label=f"first alert (day {first_alert:.1f})")
    ax_area.set(
        ylabel="area (% of the surface)",
        title=f"{curve.sequence}: {len(curve.points)} images, measured by {Path(curve.model).parent.name}"
        + (f" (trained on {curve.overlap} of them)" if curve.overlap else ""),
    )
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
    """One row per image, CURVE_FIELDS, in capture order; watched_fraction is the area the rule
    watches (`AlertRule.watched`), growth_per_day the rule's trailing growth of it (empty where
    undefined)."""
    watched = rule.watched(curve.predicted)
    growth = trailing_growth(curve.days, watched, rule.window_days)
    alerts = rule.fires(curve.days, curve.predicted)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CURVE_FIELDS)
        for p, w, g, alert in zip(curve.points, watched, growth, alerts):
            writer.writerow(
                [
                    Path(p.path).name,
                    p.time.isoformat(),
                    p.days,
                    p.width,
                    p.height,
                    p.predicted_px,
                    p.predicted_fraction,
                    float(w),
                    p.true_px,
                    p.true_fraction,
                    p.score,
                    p.threshold,
                    int(p.is_defective),
                    _number(float(g)),
                    int(alert),
                ]
            )
    return path


def write_wear(
    out_dir: str | Path,
    curves: Sequence[WearCurve],
    rule: AlertRule,
    split: dict,
    root: Path,
    unmeasured: Sequence[dict] = (),
) -> Path:
    """Write the outputs of a wear run under out_dir; returns out_dir/wear.json.

    sequences/<name>.csv and .png per sequence (`write_curve_csv`, `plot_curve`), summary.csv
    (SUMMARY_FIELDS, one row per sequence) and wear.json: {"version", "root", "area_unit", "rule",
    "split", "overall", "sequences": [SequenceSummary as a dict], "curves": {name: {"days",
    "predicted_fraction", "watched_fraction", "true_fraction", "score", "alert"}}, "unmeasured"}.
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
            row.update(
                first_alert_days=alert["first_alert_days"],
                alert_lead_days=alert["lead_days"],
                false_alerts=alert["false_alerts"],
                clean_images=alert["clean_images"],
            )
            writer.writerow([_number(row[f]) for f in SUMMARY_FIELDS])
    record = {
        "version": __version__,
        "root": str(root),
        "area_unit": "fraction of the image (width x height); *_px columns in the image's native pixels",
        "rule": {**dataclasses.asdict(rule), "text": rule.describe()},
        "split": split,
        "overall": overall(curves, summaries),
        "sequences": [dataclasses.asdict(s) for s in summaries],
        "curves": {
            c.sequence: {
                "days": c.days.tolist(),
                "predicted_fraction": c.predicted.tolist(),
                "watched_fraction": rule.watched(c.predicted).tolist(),
                "true_fraction": c.truth.tolist(),
                "score": [p.score for p in c.points],
                "alert": rule.fires(c.days, c.predicted).tolist(),
            }
            for c in curves
        },
        "unmeasured": list(unmeasured),
    }
    path = out / "wear.json"
    path.write_text(json.dumps(json_safe(record), indent=1, allow_nan=False))
    return path
