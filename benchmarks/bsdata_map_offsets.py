"""Where a network's maps sit against the marked pits, and whether a label-free fix moves them there.

    python benchmarks/bsdata_map_offsets.py runs/signal/cpu_seed0/model.pt --flip

On BSData's validation positions only (the model must be trained with data.holdout=positions):
- the pixel AP of the pitting photos' maps (sigma 2) moved by each shift of up to 16 px, the best
  five listed (uses the marks: it says how far off the maps are, it chooses nothing);
- the shift that best fits pseudo-defects (pits, scars, noise) pasted on the held-back training
  photos (two per photo), and the validation pixel AP at that shift: a label-free estimate;
- with --flip: Gaussians fitted again on the training photos mirrored left-right, the mirrored
  photos' maps mirrored back, alone and averaged with the maps as they are.
Writes benchmarks/results/bsdata_map_offsets_<run folder>.json."""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from bsdata_localisation import raw_maps  # this folder is on sys.path when run as a script
from sklearn.metrics import average_precision_score

from pitscope.augment import PseudoDefects
from pitscope.benchmark import commit, machine
from pitscope.data import build_dataset
from pitscope.data.types import Sample
from pitscope.inference import Detector
from pitscope.metrics import evaluate_all
from pitscope.scoring import gaussian_smooth

SHIFTS = [(dy, dx) for dy in range(-16, 17, 4) for dx in range(-16, 17, 4)]


def shift(maps, dy, dx):
    """maps (N, H, W) moved dy px down and dx px right, edges repeated."""
    h, w = maps.shape[1:]
    p = np.pad(maps, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    return p[:, abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w]


def ap_only(masks, maps):
    """Pixel AP over every third pixel."""
    sel = masks.reshape(-1)[::3]
    return average_precision_score(sel, maps.reshape(-1)[::3])


class Flipped:
    """A dataset's photos and masks mirrored left-right."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        s = self.ds[i]
        return replace(s, image=np.ascontiguousarray(s.image[:, ::-1]), mask=np.ascontiguousarray(s.mask[:, ::-1]))


def main(model, do_flip):
    det = Detector.load(model)
    cfg = det.cfg
    if cfg.data.holdout != "positions":
        raise SystemExit(f"{model}: trained without data.holdout=positions; its validation photos may have trained it")
    train = build_dataset(cfg.data, "train", cfg.seed)
    train.check(progress=False)
    val = build_dataset(cfg.data, "val", cfg.seed)
    val.check(progress=False)
    _, cal_idx = det.split_calibration(len(train))  # the held-back photos the fit calibrated on
    labels = np.asarray(val.labels)
    masks = np.stack([val[i].mask for i in range(len(val))])
    t = time.time()
    scores, raw = raw_maps(det, val, range(len(val)))
    sm = gaussian_smooth(torch.from_numpy(raw), 2.0).numpy()
    out = {"model": str(model), "commit": commit(), "machine": machine(), "command": " ".join(["python", *sys.argv])}
    base = evaluate_all(labels, scores, masks, sm)
    out["base"] = {k: base[k] for k in ("pixel_ap", "aupro", "pixel_auroc")}
    d = labels == 1
    out["oracle"] = sorted(((ap_only(masks[d], shift(sm[d], dy, dx)), dy, dx) for dy, dx in SHIFTS), reverse=True)[:5]
    print(model, "base", out["base"], "oracle", out["oracle"][:3], round(time.time() - t), flush=True)
    # pseudo-defects pasted on held-back training photos
    rng = np.random.default_rng(123)
    for kind in ("pit", "scar", "noise"):
        pdf = PseudoDefects(replace(cfg.augment, kinds=[kind]))
        samples = []
        for _rep in range(2):
            for i in cal_idx:
                s = train[i]
                img, m, _ = pdf(s.image, rng)
                samples.append(Sample(img, m, 1, s.path))
        pm = np.stack([s.mask for s in samples])
        _, praw = det.score_dataset(samples, progress=False)
        psm = gaussian_smooth(torch.from_numpy(praw), 2.0).numpy()
        grid = sorted(((ap_only(pm, shift(psm, dy, dx)), dy, dx) for dy, dx in SHIFTS), reverse=True)
        est = grid[0]
        out[f"pseudo_{kind}"] = grid[:3]
        out[f"val_ap_at_{kind}_shift"] = ap_only(masks[d], shift(sm[d], est[1], est[2]))
        print(kind, "pseudo best", grid[:3], "val AP at it", out[f"val_ap_at_{kind}_shift"], flush=True)
    out["val_ap_unshifted_defective"] = ap_only(masks[d], sm[d])
    if do_flip:
        fdet = Detector(cfg, det.n_kinds, net=det.net)
        fdet.fit(Flipped(train), progress=False)
        fs, fraw = raw_maps(fdet, Flipped(val), range(len(val)))
        fsm = gaussian_smooth(torch.from_numpy(np.ascontiguousarray(fraw[:, :, ::-1])), 2.0).numpy()
        for name, m, s in (("flip_only", fsm, fs), ("flip_mean", (sm + fsm) / 2, (scores + fs) / 2)):
            r = evaluate_all(labels, s, masks, m)
            out[name] = {k: r[k] for k in ("pixel_ap", "aupro", "pixel_auroc", "image_auroc")}
            print(name, out[name], flush=True)
        out["base"]["image_auroc"] = base["image_auroc"]
    print(json.dumps(out, default=float))
    path = Path(__file__).parent / "results" / f"bsdata_map_offsets_{Path(model).parent.name}.json"
    path.write_text(json.dumps(out, default=float, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model.pt trained with data.holdout=positions")
    parser.add_argument("--flip", action="store_true", help="also fit and score the mirrored photos (a refit)")
    args = parser.parse_args()
    main(args.model, args.flip)
