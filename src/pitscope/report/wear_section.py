"""The report's wear section: the wear curves `pitscope wear` wrote, for a BSData model."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from pitscope.report.sections import _cell, _e


def read_wear(wear_dir: str | Path, data_format: str) -> dict:
    """The wear.json `pitscope wear` wrote in wear_dir, for a BSData model's report.

    Raises ValueError for another dataset (wear sequences are BSData's) and FileNotFoundError
    without the file."""
    if data_format != "bsdata":
        raise ValueError(f"wear curves are measured on BSData's sequences; this model's data is {data_format}")
    path = Path(wear_dir) / "wear.json"
    if not path.is_file():
        raise FileNotFoundError(f"no wear results at {path} (write them with pitscope wear MODEL... --out {wear_dir})")
    return json.loads(path.read_text())


def _days(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _wear_section(wear: dict, wear_dir: Path) -> str:
    """Wear curves (id="wear"): the split, the alert rule, the overall figures, one row per
    sequence and each sequence's plot (the PNGs of wear_dir/sequences/, inlined)."""
    o, a = wear["overall"], wear["overall"]["alert"]
    models = "; ".join(
        f"{_e(Path(m['model']).parent.name or m['model'])} ({m['training_images']} training images) "
        f"measured {len(m['sequences'])}"
        for m in wear["split"]["models"]
    )
    overlap = (
        f' <span class="bad">{o["trained_on_measured_images"]} measured images were training images.</span>'
        if o["trained_on_measured_images"]
        else " No model measured an image it trained on."
    )
    smooth = wear["rule"].get("smooth_images", 1)
    overall_rows = [
        ("sequences (with pitting)", f"{o['sequences']} ({o['with_pitting']})"),
        ("images", str(o["images"])),
        (
            "Spearman, mean over sequences (median; pooled over images)",
            "{} ({}; {})".format(
                *(
                    "n/a" if o["spearman"][k] is None else f"{o['spearman'][k]:.3f}"
                    for k in ("mean", "median", "pooled")
                )
            ),
        ),
        *(
            [
                (
                    f"Spearman of the area the rule watches (median of the last {smooth} images), mean (median)",
                    "{} ({})".format(
                        *(
                            "n/a" if o["spearman_watched"][k] is None else f"{o['spearman_watched'][k]:.3f}"
                            for k in ("mean", "median")
                        )
                    ),
                )
            ]
            if smooth > 1
            else []
        ),
        ("mean absolute error (% of the surface)", "n/a" if o["mae"] is None else f"{100 * o['mae']:.3f}"),
        (
            "alerted sequences with pitting",
            f"{a['alerted']} of {o['with_pitting']} ({a['early']} early, {a['late']} late)",
        ),
        ("median alert lead (days)", _days(a["lead_days"]["median"])),
        ("false alerts / clean images", f"{a['false_alerts']} / {a['clean_images']}"),
        ("sequences without pitting alerted", f"{a['clean_sequences_alerted']} of {o['without_pitting']}"),
    ]
    head = (
        "<tr><th>sequence</th><th>images</th><th>first flagged (day)</th><th>first true pitting (day)</th>"
        "<th>growth, predicted / true (%-points a day)</th><th>Spearman</th><th>MAE (%)</th>"
        "<th>first alert (day)</th><th>lead (days)</th><th>false alerts</th></tr>"
    )
    rows, plots = [], []
    for s in wear["sequences"]:
        growth = " / ".join(
            "–" if g is None else f"{100 * g:.3f}" for g in (s["growth_predicted_per_day"], s["growth_true_per_day"])
        )
        rows.append(
            f'<tr data-sequence="{_e(s["sequence"])}"><td>{_e(s["sequence"])}</td><td>{s["images"]}</td>'
            f"<td>{_days(s['first_flagged_days'])}</td><td>{_days(s['first_true_days'])}</td><td>{growth}</td>"
            f"{_cell('spearman', s['spearman'], 'num')}<td>{100 * s['mae']:.3f}</td>"
            f"<td>{_days(s['alert']['first_alert_days'])}</td><td>{_days(s['alert']['lead_days'])}</td>"
            f"<td>{s['alert']['false_alerts']} / {s['alert']['clean_images']}</td></tr>"
        )
        png = wear_dir / "sequences" / f"{s['sequence']}.png"
        if png.is_file():
            uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
            plots.append(f'<img class="plot" src="{uri}" alt="wear curve of {_e(s["sequence"])}">')
    table = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in overall_rows)
    return (
        '<section id="wear"><h2>Wear curves over BSData\'s sequences</h2>'
        f'<p class="sub">Split: each sequence measured by a model that did not train on its images: {models}.'
        f"{overlap}</p>"
        f'<p class="sub">Alert rule: {_e(wear["rule"]["text"])}.</p>'
        f'<table class="wear-overall"><tbody>{table}</tbody></table>'
        f'<h3>Per sequence</h3><table class="wear"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
        '<p class="note">Areas are fractions of the photograph (the predicted region: anomaly map above the pixel '
        "threshold; the true one: the pitting polygons). Days count from each sequence's first image. Lead: days "
        "from the first alert to the first true pitting (negative: the alert came after it). Clean images: those "
        "before the first true pitting; an alert there is false. From <code>"
        f"{_e(wear_dir / 'wear.json')}</code>.</p>" + "".join(plots) + "</section>"
    )
