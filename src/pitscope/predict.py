"""Using a trained model on new images: `pitscope predict`.

`run_predict` scores files and writes one row per file to predictions.csv and predictions.jsonl
(and, on request, each anomaly map and an overlay picture); unreadable files get a row with
status "error" and the run goes on. Thresholds re-derived on new photos: `pitscope.calibration`.
"""

from __future__ import annotations

import csv
import functools
import glob
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pitscope.data.imageio import IMAGE_SUFFIXES, is_image_file, list_images, read_image
from pitscope.data.types import BadImageError
from pitscope.visualize import overlay

# Columns of predictions.csv, and the keys of each predictions.jsonl object, in order.
FIELDS = (
    "path",
    "status",
    "score",
    "threshold",
    "is_defective",
    "region_count",
    "defect_px",
    "defect_fraction",
    "regions",
    "peak",
    "reason",
    "map",
    "overlay",
    "part",
    "inspection_id",
)

_GLOB_CHARS = set("*?[")
_MAX_STEM = 100  # leaves room for "_overlay.png" and a "_<n>" within any file system's 255


# -- inputs and output names ---------------------------------------------------------------
def expand_inputs(specs: Iterable[str | Path]) -> list[Path]:
    """Image files named by files, folders and glob patterns, in the order given.

    A file is taken as is (whatever its suffix: an unreadable one is reported when scored);
    a folder gives its images (not its subfolders'), sorted; a pattern (`*`, `?`, `[`;
    `**` recurses) gives the image files it matches, and the images of the folders it matches,
    sorted. A spec that gives no image is a FileNotFoundError naming it. A file named twice
    (even as `a/x.png` and `./a/x.png`) is kept once, where it first came.
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        spec = str(spec)
        found = _expand_one(spec)
        if not found:
            raise FileNotFoundError(
                f"{spec}: matches no image (looked for a file, a folder of {'/'.join(IMAGE_SUFFIXES)} images, "
                "or a glob pattern)"
            )
        for path in found:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths


def _expand_one(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        return list_images(path)
    if not _GLOB_CHARS & set(spec):
        return []
    found: list[Path] = []
    for name in sorted(glob.glob(spec, recursive=True)):
        match = Path(name)
        if match.is_dir():
            found += list_images(match)
        elif match.is_file() and is_image_file(match):
            found.append(match)
    return found


def safe_output_name(path: str | Path, taken: set[str]) -> str:
    """A file-name stem for the outputs of `path` that stays inside the output folder.

    Only the file's stem is used (no folders), every character outside [A-Za-z0-9._-] becomes
    `_`, leading and trailing dots are dropped, long stems are cut, and an empty result becomes
    "image". A stem already in `taken` (compared ignoring case, for case-insensitive file
    systems) gets `_2`, `_3`, ...: `a/x.png` and `b/x.png` give `x` and `x_2`.
    The chosen stem is added to `taken`.
    """
    stem = Path(str(path).replace("\\", "/")).stem  # a Windows-style name loses its folders too
    cleaned = "".join(c if (c.isascii() and (c.isalnum() or c in "._-")) else "_" for c in stem)
    cleaned = cleaned.strip(".")[:_MAX_STEM].strip(".") or "image"
    lowered = {t.lower() for t in taken}
    name, n = cleaned, 1
    while name.lower() in lowered:
        n += 1
        name = f"{cleaned}_{n}"
    taken.add(name)
    return name


# -- predict ---------------------------------------------------------------------------------
def _json_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such values (an uncalibrated threshold) become null."""
    return value if value is not None and math.isfinite(value) else None


def _csv_row(row: dict) -> list:
    """One CSV line: numbers in full precision (repr round-trips), booleans as 1/0, None as empty."""
    out: list = []
    for key in FIELDS:
        value = row[key]
        if value is None:
            out.append("")
        elif isinstance(value, bool):
            out.append(int(value))
        elif key == "regions":  # boxes as x0 y0 x1 y1, regions separated by ;
            out.append(";".join(" ".join(map(str, r["box"])) for r in value))
        elif key == "peak":  # x y value
            out.append(f"{value['x']} {value['y']} {value['value']!r}")
        else:
            out.append(value)
    return out


def run_predict(
    detector,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    threshold: float | None = None,
    save_maps: bool = False,
    progress: bool = True,
    batch_size: int | None = None,
    stop_at_first_defect: bool = False,
    recorder=None,
    part: str | None = None,
    part_from=None,
    time_from=None,
) -> dict:
    """Score every file of `paths` and write the results under `out_dir`.

    out_dir/predictions.csv and out_dir/predictions.jsonl hold one row per file, in the order
    of `paths`, with the fields FIELDS: path (as given), status ("ok" or "error"), score,
    threshold, is_defective, region_count, defect_px and defect_fraction (the predicted region at
    the file's own size, `Prediction.regions`), regions (JSON: area_px, fraction, box [x0, y0, x1,
    y1) and peak of each; CSV: the boxes "x0 y0 x1 y1" joined by ";"), peak (where the map is
    highest, in the file's pixels: JSON x, y, value; CSV "x y value"), reason (why an "error" file
    could not be read; its score and is_defective stay empty / null), and map / overlay (file names relative to out_dir, with
    save_maps). With save_maps, out_dir/maps/<name>.npy holds the float32 (H, W) anomaly map at
    the file's own size (the map shown: with `score.map_background_window` /
    `score.map_sharpen_window` its broad background removed / narrowed, while the regions are cut
    from the map before that, or after the background step with `score.regions_after_background`)
    and out_dir/maps/<name>_overlay.png the image with the predicted region (`visualize.overlay`
    at the detector's pixel threshold); <name> is `safe_output_name`.
    threshold overrides the detector's image threshold; batch_size defaults to
    cfg.score.batch_size. stop_at_first_defect ends the run after the first defective image.
    A NaN threshold (given, or the model's own) is a ValueError: it would pass every image.

    recorder: a `pitscope.history.recorder.Recorder`: every scored file is recorded (source
    "cli") under `part`, else the part `part_from` reads from its name, captured at the time
    `time_from` reads from its name, else its EXIF time; the rows' inspection_id says which.
    Without `threshold`, the threshold version in force in the history is used.

    A file name that is not valid UTF-8 (Linux allows any bytes) is written with its odd bytes
    as `\\udcXX` escapes, which JSON decodes back to the same Python string.
    Both tables are written to `<name>.partial` files, flushed after every row (so a crashed
    run leaves its complete rows there), and renamed to their final names when the run ends:
    predictions.csv never holds half a run, nor half a line.
    Returns {"images": rows written, "defective", "errors" (unreadable files), "recorded", "out_dir",
    "stopped_early", "failed": [{"path", "reason"}, ...] of the unreadable files}.
    """
    threshold, version = _threshold_in_force(detector, threshold, recorder)
    out = Path(out_dir)
    (out / "maps" if save_maps else out).mkdir(parents=True, exist_ok=True)
    batch_size = batch_size or detector.cfg.score.batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive number, got {batch_size}")
    record = (
        None
        if recorder is None
        else functools.partial(_record, recorder, version=version, part=part, part_from=part_from, time_from=time_from)
    )
    counts = {"images": 0, "defective": 0, "errors": 0, "recorded": 0}
    failed: list[dict] = []
    stopped = False
    with (
        _prediction_tables(out) as write,
        tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress) as bar,
    ):
        for row in _rows(detector, paths, threshold, batch_size, out if save_maps else None, record):
            if row["status"] == "error":
                failed.append({"path": row["path"], "reason": row["reason"]})
            write(row)
            counts["images"] += 1
            counts["errors"] += row["status"] == "error"
            counts["defective"] += bool(row["is_defective"])
            counts["recorded"] += row["inspection_id"] is not None
            bar.update(1)
            if stop_at_first_defect and row["is_defective"]:
                stopped = True
                break
    return {**counts, "out_dir": str(out), "stopped_early": stopped, "failed": failed}


def _threshold_in_force(detector, threshold: float | None, recorder) -> tuple[float | None, Any]:
    """(the image threshold to predict at, None for the detector's own; the history's threshold
    version, None without a recorder). A NaN threshold is a ValueError."""
    if threshold is not None and math.isnan(threshold):
        raise ValueError("threshold: NaN would pass every image; give a number")
    if threshold is None and math.isnan(float(detector.threshold)):
        raise ValueError("the model has no calibrated threshold (NaN): give a threshold or run `pitscope calibrate`")
    version = None
    if recorder is not None:
        version = recorder.thresholds()
        if threshold is None:
            threshold = version.image_threshold
    return threshold, version


@contextmanager
def _prediction_tables(out: Path) -> Iterator[Callable[[dict], None]]:
    """Open out/predictions.csv.partial and .jsonl.partial and give a function that writes one row
    to both, flushed; on a normal exit rename them to predictions.csv and predictions.jsonl."""
    final = {"csv": out / "predictions.csv", "jsonl": out / "predictions.jsonl"}
    partial = {key: path.with_name(path.name + ".partial") for key, path in final.items()}
    with (
        partial["csv"].open("w", newline="", encoding="utf-8", errors="backslashreplace") as csv_file,
        partial["jsonl"].open("w", encoding="utf-8", errors="backslashreplace") as jsonl_file,
    ):
        writer = csv.writer(csv_file)
        writer.writerow(FIELDS)

        def write(row: dict) -> None:
            writer.writerow(_csv_row(row))
            csv_file.flush()
            jsonl_file.write(
                json.dumps(
                    {k: _json_number(row[k]) if k in ("score", "threshold") else row[k] for k in FIELDS},
                    ensure_ascii=False,
                )
                + "\n"
            )
            jsonl_file.flush()

        yield write
    for key in final:
        os.replace(partial[key], final[key])


def _rows(
    detector,
    paths: Sequence[str | Path],
    threshold: float | None,
    batch_size: int,
    maps_out: Path | None,
    record: Callable[..., dict] | None,
) -> Iterator[dict[str, Any]]:
    """One row of FIELDS per file of `paths`, in order, scored `batch_size` files at a time and made
    only when asked for. With maps_out, each file's map and overlay are saved under maps_out/maps;
    with record, each scored file is recorded in the history."""
    taken: set[str] = set()
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        started = time.perf_counter()
        images, reasons = _read_images(chunk)
        predictions = dict(zip(images, detector.predict(list(images.values()), threshold=threshold)))
        per_image_ms = 1000 * (time.perf_counter() - started) / max(len(chunk), 1)
        for i, path in enumerate(chunk):
            name = safe_output_name(path, taken) if maps_out is not None else None
            row: dict[str, Any] = dict.fromkeys(FIELDS)
            row["path"] = str(path)
            if i in reasons:
                row.update(status="error", reason=reasons[i])
                yield row
                continue
            p = predictions[i]
            region = _add_prediction(row, p)
            if record is not None:
                row.update(record(p, path, images[i].shape, row["defect_px"], per_image_ms))
            if maps_out is not None and name is not None:
                row.update(_save_map(maps_out, name, images[i], p, region))
            yield row


def _read_images(paths: list[str | Path]) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """({index: (H, W, 3) uint8 image} of the readable files, {index: reason} of the others)."""
    images: dict[int, np.ndarray] = {}
    reasons: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            images[i] = read_image(path)  # (H, W, 3) uint8
        except (BadImageError, OSError) as exc:
            reasons[i] = getattr(exc, "reason", None) or str(exc)
    return images, reasons


def _add_prediction(row: dict[str, Any], p) -> np.ndarray:
    """Fill the row's prediction fields from `p`; returns the predicted region (H, W) bool."""
    region, regions = p.outline()
    area = int(region.sum())
    row.update(
        status="ok",
        score=float(p.score),
        threshold=float(p.threshold),
        is_defective=bool(p.is_defective),
        region_count=len(regions),
        defect_px=area,
        defect_fraction=area / p.anomaly_map.size,
        regions=[r.to_dict() for r in regions],
        peak=p.peak(),
    )
    return region


def _save_map(out: Path, name: str, image: np.ndarray, p, region: np.ndarray) -> dict[str, str]:
    """Save out/maps/<name>.npy (the float32 map) and <name>_overlay.png; returns the row's map
    and overlay fields."""
    fields = {"map": f"maps/{name}.npy", "overlay": f"maps/{name}_overlay.png"}
    np.save(out / fields["map"], p.anomaly_map.astype(np.float32, copy=False))
    picture = overlay(image, p.anomaly_map, p.pixel_threshold, region=region)
    Image.fromarray(picture).save(out / fields["overlay"])
    return fields


def _record(
    recorder, prediction, path, shape, area: int, duration_ms: float, version, part, part_from, time_from
) -> dict:
    """Record one scored file in the history; returns the row's part and inspection_id."""
    from pitscope.history.names import exif_time_of_file, part_from_name, time_from_name

    data = Path(path).read_bytes()
    captured = time_from_name(path, time_from) or exif_time_of_file(path)
    part = part or part_from_name(path, part_from)
    done = recorder.record(
        prediction,
        source="cli",
        data=data,
        width=shape[1],
        height=shape[0],
        defect_px=area,
        duration_ms=duration_ms,
        threshold=version,
        part=part,
        name=Path(path).name,
        captured_at=captured,
        image_path=str(Path(path).resolve()),
        suffix=Path(path).suffix,
    )
    return {"part": part, "inspection_id": done.inspection_id}
