"""How a wear curve agrees with the truth (rank correlation, error, growth, first flags) and
what the alert rule makes of it: per sequence, over all sequences, and as plain text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import mean_absolute_error

from pitscope.growth import AlertRule, slope_per_day
from pitscope.wear.curves import WearCurve


# -- growth and agreement --------------------------------------------------------------------
def spearman(a: ArrayLike, b: ArrayLike) -> float | None:
    """Spearman rank correlation of a and b (scipy), or None when either is constant or has
    fewer than 2 values (the correlation is undefined)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # (N,), (N,)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(stats.spearmanr(x, y).statistic)


def first_day(days: np.ndarray, hits: np.ndarray) -> float | None:
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


def evaluate_alerts(days: ArrayLike, truth: ArrayLike, alerts: ArrayLike) -> AlertOutcome:
    """Compare alerts (N,) bool with the true area fractions (N,) over days (N,)."""
    day = np.asarray(days, np.float64)  # (N,)
    area = np.asarray(truth, np.float64)  # (N,)
    alerted = np.asarray(alerts, np.bool_)  # (N,)
    pitted = np.flatnonzero(area > 0)
    clean = int(pitted[0]) if pitted.size else int(area.size)
    first_alert, first_true = first_day(day, alerted), first_day(day, area > 0)
    lead = None if first_alert is None or first_true is None else first_true - first_alert
    return AlertOutcome(first_alert, first_true, lead, int(alerted[:clean].sum()), clean)


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
    constant); spearman_watched: the same for the area the alert rule watches (the predicted
    area, or its trailing median with `smooth_images` > 1); mae: mean absolute error of the
    predicted area fractions.
    """

    sequence: str
    names: tuple[str, ...]
    model: str
    overlap: int
    references: int
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
    spearman_watched: float | None
    mae: float
    max_predicted_fraction: float
    max_true_fraction: float
    alert: AlertOutcome


def summarise(curve: WearCurve, rule: AlertRule) -> SequenceSummary:
    """The growth summary and alert outcome of one curve."""
    days, predicted, truth = curve.days, curve.predicted, curve.truth
    flagged = np.array([p.is_defective for p in curve.points])
    first_flag, first_true = first_day(days, flagged), first_day(days, truth > 0)
    start = int(np.flatnonzero(truth > 0)[0]) if first_true is not None else 0
    return SequenceSummary(
        sequence=curve.sequence,
        names=curve.names,
        model=curve.model,
        overlap=curve.overlap,
        references=curve.references,
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
        spearman_watched=spearman(rule.watched(predicted), truth),
        mae=float(mean_absolute_error(truth, predicted)),
        max_predicted_fraction=float(predicted.max()),
        max_true_fraction=float(truth.max()),
        alert=evaluate_alerts(days, truth, rule.fires(days, predicted)),
    )


def _stats(values: Iterable[float | None]) -> dict:
    kept = [v for v in values if v is not None]
    return {
        "n": len(kept),
        "mean": float(np.mean(kept)) if kept else None,
        "median": float(np.median(kept)) if kept else None,
    }


def overall(curves: Sequence[WearCurve], summaries: Sequence[SequenceSummary]) -> dict:
    """The figures across all sequences.

    spearman: mean and median of the per-sequence correlations (where defined) and the pooled
    correlation over every image; spearman_watched: mean and median of the watched area's; mae: over every image (each image weighs the same);
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
        "reference_images_left_out": sum(s.references for s in summaries),
        "spearman": {**_stats(s.spearman for s in summaries), "pooled": spearman(predicted, truth)},
        "spearman_watched": _stats(s.spearman_watched for s in summaries),
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


def format_summary(record: dict) -> str:
    """The per-sequence table and the overall figures of a wear.json record, as plain text."""

    def num(value, scale=1.0, digits=2):
        return "n/a" if value is None else f"{scale * value:.{digits}f}"

    lines = [
        f"{'sequence':<34} {'images':>6} {'flag day':>8} {'pit day':>7} {'alert day':>9} {'lead':>6} "
        f"{'false':>5} {'spearman':>8} {'MAE %':>6} {'growth %/d pred/true':>20}"
    ]
    for s in record["sequences"]:
        a = s["alert"]
        growth = f"{num(s['growth_predicted_per_day'], 100, 3)}/{num(s['growth_true_per_day'], 100, 3)}"
        lines.append(
            f"{s['sequence']:<34} {s['images']:>6} {num(s['first_flagged_days'], digits=1):>8} "
            f"{num(s['first_true_days'], digits=1):>7} {num(a['first_alert_days'], digits=1):>9} "
            f"{num(a['lead_days'], digits=1):>6} {a['false_alerts']:>5} {num(s['spearman']):>8} "
            f"{num(s['mae'], 100, 3):>6} {growth:>20}"
        )
    o, a = record["overall"], record["overall"]["alert"]
    lines += [
        f"{o['sequences']} sequences ({o['with_pitting']} with pitting), {o['images']} images; "
        f"Spearman mean {num(o['spearman']['mean'])} (median {num(o['spearman']['median'])}, "
        f"pooled {num(o['spearman']['pooled'])}); MAE {num(o['mae'], 100, 3)} % of the surface",
    ]
    if record["rule"].get("smooth_images", 1) > 1:
        lines.append(
            f"the area the rule watches (median of the last {record['rule']['smooth_images']} images): Spearman mean "
            f"{num(o['spearman_watched']['mean'])} (median {num(o['spearman_watched']['median'])})"
        )
    lines += [
        f"alert ({record['rule']['text']}): {a['alerted']}/{o['with_pitting']} sequences with pitting alerted, "
        f"median lead {num(a['lead_days']['median'], digits=1)} days ({a['early']} early, {a['late']} late, "
        f"{a['missed']} missed); {a['false_alerts']} false alerts on {a['clean_images']} clean images; "
        f"{a['clean_sequences_alerted']}/{o['without_pitting']} sequences without pitting alerted",
    ]
    if o.get("reference_images_left_out"):
        lines.append(
            f"{o['reference_images_left_out']} reference or calibration photos (the models' scorers or thresholds "
            "were fitted on them) not measured"
        )
    return "\n".join(lines)
