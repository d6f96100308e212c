"""Training and inference speed at 256 px, as ratios to a bare torchvision ResNet-18 in the same run.

    python benchmarks/speed.py                 # writes benchmarks/results/speed.json and .md
    python benchmarks/speed.py --repeats 3 --steps 2 --output /tmp/speed   # quicker

Where the `cpu` preset trains in float32 (a CPU without native bfloat16), the files are
speed_float32.json and .md instead, so the two machine kinds keep their own records.

Training: images through the network per second. A pitscope step takes B dataset images and
feeds 2B (each with its pseudo-defective copy), so the bare ResNet-18 step is timed on 2B
images too, with a BCE loss on one logit, SGD, no data loading. It is timed twice: in plain
float32 (what a bare script does) and with the precision and memory format the `cpu` preset's
`train.precision` (bf16_where_native) and `train.channels_last` resolve to on this machine (the
fair measure of pitscope's own overhead). pitscope is timed twice too: the network step alone on a fixed
batch, and end to end (pseudo-defects drawn, batches built, step) as `pitscope train` runs.
Inference: a fitted Detector (image score + anomaly map, float32) against a bare ResNet-18
forward, batched (images/s) and one image at a time (latency). Variants are interleaved
round-robin and the median over repeats is kept, so a busy moment hits all of them alike.
Peak memory: the resident set of a fresh process that runs training steps at batch 32.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from pitscope.augment import PseudoDefects
from pitscope.benchmark import commit, machine
from pitscope.config import load_config, rescale_images
from pitscope.data import build_dataset
from pitscope.distributed import DistContext
from pitscope.inference import Detector
from pitscope.models.network import DoubleSelfSupervisedNet
from pitscope.runtime import cpu_has_bf16, precision_name, resolve_precision
from pitscope.training import EpochBatches, PseudoDefectPairs, compute_loss, sgd

REPO = Path(__file__).resolve().parents[1]
PITSCOPE_TRAIN = ("pitscope_step", "pitscope_end_to_end", "pitscope_end_to_end_1_worker")


def synthetic_config(size: int, batch: int, n_train: int):
    """The `cpu` preset on the built-in synthetic data (no download, same cost per image as any
    data), `size` px high: the width and the training crops in the preset's ratio to its height."""
    cfg = load_config(
        "cpu",
        [
            "data.format=synthetic",
            f"data.synthetic.n_train={n_train}",
            "data.synthetic.n_test_normal=2",
            "data.synthetic.n_test_defect=2",
            f"train.batch_size={batch}",
            "train.device=cpu",
        ],
    )
    rescale_images(cfg, size)
    return cfg


def training_shape(cfg) -> tuple[int, int]:
    """What one training image is: a crop, or the whole image."""
    crop = cfg.train.crop_size
    return (crop, crop) if crop is not None else cfg.data.shape


def _autocast(dtype):
    return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)


def bare_train_step(n_images: int, shape: tuple[int, int], dtype, channels_last: bool):
    """One SGD step of torchvision's ResNet-18 on n_images random images, BCE on one logit."""
    model = torchvision.models.resnet18(num_classes=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(n_images, 3, *shape).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (n_images,)).float()

    def step():
        with _autocast(dtype):
            loss = F.binary_cross_entropy_with_logits(model(x).reshape(-1).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def pitscope_train_step(cfg, dataset, end_to_end: bool, num_workers: int = 0):
    """pitscope's training step; end_to_end draws pseudo-defects and builds batches as `train` does
    (in the main process, or in `num_workers` DataLoader workers)."""
    maker = PseudoDefects(cfg.augment)
    model = DoubleSelfSupervisedNet(cfg.model, maker.n_kinds)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = sgd(model, cfg, torch.device("cpu"))
    dtype = resolve_precision(cfg.train.precision, torch.device("cpu"))
    pairs = PseudoDefectPairs(dataset, maker, cfg.seed, cfg.train.crop_size)
    # the training loop's loader: one over every epoch, its workers started once
    order = EpochBatches(len(pairs), cfg.train.batch_size, True, cfg.seed, 0, 10**6, DistContext())
    batches = iter(DataLoader(pairs, batch_sampler=order, num_workers=num_workers))
    fixed = next(batches) if not end_to_end else None

    def next_batch():
        return next(batches) if end_to_end else fixed

    def step():
        batch = [t.contiguous(memory_format=fmt) if t.ndim == 4 else t for t in next_batch()]
        with _autocast(dtype):
            loss, _ = compute_loss(model, cfg, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bare_forward(batch: int, shape: tuple[int, int], channels_last: bool = False):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torchvision.models.resnet18().eval().to(memory_format=fmt)
    x = torch.randn(batch, 3, *shape).contiguous(memory_format=fmt)

    def step():
        with torch.inference_mode():
            model(x)

    return step


def detector_forward(detector: Detector, batch: int):
    x = torch.randn(batch, 3, *detector.cfg.data.shape)

    def step():
        detector(x)  # (scores (B,), maps (B, H, W)), inference mode inside

    return step


def bare_photo_forward(height: int, width: int):
    """One float32 ResNet-18 forward over a whole photo at its own size."""
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, height, width)

    def step():
        with torch.inference_mode():
            model(x)

    return step


def detector_photo(detector: Detector, height: int, width: int):
    """What a user gets for one photo: decoding from an array, score, map at the photo's size and
    its predicted regions (connected components)."""
    import numpy as np

    photo = np.random.default_rng(0).integers(60, 200, size=(height, width, 3), dtype=np.uint8)

    def step():
        detector.predict(photo).outline()

    return step


def time_round_robin(steps: dict, n_steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each callable, interleaved; one untimed warm-up step each."""
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(n_steps):
                fn()
            times[name].append((time.perf_counter() - t0) / n_steps)
    return {name: statistics.median(v) for name, v in times.items()}


def peak_memory_child(size: int, batch: int, steps: int) -> None:
    """Run in a fresh process: end-to-end training steps, then print the peak RSS in MiB."""
    cfg = synthetic_config(size, batch, n_train=batch)
    dataset = build_dataset(cfg.data, "train", cfg.seed)
    step = pitscope_train_step(cfg, dataset, end_to_end=True)
    for _ in range(steps):
        step()
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="dataset images per training step (2x through the net)")
    parser.add_argument("--infer-batch", type=int, default=16)
    parser.add_argument("--photo", default="460x1130", help="HxW of a photo for the whole-photo path (BSData's)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument(
        "--name",
        help="the results files' name: NAME.json and NAME.md (default: speed, or speed_float32 where the preset "
        "trains in float32)",
    )
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.size, args.batch, args.steps)
        return 0

    cfg = synthetic_config(args.size, args.batch, n_train=2 * args.batch)
    dataset = build_dataset(cfg.data, "train", cfg.seed)
    dtype = resolve_precision(cfg.train.precision, torch.device("cpu"))
    precision = precision_name(dtype)
    n = 2 * args.batch
    train_times = time_round_robin(
        {
            "bare_resnet18_fp32": bare_train_step(n, training_shape(cfg), None, False),
            "bare_resnet18_same_settings": bare_train_step(n, training_shape(cfg), dtype, cfg.train.channels_last),
            "pitscope_step": pitscope_train_step(cfg, dataset, end_to_end=False),
            "pitscope_end_to_end": pitscope_train_step(cfg, dataset, end_to_end=True),
            "pitscope_end_to_end_1_worker": pitscope_train_step(cfg, dataset, end_to_end=True, num_workers=1),
        },
        args.steps,
        args.repeats,
    )
    train_rates = {k: n / v for k, v in train_times.items()}

    detector = Detector(cfg, n_kinds=PseudoDefects(cfg.augment).n_kinds).fit(dataset, progress=False)
    infer_times = time_round_robin(
        {
            "bare_resnet18_forward": bare_forward(args.infer_batch, cfg.data.shape),
            "bare_resnet18_forward_channels_last": bare_forward(args.infer_batch, cfg.data.shape, channels_last=True),
            "detector_score_and_map": detector_forward(detector, args.infer_batch),
        },
        args.steps,
        args.repeats,
    )
    latency = time_round_robin(
        {
            "bare_resnet18_forward": bare_forward(1, cfg.data.shape),
            "detector_score_and_map": detector_forward(detector, 1),
        },
        5 * args.steps,
        args.repeats,
    )

    photo_h, photo_w = (int(v) for v in args.photo.lower().split("x"))
    photo = time_round_robin(
        {
            "bare_resnet18_whole_photo": bare_photo_forward(photo_h, photo_w),
            "pitscope_predict_with_regions": detector_photo(detector, photo_h, photo_w),
        },
        2 * args.steps,
        args.repeats,
    )

    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            "--size",
            str(args.size),
            "--batch",
            str(args.batch),
            "--steps",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = json.loads(child.stdout.strip().splitlines()[-1])["peak_rss_mib"]

    infer_rates = {k: args.infer_batch / v for k, v in infer_times.items()}
    record = {
        "benchmark": "speed",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "invocation": shlex.join(["python", "benchmarks/speed.py", *sys.argv[1:]]),
        "settings": {
            "size": args.size,
            "training_shape": list(training_shape(cfg)),
            "scoring_shape": list(cfg.data.shape),
            "batch": args.batch,
            "images_per_step": n,
            "infer_batch": args.infer_batch,
            "precision": precision,
            "preset_precision": cfg.train.precision,
            "native_bf16": cpu_has_bf16(),
            "channels_last": cfg.train.channels_last,
            "steps": args.steps,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
        },
        "train_images_per_s": {k: round(v, 2) for k, v in train_rates.items()},
        "train_ratio_to_bare_same_settings": {
            k: round(train_rates[k] / train_rates["bare_resnet18_same_settings"], 3) for k in PITSCOPE_TRAIN
        },
        "train_ratio_to_bare_fp32": {
            k: round(train_rates[k] / train_rates["bare_resnet18_fp32"], 3) for k in PITSCOPE_TRAIN
        },
        "infer_images_per_s": {k: round(v, 2) for k, v in infer_rates.items()},
        "infer_ratio_to_bare": round(infer_rates["detector_score_and_map"] / infer_rates["bare_resnet18_forward"], 3),
        "infer_ratio_to_bare_channels_last": round(
            infer_rates["detector_score_and_map"] / infer_rates["bare_resnet18_forward_channels_last"], 3
        ),
        "latency_ms": {k: round(1000 * v, 1) for k, v in latency.items()},
        "peak_train_rss_mib": round(peak, 0),
        "photo": {
            "size": [photo_h, photo_w],
            "images_per_s": {k: round(1 / v, 2) for k, v in photo.items()},
            "ratio_to_bare_whole_photo": round(
                photo["bare_resnet18_whole_photo"] / photo["pitscope_predict_with_regions"], 3
            ),
        },
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or ("speed" if dtype is not None else "speed_float32")
    (out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(record))
    print(markdown(record))
    return 0


def command_lines(invocation: str) -> list[str]:
    """A results file's closing lines: the command that wrote it, as an indented block."""
    return ["Command:", "", f"    {invocation}", ""]


def _precision_why(s: dict) -> str:
    """Why the training precision is what it is, where the preset left it to the machine."""
    if s.get("preset_precision") != "bf16_where_native":
        return ""
    return (
        " (the preset's `bf16_where_native`: this CPU has " + ("" if s["native_bf16"] else "no ") + "native bfloat16)"
    )


def markdown(r: dict) -> str:
    s = r["settings"]
    tr, ir = r["train_images_per_s"], r["infer_images_per_s"]
    same, fp32 = r["train_ratio_to_bare_same_settings"], r["train_ratio_to_bare_fp32"]
    return "\n".join(
        [
            "# Speed at {size} px on the CPU".format(**s),
            "",
            "Training on {} x {} images, scoring {} x {} images (height x width), as the `cpu` preset at this height.".format(
                *s.get("training_shape", [s["size"]] * 2), *s.get("scoring_shape", [s["size"]] * 2)
            ),
            "",
            f"Commit `{r['commit']}`, {r['date']}, {r['machine']['cpu']} ({r['machine']['cpu_count']} cores), {s['threads']} threads, "
            f"torch {r['machine']['torch']}. Training precision `{s['precision']}`{_precision_why(s)}, channels-last {s['channels_last']}; "
            f"median of {s['repeats']} interleaved repeats of {s['steps']} steps.",
            "",
            f"Training ({s['batch']} dataset images a step, {s['images_per_step']} through the network):",
            "",
            "| | images/s | ratio to bare, same settings | ratio to bare fp32 |",
            "|---|---|---|---|",
            f"| bare ResNet-18, float32 | {tr['bare_resnet18_fp32']} | | 1.0 |",
            f"| bare ResNet-18, {s['precision']}, channels-last {s['channels_last']} | {tr['bare_resnet18_same_settings']} | 1.0 | |",
            f"| pitscope step (fixed batch) | {tr['pitscope_step']} | {same['pitscope_step']} | {fp32['pitscope_step']} |",
            f"| pitscope end to end (pseudo-defects + step) | {tr['pitscope_end_to_end']} | {same['pitscope_end_to_end']} "
            f"| {fp32['pitscope_end_to_end']} |",
            f"| pitscope end to end, pseudo-defects in 1 DataLoader worker | {tr['pitscope_end_to_end_1_worker']} "
            f"| {same['pitscope_end_to_end_1_worker']} | {fp32['pitscope_end_to_end_1_worker']} |",
            "",
            f"Inference, float32 (batch {s['infer_batch']}; latency at batch 1):",
            "",
            "| | images/s | latency ms |",
            "|---|---|---|",
            f"| bare ResNet-18 forward | {ir['bare_resnet18_forward']} | {r['latency_ms']['bare_resnet18_forward']} |",
            f"| bare ResNet-18 forward, channels-last | {ir['bare_resnet18_forward_channels_last']} | |",
            f"| pitscope score + anomaly map (channels-last: {s['channels_last']}) | {ir['detector_score_and_map']} "
            f"| {r['latency_ms']['detector_score_and_map']} |",
            "",
            f"Inference ratio to bare: {r['infer_ratio_to_bare']} "
            f"({r['infer_ratio_to_bare_channels_last']} to a bare channels-last forward). "
            f"Peak resident memory of a training process at batch {s['batch']}: {r['peak_train_rss_mib']:.0f} MiB.",
            "",
            f"A whole {r['photo']['size'][0]} x {r['photo']['size'][1]} photo, one at a time: pitscope's predict "
            f"(score, map at the photo's size, predicted regions) at "
            f"{r['photo']['images_per_s']['pitscope_predict_with_regions']} photos/s against "
            f"{r['photo']['images_per_s']['bare_resnet18_whole_photo']} for one float32 ResNet-18 forward over the whole "
            f"photo: a ratio of {r['photo']['ratio_to_bare_whole_photo']}.",
            "",
            *command_lines(r["invocation"]),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
