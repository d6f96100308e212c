"""The image threshold from held-back images and out of fold, side by side, on trained BSData models.

    python benchmarks/bsdata_threshold.py runs/pits/cpu_seed0/model.pt runs/pits/cpu_seed1/model.pt
    python benchmarks/bsdata_threshold.py runs/pits/cpu_seed0/model.pt --set score.image_method=map_max

For each model (a `pitscope train` output), with its own split: the scorers are fitted again on
the model's training images, as `pitscope train` fits them (`score.threshold_from: out_of_fold`;
`--set score.KEY=VALUE` changes a scoring setting, e.g. the image score), and the
`score.threshold_quantile` quantile is taken of
- held back: the scores of the `score.calibration_fraction` held-back training images;
- out of fold: every training image's score from scorers refitted on the other folds (the image
  Gaussian, or for map_max the pixel Gaussians).
For each threshold, the share of the test split's defect-free images above it (false positive
rate; the quantile asks for 1 - threshold_quantile) and of its defective images (true positive
rate), and the training images scored highest out of fold. Results go to
benchmarks/results/<name>.json and .md with the command, commit and machine.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from bsdata_cpu import models_main, note, provenance  # this folder is on sys.path when run as a script

from pitscope.config import apply_overrides
from pitscope.data import build_dataset
from pitscope.inference import Detector, iterate_batches


def rates(threshold: float, scores: np.ndarray, labels: np.ndarray) -> dict:
    """Percent of defect-free (FPR) and defective (TPR) test images scored above the threshold."""
    return {
        "threshold": round(threshold, 2),
        "fpr": round(100 * float((scores[labels == 0] > threshold).mean()), 1),
        "tpr": round(100 * float((scores[labels == 1] > threshold).mean()), 1),
    }


@torch.inference_mode()
def threshold_model(path: Path, overrides: Sequence[str] = (), progress: bool = False) -> dict:
    """The record of one model; `overrides`: score.* settings to refit it with."""
    loaded = Detector.load(path).eval()
    cfg = apply_overrides(loaded.cfg, [*overrides, "score.threshold_from=out_of_fold"])
    train, test = build_dataset(cfg.data, "train", cfg.seed), build_dataset(cfg.data, "test", cfg.seed)
    t0 = time.perf_counter()
    detector = Detector(cfg, loaded.n_kinds, net=loaded.net).fit(train, progress=progress)
    fit_seconds = time.perf_counter() - t0
    calibration = detector.metadata["calibration"]
    if calibration["method"] != "out_of_fold":
        raise SystemExit(f"{path}: no out-of-fold threshold for these settings or this few training images")
    _, cal_idx = detector.split_calibration(len(train))
    held = torch.cat(
        [detector(x)[0] for _, x in iterate_batches(train, cal_idx, cfg.score.batch_size, "held back", progress)]
    ).double()
    scores, _ = detector.score_dataset(test, progress=progress)
    labels = np.array([test[i].label for i in range(len(test))])
    q = cfg.score.threshold_quantile
    return {
        "model": str(path),
        "seed": cfg.seed,
        "quantile": q,
        "image_method": cfg.score.image_method,
        "image_features": cfg.score.image_features,
        "fit_seconds": round(fit_seconds, 1),
        "images": {"training": len(train), "held_back": len(cal_idx), "folds": calibration["folds"]},
        "held_back": {
            **rates(float(torch.quantile(held, q)), scores, labels),
            "largest": [round(float(v), 2) for v in held.sort(descending=True).values[:3]],
        },
        "out_of_fold": {**rates(float(detector.threshold), scores, labels), "highest": calibration["highest"]},
        "model_threshold": round(float(loaded.threshold), 2),
        "counts": {"defective": int(labels.sum()), "normal": int((labels == 0).sum())},
    }


def write_markdown(record: dict, path: Path) -> None:
    models = record["models"]
    m0 = models[0]
    lines = [
        "# BSData: the image threshold from held-back images and out of fold",
        "",
        provenance(record),
        *note(record),
        "",
        f"Image score: `{m0.get('image_method', 'embedding')}`"
        + (f" (`{m0.get('image_features', 'layer4')}`)" if m0.get("image_method", "embedding") == "embedding" else "")
        + f". The {m0['quantile']:g} quantile of the image scores of {m0['images']['held_back']} held-back "
        f"defect-free training images, or of all {m0['images']['training']} scored out of fold "
        f"({m0['images']['folds']} folds). FPR: % of the {m0['counts']['normal']} defect-free test images "
        f"above the threshold; TPR: % of the {m0['counts']['defective']} defective ones.",
        "",
        "| seed | held back: threshold | FPR | TPR | out of fold: threshold | FPR | TPR | fitting s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        h, o = m["held_back"], m["out_of_fold"]
        lines.append(
            f"| {m['seed']} | {h['threshold']} | {h['fpr']} | {h['tpr']} | "
            f"{o['threshold']} | {o['fpr']} | {o['tpr']} | {m.get('fit_seconds', 'n/a')} |"
        )
    lines += ["", "Largest held-back scores, and the training images scored highest out of fold:", ""]
    for m in models:
        top = ", ".join(f"{h['image']} {h['score']:.1f}" for h in m["out_of_fold"]["highest"])
        lines.append(f"- seed {m['seed']} (`{m['model']}`): held back {m['held_back']['largest']}; out of fold {top}")
    lines += ["", "Command:", "", f"    {record['invocation']}", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    return models_main(
        __doc__,
        "bsdata_threshold",
        lambda path, overrides: threshold_model(path, overrides, progress=True),
        write_markdown,
    )


if __name__ == "__main__":
    sys.exit(main())
