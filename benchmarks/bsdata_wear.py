"""BSData's wear sequences measured by models that never saw them: k-fold over sequences.

    python benchmarks/bsdata_wear.py --folds 2 --budget-minutes 10     # train every fold, measure, record
    python benchmarks/bsdata_wear.py --folds 2 --reuse-models          # measure again with the trained folds
    python benchmarks/bsdata_wear.py --models runs/x/fold0/model.pt ...  # measure with models trained elsewhere

BSData's 27 `wear_dev` names make 15 distinct sequences (pitscope.wear). They are dealt into k
folds (`wear.sequence_folds`, seeded); fold i's model trains with the `cpu` preset on the
defect-free images of the other folds only (`wear.fold_split`, written to RUNS/fold<i>/split.json):
`pitscope train --config cpu --set data.split_file=... --set train.budget_minutes=B`. Then
`pitscope wear` measures every sequence with the model of its fold and checks that no model
measures an image it trained on. Results go to benchmarks/results/<name>.json and .md with the
commands, commit, machine and the split.

With --models nothing is trained: the given models (for example the cross-position folds'
networks, `data.holdout=positions` with `data.position_fold`) measure every sequence that one of
them never trained on, each sequence by the first such model; the others are listed as unmeasured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bsdata_cpu import commit, machine, note, provenance  # benchmarks/ is on sys.path when run as a script

from pitscope.benchmark.provenance import TEST_LOOKS, config_hash
from pitscope.data.bsdata import bsdata_root, read_positions, write_split
from pitscope.data.sequences import read_sequences
from pitscope.model_file import stored_config
from pitscope.wear import fold_split, sequence_folds

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def pitscope() -> str:
    """The pitscope command of this interpreter's environment (plain `pitscope` from PATH otherwise)."""
    beside = Path(sys.executable).parent / "pitscope"
    return str(beside) if beside.is_file() else "pitscope"


def run(cmd: list[str], log: Path) -> dict:
    """Run a pitscope command (logged to `log`); returns its command line and wall minutes."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        subprocess.run([pitscope(), *cmd[1:]], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return {"command": shlex.join(cmd), "wall_minutes": round((time.perf_counter() - t0) / 60, 1)}


def train_fold(fold: int, held_out: tuple[str, ...], sequences, root: Path, runs: Path, args) -> dict:
    """Write fold `fold`'s split and train its model (unless --reuse-models finds it)."""
    out = runs / f"fold{fold}"
    split = fold_split(root, sequences, held_out, seed=args.seed)
    split_file = write_split(split, out / "split.json")
    info = {
        "fold": fold,
        "sequences": list(held_out),
        "training_images": len(split["train"]),
        "output_dir": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
    }
    if args.reuse_models and (out / "model.pt").is_file():
        return info
    cmd = [
        "pitscope",
        "train",
        "--config",
        "cpu",
        "--quiet",
        "--output-dir",
        str(out),
        "--set",
        f"data.split_file={split_file}",
        "--set",
        f"data.n_train_normal={len(split['train'])}",
        "--set",
        f"train.budget_minutes={args.budget_minutes}",
        "--set",
        f"data.image_size={args.image_size}",
        *(["--set", f"data.root={root}"] if args.root else []),
        *[x for extra in args.extra for x in ("--set", extra)],
    ]
    return {**info, **run(cmd, runs / f"fold{fold}.log")}


def with_references(fold: dict, sequences, k: int, runs: Path) -> str:
    """Fit fold's model again with the first k photos of each of its sequences as references
    (`pitscope refit --references`); the new model's path. Records in `fold` the command, the
    minutes and how many references carry marked pitting."""
    mine = [s for s in sequences if s.name in set(fold["sequences"])]
    photos = [r for s in mine for r in s.records[:k]]
    model = runs / f"fold{fold['fold']}" / "model.pt"
    out = runs / f"fold{fold['fold']}" / f"model_refs{k}.pt"
    cmd = [
        "pitscope",
        "refit",
        str(model),
        "--output",
        str(out),
        "--quiet",
        "--references",
        *(str(r.path) for r in photos),
    ]
    done = run(cmd, runs / f"fold{fold['fold']}_refs{k}.log")
    fold["references"] = {
        "per_sequence": k,
        "photos": len(photos),
        "with_pitting": sum(r.label == 1 for r in photos),
        "command": f"pitscope refit {model.name} --output {out.name} --quiet --references <the first {k} photos of "
        "each of the fold's sequences>",
        "wall_minutes": done["wall_minutes"],
    }
    return str(out)


def by_role(sequences: list[dict], positions: dict) -> list[dict]:
    """The measures per position role of the versioned position split (test, validation, label):
    sequences, those with pitting, mean Spearman over those that have one, false alerts among
    clean images. A sequence is named as its position."""
    rows = []
    for role in ("test", "validation", "label"):
        chosen = [s for s in sequences if s["sequence"] in set(positions[role])]
        rhos = [s["spearman"] for s in chosen if s["spearman"] is not None]
        false_alerts = sum(s["alert"]["false_alerts"] for s in chosen)
        clean = sum(s["alert"]["clean_images"] for s in chosen)
        rows.append(
            {
                "role": role,
                "sequences": len(chosen),
                "with_pitting": sum(s["first_true_days"] is not None for s in chosen),
                "spearman_mean": float(np.mean(rhos)) if rhos else None,
                "spearman_n": len(rhos),
                "false_alerts": false_alerts,
                "clean_images": clean,
                "false_alert_rate": false_alerts / clean if clean else None,
            }
        )
    return rows


def log_test_look(record: dict, models: list[str]) -> None:
    """Append one line to the test-looks log when the run measured test positions' sequences:
    the commit, the models and their config hashes, the alert rule and the test row of `by_role`."""
    test = next(r for r in record["by_role"] if r["role"] == "test")
    if not test["sequences"]:
        return
    hashes = [config_hash(stored_config(model)) for model in models]
    look = {
        "commit": record["commit"],
        "date": record["date"][:10],
        "benchmark": "bsdata_wear",
        "name": record["name"],
        "models": [str(Path(m).relative_to(REPO)) if Path(m).is_relative_to(REPO) else m for m in models],
        "config_hash": hashes,
        "rule": record["rule"]["text"],
        "test_sequences": test,
    }
    with (RESULTS / TEST_LOOKS).open("a") as fh:
        fh.write(json.dumps(look) + "\n")


def left_out_with_pitting(record: dict) -> int:
    """How many of the photos left out as references or calibration photos carry marked pitting."""
    references = sum(f.get("references", {}).get("with_pitting", 0) for f in record["folds"])
    calibrated = sum(
        c["with_pitting"] for m in record["split"]["measured_by"]["models"] for c in m.get("calibrated", {}).values()
    )
    return references + calibrated


def write_markdown(record: dict, path: Path) -> None:
    def num(value, scale=1.0, digits=2):
        return "–" if value is None else f"{scale * value:.{digits}f}"

    split, o, a = record["split"], record["overall"], record["overall"]["alert"]
    lines = [
        "# BSData wear sequences, k-fold over sequences",
        "",
        provenance(record),
        *note(record),
        "",
        f"Split: {split['description']}",
        "",
        "| fold | sequences | training images | epochs | training min | stopped by budget |",
        "|---|---|---|---|---|---|",
    ]
    for fold in record["folds"]:
        t = fold.get("training") or {}
        lines.append(
            f"| {fold['fold']} | {len(fold['sequences'])} | {fold['training_images']} | {t.get('epochs')} "
            f"| {t.get('minutes')} | {t.get('stopped_by_budget')} |"
        )
    lines += [
        "",
        f"Alert rule: {record['rule']['text']}.",
        "",
        f"Overall ({o['sequences']} sequences, {o['with_pitting']} with pitting, {o['images']} images; "
        f"{o['trained_on_measured_images']} measured images were training images"
        + (
            f"; {o['reference_images_left_out']} reference or calibration photos not measured, "
            f"{left_out_with_pitting(record)} of them with marked pitting"
            if o.get("reference_images_left_out")
            else ""
        )
        + "):",
        "",
        f"- Spearman correlation of predicted and true area: mean over sequences {num(o['spearman']['mean'])} "
        f"(median {num(o['spearman']['median'])}, n = {o['spearman']['n']}); pooled over images "
        f"{num(o['spearman']['pooled'])}",
        f"- mean absolute error of the area: {num(o['mae'], 100, 3)} % of the surface",
        f"- first flagged image (score > threshold), days before the first true pitting: median "
        f"{num(o['flag_lead_days']['median'], digits=1)}",
        f"- alert: {a['alerted']} of {o['with_pitting']} sequences with pitting alerted ({a['early']} before the "
        f"first true pitting, {a['late']} after, {a['missed']} missed); lead median "
        f"{num(a['lead_days']['median'], digits=1)} days, mean {num(a['lead_days']['mean'], digits=1)}",
        f"- false alerts: {a['false_alerts']} of {a['clean_images']} clean images "
        f"({num(a['false_alert_rate'], 100, 1)} %); {a['clean_sequences_alerted']} of {o['without_pitting']} "
        "sequences without pitting alerted",
        "",
        "By the roles of pitscope's position split (`src/pitscope/data/bsdata_positions.json`; a sequence is "
        "one position):",
        "",
        "| positions | sequences | with pitting | mean Spearman (n) | false alerts / clean images |",
        "|---|---|---|---|---|",
        *[
            f"| {r['role']} | {r['sequences']} | {r['with_pitting']} | {num(r['spearman_mean'])} ({r['spearman_n']}) "
            f"| {r['false_alerts']} / {r['clean_images']} ({num(r['false_alert_rate'], 100, 1)} %) |"
            for r in record.get("by_role", [])
        ],
        "",
        "| sequence | fold | first flagged (day) | first true pitting (day) | growth pred / true (%-points a day) "
        "| Spearman | MAE (%) | first alert (day) | lead (days) | false alerts / clean images |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fold_of = {name: fold["fold"] for fold in record["folds"] for name in fold["sequences"]}
    for s in record["sequences"]:
        alert = s["alert"]
        lines.append(
            f"| {s['sequence']} | {fold_of.get(s['sequence'], '?')} | {num(s['first_flagged_days'], digits=1)} "
            f"| {num(s['first_true_days'], digits=1)} | {num(s['growth_predicted_per_day'], 100, 3)} / "
            f"{num(s['growth_true_per_day'], 100, 3)} | {num(s['spearman'])} | {num(s['mae'], 100, 3)} "
            f"| {num(alert['first_alert_days'], digits=1)} | {num(alert['lead_days'], digits=1)} "
            f"| {alert['false_alerts']} / {alert['clean_images']} |"
        )
    lines += [
        "",
        "Areas are fractions of the photograph: the predicted region is the anomaly map above the model's pixel "
        "threshold, the true one the pitting polygons. Days count from a sequence's first image. Growth: "
        "least-squares slope of the area from the first true pitting on. Lead: days from the first alert to "
        "the first true pitting (negative: after it). Clean images: those before the first true pitting, where "
        "an alert is false (an early warning included).",
        "",
        "Commands:",
        "",
        f"    {record['invocation']}",
        *[f"    {fold['command']}" for fold in record["folds"] if fold.get("command")],
        f"    {record['wear_command']}",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=2, help="k of the k-fold split over sequences (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the deal of sequences into folds")
    parser.add_argument("--budget-minutes", type=float, default=10, help="training minutes per fold (default: 10)")
    parser.add_argument("--image-size", type=int, default=256, help="model input size (default: 256, the preset's)")
    parser.add_argument("--root", help="the BSData folder (default: $PITSCOPE_BSDATA or ../shared/datasets/bsdata)")
    parser.add_argument("--runs-dir", default="runs/bench/wear")
    parser.add_argument("--name", default="bsdata_wear", help="result file name under benchmarks/results/")
    parser.add_argument("--reuse-models", action="store_true", help="do not train a fold whose model.pt exists")
    parser.add_argument("--alert-area", default="0.005", help="pitscope wear --alert-area (default: 0.005)")
    parser.add_argument("--alert-growth", default="0.001", help="pitscope wear --alert-growth (default: 0.001)")
    parser.add_argument("--alert-window-days", default="1", help="pitscope wear --alert-window-days (default: 1)")
    parser.add_argument("--alert-confirm", default="1", help="pitscope wear --alert-confirm (default: 1)")
    parser.add_argument("--alert-smooth", default="1", help="pitscope wear --alert-smooth (default: 1)")
    parser.add_argument(
        "--references",
        type=int,
        default=0,
        metavar="K",
        help="fit each fold's scorers again with the first K photos of each of its sequences as references "
        "(pitscope refit --references) and measure the sequences without them",
    )
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra --set for every training")
    parser.add_argument(
        "--calibrate-first",
        type=int,
        default=0,
        metavar="K",
        help="pitscope wear --calibrate-first: each sequence's thresholds from its first K photos (default: 0)",
    )
    parser.add_argument("--calibrate-quantile", help="pitscope wear --calibrate-quantile (default: the model's)")
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help="measure with these trained models instead of training folds (each sequence by the first model "
        "that never trained on it)",
    )
    args = parser.parse_args()
    if args.models and (args.references or args.reuse_models):
        parser.error("--models measures the given models as they are: no --references or --reuse-models")

    t0 = time.perf_counter()
    root = bsdata_root(args.root)
    runs = (REPO / args.runs_dir).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    sequences = read_sequences(root)
    if args.models:
        missing = [m for m in args.models if not Path(m).is_file()]
        if missing:
            parser.error(f"no model file: {', '.join(missing)}")
        models = [str(Path(m).resolve()) for m in args.models]
        folds = [{"fold": f, "output_dir": str(Path(m).parent)} for f, m in enumerate(models)]
    else:
        folds = [
            train_fold(f, held_out, sequences, root, runs, args)
            for f, held_out in enumerate(sequence_folds(sequences, args.folds, args.seed))
        ]
        models = [str(runs / f"fold{f['fold']}" / "model.pt") for f in folds]
    for fold, model in zip(folds, models):
        fold["training"] = torch.load(model, map_location="cpu", weights_only=True)["metadata"].get("training")
    if args.references:
        models = [with_references(fold, sequences, args.references, runs) for fold in folds]
    wear_cmd = [
        "pitscope",
        "wear",
        *models,
        "--out",
        str(runs / "wear"),
        "--quiet",
        "--alert-area",
        args.alert_area,
        "--alert-growth",
        args.alert_growth,
        "--alert-window-days",
        args.alert_window_days,
        "--alert-confirm",
        args.alert_confirm,
        "--alert-smooth",
        args.alert_smooth,
        *(["--root", str(root)] if args.root else []),
        *(["--calibrate-first", str(args.calibrate_first)] if args.calibrate_first else []),
        *(["--calibrate-quantile", args.calibrate_quantile] if args.calibrate_quantile else []),
    ]
    wear_run = run(wear_cmd, runs / "wear.log")
    wear = json.loads((runs / "wear" / "wear.json").read_text())
    if args.models:  # each given model's sequences and training images, as pitscope wear assigned them
        for fold, measured in zip(folds, wear["split"]["models"]):
            fold.update(sequences=measured["sequences"], training_images=measured["training_images"])
    record = {
        "benchmark": "bsdata_wear",
        "name": args.name,
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join(["python", *sys.argv]),
        "wear_command": wear_run["command"],
        "wall_minutes": round((time.perf_counter() - t0) / 60, 1),
        "split": {
            "description": (
                f"{len(models)} given models (no training here); each measured the sequences none of its "
                "training images belong to, each sequence by the first such model; sequences every model trained "
                "on are not measured."
                if args.models
                else f"{args.folds}-fold over BSData's {len(sequences)} distinct wear sequences (its 27 wear_dev names; "
                f"names listing the same images merged), dealt with seed {args.seed}; each fold's model trained on "
                "the defect-free images of the other folds' sequences only, with the cpu preset at "
                f"{args.image_size} px for at most {args.budget_minutes:g} minutes, and measured only its own "
                "fold's sequences."
                + (
                    f" Each fold's scorers were then fitted again with the first {args.references} photos of each "
                    "of its own sequences as references (`pitscope refit --references`; the network unchanged); "
                    "those photos are not measured."
                    if args.references
                    else ""
                )
            )
            + (
                f" Each sequence's thresholds were calibrated on its first {args.calibrate_first} photos "
                f"(`pitscope wear --calibrate-first`, quantile {args.calibrate_quantile or 'of the model'}); those "
                "photos are not measured."
                if args.calibrate_first
                else ""
            ),
            "references_per_sequence": args.references,
            "calibrate_first": args.calibrate_first,
            "folds": args.folds,
            "seed": args.seed,
            "image_size": args.image_size,
            "budget_minutes": args.budget_minutes,
            "measured_by": wear["split"],
        },
        "folds": folds,
        "rule": wear["rule"],
        "overall": wear["overall"],
        "sequences": wear["sequences"],
        "by_role": by_role(wear["sequences"], read_positions()),
        "curves": wear["curves"],
        "unmeasured": wear["unmeasured"],
    }
    record = json.loads(json.dumps(record).replace(f"{REPO}/", ""))  # paths as from the repository's root
    log_test_look(record, models)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1))
    write_markdown(record, RESULTS / f"{args.name}.md")
    print((RESULTS / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
