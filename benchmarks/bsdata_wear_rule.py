"""The wear alert rule chosen on the validation positions' sequences, then applied to the test positions'.

    python benchmarks/bsdata_wear_rule.py benchmarks/results/bsdata_wear_crops.json

Reads the per-image curves a `bsdata_wear.py` run stored (predicted and true area fractions over
days; every image measured by a model that never trained on its sequence) and replays
`pitscope.growth.AlertRule` over a grid of area and growth limits and of how many images in a row
a condition must hold (`--alert-confirm`; 1 only with --confirms 1), on the area the rule watches:
with --smooths, the median of each image's predicted area and the K - 1 before it
(`--alert-smooth`), K chosen first as the one whose watched area has the highest mean Spearman
with the true area over the validation sequences (the smaller K on a tie). Each sequence is one BSData
position; the versioned position split names the validation and test positions. On the validation
sequences, a rule is acceptable when it alerts on every sequence with pitting no later than
--max-late-days after its first true pitting; the rule chosen is the acceptable one with the
fewest false alerts (alerts on clean images, before the first true pitting), then the earliest
median alert. When no rule is acceptable, the rule chosen alerts in time on the most validation
sequences with pitting, then has the fewest false alerts, then the earliest median alert. It is
then applied once to the test sequences. Results:
benchmarks/results/<name>.json and .md with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from bsdata_cpu import provenance, write_result  # this folder is on sys.path when run as a script

from pitscope.benchmark import commit, machine
from pitscope.data.bsdata import read_positions
from pitscope.growth import AlertRule, trailing_median
from pitscope.wear.summary import evaluate_alerts, spearman

AREAS = (None, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # fractions of the surface
GROWTHS = (None, 0.001, 0.005, 0.01, 0.02, 0.05)  # fractions of the surface a day
CONFIRMS = (1, 2, 3)  # images in a row a condition holds on before it alerts


def replay(curves: dict, names: list[str], rule: AlertRule) -> dict:
    """The rule over the named sequences' curves: sequences with pitting, those alerted and how
    late at most, false alerts among clean images, the median lead (days before the first true
    pitting), and the mean Spearman of the watched (the rule's) and of the predicted area with
    the true area."""
    outcomes, rhos, raw = [], [], []
    for name in names:
        c = curves[name]
        days, predicted, truth = (np.asarray(c[k], np.float64) for k in ("days", "predicted_fraction", "true_fraction"))
        outcomes.append(evaluate_alerts(days, truth, rule.fires(days, predicted)))
        rho = spearman(rule.watched(predicted), truth)
        if rho is not None:
            rhos.append(rho)
        rho = spearman(predicted, truth)
        if rho is not None:
            raw.append(rho)
    pitting = [o for o in outcomes if o.first_true_days is not None]
    leads = [o.lead_days for o in pitting if o.lead_days is not None]
    false_alerts, clean = sum(o.false_alerts for o in outcomes), sum(o.clean_images for o in outcomes)
    return {
        "sequences": len(outcomes),
        "with_pitting": len(pitting),
        "alerted": len(leads),
        "latest_days": float(-min(leads)) + 0.0 if leads else None,  # + 0.0: no negative zero
        "leads": [float(v) for v in leads],
        "median_lead_days": float(np.median(leads)) if leads else None,
        "false_alerts": false_alerts,
        "clean_images": clean,
        "false_alert_rate": false_alerts / clean if clean else None,
        "spearman_mean": float(np.mean(rhos)) if rhos else None,
        "spearman_predicted_mean": float(np.mean(raw)) if raw else None,
    }


def choose_smoothing(curves: dict, names: list[str], smooths: list[int]) -> tuple[int, list[dict]]:
    """The K of `smooths` whose watched area (median of the last K images) has the highest mean
    Spearman with the true area over the named sequences, the smaller K on a tie; with each K's
    mean. Every K is averaged over the same sequences: those where each K's Spearman is defined
    (a median that flattens a curve to a constant drops no sequence from its own mean)."""
    ks = sorted(set(smooths))
    per = {}  # name -> [Spearman for each K]
    for name in names:
        c = curves[name]
        predicted, truth = (np.asarray(c[f], np.float64) for f in ("predicted_fraction", "true_fraction"))
        per[name] = [spearman(trailing_median(predicted, k), truth) for k in ks]
    kept = [rhos for rhos in per.values() if all(r is not None for r in rhos)]
    rows = [
        {"smooth": k, "spearman_mean": float(np.mean([r[j] for r in kept])) if kept else None, "n": len(kept)}
        for j, k in enumerate(ks)
    ]
    scored = [r for r in rows if r["spearman_mean"] is not None]
    if not scored:
        return min(smooths), rows
    return max(scored, key=lambda r: (r["spearman_mean"], -r["smooth"]))["smooth"], rows


def in_time(metrics: dict, max_late_days: float) -> int:
    """How many sequences with pitting the rule alerted no later than max_late_days after it."""
    return sum(lead >= -max_late_days for lead in metrics["leads"])


def choose(rows: list[dict], max_late_days: float) -> dict | None:
    """The acceptable row (every pitting sequence alerted, none later than max_late_days) with the
    fewest false alerts, then the largest median lead. With no acceptable row: the row alerting in
    time on the most pitting sequences (at least one), then the same order. None when no row
    alerts in time on any."""
    best = max((in_time(r["validation"], max_late_days) for r in rows), default=0)
    if best == 0:
        return None
    ok = [r for r in rows if in_time(r["validation"], max_late_days) == best]
    return min(ok, key=lambda r: (r["validation"]["false_alerts"], -(r["validation"]["median_lead_days"] or 0.0)))


def describe(area: float | None, growth: float | None, confirm: int = 1, smooth: int = 1) -> str:
    parts = [f"area > {100 * area:g}%" if area is not None else None]
    parts.append(f"growth > {100 * growth:g} points/day" if growth is not None else None)
    text = " or ".join(p for p in parts if p)
    if smooth > 1:
        text = f"{text} of the median of the last {smooth} images"
    return text if confirm == 1 else f"{text}, {confirm} images in a row"


def markdown(record: dict) -> str:
    def num(v, scale=1.0, digits=2):
        return "–" if v is None else f"{scale * v:.{digits}f}"

    def cells(m: dict) -> str:
        return (
            f"{m['alerted']} / {m['with_pitting']} | {num(m['latest_days'], digits=1)} | "
            f"{num(m['median_lead_days'], digits=1)} | {m['false_alerts']} / {m['clean_images']} "
            f"({num(m['false_alert_rate'], 100, 1)} %)"
        )

    pick = record["chosen"]
    most = max(in_time(r["validation"], record["max_late_days"]) for r in record["rows"])
    pitting = record["rows"][0]["validation"]["with_pitting"]
    lines = [
        "# The wear alert rule, chosen on the validation positions' sequences",
        "",
        provenance(record),
        "",
        f"Command: `{record['command']}`",
        "",
    ]
    if len(record["smoothing"]) > 1:
        lines += [
            "The area watched, chosen first: the median of each image's predicted area and the K - 1 before it, "
            "with the highest mean Spearman with the true area over the validation sequences.",
            "",
            "| K | validation mean Spearman (sequences) |",
            "|---|---|",
            *(f"| {r['smooth']} | {num(r['spearman_mean'])} ({r['n']}) |" for r in record["smoothing"]),
            "",
            f"Chosen: K = {record['smooth']}.",
            "",
        ]
    lines += [
        f"Curves: `{record['source']}` (run at commit `{record['source_commit']}`). Validation sequences: "
        f"{len(record['validation'])}; test sequences: {len(record['test'])}. Acceptable: every validation "
        f"sequence with pitting alerted, none more than {record['max_late_days']:g} days after its first true "
        "pitting; chosen: the acceptable rule with the fewest validation false alerts, then the earliest alerts "
        "(with no acceptable rule: the rule alerting in time on the most validation sequences with pitting, then "
        "the same order).",
        "",
        f"Validation (every rule of the grid that alerts in time on {most} of its {pitting} sequences with pitting):",
        "",
        "| rule | alerted | latest (days late) | median lead (days) | false alerts / clean images |",
        "|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        if most and in_time(r["validation"], record["max_late_days"]) == most:
            lines.append(f"| {r['rule']} | {cells(r['validation'])} |")
    lines += ["", "Chosen: " + (pick["rule"] if pick else "no rule of the grid") + "."]
    if pick:
        default = record["default"]
        lines += [
            "",
            "On the test positions' sequences, scored once:",
            "",
            "| rule | alerted | latest (days late) | median lead (days) | false alerts / clean images |",
            "|---|---|---|---|---|",
            f"| {pick['rule']} (chosen) | {cells(pick['test'])} |",
            f"| {default['rule']} (`pitscope wear`'s default) | {cells(default['test'])} |",
            "",
            f"Mean Spearman with the true area over the test sequences: {num(pick['test']['spearman_mean'])} "
            f"for the area the rule watches, {num(pick['test']['spearman_predicted_mean'])} for the predicted "
            "area (the limits do not change either).",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wear_json", type=Path, help="a bsdata_wear.py result (its curves)")
    parser.add_argument("--max-late-days", type=float, default=2.0, help="latest alert allowed (default 2 days)")
    parser.add_argument("--name", default="bsdata_wear_rule")
    parser.add_argument(
        "--smooths",
        type=int,
        nargs="+",
        default=[1],
        help="images the watched area is the median of, compared before the rule (default: 1, no median)",
    )
    parser.add_argument(
        "--confirms",
        type=int,
        nargs="+",
        default=list(CONFIRMS),
        help="images in a row a condition must hold on, compared (default: 1 2 3)",
    )
    args = parser.parse_args()
    try:
        source = json.loads(args.wear_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{args.wear_json}: not a readable JSON file: {exc}") from exc
    if not isinstance(source, dict) or "curves" not in source:
        raise SystemExit(f"{args.wear_json}: holds no per-image curves; pass a bsdata_wear.py result")
    curves = source["curves"]
    positions = read_positions()
    validation = [n for n in positions["validation"] if n in curves]
    test = [n for n in positions["test"] if n in curves]
    rows = []
    if any(k < 1 for k in args.confirms):
        parser.error("--confirms: each a whole number >= 1")
    if any(k < 1 for k in args.smooths):
        parser.error("--smooths: each a whole number >= 1")
    smooth, smoothing = choose_smoothing(curves, validation, args.smooths)
    for area, growth, confirm in itertools.product(AREAS, GROWTHS, args.confirms):
        if area is None and growth is None:
            continue
        rule = AlertRule(area, growth, confirm_images=confirm, smooth_images=smooth)
        rows.append(
            {
                "rule": describe(area, growth, confirm, smooth),
                "area": area,
                "growth": growth,
                "confirm": confirm,
                "smooth": smooth,
                "validation": replay(curves, validation, rule),
            }
        )
    pick = choose(rows, args.max_late_days)
    default = AlertRule()
    record = {
        "command": "python benchmarks/bsdata_wear_rule.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "source": str(args.wear_json),
        "source_commit": source.get("commit"),
        "validation": validation,
        "test": test,
        "max_late_days": args.max_late_days,
        "smoothing": smoothing,
        "smooth": smooth,
        "rows": rows,
        "chosen": None,
        "default": {
            "rule": describe(default.area_fraction_above, default.growth_per_day_above),
            "test": replay(curves, test, default),
        },
    }
    if pick is not None:
        rule = AlertRule(pick["area"], pick["growth"], confirm_images=pick["confirm"], smooth_images=smooth)
        record["chosen"] = {**pick, "test": replay(curves, test, rule)}
    write_result(args.name, record, markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
