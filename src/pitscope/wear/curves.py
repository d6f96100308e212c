"""A wear curve: the predicted and true areas of one sequence's photographs, in capture order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from pitscope.data.dataset import Record, rasterise_polygons
from pitscope.data.sequences import WearSequence


# -- areas -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AreaPoint:
    """One image of a wear curve. Areas in the image's native pixels (width x height)."""

    path: str
    time: datetime
    days: float  # since the sequence's first image
    width: int
    height: int
    predicted_px: int  # anomaly-map pixels above the pixel threshold
    true_px: int  # pixels inside the ground-truth polygons
    score: float
    threshold: float
    is_defective: bool  # score > threshold: the image is flagged

    @property
    def predicted_fraction(self) -> float:
        return self.predicted_px / (self.width * self.height)

    @property
    def true_fraction(self) -> float:
        return self.true_px / (self.width * self.height)


def area_point(record: Record, time: datetime, days: float, prediction) -> AreaPoint:
    """Reduce one `inference.Prediction` (map at the image's own size) of `record` to its areas."""
    height, width = prediction.anomaly_map.shape
    region = prediction.defect_region  # (H, W) bool
    truth = rasterise_polygons(record.polygons or (), height, width)  # (H, W) uint8 {0, 1}
    return AreaPoint(
        str(record.path),
        time,
        float(days),
        int(width),
        int(height),
        int(region.sum()),
        int(truth.sum()),
        float(prediction.score),
        float(prediction.threshold),
        bool(prediction.is_defective),
    )


@dataclass(frozen=True)
class WearCurve:
    """The areas of one sequence's images, in capture order, as one model measured them.

    model: the model file; overlap: how many of the sequence's images that model trained on
    (0 unless measured with allow_overlap); references: how many of its images the model's
    scorers were fitted on as reference photos (`pitscope refit --references`), which are left
    out of the curve.
    """

    sequence: str
    names: tuple[str, ...]
    points: tuple[AreaPoint, ...]
    model: str
    overlap: int
    pixel_threshold: float
    references: int = 0

    @property
    def days(self) -> np.ndarray:
        """(N,) days since the first image."""
        return np.array([p.days for p in self.points])

    @property
    def predicted(self) -> np.ndarray:
        """(N,) predicted area fractions."""
        return np.array([p.predicted_fraction for p in self.points])

    @property
    def truth(self) -> np.ndarray:
        """(N,) true area fractions."""
        return np.array([p.true_fraction for p in self.points])


def measure_sequence(
    detector, sequence: WearSequence, model: str, overlap: int = 0, references: frozenset[str] = frozenset()
) -> WearCurve:
    """Predict every image of `sequence` with `detector` (one batch of maps in memory at a time),
    except the `references` (file names of the photos the detector's scorers were fitted on);
    days still count from the sequence's first image. Raises ValueError when every image is a
    reference."""
    days = sequence.days
    measured = [i for i, r in enumerate(sequence.records) if r.path.name not in references]
    if not measured:
        raise ValueError(
            f"sequence {sequence.name}: every image is a reference photo of {model}; none is left to measure"
        )
    points = []
    batch = detector.cfg.score.batch_size
    for start in range(0, len(measured), batch):
        chunk = measured[start : start + batch]
        predictions = detector.predict([sequence.records[i].path for i in chunk])
        for i, prediction in zip(chunk, predictions):
            points.append(area_point(sequence.records[i], sequence.times[i], days[i], prediction))
    left_out = len(sequence.records) - len(measured)
    return WearCurve(
        sequence.name, sequence.names, tuple(points), model, overlap, float(detector.pixel_threshold), left_out
    )
