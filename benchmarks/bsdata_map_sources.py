"""Where the maps come from: alternatives to the per-position Gaussian, on BSData's validation positions.

    python benchmarks/bsdata_map_sources.py runs/hold/cpu_seed0/model.pt

One network trained with `data.holdout=positions` (its validation positions' photos never trained
it) gives the features; each map source below is scored on the validation photos only:
- "padim": the model's own maps (a Gaussian per feature-map position, `score.pixel_stages`), raw;
- "knn": the distance of each feature vector to its nearest neighbour among defect-free training
  feature vectors (a random sample of BANK of them, from any position of any training photo);
- "shared": the Mahalanobis distance to one Gaussian fitted on that same sample (every position
  shares it);
- "reference": the camera's own earlier photos: the distance of each feature vector to the
  nearest one at the same place (within RADIUS cells) in the other defect-free validation photos
  of the same camera position and crop. It needs defect-free photos of that position, so it is
  scored on the photos whose position has some (BSData's `crop_2` photos); "padim" is reported
  again on exactly those photos beside it.
kNN, shared and reference read the network's stages STAGES, each 3 x 3 average-pooled, brought to
the first stage's size and stacked. Maps are upsampled to the image, smoothed (sigma 2 and 4) and
scored with the pixel metrics; the image score is the map's maximum (padim: the model's own).
Results: benchmarks/results/<name>.json and .md, with the command, commit and machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bsdata_cpu import provenance  # this folder is on sys.path when run as a script

from pitscope.benchmark import commit, machine
from pitscope.data import build_dataset
from pitscope.inference import Detector, iterate_batches
from pitscope.metrics import evaluate_all
from pitscope.scoring import gaussian_smooth

RESULTS = Path(__file__).parent / "results"
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max")
SIGMAS = (2.0, 4.0)


def stacked_features(detector: Detector, dataset, stages: list[str]) -> torch.Tensor:
    """(N, C, h, w): the named backbone stages of every image, 3 x 3 average-pooled, resized to the
    first stage's size and stacked along channels."""
    out = []
    with torch.inference_mode():
        for _, x in iterate_batches(dataset, range(len(dataset)), 16, "features", True):
            features = detector.net.backbone(x)
            parts = [F.avg_pool2d(features[s], 3, 1, 1) for s in stages]
            size = parts[0].shape[-2:]
            parts = [
                p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                for p in parts
            ]
            out.append(torch.cat(parts, 1).float())
    return torch.cat(out)


def vectors(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N * h * w, C)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def knn_maps(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    n, _, h, w = query.shape
    return torch.stack([torch.cdist(vectors(query[i : i + 1]), bank).amin(1).reshape(h, w) for i in range(n)])


def shared_maps(query: torch.Tensor, bank: torch.Tensor, ridge: float = 0.01) -> torch.Tensor:
    mean = bank.mean(0)
    precision = torch.linalg.inv(torch.cov(bank.T) + ridge * torch.eye(bank.shape[1]))
    n, _, h, w = query.shape
    diff = vectors(query) - mean
    return ((diff @ precision) * diff).sum(1).clamp_min(0).sqrt().reshape(n, h, w)


def reference_maps(
    features: torch.Tensor, keys: list[str], labels: np.ndarray, radius: int
) -> tuple[torch.Tensor, list[int]]:
    """Maps of the photos that have other defect-free photos of their key, and their indices."""
    n, _, h, w = features.shape
    padded = F.pad(features, (radius,) * 4, mode="replicate")
    maps, kept = [], []
    for i in range(n):
        refs = [j for j in range(n) if keys[j] == keys[i] and labels[j] == 0 and j != i]
        if not refs:
            continue
        best = torch.full((h, w), float("inf"))
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                shifted = padded[refs, :, dy : dy + h, dx : dx + w]
                best = torch.minimum(best, ((shifted - features[i]) ** 2).sum(1).amin(0))
        maps.append(best.sqrt())
        kept.append(i)
    return torch.stack(maps), kept


def score(name: str, maps: torch.Tensor, labels: np.ndarray, masks: np.ndarray, image_scores=None) -> list[dict]:
    size = masks.shape[-2:]
    up = (
        maps
        if maps.shape[-2:] == size
        else F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    )
    rows = []
    for sigma in SIGMAS:
        smooth = gaussian_smooth(up, sigma).numpy()
        scores = smooth.max(axis=(1, 2)) if image_scores is None else image_scores
        metrics = evaluate_all(labels, scores, masks, smooth)
        rows.append({"source": name, "sigma": sigma, **{k: metrics[k] for k in METRICS}})
        print(name, sigma, {k: round(100 * metrics[k], 2) for k in METRICS}, file=sys.stderr, flush=True)
    return rows


def own_maps(detector: Detector, dataset, indices) -> tuple[np.ndarray, torch.Tensor]:
    cfg = detector.cfg
    saved = cfg.score.smoothing_sigma, cfg.score.map_normalisation
    cfg.score.smoothing_sigma, cfg.score.map_normalisation = 0.0, "none"
    try:
        scores, maps = detector.score_dataset([dataset[i] for i in indices], progress=True)
    finally:
        cfg.score.smoothing_sigma, cfg.score.map_normalisation = saved
    return np.asarray(scores), torch.as_tensor(maps)


def measure(model: Path, stages: list[str], bank_size: int, radius: int) -> dict:
    detector = Detector.load(model)
    cfg = detector.cfg
    if cfg.data.holdout != "positions":
        raise SystemExit(f"{model}: trained without data.holdout=positions; its validation photos may have trained it")
    torch.manual_seed(cfg.seed)
    train = build_dataset(cfg.data, "train", cfg.seed)
    val = build_dataset(cfg.data, "val", cfg.seed)
    labels = np.asarray(val.labels)
    masks = np.stack([val[i].mask for i in range(len(val))])
    t0 = time.perf_counter()
    rows = []
    scores, maps = own_maps(detector, val, range(len(val)))
    rows += score("padim", maps, labels, masks, scores)
    query = stacked_features(detector, val, stages)
    bank = vectors(stacked_features(detector, train, stages))
    bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(cfg.seed))[:bank_size]]
    rows += score("knn", knn_maps(query, bank), labels, masks)
    rows += score("shared", shared_maps(query, bank), labels, masks)
    keys = [re.sub(r"^\d+_\d+_", "", Path(val[i].path).name) for i in range(len(val))]  # position, angle, crop
    ref, kept = reference_maps(query, keys, labels, radius)
    rows += score("reference", ref, labels[kept], masks[kept])
    rows += score("padim on the reference photos", maps[kept], labels[kept], masks[kept], scores[kept])
    return {
        "model": str(model),
        "stages": stages,
        "bank": bank_size,
        "radius": radius,
        "rows": rows,
        "counts": {
            "normal": int((labels == 0).sum()),
            "defective": int(labels.sum()),
            "reference_normal": int((labels[kept] == 0).sum()),
            "reference_defective": int(labels[kept].sum()),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }


def write_markdown(record: dict, path: Path) -> None:
    run = record["run"]
    c = run["counts"]
    lines = [
        "# Map sources on BSData's validation positions",
        "",
        provenance(record),
        "",
        f"Command: `{record['command']}`",
        "",
        f"Network: `{run['model']}`. Validation photos: {c['normal']} defect-free, {c['defective']} pitting; "
        f'those with defect-free photos of their own position for "reference": {c["reference_normal"]} and '
        f"{c['reference_defective']}. kNN, shared and reference read {', '.join(run['stages'])}; the bank holds "
        f"{run['bank']} training feature vectors; reference searches within {run['radius']} cell(s).",
        "",
        "| source | sigma | image AUROC | pixel AUROC | pixel AP | AUPRO | pixel F1-max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in run["rows"]:
        lines.append(f"| {r['source']} | {r['sigma']:g} | " + " | ".join(f"{100 * r[k]:.2f}" for k in METRICS) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--stages", nargs="+", default=["layer2", "layer3"])
    parser.add_argument("--bank", type=int, default=20000, help="training feature vectors kept for knn and shared")
    parser.add_argument("--radius", type=int, default=1, help="reference: cells searched around each place")
    parser.add_argument("--name", default="bsdata_map_sources")
    args = parser.parse_args()
    record = {
        "command": "python benchmarks/bsdata_map_sources.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "run": measure(args.model, args.stages, args.bank, args.radius),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    write_markdown(record, RESULTS / f"{args.name}.md")
    print((RESULTS / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
