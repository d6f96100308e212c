"""A suite's record as Markdown: a table per suite (per category and its means for MVTec AD), the
paper's numbers beside ours, and how they were measured."""

from __future__ import annotations

import numpy as np

from pitscope.benchmark.suites import MVTEC_OBJECTS, MVTEC_TEXTURES, VARIANTS


def _cell(stat: dict | None) -> str:
    if not stat or stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.2f}" + (f" ± {stat['std']:.2f}" if stat["std"] is not None else "")


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _header(record: dict) -> list[str]:
    m = record["machine"]
    budget = (
        f"{record['budget_minutes']} training minutes per run"
        if record["budget_minutes"] is not None
        else "the preset's own epochs and budget"
    )
    return [
        f"# {record['title']}",
        "",
        f"Commit `{record['commit']}`, {record['date']}; {m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}" + (f", {m['cuda']}" if m["cuda"] else ", no GPU") + ".",
        f"Preset `{record['preset']}`, {budget}, {record['image_size']} px, seeds {', '.join(map(str, record['seeds']))}"
        + (f", overrides `{' '.join(record['overrides'])}`" if record["overrides"] else "")
        + ".",
        "AUROC and AUPRO in %, mean ± standard deviation over the seeds; the paper trained 800 epochs on a GPU.",
        "",
    ]


def _footer(record: dict) -> list[str]:
    lines = [""]
    if any("score.pixel_method=patch" in row["overrides"] for row in record["rows"]):
        patch = record["patch"]
        lines.append(
            f"- Patch-level maps (CutPaste, SSPCAB): crops of {patch['size']} px every {patch['stride']} px, "
            "embedded by the trained network, one Gaussian over the crops of the training images; a pixel "
            "scores the mean of the crops covering it."
        )
    if any(row["peer"] for row in record["rows"]):
        lines.append(
            "- Peers: anomalib's torch models on the same split, image size and ResNet-18 weights "
            f"(`model.weights`; none = the untrained pitscope network's initialisation), maps normalised as "
            f"ours; PatchCore keeps {record['coreset_ratio']:g} of the training patch features."
        )
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
        pairs = [
            (r["summary"][metric]["mean"], r["paper"][metric])
            for r in record["rows"]
            if r["summary"]
            and r["paper"]
            and r["paper"][metric] is not None
            and r["summary"][metric]["mean"] is not None
        ]
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
            lines.append(
                f"| {row['label']} (`{row['variant']}`) | not run | {_number(paper.get('image_auroc'))} | | "
                f"{_number(paper.get('pixel_auroc'))} | | | | | |"
            )
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
        groups = [
            ("objects", [c for c in rows if c in MVTEC_OBJECTS]),
            ("textures", [c for c in rows if c in MVTEC_TEXTURES]),
            ("other", [c for c in rows if c not in MVTEC_OBJECTS + MVTEC_TEXTURES]),
        ]
        for group, categories in groups:
            for category in categories:
                s, paper = rows[category]["summary"], rows[category]["paper"] or {}
                if s is None:
                    continue
                lines.append(
                    f"| {category} | {_cell(s['image_auroc'])} | {_number(paper.get('image_auroc'))} | "
                    f"{_cell(s['pixel_auroc'])} | {_number(paper.get('pixel_auroc'))} | {_cell(s['aupro'])} | "
                    f"{_number(s['train_minutes'])} |"
                )
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
        reported = [value for value in paper if value is not None]
        cells += [
            _number(float(np.mean(ours))) if ours else "n/a",
            _number(float(np.mean(reported))) if paper and len(reported) == len(paper) else "",
        ]
    aupro = [r["summary"]["aupro"]["mean"] for r in rows if r["summary"] and r["summary"]["aupro"]["mean"] is not None]
    return f"| **{name}** | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {_number(float(np.mean(aupro))) if aupro else 'n/a'} | |"
