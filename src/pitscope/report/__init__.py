"""The evaluation report: where a model is right and where it is wrong, as one HTML page.

`build_report` scores a test split once, through `pitscope.evaluation.evaluate` (so every
number is the one `pitscope evaluate` prints), and writes two files to its output folder:

report.html  self-contained: pictures are data: URIs, the CSS is inline, there is no script and
             no font, style sheet or link outside the file, so it opens with no network. It holds
             the headline metrics (the paper's BSData numbers beside ours), ROC and
             precision-recall curves at image and pixel level, the per-region-overlap curve, the
             histogram of image scores with the threshold, a gallery of the worst false
             positives, the worst false negatives and a seeded sample of correct decisions
             (input | ground truth in green | predicted region in red | heatmap, as the paper's
             figures 7, 10 and 11), and the training curves of the run's train_log.csv.
report.json  the same numbers: metrics, counts, thresholds, confusion counts, curve points (at
             most CURVE_POINTS per curve), the histogram, every image's score, the gallery picks.

For a BSData model, `--wear DIR` adds the wear curves `pitscope wear` wrote to DIR (`wear.json`
and the plots of `sequences/`): the split, the alert rule, the overall figures, a row and a plot
per sequence.

`build_category_report` puts several runs (one per MVTec category) on one page, headed by the
per-category table of the paper's tables 4 and 5, with mean rows for textures, objects and all.

Pixel-level ROC and PR curves are drawn from a sample of pixels: every pixel of a class when it
has at most PIXELS_PER_CLASS, else a seeded uniform sample of that many, each sampled pixel
weighted by its class's inverse sampling rate so the drawn curves estimate the exact ones. The
areas printed beside them, and every metric of the report, are exact. The PRO curve is exact.

The package: `analysis` (the numbers: thinned curves, the pixel sample, the gallery's picks, the
training log, category means), `figures` (the plots and gallery tiles), `sections` (the HTML of
each section and the page), `wear_section`, and `build` (scoring once and writing the files).
Its public names are importable from `pitscope.report`.
"""

from pitscope.report.analysis import (
    CURVE_POINTS,
    HISTOGRAM_BINS,
    MAX_FPR,
    MVTEC_TEXTURES,
    PIXELS_PER_CLASS,
    SAMPLE_SEED,
    category_means,
    pick_gallery,
    pixel_sample,
    read_train_log,
    thin_curve,
)
from pitscope.report.build import (
    SECTIONS,
    CategoryRun,
    build_category_report,
    build_report,
    category_table,
    load_category_runs,
    report_from_evaluation,
)
from pitscope.report.figures import gallery_tile, heatmap_scale
from pitscope.report.sections import CSS, METRIC_LABELS
from pitscope.report.wear_section import read_wear

__all__ = [
    "CSS",
    "CURVE_POINTS",
    "HISTOGRAM_BINS",
    "MAX_FPR",
    "METRIC_LABELS",
    "MVTEC_TEXTURES",
    "PIXELS_PER_CLASS",
    "SAMPLE_SEED",
    "SECTIONS",
    "CategoryRun",
    "build_category_report",
    "build_report",
    "category_means",
    "category_table",
    "gallery_tile",
    "heatmap_scale",
    "load_category_runs",
    "pick_gallery",
    "pixel_sample",
    "read_train_log",
    "read_wear",
    "report_from_evaluation",
    "thin_curve",
]
