"""A whole wear run: BSData's sequences measured by models that never trained on them, or the
series an inspection history recorded."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from pitscope.data.bsdata import bsdata_root, read_polygons
from pitscope.data.dataset import rasterise_polygons
from pitscope.data.sequences import SECONDS_PER_DAY, read_sequences
from pitscope.growth import AlertRule
from pitscope.wear.curves import AreaPoint, WearCurve, measure_sequence
from pitscope.wear.outputs import write_wear
from pitscope.wear.split import assign_models, reference_images, training_images


# -- the whole run ---------------------------------------------------------------------------
def run_wear(
    models: Sequence[str | Path],
    out_dir: str | Path,
    root: str | Path | None = None,
    rule: AlertRule = AlertRule(),
    allow_overlap: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    calibrate_first: int = 0,
    calibrate_quantile: float | None = None,
) -> dict:
    """Measure BSData's wear sequences with the given models and write the outputs (`write_wear`).

    calibrate_first: K > 0 gives each sequence its own thresholds, as `pitscope calibrate` derives
    them from the sequence's first K photos by capture time (a new part's first photos, taken to
    be good), at `calibrate_quantile` for both the image score and the map (None: the model's
    own quantiles); those K photos are not measured. The split records each sequence's
    thresholds and how many of its K photos carry marked pitting.

    root: the BSData folder; None takes the first model's data.root, then `bsdata_root`'s places.

    Every sequence is measured by a model that never trained on its images (`assign_models`;
    give one model per fold of a `sequence_folds` split to cover them all); a sequence no model
    qualifies for is left out and listed under "unmeasured", unless allow_overlap. A model's
    reference photos (`pitscope refit --references`) do not count as training images: the
    sequence is measured without them. Models are loaded one at a time. Returns the content of wear.json. Raises ValueError when no sequence
    can be measured.
    """
    from pitscope.inference import Detector

    if not models:
        raise ValueError("give at least one model")
    configs, references = [], []
    for model in models:  # one model in memory at a time
        detector = Detector.load(model)
        configs.append(detector.cfg)
        references.append(reference_images(detector))
        del detector
    root = bsdata_root(root if root is not None else configs[0].data.root)
    sequences = read_sequences(root)
    trained = [training_images(cfg, model, root) for cfg, model in zip(configs, models)]
    assigned = assign_models(sequences, trained, allow_overlap)
    unmeasured = [
        {"sequence": s.name, "reason": "every model trained on some of its images"}
        for s in sequences
        if s.name not in assigned
    ]
    for s in sequences:
        if s.name in assigned and all(r.path.name in references[assigned[s.name][0]] for r in s.records):
            del assigned[s.name]
            unmeasured.append({"sequence": s.name, "reason": "its model was fitted on all its images as references"})
    for item in unmeasured:
        hint = "" if "references" in item["reason"] else " (give a model of its fold, or allow overlap)"
        echo(f"not measured: {item['sequence']}: {item['reason']}{hint}")
    if not assigned:
        raise ValueError(
            f"no sequence of {root} can be measured honestly: every model trained on images of every "
            "sequence (train one model per fold of a split over sequences, or allow overlap)"
        )
    split_models: list[dict] = []  # per model: its file, its training images and its sequences
    split = {"models": split_models, "allow_overlap": allow_overlap}
    curves = []
    bar = tqdm(total=len(assigned), desc="sequences", disable=not progress)
    for index, model in enumerate(models):
        mine = [s for s in sequences if assigned.get(s.name, (None,))[0] == index]
        split_models.append(
            {
                "model": str(model),
                "training_images": len(trained[index]),
                "reference_images": len(references[index]),
                "sequences": [s.name for s in mine],
            }
        )
        if not mine:
            continue
        detector = Detector.load(model)
        calibrated: dict[str, dict] = {}
        for sequence in mine:
            left_out = references[index]
            if calibrate_first:
                stored = float(detector.threshold), float(detector.pixel_threshold)
                calibrated[sequence.name] = own_thresholds(detector, sequence, calibrate_first, calibrate_quantile)
                left_out = left_out | {r.path.name for r in sequence.records[:calibrate_first]}
            curves.append(measure_sequence(detector, sequence, str(model), assigned[sequence.name][1], left_out))
            if calibrate_first:
                detector.threshold.fill_(stored[0])
                detector.pixel_threshold.fill_(stored[1])
            bar.update(1)
        if calibrate_first:
            split_models[-1]["calibrated"] = calibrated
        del detector  # one model in memory at a time
    bar.close()
    curves.sort(key=lambda c: c.sequence)
    return json.loads(write_wear(out_dir, curves, rule, split, root, unmeasured).read_text())


def own_thresholds(detector, sequence, first: int, quantile: float | None) -> dict:
    """Set the detector's thresholds from the sequence's first `first` photos (`calibrate`);
    returns them with the count of those photos and of those with marked pitting."""
    from pitscope.calibration import calibrate

    if first >= len(sequence.records):
        raise ValueError(
            f"sequence {sequence.name}: {len(sequence.records)} photos, not more than the {first} to calibrate on"
        )
    photos = sequence.records[:first]
    result = calibrate(detector, [r.path for r in photos], quantile=quantile, pixel_quantile=quantile, progress=False)
    detector.threshold.fill_(result["threshold"])
    detector.pixel_threshold.fill_(result["pixel_threshold"])
    return {
        "photos": len(photos),
        "with_pitting": sum(r.label == 1 for r in photos),
        "threshold": result["threshold"],
        "pixel_threshold": result["pixel_threshold"],
    }


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
            points.append(
                AreaPoint(
                    row["name"] or f"inspection {row['id']}",
                    row["time"],
                    days,
                    width,
                    height,
                    int(row["defect_px"]),
                    true_px,
                    float(row["score"]),
                    float(threshold),
                    bool(row["is_defective"]),
                )
            )
        models = sorted({row["model_id"][:12] for row in rows})
        curves.append(WearCurve(part, (part,), tuple(points), ", ".join(models), 0, float(rows[-1]["pixel_threshold"])))
    return curves


def run_wear_history(
    db: str,
    parts: Sequence[str] | None,
    out_dir: str | Path,
    root: str | Path | None = None,
    rule: AlertRule = AlertRule(),
) -> dict:
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
