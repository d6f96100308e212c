"""A contact sheet of pseudo-defects, to check by eye what the network is trained to find."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pitscope.augment import PseudoDefects
from pitscope.augment.regions import check_image
from pitscope.config import Config, ConfigError, save_config

TILE_HEIGHT = 160
LABEL_HEIGHT = 14  # a band above each tile for its label
GAP = 4  # pixels between tiles and between rows
BACKGROUND = (40, 40, 40)
OUTLINE = (255, 0, 0)


def _resize(image: np.ndarray, height: int, nearest: bool = False) -> np.ndarray:
    """Resize (H, W, ...) to the given height, keeping the aspect ratio. Returns (height, W', ...)."""
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` (h, w, 3) with the 2-px boundary of `mask` (h, w) bool drawn in red."""
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)
    out = image.copy()
    out[edge] = OUTLINE
    return out


def preview_grid(
    images: list[np.ndarray],
    maker: PseudoDefects,
    rng: np.random.Generator,
    path: str | Path,
    n_variants: int = 2,
) -> Path:
    """Write one PNG: a row per image, original | n_variants x (pseudo-defect, mask, outline).

    Each tile is resized to TILE_HEIGHT pixels high (aspect kept) under a LABEL_HEIGHT band
    naming it (the pseudo-defect tiles name their kind); the mask is white on black, the outline
    tile draws the mask boundary in red on the pseudo-defect. Rows shorter than the widest are
    padded on the right. Returns the path written.
    """
    if not images:
        raise ValueError("preview_grid: no images given")
    rows: list[list[tuple[str, np.ndarray]]] = []
    for image in images:
        check_image(image)
        row = [("original", _resize(image, TILE_HEIGHT))]
        for _ in range(n_variants):
            out, mask, kind = maker(image, rng)
            name = maker.kinds[kind - 1]
            tile = _resize(out, TILE_HEIGHT)
            small_mask = _resize(mask * np.uint8(255), TILE_HEIGHT, nearest=True) > 0  # (TILE_HEIGHT, W')
            row += [
                (name, tile),
                (f"{name} mask", np.repeat(small_mask[..., None] * np.uint8(255), 3, axis=2)),
                (f"{name} outline", _outline(tile, small_mask)),
            ]
        rows.append(row)

    row_widths = [sum(tile.shape[1] for _, tile in row) + GAP * (len(row) + 1) for row in rows]
    row_height = LABEL_HEIGHT + TILE_HEIGHT + GAP
    sheet = Image.new("RGB", (max(row_widths), GAP + row_height * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        top = GAP + r * row_height
        left = GAP
        for label, tile in row:
            draw.text((left, top), label, fill=(255, 255, 255))
            sheet.paste(Image.fromarray(tile), (left, top + LABEL_HEIGHT))
            left += tile.shape[1] + GAP
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def preview_training_images(cfg: Config, path: str | Path, n_images: int = 4, n_variants: int = 2) -> Path:
    """`preview_grid` of `n_images` training images of cfg's data (a seeded pick, in file order)
    with cfg's pseudo-defects; cfg is saved beside the PNG (`<name>.config.yaml`). With
    train.crop_size set, each image is a seeded crop of that size, as training sees it (the
    pseudo-defects' size follows the image they are pasted on). Returns the PNG path."""
    from pitscope.data import build_dataset

    dataset = build_dataset(cfg.data, "train", cfg.seed)
    if len(dataset) == 0:
        raise ConfigError("the training split has no images to preview")
    rng = np.random.default_rng(cfg.seed)
    picks = sorted(rng.choice(len(dataset), size=min(n_images, len(dataset)), replace=False).tolist())
    images = [dataset[i].image for i in picks]
    crop = cfg.train.crop_size
    if crop is not None:
        corners = [
            (int(rng.integers(0, im.shape[0] - crop + 1)), int(rng.integers(0, im.shape[1] - crop + 1)))
            for im in images
        ]
        images = [im[top : top + crop, left : left + crop] for im, (top, left) in zip(images, corners)]
    path = preview_grid(images, PseudoDefects(cfg.augment), rng, path, n_variants=n_variants)
    save_config(cfg, path.with_suffix(".config.yaml"))
    return path
