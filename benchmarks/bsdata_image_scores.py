"""Other image scores for trained BSData models, side by side with the default one.

    python benchmarks/bsdata_image_scores.py runs/bfcos/cpu_seed0/model.pt runs/bfcos/cpu_seed1/model.pt

For each model (a `pitscope train` output), with its own split and its own held-back calibration
images, the image AUROC on the test split of:
- the default (`score.image_method: embedding`): the Mahalanobis distance of the image embedding
  that `score.image_features` names, refitted here, so it checks against the run's own evaluation
  (a model file keeps its own setting; `--set score.image_features=...` picks the other);
- layer4: the pooled layer4 embedding; projection: the image branch's projector output;
- layer1, layer2, layer3: the same over another stage's pooled features;
- sum of layer1-4: the distances of the four stages added (Rippel et al. 2021 add them over levels);
- layer4, flips in the fit: the Gaussian fitted on the images and their horizontal mirror images;
- layer4, fit without its furthest 2% / 5%: the Gaussian fitted again without that share of the
  fitting images furthest from the first fit (squared Mahalanobis distance);
- layer4 / layer3, max pooling: the Gaussian over the largest value of each channel instead of its mean
  (a few-pixel pit moves one or two positions of the map, which the mean dilutes);
- layer4, GeM pooling: the generalised mean (p = 3; Radenovic et al. 2018), between the two;
- map maximum: the largest value of the anomaly map before it is divided by its mean;
- default + map maximum: both standardised by the mean and spread of the held-back images, added;
- the same two with the map after its background step (`score.map_background_window`, when the
  model has one): the map less its grey opening, the map the regions are cut from;
- classifier logit: the trained pseudo-defect classifier's logit (CutPaste's classifier score);
- default + classifier logit: both standardised as above, added.
Every rule uses only defect-free training images. With DeLong's standard error of each AUROC,
and the defective images scored lowest by the default with the share of the image their marked
defect covers. Results go to benchmarks/results/<name>.json and .md with the command, commit and
machine.

    python benchmarks/bsdata_image_scores.py MODELS --split val --name NAME

scores the validation positions' photos instead (models trained with `data.holdout=positions`),
for choosing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from bsdata_cpu import PAPER, models_main, note, provenance  # this folder is on sys.path when run as a script

from pitscope.config import apply_overrides
from pitscope.data import build_dataset
from pitscope.inference import Detector, iterate_batches
from pitscope.metrics import auroc_interval
from pitscope.scoring import GaussianScorer, remove_background

STAGES = ("layer1", "layer2", "layer3", "layer4")
LOWEST = 8  # defective images listed, lowest default score first


GEM_P = 3.0
TRIM_SHARES = (0.02, 0.05)


def gem(f: torch.Tensor, p: float = GEM_P) -> torch.Tensor:
    """Generalised mean over the positions of (B, C, H, W) features: (mean of max(f, eps)^p)^(1/p)."""
    return f.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


@torch.inference_mode()
def features(detector: Detector, dataset, indices: list[int]) -> dict[str, torch.Tensor]:
    """Pooled features of every stage, layer4's of the mirror images, the raw map maximum, the classifier logit."""
    names = (*STAGES, "projection", "layer4_mirror", "layer4_max", "layer3_max", "layer4_gem", "map_max", "map_bg_max")
    names += ("logit",)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    net = detector.net
    if net.classifier is None or net.projector is None:
        raise SystemExit("the model was trained without the pseudo-defect classifier: no logit to score with")
    for _, x in iterate_batches(dataset, indices, detector.cfg.score.batch_size, "features", False):
        for name, f in net.backbone(x).items():
            if name in STAGES:
                out[name].append(f.float().mean(dim=(2, 3)).double())
            if name in ("layer3", "layer4"):
                out[f"{name}_max"].append(f.float().amax(dim=(2, 3)).double())
            if name == "layer4":
                out["layer4_gem"].append(gem(f.float()).double())
        projection = net.projector(out["layer4"][-1].to(x.dtype))  # (B, projector_hidden)
        out["projection"].append(projection.double())
        logits = net.classifier(projection).double()  # (B,) or (B, 1 + kinds)
        # Binary head: the pseudo-defect logit; multiclass: log P(any pseudo-defect) - log P(normal).
        out["logit"].append(logits if logits.ndim == 1 else logits[:, 1:].logsumexp(dim=1) - logits[:, 0])
        out["layer4_mirror"].append(net.backbone(x.flip(-1))["layer4"].float().mean(dim=(2, 3)).double())
        maps = detector(x)[1]  # (B, H, W)
        out["map_max"].append(maps.amax(dim=(1, 2)).double())
        window = detector.cfg.score.map_background_window
        out["map_bg_max"].append((remove_background(maps, window) if window else maps).amax(dim=(1, 2)).double())
    return {name: torch.cat(parts) for name, parts in out.items()}


def score_model(path: Path, overrides: Sequence[str] = (), split: str = "test") -> dict:
    """The rows for one model on its `split` (test or val); `overrides`: score.image_features, the
    default to compare with."""
    if any(not o.startswith("score.image_features=") for o in overrides):
        raise SystemExit("bsdata_image_scores: --set takes score.image_features only (the rows fit their own scorers)")
    detector = Detector.load(path).eval()
    cfg = detector.cfg = apply_overrides(detector.cfg, list(overrides))
    cfg.score.map_normalisation = "none"  # the raw map, for its maximum ...
    cfg.score.regions_after_background = False  # ... before the background step, which `features` takes itself
    train, test = build_dataset(cfg.data, "train", cfg.seed), build_dataset(cfg.data, split, cfg.seed)
    fit_idx, cal_idx = detector.split_calibration(len(train))
    cal_idx = cal_idx if len(cal_idx) >= 2 else fit_idx  # as Detector.fit calibrates without held-back images
    fit, cal, tst = (
        features(detector, ds, idx) for ds, idx in ((train, fit_idx), (train, cal_idx), (test, list(range(len(test)))))
    )
    labels = np.array([test[i].label for i in range(len(test))])

    def distances(stage: str, fitted_on: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        scorer = GaussianScorer(cfg.score.shrinkage, cfg.score.ridge).fit(
            fit[stage] if fitted_on is None else fitted_on
        )
        return scorer.score(tst[stage]).numpy(), scorer.score(cal[stage]).numpy()

    def trimmed(stage: str, share: float) -> np.ndarray:
        first = GaussianScorer(cfg.score.shrinkage, cfg.score.ridge).fit(fit[stage])
        n = len(fit[stage])
        keep = first.score(fit[stage]).argsort()[: n - int(round(share * n))]
        return distances(stage, fit[stage][keep])[0]

    per_stage = {stage: distances(stage) for stage in (*STAGES, "projection")}
    default_name = cfg.score.image_features  # the default image score: layer4 or projection
    default, default_cal = per_stage[default_name]

    def standardised(test_scores: np.ndarray, cal_scores: np.ndarray) -> np.ndarray:
        return (test_scores - cal_scores.mean()) / max(float(cal_scores.std()), 1e-12)

    variants = {
        **{stage: per_stage[stage][0] for stage in (*STAGES, "projection")},
        "sum of layer1-4": sum(per_stage[stage][0] for stage in STAGES),
        "layer1 + layer4, standardised": standardised(*per_stage["layer1"]) + standardised(*per_stage["layer4"]),
        "layer4, flips in the fit": distances("layer4", torch.cat([fit["layer4"], fit["layer4_mirror"]]))[0],
        **{f"layer4, fit without its furthest {share:.0%}": trimmed("layer4", share) for share in TRIM_SHARES},
        "layer4, max pooling": distances("layer4_max")[0],
        "layer3, max pooling": distances("layer3_max")[0],
        f"layer4, GeM pooling (p = {GEM_P:g})": distances("layer4_gem")[0],
        "map maximum": tst["map_max"].numpy(),
        f"{default_name} + map maximum": standardised(default, default_cal)
        + standardised(tst["map_max"].numpy(), cal["map_max"].numpy()),
        "map maximum after the background step": tst["map_bg_max"].numpy(),
        f"{default_name} + map maximum after the background step": standardised(default, default_cal)
        + standardised(tst["map_bg_max"].numpy(), cal["map_bg_max"].numpy()),
        "classifier logit": tst["logit"].numpy(),
        f"{default_name} + classifier logit": standardised(default, default_cal)
        + standardised(tst["logit"].numpy(), cal["logit"].numpy()),
    }
    rows = []
    for name, scores in variants.items():
        interval = auroc_interval(labels, scores)
        rows.append(
            {"score": name, "image_auroc": round(100 * interval["auroc"], 2), "se": round(100 * interval["se"], 2)}
        )
    defective = np.flatnonzero(labels == 1)
    lowest = defective[np.argsort(default[defective])][:LOWEST]
    normal_scores = default[labels == 0]
    hardest = [
        {
            "image": Path(test[i].path).name,
            "score": round(float(default[i]), 2),
            "normal_above": round(float((normal_scores > default[i]).mean()), 2),
            "defect_area": round(float((test[i].mask > 0).mean()), 6),
        }
        for i in lowest
    ]
    return {
        "model": str(path),
        "seed": cfg.seed,
        "default": default_name,
        "rows": rows,
        "hardest": hardest,
        "split": split,
        "counts": {"defective": int(labels.sum()), "normal": int((labels == 0).sum())},
    }


def write_markdown(record: dict, path: Path) -> None:
    models = record["models"]
    lines = [
        "# BSData: image scores side by side",
        "",
        f"{provenance(record)} Paper: {PAPER['image_auroc']} image AUROC.",
        *note(record),
        "",
        "Image AUROC (DeLong standard error) of each rule on the same trained networks; "
        f"{models[0].get('default', 'layer4')} is the default.",
        "",
        f"Photos scored: the {models[0].get('split', 'test')} split ("
        + ", ".join(f"{m['counts']['normal']} defect-free, {m['counts']['defective']} defective" for m in models[:1])
        + " for the first network).",
        "",
        "| image score | " + " | ".join(f"`{Path(m['model']).parent.name}` (seed {m['seed']})" for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for i, row in enumerate(models[0]["rows"]):
        cells = [f"{m['rows'][i]['image_auroc']} ({m['rows'][i]['se']})" for m in models]
        lines.append(f"| {row['score']} | " + " | ".join(cells) + " |")
    for m in models:
        lines += [
            "",
            f"`{m['model']}` (seed {m['seed']}): the {LOWEST} defective images the default scores lowest, "
            "with the share of the defect-free photos scored above each and the share of the image its marked "
            "defect covers:",
            "",
            "| image | score | defect-free above | defect area |",
            "|---|---|---|---|",
            *[f"| {h['image']} | {h['score']} | {h['normal_above']} | {h['defect_area']} |" for h in m["hardest"]],
        ]
    lines += ["", "Command:", "", f"    {record['invocation']}", ""]
    path.write_text("\n".join(lines))


def main() -> int:
    return models_main(__doc__, "bsdata_image_scores", score_model, write_markdown, splits=True)


if __name__ == "__main__":
    sys.exit(main())
