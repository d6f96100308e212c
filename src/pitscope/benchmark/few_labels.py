"""The `few_labels` suite: BSData's test numbers against k, the number of photos with marked pits.

    pitscope benchmark --suite few_labels --base runs/cpu_positions/model.pt --k 0 5 20 --seeds 0 1 2

The base model is a `cpu`-preset network trained with `data.holdout=positions`; k = 0 is that model
as it is. For each k and seed the k labelled photos come from the label positions of the position
split (neither validation nor test; `draw_labelled`), and `finetune_probe` fits a defect probe on
them. Beside it, the supervised-only anchor: the same network's stage features and a probe
fitted on the k labelled photos alone (their marked and unmarked positions; no defect-free
photos, no Gaussian distances). Every model is scored on the test split (the test positions'
photos, and the `KGT*` photos as their own subset), each scoring appended to OUTPUT/TEST_LOOKS;
the table reads the test positions' subset.
The anchor runs for the seeds of `anchor_seeds` only. Results: OUTPUT/few_labels.json and .md
with the command, commit and machine, written after every row; a rerun with the same base keeps
the rows already there and runs only the others (another k or seed, or what a crash left).
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pitscope.benchmark.provenance import TEST_LOOKS, append_test_look, commit, machine
from pitscope.data import build_dataset
from pitscope.data.bsdata import bsdata_root, position_files, read_positions
from pitscope.data.labelled import LabelledDefect, count_distinct_defects, load_labelled_defects
from pitscope.evaluation import evaluate, write_evaluation
from pitscope.inference import Detector

log = logging.getLogger(__name__)

BASE_RUN, PROBE_RUN, ANCHOR_RUN = "unsupervised (the base model)", "defect probe", "supervised only"
COLUMNS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max", "pixel_f1", "iou_median")


@dataclass
class FewLabelsOptions:
    """What `run_few_labels` runs: a base model, the k values and the seeds of the draw."""

    base: str
    ks: list[int] = field(default_factory=lambda: [0, 5, 20])
    seeds: list[int] = field(default_factory=lambda: [0])
    anchor_seeds: list[int] = field(default_factory=lambda: [0])  # seeds whose k > 0 get the anchor too
    output: str = "benchmarks/results"
    runs_dir: str = "runs/few_labels"
    progress: bool = True
    command: str = ""


def label_position_photos(root: Path, positions: dict) -> dict[str, list[str]]:
    """{label position: its pitting photos (those with a label file), sorted by name (= time)}."""
    by_name = {key[0]: files for key, files in position_files(root).items()}
    return {
        name: sorted(f for f in by_name[name] if (root / "label" / f"{Path(f).stem}.json").is_file())
        for name in positions["label"]
    }


def draw_labelled(photos: dict[str, list[str]], k: int, seed: int) -> list[str]:
    """k photos, position after position in turn, each uniformly among that position's photos not
    drawn yet. The same seed gives the same photos, and a smaller k the first of a larger k's."""
    rng = np.random.default_rng(seed)
    left = {name: list(files) for name, files in photos.items()}
    order = sorted(left)
    chosen: list[str] = []
    while len(chosen) < k:
        name = order[len(chosen) % len(order)]
        if not left[name]:
            if not any(left.values()):
                raise ValueError(f"the label positions hold only {len(chosen)} pitting photos, fewer than k = {k}")
            order.remove(name)
            continue
        chosen.append(left[name].pop(int(rng.integers(len(left[name])))))
    return chosen


def labelled_folder(root: Path, names: list[str], folder: Path) -> Path:
    """A folder with the photos and their labelme files (label/<stem>.json), as finetune reads."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "label").mkdir(parents=True)
    for name in names:
        (folder / name).symlink_to((root / "data" / name).resolve())
        (folder / "label" / f"{Path(name).stem}.json").symlink_to(
            (root / "label" / f"{Path(name).stem}.json").resolve()
        )
    return folder


def distinct_pits(defects: list[LabelledDefect], position_of: dict[str, str]) -> int:
    """An estimate of how many distinct pits the marked photos hold: consecutive photos of one
    position show the same pits at the same place, so the masks of one position and crop (the
    `_1` / `_2` at the end of BSData's names) are joined (logical or, when of one size) and the
    8-connected regions of the union counted."""
    unions: dict[tuple, np.ndarray] = {}
    for defect in defects:
        name = defect.path.name
        key = (position_of.get(name, name), Path(name).stem.rsplit("_", 1)[-1], defect.mask.shape)
        unions[key] = unions[key] | defect.mask if key in unions else defect.mask.copy()
    return count_distinct_defects(
        [LabelledDefect(Path(str(k)), "", np.zeros((*m.shape, 3), np.uint8), m) for k, m in unions.items()]
    )


def _row(
    label: str, k: int, seed: int | None, detector: Detector, out: Path, looks: Path, progress: bool, **extra
) -> dict:
    """Score `detector` on the test split once, logged as a look in `looks`; the table's row."""
    result = evaluate(detector, build_dataset(detector.cfg.data, "test", detector.cfg.seed), progress=progress)
    write_evaluation(result, out / "eval")
    look = append_test_look(looks, out / "model.pt", detector.cfg, [], result, benchmark=f"few_labels {label} k={k}")
    return {
        "run": label,
        "k": k,
        "seed": seed,
        "commit": look["commit"],
        **extra,
        "metrics": result["metrics"],
        "subsets": look["subsets"],
    }


def test_positions(row: dict) -> dict:
    """The metrics of a row's test positions: `evaluate`'s "positions" subset (the `KGT*` photos
    of the other screw type are "other_type")."""
    return row["subsets"]["positions"]


def run_few_labels(options: FewLabelsOptions) -> dict:
    """Run the suite; writes OUTPUT/few_labels.json and .md after every row. Returns the record."""
    from pitscope.fitting import anchor_probe, finetune_probe

    base = Detector.load(options.base)
    if base.cfg.data.holdout != "positions":
        raise ValueError(f"{options.base}: trained without data.holdout=positions; the suite needs the position split")
    root = bsdata_root(base.cfg.data.root)
    photos = label_position_photos(root, read_positions(base.cfg.data.positions_file))
    position_of = {name: position for position, names in photos.items() for name in names}
    runs = Path(options.runs_dir)
    record: dict = {
        "suite": "few_labels",
        "command": options.command,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "base": options.base,
        "label_photos": {name: len(files) for name, files in photos.items()},
        "rows": [],
    }
    output = Path(options.output)
    looks = output / TEST_LOOKS
    done: set[tuple[str, int, int | None]] = set()
    previous = output / "few_labels.json"
    if previous.is_file():  # an earlier run of the same base: its rows stay, and are not run again
        earlier = json.loads(previous.read_text())
        if earlier.get("base") == options.base:
            record["rows"] = earlier["rows"]
            record["earlier_commands"] = [*earlier.get("earlier_commands", []), earlier["command"]]
            done = {(r["run"], r["k"], r["seed"]) for r in record["rows"]}
            log.info("%d rows of %s kept from the earlier run", len(done), previous)
        else:
            log.warning("%s holds the suite of another base model (%s): it is replaced", previous, earlier.get("base"))
    if 0 in options.ks and (BASE_RUN, 0, None) not in done:
        record["rows"].append(_row(BASE_RUN, 0, None, base, runs / "base", looks, options.progress))
        _write(record, output)
    for seed in options.seeds:
        for k in sorted(k for k in options.ks if k > 0):
            if (PROBE_RUN, k, seed) in done and ((ANCHOR_RUN, k, seed) in done or seed not in options.anchor_seeds):
                continue
            names = draw_labelled(photos, k, seed)
            out = runs / f"k{k}_seed{seed}"
            folder = labelled_folder(root, names, out / "labelled")
            marked = load_labelled_defects(folder)
            regions = {"regions": count_distinct_defects(marked), "pits": distinct_pits(marked, position_of)}
            if (PROBE_RUN, k, seed) not in done:
                start = time.perf_counter()
                tuned = finetune_probe(options.base, folder, out, progress=options.progress)
                minutes = round((time.perf_counter() - start) / 60, 1)
                extra = {"photos": names, **regions, "minutes": minutes}
                record["rows"].append(_row(PROBE_RUN, k, seed, tuned, out, looks, options.progress, **extra))
                _write(record, output)
            if seed in options.anchor_seeds and (ANCHOR_RUN, k, seed) not in done:
                anchor = anchor_probe(options.base, folder, progress=options.progress)
                extra = {"photos": names, **regions}
                row = _row(ANCHOR_RUN, k, seed, anchor, out / "anchor", looks, options.progress, **extra)
                record["rows"].append(row)
                _write(record, output)
    return record


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def format_few_labels(record: dict) -> str:
    """The curve: per run kind and k, the test positions' metrics (mean ± sd over seeds), in %."""
    lines = [
        "# A few labelled defects on BSData (`pitscope benchmark --suite few_labels`)",
        "",
        f"Commit `{record['commit']}`, {record['date']}, {record['machine'].get('platform')}, "
        f"{record['machine'].get('torch_threads')} threads, torch {record['machine'].get('torch')}.",
        "",
        f"Command: `{record['command']}`"
        + "".join(f", after `{c}`" for c in reversed(record.get("earlier_commands", [])))
        + " (each row's commit is in the JSON)",
        "",
        f"Base model: `{record['base']}`. Label positions' pitting photos: "
        + ", ".join(f"{n} {c}" for n, c in record["label_photos"].items())
        + ".",
        "",
        "The test positions' photos (no `KGT*`), in %; mean ± standard deviation over the seeds of the draw:",
        "",
        "| run | k | seeds | marked regions | distinct pits | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in record["rows"]:
        groups.setdefault((row["run"], row["k"]), []).append(row)
    for (run, k), rows in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        cells = []
        for column in COLUMNS:
            values = [test_positions(r).get(column) for r in rows]
            present = [float(v) for v in values if v is not None]
            cells.append(_mean_sd(present) if len(present) == len(values) else "–")
        regions = ", ".join(str(r["regions"]) for r in rows if "regions" in r) or "–"
        pits = ", ".join(str(r["pits"]) for r in rows if "pits" in r) or "–"
        lines.append(f"| {run} | {k} | {len(rows)} | {regions} | {pits} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Marked regions: the 8-connected regions of the k masks, a pit seen in two photos counted in each; "
        "distinct pits: the regions of the union of each position's masks (`distinct_pits`), per seed.",
        "",
        "Labelled photos per k and seed:",
        "",
    ]
    for row in record["rows"]:
        if row.get("photos") and row["run"] == PROBE_RUN:
            lines.append(f"- k = {row['k']}, seed {row['seed']}: {', '.join(row['photos'])}")
    return "\n".join(lines) + "\n"


def _write(record: dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "few_labels.json").write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
    (output / "few_labels.md").write_text(format_few_labels(record))


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
