"""`pitscope calibrate`: thresholds re-derived on defect-free photos of the production line.

`calibrate` scores them (and reports the F1-optimal thresholds when defective photos are at
hand), and `write_calibration` saves the new thresholds in the model file (and records them in
the inspection history).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import precision_recall_fscore_support

from pitscope.config import SCORE_FACTORS
from pitscope.data.dataset import AnomalyDataset, Record, pair_masks
from pitscope.data.imageio import list_images
from pitscope.metrics import f1_max
from pitscope.scoring import pixel_threshold_of, score_factor
from pitscope.thresholds import CalibrationRecord, set_thresholds

# Masks of `pitscope calibrate --masks`: `<stem>.<ext>` or `<stem>_mask.<ext>` (as data.folder).
MASK_SUFFIXES = ("", "_mask")


def _scored(detector, records: list[Record], progress: bool) -> tuple[AnomalyDataset, np.ndarray, np.ndarray, list]:
    """(dataset, scores (N,), maps (N, H, W), [(path, reason) of skipped files]) at the model's shape (H, W)."""
    dataset = AnomalyDataset(records, size=detector.cfg.data.shape, on_bad_file="skip", name="calibration")
    skipped = dataset.check(progress=progress)
    if len(dataset) == 0:
        return dataset, np.zeros(0, np.float32), np.zeros((0, 0, 0), np.float32), skipped
    scores, maps = detector.score_dataset(dataset, progress=progress)
    return dataset, scores, maps, skipped


def decision_rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Precision, recall and F1 of the detector's decision `score > threshold`."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, (scores > threshold).astype(np.int64), average="binary", zero_division=0
    )
    return {"threshold": float(threshold), "precision": float(precision), "recall": float(recall), "f1": float(f1)}


def _rescaling(detector, threshold: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """(maps (N, H, W), their image scores (N,)) -> the maps as the image threshold `threshold`
    would give them: maps with an image-score factor (`score.map_normalisation`) carry the
    model's image threshold, the others are returned as they are."""
    normalisation = detector.cfg.score.map_normalisation
    stored = float(detector.threshold)

    def rescale(maps: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if normalisation not in SCORE_FACTORS:
            return maps
        s = torch.from_numpy(np.asarray(scores, dtype=np.float64))
        old = score_factor(normalisation, s, stored).numpy()
        new = score_factor(normalisation, s, threshold).numpy()
        ratio = np.divide(new, old, out=np.zeros_like(new), where=old != 0)  # a factor of 0 left a map of 0
        return maps * ratio.astype(maps.dtype)[:, None, None]

    return rescale


def _unique(paths: Iterable[str | Path]) -> list[Path]:
    return list(dict.fromkeys(Path(p) for p in paths))


def calibrate(
    detector,
    good_paths: Sequence[str | Path],
    defect_paths: Sequence[str | Path] | None = None,
    mask_paths: dict | Sequence[str | Path] | str | Path | None = None,
    quantile: float | None = None,
    pixel_quantile: float | None = None,
    apply: bool = False,
    progress: bool = True,
) -> dict:
    """Re-derive the thresholds from defect-free images; report the F1-optimal ones too.

    good_paths: defect-free images the model was not trained on (e.g. a day of good parts).
    The image threshold is the `quantile` (default cfg.score.threshold_quantile) quantile of
    their scores, the pixel threshold the `pixel_quantile` (default
    cfg.score.pixel_threshold_quantile) quantile of their map values (at the model's input size,
    linear interpolation; `Detector.fit` takes the image quantile of its out-of-fold scores).
    defect_paths: defective images; then the result's "defects" holds the F1-optimal image
    threshold of `metrics.f1_max` over good + defective images (which flags score >= t), and
    the precision / recall / F1 of the detector's own rule (score > t) at both thresholds.
    mask_paths: their masks, as {defect path: mask path}, a folder, or a list of files paired
    by exact stem (`<stem>.<ext>` or `<stem>_mask.<ext>`); then "pixel" holds the F1-optimal
    pixel threshold over the maps of all good and defective images.
    Unreadable files are skipped and listed under "skipped". The detector changes only with
    apply=True: its threshold and pixel_threshold are set and metadata["calibration"] records
    how. Returns a JSON-serialisable dict.
    """
    cfg = detector.cfg.score
    quantile = cfg.threshold_quantile if quantile is None else float(quantile)
    pixel_quantile = cfg.pixel_threshold_quantile if pixel_quantile is None else float(pixel_quantile)
    for name, q in (("quantile", quantile), ("pixel_quantile", pixel_quantile)):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"{name}: expected a value in [0, 1], got {q}")
    good = _unique(good_paths)
    defects = _unique(defect_paths or [])
    if mask_paths is not None and not defects:
        raise ValueError("masks were given without defective images to pair them with")
    masks = _pair(defects, mask_paths) if mask_paths is not None else None

    _, good_scores, good_maps, skipped = _scored(detector, [Record(p, 0) for p in good], progress)
    if good_scores.size == 0:
        raise ValueError(f"no readable defect-free image among the {len(good)} given: cannot calibrate")
    threshold = float(np.quantile(good_scores.astype(np.float64), quantile))
    rescale = _rescaling(detector, threshold)
    good_maps = rescale(good_maps, good_scores)
    pixel_threshold = pixel_threshold_of(good_maps, pixel_quantile, cfg.pixel_threshold_from)
    result: dict[str, Any] = {
        "images": int(good_scores.size),
        "quantile": quantile,
        "threshold": threshold,
        "pixel_quantile": pixel_quantile,
        "pixel_threshold": pixel_threshold,
        "previous": {"threshold": float(detector.threshold), "pixel_threshold": float(detector.pixel_threshold)},
        "defects": None,
        "pixel": None,
        "skipped": [],
        "applied": bool(apply),
    }
    if defects:
        skipped += _against_defects(detector, result, defects, masks, good_scores, good_maps, rescale, progress)
    result["skipped"] = [{"path": path, "reason": reason} for path, reason in skipped]
    if apply:
        _apply(detector, result)
    return result


def _against_defects(
    detector,
    result: dict[str, Any],
    defects: list[Path],
    masks: dict[Path, Path] | None,
    good_scores: np.ndarray,
    good_maps: np.ndarray,
    rescale: Callable[[np.ndarray, np.ndarray], np.ndarray],
    progress: bool,
) -> list:
    """Fill result["defects"] (the F1-optimal image threshold, and precision / recall / F1 at both
    thresholds) and, with masks, result["pixel"] (the F1-optimal pixel threshold over good_maps
    (N, H, W) and the defects' maps). Returns the skipped defective files, as (path, reason)."""
    records = [Record(p, 1, mask_path=masks[p] if masks else None) for p in defects]
    defect_set, defect_scores, defect_maps, skipped = _scored(detector, records, progress)
    defect_maps = rescale(defect_maps, defect_scores)
    if defect_scores.size == 0:
        raise ValueError(f"no readable defective image among the {len(defects)} given")
    labels = np.r_[np.zeros(good_scores.size, np.int64), np.ones(defect_scores.size, np.int64)]
    scores = np.r_[good_scores, defect_scores]
    best_f1, best_threshold = f1_max(labels, scores)
    result["defects"] = {
        "images": int(defect_scores.size),
        "f1_max": best_f1,
        "f1_threshold": best_threshold,
        "at_quantile_threshold": decision_rates(labels, scores, result["threshold"]),
        "at_f1_threshold": decision_rates(labels, scores, best_threshold),
    }
    if masks:
        truth = np.concatenate(
            [np.zeros(good_maps.shape, bool), np.stack([defect_set[i].mask > 0 for i in range(len(defect_set))])]
        )
        if truth.any():
            pixel_f1, pixel_best = f1_max(truth.reshape(-1), np.concatenate([good_maps, defect_maps]).reshape(-1))
            result["pixel"] = {"f1_max": pixel_f1, "f1_threshold": pixel_best}
    return skipped


def _apply(detector, result: dict[str, Any]) -> None:
    """Set the detector's thresholds to the calibrated ones; metadata["calibration"] records how."""
    record: CalibrationRecord = {
        "source": "pitscope calibrate",
        "images": result["images"],
        "quantile": result["quantile"],
        "threshold": result["threshold"],
        "pixel_quantile": result["pixel_quantile"],
        "pixel_threshold": result["pixel_threshold"],
    }
    if result["defects"]:
        record["defect_images"] = result["defects"]["images"]
        record["f1_threshold"] = result["defects"]["f1_threshold"]
    if result["pixel"]:
        record["pixel_f1_threshold"] = result["pixel"]["f1_threshold"]
    record["previous"] = result["previous"]
    set_thresholds(detector, record, image=result["threshold"], pixel=result["pixel_threshold"])


def _pair(defects: list[Path], mask_paths) -> dict[Path, Path]:
    """{defect image: mask} from a dict, a folder or a list of mask files (exact-stem pairing)."""
    if isinstance(mask_paths, dict):
        pairs = {Path(k): Path(v) for k, v in mask_paths.items()}
        missing = [str(p) for p in defects if p not in pairs]
        if missing:
            raise ValueError(f"no mask given for the defective image(s): {', '.join(missing)}")
        return pairs
    if isinstance(mask_paths, (str, Path)):
        mask_files = list_images(mask_paths)
    else:
        mask_files = [Path(p) for p in mask_paths]
    return pair_masks(defects, mask_files, MASK_SUFFIXES)


def write_calibration(
    detector, model_path: str | Path, result: dict, db: str | None = None, by: str = "pitscope calibrate"
) -> tuple[int, str] | None:
    """Save `detector` (calibrated with `calibrate(..., apply=True)`) over model_path, atomically.

    With `db` (an SQLite file or PostgreSQL URL), the new thresholds are first recorded there as a
    new threshold version, `by` whom: a change the history cannot record is not made. Returns
    (the version number, the database's display URL), or None without `db`.
    """
    from pitscope.inference import Detector

    recorded = None
    if db is not None:
        from pitscope.history.recorder import Recorder
        from pitscope.history.store import HistoryStore

        loaded = Detector.load(model_path)  # registered with the thresholds its file still holds
        recorder = Recorder(
            HistoryStore(db), loaded, detector.metadata.get("name") or "model", rule=None, by="pitscope calibrate"
        )
        version = recorder.set_threshold(
            result["threshold"],
            result["pixel_threshold"],
            by=by,
            how=f"calibrate --write on {result['images']} defect-free images",
        )
        recorded = (version.version, recorder.store.display_url)
    detector.save(model_path)
    return recorded
