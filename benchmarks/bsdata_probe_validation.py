"""The defect probe's settings compared on BSData's validation positions (never the test ones).

    python benchmarks/bsdata_probe_validation.py runs/localisation/threshold/crop_seed0/model.pt \\
        --k 5 20 --seeds 0 1 --variant "wd 1e-3=" --variant "wd 1e-2=weight_decay=0.01"

The base model is a `cpu`-preset network trained with `data.holdout=positions`. Its probe inputs
(`pitscope.defect_probe.probe_inputs`) are extracted once for the validation positions' photos,
the held-back training images and the label positions' pitting photos; every variant then fits
a probe on k labelled photos (drawn as `bsdata_few_labels.py` draws them) and is scored on the
validation photos: the maps made as the detector makes them (upsampled, smoothed), pixel AUROC,
AUPRO, pixel AP and F1-max, and image AUROC for three image scores (the model's own, the probe
map's maximum, and the mean of their ranks). A variant is NAME=KEY=VALUE,... over DefectProbe's
arguments and `inputs` (both | features | distance). Results: benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bsdata_cpu import provenance  # this folder is on sys.path when run as a script
from scipy.stats import rankdata

from pitscope.benchmark import commit, machine
from pitscope.benchmark.few_labels import draw_labelled as draw
from pitscope.benchmark.few_labels import label_position_photos as label_photos
from pitscope.benchmark.few_labels import labelled_folder
from pitscope.data import build_dataset
from pitscope.data.bsdata import bsdata_root, read_positions
from pitscope.data.labelled import load_labelled_defects
from pitscope.defect_probe import DefectProbe
from pitscope.inference import Detector
from pitscope.metrics import evaluate_all, image_auroc
from pitscope.probe_fitting import marked_samples, probe_inputs_of, unmarked_samples
from pitscope.scorer_fitting import split_calibration
from pitscope.scoring import gaussian_smooth
from pitscope.seeding import numpy_rng
from pitscope.tensors import iterate_batches

RESULTS = Path(__file__).parent / "results"
PIXEL = ("pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max")


def parse_variant(text: str) -> tuple[str, dict]:
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: give NAME=KEY=VALUE,... (may be empty)")
    options: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = value if key == "inputs" else float(value) if "." in value or "e" in value else int(value)
    return name, options


@torch.inference_mode()
def validation_inputs(detector: Detector, dataset) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """(probe inputs (N, h, w, D) float16, the model's image scores (N,), labels (N,), masks (N, H, W))."""
    inputs, scores = [], []
    for _, x in iterate_batches(dataset, range(len(dataset)), 8, "validation features", True):
        features = detector._features(x)
        scores.append(detector._score(x, *features)[0].double().numpy())
        inputs.append(probe_inputs_of(detector, x)[0].half())
    masks = np.stack([dataset[i].mask for i in range(len(dataset))])
    return torch.cat(inputs), np.concatenate(scores), dataset.labels, masks


def select(x: torch.Tensor, inputs: str) -> torch.Tensor:
    """The columns a variant reads: both, the stage features only, or the distance only."""
    if inputs == "features":
        return x[..., :-1]
    if inputs == "distance":
        return x[..., -1:]
    return x


def maps_of(values, x: torch.Tensor, size: tuple[int, int], sigma: float) -> np.ndarray:
    """values: (b, h, w, D) inputs -> (b, h, w) map values; the maps (N, H, W) as the detector
    makes them: upsampled to the photo's size and smoothed."""
    out = []
    for start in range(0, len(x), 16):
        p = values(x[start : start + 16].float())  # (b, h, w)
        p = F.interpolate(p[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        out.append(gaussian_smooth(p, sigma).numpy())
    return np.concatenate(out)


def measure(labels, masks, maps, model_scores) -> dict:
    pixel = evaluate_all(labels, model_scores, masks, maps)
    top = maps.reshape(len(maps), -1).max(1)
    fused = (rankdata(model_scores) + rankdata(top)) / 2
    return {
        **{k: round(100 * pixel[k], 2) for k in PIXEL},
        "image_auroc_model": round(100 * image_auroc(labels, model_scores), 2),
        "image_auroc_probe_max": round(100 * image_auroc(labels, top), 2),
        "image_auroc_rank_mean": round(100 * image_auroc(labels, fused), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("--k", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE,...")
    parser.add_argument("--name", default="bsdata_probe_validation")
    args = parser.parse_args()
    torch.set_num_threads(2)
    detector = Detector.load(args.base)
    cfg = detector.cfg
    if cfg.data.holdout != "positions":
        raise SystemExit(f"{args.base}: trained without data.holdout=positions")
    root = bsdata_root(cfg.data.root)
    photos = label_photos(root, read_positions(cfg.data.positions_file))
    val = build_dataset(cfg.data, "val", cfg.seed)
    x_val, model_scores, labels, masks = validation_inputs(detector, val)
    size, sigma = masks.shape[1:], cfg.score.smoothing_sigma
    train = build_dataset(cfg.data, "train", cfg.seed)
    _, held = split_calibration(detector, len(train))
    free = unmarked_samples(detector, train, held[0::2], numpy_rng(cfg.seed, 11), True)
    rows = []
    distance_maps = maps_of(lambda v: torch.expm1(v[..., -1]), x_val, size, sigma)  # the base model's own maps
    row = measure(labels, masks, distance_maps, model_scores)
    rows.append({"variant": "no probe: the Gaussians' distances", "k": 0, "seed": None, **row})
    print(json.dumps(rows[-1]), flush=True)
    for seed in args.seeds:
        for k in args.k:
            names = draw(photos, k, seed)
            with tempfile.TemporaryDirectory() as folder:
                defects = load_labelled_defects(labelled_folder(root, names, Path(folder) / "marked"))
            marked_x, marked_y = marked_samples(detector, defects, size, numpy_rng(cfg.seed, 11))
            x_fit = torch.cat([marked_x, free])
            y_fit = torch.cat([marked_y, torch.zeros(len(free))])
            for text in args.variant:
                name, options = parse_variant(text)
                inputs = options.pop("inputs", "both")
                t0 = time.perf_counter()
                probe = DefectProbe(**options).fit(select(x_fit, inputs), y_fit)
                maps = maps_of(lambda v, p=probe: torch.sigmoid(p.logits(v)), select(x_val, inputs), size, sigma)
                rows.append(
                    {
                        "variant": name,
                        "k": k,
                        "seed": seed,
                        "inputs": inputs,
                        **options,
                        **measure(labels, masks, maps, model_scores),
                        "fit_seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                write(args, rows)
    write(args, rows)
    return 0


def write(args, rows: list[dict]) -> None:
    record = {
        "command": "python benchmarks/bsdata_probe_validation.py "
        + " ".join(f"'{a}'" if " " in a else a for a in sys.argv[1:]),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "base": str(args.base),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    columns = ("k", "seed", *PIXEL, "image_auroc_model", "image_auroc_probe_max", "image_auroc_rank_mean")
    lines = [
        "# The defect probe's settings, on BSData's validation positions",
        "",
        provenance(record),
        "",
        f"Command: `{record['command']}`",
        "",
        f"Base model: `{record['base']}`. In %; the validation positions' photos (181 defect-free, 95 pitting).",
        "",
        "| variant | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in rows:
        lines.append(f"| {row['variant']} | " + " | ".join(str(row.get(c, "–")) for c in columns) + " |")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
