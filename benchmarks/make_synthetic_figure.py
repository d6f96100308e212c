"""Draw docs/synthetic_vs_bsdata.png: three BSData photographs beside three synthetic images.

Left: two defect-free BSData images and one with pitting; right: two synthetic normals and one
synthetic image with pitting. Pitting is outlined in red on both sides (the BSData polygons,
the synthetic mask), so a reader can judge how alike the two are.

    python benchmarks/make_synthetic_figure.py [--bsdata DIR] [--out docs/synthetic_vs_bsdata.png]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pitscope.config import SyntheticConfig
from pitscope.data.synthetic import SyntheticDataset

REPO = Path(__file__).resolve().parents[1]
REAL_NORMALS = ("01_200829195700_332500_225_crop_2", "01_200904025806_635000_270_crop_2")
REAL_PITTING = "01_200907033514_560000_000_crop_2"
TILE_WIDTH = 380
GAP = 6
RED = (255, 0, 0)


def real_tile(root: Path, stem: str, outline: bool) -> Image.Image:
    """A BSData photograph resized to TILE_WIDTH, its pitting polygons drawn in red."""
    image = Image.open(root / "data" / f"{stem}.jpg").convert("RGB")
    scale = TILE_WIDTH / image.width
    image = image.resize((TILE_WIDTH, round(image.height * scale)), Image.BILINEAR)
    if outline:
        draw = ImageDraw.Draw(image)
        for shape in json.loads((root / "label" / f"{stem}.json").read_text())["shapes"]:
            points = [(x * scale, y * scale) for x, y in shape["points"]]
            draw.line(points + points[:1], fill=RED, width=1)
    return image


def synthetic_tile(image: np.ndarray, mask: np.ndarray, height: int) -> Image.Image:
    """A synthetic image resized to (height, TILE_WIDTH), the mask border painted red."""
    tile = np.asarray(Image.fromarray(image).resize((TILE_WIDTH, height), Image.BILINEAR)).copy()
    mask = np.asarray(Image.fromarray(mask).resize((TILE_WIDTH, height), Image.NEAREST)).astype(bool)
    border = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    tile[border] = RED
    return Image.fromarray(tile)


def main() -> None:
    default_root = os.environ.get("PITSCOPE_BSDATA", str(REPO.parent / "shared" / "datasets" / "bsdata"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bsdata", type=Path, default=Path(default_root))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "synthetic_vs_bsdata.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    real = [real_tile(args.bsdata, stem, outline=False) for stem in REAL_NORMALS]
    real.append(real_tile(args.bsdata, REAL_PITTING, outline=True))
    cfg = SyntheticConfig()
    data = SyntheticDataset(2, 1, cfg.height, cfg.width, seed=args.seed, split_name="figure")
    synth = [synthetic_tile(s.image, s.mask, real[k].height) for k, s in enumerate(data)]

    header = 18
    rows = [max(a.height, b.height) for a, b in zip(real, synth)]
    figure = Image.new("RGB", (2 * TILE_WIDTH + GAP, header + sum(rows) + GAP * (len(rows) - 1)), "white")
    draw = ImageDraw.Draw(figure)
    draw.text((4, 3), "BSData photographs (real)", fill="black")
    draw.text((TILE_WIDTH + GAP + 4, 3), f"pitscope synthetic (seed {args.seed})", fill="black")
    y = header
    for left, right, row in zip(real, synth, rows):
        figure.paste(left, (0, y))
        figure.paste(right, (TILE_WIDTH + GAP, y))
        y += row + GAP
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
