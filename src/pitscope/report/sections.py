"""The report's HTML: the style sheet, each section of a run's page (metrics, curves, histogram,
gallery, training) and the page around them."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pitscope import __version__
from pitscope.data.types import Sample
from pitscope.evaluation import METRIC_NAMES
from pitscope.inference import Detector
from pitscope.report.analysis import MAX_FPR
from pitscope.report.figures import _plot_curves, _plot_histogram, _plot_training

METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": f"AUPRO (FPR ≤ {MAX_FPR:.0%})",
    "image_ap": "image AP",
    "pixel_ap": "pixel AP",
    "image_f1_max": "image F1-max",
    "pixel_f1_max": "pixel F1-max",
}
REGION_LABELS = {  # the predicted regions at the stored thresholds (evaluation.predicted_regions)
    "pixel_f1": ("pixel F1 of the predicted regions (%)", "pct"),
    "iou_median": ("IoU with the truth per defective image: median (%)", "pct"),
    "iou_q1": ("IoU: lower quartile (%)", "pct"),
    "iou_q3": ("IoU: upper quartile (%)", "pct"),
    "normal_area_median": ("predicted area on defect-free images: median (% of the image)", "pct"),
    "normal_area_p99": ("predicted area on defect-free images: 99th percentile (%)", "pct"),
    "area_within_2x": ("defective images whose predicted area is within 2x the true area (%)", "pct"),
}
SUBSET_LABELS = {
    "positions": "BSData's monitored positions only",
    "other_type": "BSData's other ball-screw type (KGT*) only",
}
GALLERY_GROUPS = {
    "false_positives": "Worst false positives: defect-free images flagged, highest score first",
    "false_negatives": "Worst false negatives: defective images missed, lowest score first",
    "correct": "A sample of correct decisions (seeded), highest score first",
}
PANELS = ("input", "ground truth", "prediction", "heatmap")


def _short_name(path: str) -> str:
    """The last two parts of a path (folder/file: MVTec's defect type, BSData's folder)."""
    return "/".join(PurePosixPath(str(path).replace("\\", "/")).parts[-2:])


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2329;background:#f5f6f8}
main{max-width:1240px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:1.55rem;margin:0 0 4px} h2{font-size:1.2rem;margin:0 0 10px} h3{font-size:1rem;margin:16px 0 8px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:14px 18px;margin:14px 0}
nav{font-size:.9rem;margin:6px 0 0} nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
.sub{color:#5a6570;font-size:.9rem} .note{color:#5a6570;font-size:.85rem;margin:6px 0 0} .warning{color:#b3141b;font-weight:600}
table{border-collapse:collapse;font-size:.92rem} th,td{padding:4px 12px;border-bottom:1px solid #e4e7eb;text-align:right}
th:first-child,td:first-child{text-align:left;white-space:nowrap} thead th{background:#eef1f4}
tr.mean td{font-weight:600;background:#f7f8fa}
.row{display:flex;flex-wrap:wrap;gap:26px;align-items:flex-start}
img.plot{max-width:100%;height:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
figure.tile{margin:0;border:1px solid #dde1e6;border-radius:4px;padding:6px;background:#fafbfc}
figure.tile img{width:100%;height:auto;display:block;image-rendering:auto}
.panels{display:flex;font-size:.75rem;color:#5a6570} .panels span{flex:1;text-align:center}
figcaption{font-size:.82rem;margin-top:4px;overflow-wrap:anywhere}
.bad{color:#b3261e;font-weight:600} .good{color:#1e7b34;font-weight:600}
details{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:14px 0;padding:8px 14px}
details>summary{font-weight:600;cursor:pointer} details section{border:none;padding:6px 0;margin:6px 0}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _cell(key: str, value, kind: str) -> str:
    """A table cell showing `value` ("pct": %, 2 decimals; "num": 4 significant digits; "int"),
    with its exact value in data-value (the JSON's, so the page can be checked against it)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f'<td data-key="{_e(key)}" data-value="null">n/a</td>'
    text = {"pct": lambda v: f"{100 * v:.2f}", "num": lambda v: f"{v:.4g}", "int": lambda v: f"{int(v)}"}[kind](value)
    return f'<td data-key="{_e(key)}" data-value="{value!r}">{text}</td>'


def _metrics_section(record: dict, key: str) -> str:
    metrics, paper = record["metrics"], record["paper"]
    head = "<tr><th>metric</th><th>pitscope (%)</th>" + ("<th>paper (%)</th>" if paper else "") + "</tr>"
    rows = []
    for name in METRIC_NAMES:
        paper_cell = ""
        if paper:
            paper_cell = f"<td>{paper[name]:.2f}</td>" if name in paper else "<td>–</td>"
        rows.append(f"<tr><td>{_e(METRIC_LABELS[name])}</td>{_cell(name, metrics[name], 'pct')}{paper_cell}</tr>")
    for name, (label, kind) in REGION_LABELS.items():
        if metrics.get(name) is not None:
            rows.append(
                f"<tr><td>{_e(label)}</td>{_cell(name, metrics[name], kind)}"
                + ("<td>–</td>" if paper else "")
                + "</tr>"
            )
    for group, subset in (record.get("subsets") or {}).items():
        m = subset["metrics"]
        text = ", ".join(
            f"{METRIC_LABELS[k]} {100 * m[k]:.2f}"
            for k in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")
            if m.get(k) is not None
        )
        label = f"{SUBSET_LABELS.get(group, group)} ({subset['counts']['defective']} defective)"
        rows.append(f'<tr><td>{_e(label)}</td><td colspan="{2 if paper else 1}">{_e(text)}</td></tr>')
    c, at, pix = record["counts"], record["at_threshold"], record["pixel_at_threshold"]
    confusion = record["confusion"]
    interval = record.get("image_auroc_interval") or {}
    decisions = [
        ("image AUROC, 95% interval: from (%)", _cell("image_auroc_low", interval.get("low"), "pct")),
        ("to (%)", _cell("image_auroc_high", interval.get("high"), "pct")),
        ("image threshold", _cell("threshold", record["threshold"], "num")),
        ("true positive rate at it (%)", _cell("true_positive_rate", at["true_positive_rate"], "pct")),
        ("false positive rate at it (%)", _cell("false_positive_rate", at["false_positive_rate"], "pct")),
        ("pixel threshold", _cell("pixel_threshold", record["pixel_threshold"], "num")),
    ]
    if pix is not None:
        decisions += [
            (
                "defect pixels inside the predicted region (%)",
                _cell("pixel_true_positive_rate", pix["true_positive_rate"], "pct"),
            ),
            ("defect-free pixels inside it (%)", _cell("pixel_false_positive_rate", pix["false_positive_rate"], "pct")),
        ]
    counts = [
        ("test images", _cell("images", c["images"], "int")),
        ("defect-free", _cell("normal", c["normal"], "int")),
        ("defective", _cell("defective", c["defective"], "int")),
    ]
    counts += [
        (label, _cell(name, confusion[name], "int"))
        for name, label in (
            ("true_positives", "defective, flagged"),
            ("false_negatives", "defective, missed"),
            ("false_positives", "defect-free, flagged"),
            ("true_negatives", "defect-free, passed"),
        )
    ]

    def table(cls, rows_):
        body = "".join(f"<tr><td>{_e(a)}</td>{b}</tr>" for a, b in rows_)
        return f'<table class="{cls}"><tbody>{body}</tbody></table>'

    paper_note = (
        '<p class="note">paper: Wang et al., IEEE Access 2024, table 3 (BSData); '
        "it gives image and pixel AUROC only.</p>"
        if paper
        else ""
    )
    return (
        f'<section id="metrics{key}"><h2>Headline metrics</h2><div class="row">'
        f'<div><table class="metrics"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'
        f"<div>{table('decisions', decisions)}</div><div>{table('counts', counts)}</div></div>{paper_note}"
        '<p class="note">Metrics are exact over every image and every pixel (those of <code>pitscope evaluate</code>). '
        "The image AUROC's interval (DeLong's standard error) is how far it could move by chance on this many "
        "test images. "
        "An image is flagged when its score is above the image threshold; the predicted region is where the anomaly "
        "map is above the pixel threshold.</p></section>"
    )


def _curves_section(record: dict, key: str) -> str:
    curves = record["curves"]
    note = "No ground-truth masks: image-level curves only."
    if "pixel_sampling" in curves:
        s = curves["pixel_sampling"]
        note = (
            f"Pixel curves are drawn from {s['defect'][0]:,} of {s['defect'][1]:,} defect pixels and "
            f"{s['normal'][0]:,} of {s['normal'][1]:,} defect-free pixels (seeded sample, weighted to estimate the "
            "exact curves); the areas in the legends are exact. The per-region-overlap curve is exact, up to "
            f"a pixel false positive rate of {MAX_FPR:.0%}."
        )
    uri = _plot_curves(curves, record["metrics"], record["at_threshold"], record["pixel_at_threshold"])
    return (
        f'<section id="curves{key}"><h2>ROC, precision-recall and per-region-overlap curves</h2>'
        f'<img class="plot" src="{uri}" alt="ROC, precision-recall and PRO curves"><p class="note">{note}</p></section>'
    )


def _histogram_section(record: dict, key: str) -> str:
    uri = _plot_histogram(record["histogram"], record["threshold"] if record["threshold"] is not None else math.nan)
    return (
        f'<section id="histogram{key}"><h2>Image scores: defect-free vs defective</h2>'
        f'<img class="plot" src="{uri}" alt="histogram of image scores"></section>'
    )


def _gallery_section(tiles: dict[str, list[str]], scale: tuple[float, float], key: str) -> str:
    parts = [
        f'<section id="gallery{key}"><h2>Gallery</h2><p class="note">Each row: input | ground truth (green) | '
        "predicted region, map above the pixel threshold (red; green outline: ground truth) | anomaly map "
        f"(jet colours, one scale for every image: blue ≤ {scale[0]:.4g}, yellow-orange at the pixel threshold "
        "of the map the regions are cut from, which the map shown lies at or below, "
        f"red ≥ {scale[1]:.4g}).</p>"
    ]
    for group, title in GALLERY_GROUPS.items():
        parts.append(f'<h3 id="gallery-{group.replace("_", "-")}{key}">{_e(title)}</h3>')
        if tiles[group]:
            parts.append('<div class="gallery">' + "".join(tiles[group]) + "</div>")
        else:
            empty = {
                "false_positives": "None: no defect-free image scored above the threshold.",
                "false_negatives": "None: every defective image scored above the threshold.",
                "correct": "None.",
            }[group]
            parts.append(f'<p class="note">{empty}</p>')
    return "".join(parts) + "</section>"


def _tile_html(uri: str, path: str, label: int, score: float, threshold: float) -> str:
    flagged = score > threshold
    truth = "defective" if label else "defect-free"
    verdict = "flagged" if flagged else "passed"
    cls = "good" if bool(flagged) == bool(label) else "bad"
    return (
        f'<figure class="tile" data-path="{_e(path)}" data-score="{score!r}">'
        '<div class="panels">' + "".join(f"<span>{p}</span>" for p in PANELS) + "</div>"
        f'<img src="{uri}" alt="{_e(path)}"><figcaption><b title="{_e(path)}">{_e(_short_name(path))}</b> · '
        f'score <span class="score">{score:.4g}</span> (threshold {threshold:.4g}) · {truth}, '
        f'<span class="{cls}">{verdict}</span></figcaption></figure>'
    )


def _training_section(
    log_path: Path | None,
    log: dict | None,
    training: dict | None,
    key: str,
    labelled: list[dict] | None = None,
    probe: bool = False,
) -> str:
    """The training run; `labelled`: the marked photos that taught the model, pasted into its training
    or (`probe`) fitting the defect probe that draws its maps."""
    parts = [f'<section id="training{key}"><h2>Training</h2>']
    if training:
        budget = " (stopped by its time budget)" if training.get("stopped_by_budget") else ""
        parts.append(
            f'<p class="sub">{training.get("epochs", "?")} epochs, {training.get("steps", "?")} steps, '
            f"{training.get('minutes', '?')} minutes on {training.get('images', '?')} defect-free images"
            + (f" in {_e(training['precision'])}" if training.get("precision") else "")
            + f"{budget}.</p>"
        )
        if chance := training.get("classifier_near_chance"):
            parts.append(
                '<p class="warning">The pseudo-defect classifier ended near chance '
                f"(cross-entropy {chance['cross_entropy']:.3f} in the last epoch, {chance['chance']:.3f} at chance): "
                "the network learnt little from the pseudo-defects, and its maps and regions may miss the "
                "defects. Train again with another seed or more epochs.</p>"
            )
        for back in training.get("rollbacks", []):
            then = (
                "and handed that epoch back as its result"
                if back.get("at_end")
                else f"and went on at {back['lr_scale']:g} times the learning rate"
            )
            parts.append(
                f'<p class="sub">After epoch {back["after_epoch"]} the pseudo-defect classifier had fallen back to '
                f"chance: training went back to epoch {back['to_epoch']}'s weights {then}.</p>"
            )
    if labelled:
        names = ", ".join(_e(d["name"]) for d in labelled[:10]) + (", ..." if len(labelled) > 10 else "")
        how = (
            f"Its maps come from a defect probe fitted on {len(labelled)} photos with marked defects"
            if probe
            else f"Also trained with {len(labelled)} photos with marked defects"
        )
        parts.append(f'<p class="sub">{how} (left out of the measurement): {names}.</p>')
    else:
        parts.append('<p class="sub">No photo with marked defects trained it: defect-free photos only.</p>')
    if log is None:
        where = f"at {_e(log_path)}" if log_path is not None else "(no run folder given)"
        parts.append(f'<p class="note">No training log {where}.</p>')
    else:
        parts.append(
            f'<img class="plot" src="{_plot_training(log)}" alt="training curves">'
            f'<p class="note">From {_e(log_path)} ({len(log["step"])} logged steps).</p>'
        )
    return "".join(parts) + "</section>"


def _page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str) -> str:
    links = "".join(f'<a href="#{_e(anchor)}">{_e(text)}</a>' for anchor, text in nav)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        f'<header><h1>{_e(title)}</h1><div class="sub">{subtitle}</div><nav>{links}</nav></header>'
        f"{body}</main></body></html>\n"
    )


def _subtitle(detector: Detector, dataset: Sequence[Sample]) -> str:
    data = detector.cfg.data
    parts = [f"{data.format} test split {getattr(dataset, 'name', '')}".strip()]
    parts += [f"root {data.root}"] if data.root else []
    parts += [f"category {data.category}"] if data.category else []
    parts += [
        "{} x {} px".format(*data.shape),
        f"maps: {detector.cfg.score.pixel_method}",
        f"pitscope {__version__}",
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    ]
    return _e(" · ".join(parts))
