"""A few labelled defects: BSData's test numbers against k, the number of photos with marked pits.

    python benchmarks/bsdata_few_labels.py runs/hold/cpu_seed0/model.pt --k 0 5 20

The base model is a `cpu`-preset network trained with `data.holdout=positions`. For each k the k
labelled photos come from the label positions of the position split (neither validation nor
test): drawn by a seeded rule, position after position in turn, each uniformly among that
position's pitting photos not drawn yet. They go into a folder (the photo and BSData's own
labelme file, `label/<stem>.json`) that `pitscope.fitting.finetune` reads: the base network
trains further with the marked pits pasted beside its pseudo-defects and a segmentation head
learns to outline them, within finetune's budget; k = 0 runs the same fine-tune with the
pseudo-defects alone (the control: what the labels add), and the base model is scored as it is.
Every model is scored once on the test split (the test positions' photos and, as their own row,
the `KGT*` photos); each scoring appends a line to bsdata_test_looks.jsonl. Results:
benchmarks/results/<name>.json and .md, with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bsdata_cpu import provenance  # this folder is on sys.path when run as a script
from bsdata_localisation import log_look

from pitscope.benchmark import commit, machine
from pitscope.benchmark.few_labels import draw_labelled as draw
from pitscope.benchmark.few_labels import label_position_photos as label_photos
from pitscope.benchmark.few_labels import labelled_folder
from pitscope.data import build_dataset
from pitscope.data.bsdata import bsdata_root, read_positions
from pitscope.data.labelled import count_distinct_defects, load_labelled_defects
from pitscope.evaluation import evaluate, write_evaluation
from pitscope.fitting import FINETUNE, finetune, finetune_probe, fit
from pitscope.inference import Detector

RESULTS = Path(__file__).parent / "results"
ROUTES = ("probe", "network")  # finetune_probe, or finetune: the network trained further
COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max", "pixel_f1", "iou_median")


def measure(
    detector: Detector, model_path: Path, label: str, out_dir: Path, overrides: list[str], split: str = "test"
) -> dict:
    """Evaluate on `split`: "test" appends a line to the test-look log; "val" (the validation
    positions' photos) chooses settings and is logged nowhere."""
    cfg = detector.cfg
    result = evaluate(detector, build_dataset(cfg.data, split, cfg.seed), progress=True)
    write_evaluation(result, out_dir / f"eval_{split}")
    if split == "test":
        subsets = log_look(model_path, cfg, overrides, result, benchmark=f"few_labels {label}")["subsets"]
    else:
        subsets = {"validation positions": result["metrics"]}
    return {
        "metrics": result["metrics"],
        "subsets": subsets,
        "counts": result["counts"],
        "at_threshold": result["at_threshold"],
    }


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def write_markdown(record: dict, path: Path) -> None:
    lines = [
        "# A few labelled defects on BSData",
        "",
        provenance(record),
        "",
        f"Command: `{record['command']}`",
        "",
        f"Base model: `{record['base']}`. Fine-tune settings (before `--set`): `{' '.join(record['finetune'])}`"
        + (f", then `{' '.join(record['overrides'])}`" if record["overrides"] else "")
        + ".",
        "",
        (
            "All test photos (the test positions' and the `KGT*` photos), in %:"
            if record.get("split", "test") == "test"
            else "The validation positions' photos (they choose; no test photo is scored), in %:"
        ),
        "",
        "| run | k | marked regions | minutes | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for run in record["runs"]:
        m = run["metrics"]
        lines.append(
            f"| {run['label']} | {run['k']} | {run.get('regions', '–')} | {run.get('minutes', '–')} | "
            + " | ".join(pct(m.get(c)) for c in COLUMNS)
            + " |"
        )
    lines += [
        "",
        "Test positions only (no `KGT*`), in %:" if record.get("split", "test") == "test" else "The same, again:",
        "",
        "| run | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for run in record["runs"]:
        sub = next((v for name, v in run["subsets"].items() if "KGT" not in name), None)
        if sub is not None:
            lines.append(f"| {run['label']} | " + " | ".join(pct(sub.get(c)) for c in COLUMNS) + " |")
    lines += [
        "",
        "Labelled photos of each k (the label positions' pitting photos; a pit seen in two photos counts in each):",
        "",
    ]
    for run in record["runs"]:
        if run.get("photos"):
            lines.append(f"- k = {run['k']}: {', '.join(run['photos'])}")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="a model trained with data.holdout=positions")
    parser.add_argument("--k", type=int, nargs="+", default=[0, 5, 20])
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="seeds of the draw of the labelled photos")
    parser.add_argument("--route", choices=ROUTES, default="probe", help="how the labelled photos teach the model")
    parser.add_argument(
        "--split", choices=("val", "test"), default="val", help="val chooses settings; test is logged as a look"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting over finetune's for every fine-tune",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/few_labels"))
    parser.add_argument("--name", default="bsdata_few_labels")
    args = parser.parse_args()
    base = Detector.load(args.base)
    if base.cfg.data.holdout != "positions":
        raise SystemExit(f"{args.base}: trained without data.holdout=positions")
    root = bsdata_root(base.cfg.data.root)
    photos = label_photos(root, read_positions(base.cfg.data.positions_file))
    record = {
        "command": "python benchmarks/bsdata_few_labels.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "base": str(args.base),
        "route": args.route,
        "split": args.split,
        "finetune": list(FINETUNE) if args.route == "network" else ["score.defect_probe=true"],
        "overrides": args.overrides,
        "label_photos": {name: len(files) for name, files in photos.items()},
        "runs": [],
    }
    record["runs"].append(
        {
            "label": "base model, no fine-tune",
            "k": 0,
            **measure(base, args.base, "base", args.out / "base", [], args.split),
        }
    )
    for seed in args.seed:
        for k in args.k:
            if k == 0 and args.route == "probe":
                continue  # a probe needs marked photos; k = 0 is the base model
            out = args.out / f"{args.route}_k{k}_seed{seed}"
            t0 = time.perf_counter()
            if k == 0:  # the control: the same fine-tune, pseudo-defects alone
                overrides = [
                    *FINETUNE,
                    f"train.init_from={args.base}",
                    "model.weights=none",
                    f"output_dir={out}",
                    *args.overrides,
                ]
                detector = fit(base.cfg, overrides)
                names: list[str] = []
                regions = 0
            else:
                names = draw(photos, k, seed)
                folder = labelled_folder(root, names, out / "labelled")
                overrides = list(args.overrides)
                tune = finetune_probe if args.route == "probe" else finetune
                detector = tune(args.base, folder, out, overrides)
                regions = count_distinct_defects(load_labelled_defects(folder))
            assert detector is not None
            minutes = round((time.perf_counter() - t0) / 60, 1)
            label = "fine-tuned, pseudo-defects only" if k == 0 else f"{args.route}, k labelled photos"
            record["runs"].append(
                {
                    "label": label,
                    "k": k,
                    "seed": seed,
                    "photos": names,
                    "regions": regions,
                    "minutes": minutes,
                    **measure(detector, out / "model.pt", f"k={k}", out, overrides, args.split),
                }
            )
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
            write_markdown(record, RESULTS / f"{args.name}.md")
    print((RESULTS / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
