"""pitscope's training step in float32 and in bfloat16 on this CPU, side by side: what
`train.precision=bf16_where_native` chooses between.

    python benchmarks/precision.py                      # writes benchmarks/results/precision_<kind>.json and .md
    python benchmarks/precision.py --batch 8 --repeats 2 --output /tmp/precision   # quicker

A bare torchvision ResNet-18 step and pitscope's step (the `cpu` preset's network on a fixed
batch of pairs, no data loading) are each timed in float32 and in bfloat16 autocast, channels-last,
interleaved round-robin; the median over repeats is kept. `<kind>` names whether this CPU runs
bfloat16 natively (oneDNN's AVX-512 BF16 or AMX): `native_bf16` or `no_native_bf16`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from speed import (  # this folder is on sys.path when run as a script
    bare_train_step,
    command_lines,
    pitscope_train_step,
    synthetic_config,
    time_round_robin,
    training_shape,
)

from pitscope import runtime
from pitscope.benchmark import commit, machine
from pitscope.data import build_dataset

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="dataset images per step (2x through the net)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    cpu = torch.device("cpu")
    native = runtime.cpu_has_bf16()
    cfg = synthetic_config(args.size, args.batch, n_train=2 * args.batch)
    dataset = build_dataset(cfg.data, "train", cfg.seed)
    steps = {}
    for precision in ("fp32", "bf16"):
        cfg.train.precision = precision  # each step resolves it when built
        dtype = runtime.resolve_precision(precision, cpu)
        steps[f"bare_resnet18_{precision}"] = bare_train_step(
            2 * args.batch, training_shape(cfg), dtype, cfg.train.channels_last
        )
        steps[f"pitscope_step_{precision}"] = pitscope_train_step(cfg, dataset, end_to_end=False)
    times = time_round_robin(steps, args.steps, args.repeats)
    rates = {k: 2 * args.batch / v for k, v in times.items()}
    picks = runtime.precision_name(runtime.resolve_precision("bf16_where_native", cpu))
    record = {
        "benchmark": "precision",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join(["python", "benchmarks/precision.py", *sys.argv[1:]]),
        "settings": {
            "size": args.size,
            "batch": args.batch,
            "images_per_step": 2 * args.batch,
            "steps": args.steps,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "channels_last": cfg.train.channels_last,
        },
        "native_bf16": native,
        "bf16_where_native_picks": picks,
        "train_images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "bf16_over_fp32": {
            "bare_resnet18": round(rates["bare_resnet18_bf16"] / rates["bare_resnet18_fp32"], 3),
            "pitscope_step": round(rates["pitscope_step_bf16"] / rates["pitscope_step_fp32"], 3),
        },
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = "precision_" + ("native_bf16" if native else "no_native_bf16")
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(record))
    print(markdown(record))
    return 0


def markdown(r: dict) -> str:
    s, rate, ratio = r["settings"], r["train_images_per_s"], r["bf16_over_fp32"]
    has = "has" if r["native_bf16"] else "has no"
    return "\n".join(
        [
            "# Training precision on the CPU: float32 against bfloat16",
            "",
            f"Commit `{r['commit']}`, {r['date']}, {r['machine']['cpu']} ({r['machine']['cpu_count']} cores), "
            f"{s['threads']} threads, torch {r['machine']['torch']}. This CPU {has} native bfloat16, so "
            f"`train.precision=bf16_where_native` trains in {r['bf16_where_native_picks']} here.",
            "",
            f"{s['batch']} dataset images a step ({s['images_per_step']} through the network), "
            f"{s['size']} x {s['size']} px, channels-last {s['channels_last']}; median of {s['repeats']} interleaved repeats "
            f"of {s['steps']} step(s).",
            "",
            "| | float32 images/s | bfloat16 images/s | bfloat16 / float32 |",
            "|---|---|---|---|",
            f"| bare ResNet-18 step | {rate['bare_resnet18_fp32']} | {rate['bare_resnet18_bf16']} "
            f"| {ratio['bare_resnet18']} |",
            f"| pitscope step (the `cpu` preset's network, fixed batch) | {rate['pitscope_step_fp32']} "
            f"| {rate['pitscope_step_bf16']} | {ratio['pitscope_step']} |",
            "",
            *command_lines(r["invocation"]),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
