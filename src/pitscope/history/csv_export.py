"""The recorded inspections as one CSV table (`pitscope history --csv`)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

# The columns, in order: every field of an inspection row of `HistoryStore.inspections`.
COLUMNS = (
    "id",
    "recorded_at",
    "captured_at",
    "source",
    "part",
    "name",
    "image_sha256",
    "image_ref",
    "width",
    "height",
    "score",
    "image_threshold",
    "is_defective",
    "defect_px",
    "defect_fraction",
    "pixel_threshold",
    "map_ref",
    "model_id",
    "threshold_id",
    "threshold_version",
    "duration_ms",
)


def write_csv(rows: Iterable[dict], path: str | Path, columns: tuple[str, ...] = COLUMNS) -> int:
    """Write inspection rows to `path` under a header of `columns` (default COLUMNS): times in
    ISO 8601, None as an empty cell. Returns the number of rows written."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                [
                    "" if row.get(k) is None else row[k].isoformat() if hasattr(row[k], "isoformat") else row[k]
                    for k in columns
                ]
            )
            n += 1
    return n
