"""Wear curves: how the pitting at one spindle position grows, photograph after photograph.

BSData photographs 15 positions of one ball screw (its type 2) about every four hours for 19
days; `pitscope.data.sequences.read_sequences` reads each position's photographs in capture
order (one `WearSequence` each). BSData's first 57 photographs of a position are
1130x460 (`..._crop_2.jpg`), its last 12 are 1540x645 (`..._crop_1.jpg`) of the same field of
view. The ground truth is taken as labelled: 14 positions show pitting, one never does, and the
last photograph (day 18.8) of 10 pitted positions has no label file, so
their true area ends at zero.

Areas. The predicted area of an image is the number of pixels of its predicted region
(`Prediction.defect_region`, which `visualize.overlay` draws and `serve` reports),
with the map at the image's own size (`Detector.predict`). The true area is the number of
pixels inside the image's "Pitting" polygons, rasterised at its own size. Both are counted in
the image's native pixels; since the native size changes within a sequence, every comparison
over time (growth, agreement, the alert rule) uses the fraction of the inspected surface:
area / (width x height) of that image, the whole photograph being the inspected surface.

Honest measurement. A model must not measure images it trained on: `training_images` reads
which images trained a model (a BSData model's split file; a synthetic model trained on no
file) and `assign_models` gives each sequence to the first model that never saw any of its
images. `sequence_folds` and `fold_split` make the k-fold split over sequences that gives every
sequence such a model: fold i's model trains on the defect-free images of the other folds only.

The modules: `split` (which model may measure which sequence), `curves` (areas along a sequence),
`summary` (agreement with the truth and the alert rule), `outputs` (CSV, plots, wear.json) and
`run` (a whole run, from models or from the inspection history).
"""

from pitscope.growth import AlertRule, slope_per_day, trailing_growth, trailing_median
from pitscope.wear.curves import AreaPoint, WearCurve, area_point, measure_sequence
from pitscope.wear.outputs import CURVE_FIELDS, SUMMARY_FIELDS, plot_curve, write_curve_csv, write_wear
from pitscope.wear.run import curves_from_history, run_wear, run_wear_history
from pitscope.wear.split import assign_models, fold_split, sequence_folds, training_images
from pitscope.wear.summary import (
    AlertOutcome,
    SequenceSummary,
    evaluate_alerts,
    format_summary,
    overall,
    spearman,
    summarise,
)

__all__ = [
    "CURVE_FIELDS",
    "SUMMARY_FIELDS",
    "AlertOutcome",
    "AlertRule",
    "AreaPoint",
    "SequenceSummary",
    "WearCurve",
    "area_point",
    "assign_models",
    "curves_from_history",
    "evaluate_alerts",
    "fold_split",
    "format_summary",
    "measure_sequence",
    "overall",
    "plot_curve",
    "run_wear",
    "run_wear_history",
    "sequence_folds",
    "slope_per_day",
    "spearman",
    "summarise",
    "trailing_growth",
    "trailing_median",
    "training_images",
    "write_curve_csv",
    "write_wear",
]
