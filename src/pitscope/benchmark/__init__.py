"""Benchmark suites: the paper's comparisons rerun with one command, on one split, one ResNet-18
and one training budget, with the paper's numbers beside ours.

    pitscope benchmark --suite table3 --seeds 0 1 --budget 45

Suites (`SUITES`): `table3` (ours vs CutPaste vs SSPCAB vs anomalib's PaDiM and PatchCore),
`table6` (HOG vs RGB target), `table7` (the two tasks), `table8` (pseudo-defect kinds), `table9`
(feature mask), `cutpaste` (CutPaste's three variants) on BSData, and `mvtec` (tables 4-5:
per category, means of objects, textures and all) on a user's own MVTec AD copy.

Every variant (`VARIANTS`) is a list of config overrides on one preset (`cpu` by default;
`paper` is the paper's 800 GPU epochs); `--budget M` gives every run the same M training
minutes (epochs capped at the paper's 800, so the clock is what stops them). A run lives in
RUNS_DIR/<variant>_seed<S>_<key>, the key a hash of its whole config: a finished run's
result.json is reused, an interrupted one resumes from its checkpoint, and the same variant is
trained once for every suite it appears in. The suite's table goes to OUTPUT/<suite>.json and
OUTPUT/<suite>.md with the commit, the machine and the command.
"""

from pitscope.benchmark.provenance import CODE_PATHS, commit, machine
from pitscope.benchmark.runs import (
    RESULT_FILE,
    BenchmarkOptions,
    common_overrides,
    config_key,
    run_suite,
    run_variant,
    summarise,
    variant_config,
)
from pitscope.benchmark.suites import (
    METRICS,
    MVTEC_OBJECTS,
    MVTEC_TEXTURES,
    PAPER,
    PAPER_EPOCHS,
    SUITES,
    TASK_ABLATIONS,
    TITLES,
    VARIANTS,
    Variant,
    paper_mvtec,
)
from pitscope.benchmark.tables import format_markdown

__all__ = [
    "CODE_PATHS",
    "METRICS",
    "MVTEC_OBJECTS",
    "MVTEC_TEXTURES",
    "PAPER",
    "PAPER_EPOCHS",
    "RESULT_FILE",
    "SUITES",
    "TASK_ABLATIONS",
    "TITLES",
    "VARIANTS",
    "BenchmarkOptions",
    "Variant",
    "commit",
    "common_overrides",
    "config_key",
    "format_markdown",
    "machine",
    "paper_mvtec",
    "run_suite",
    "run_variant",
    "summarise",
    "variant_config",
]
