"""Tiny image files for the data tests: every test builds its own tree in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_image(path: Path, size: tuple[int, int] = (32, 32), mode: str = "RGB", seed: int = 0) -> Path:
    """Write a seeded random image of `size` (W, H) and Pillow `mode`; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "L":
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    image.save(path)
    return path


def _write_mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (32, 32)) -> Path:
    """Write a 0/255 PNG mask of `size` (W, H) that is 255 inside box = (x0, y0, x1, y1), x1/y1 exclusive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture
def write_image():
    return _write_image


@pytest.fixture
def write_mask():
    return _write_mask


@pytest.fixture
def bad_files(tmp_path: Path, write_image) -> dict[str, Path]:
    """One file of each unreadable kind: a JPEG cut in half, a corrupt PNG, an empty file, a text file."""
    folder = tmp_path / "bad"
    folder.mkdir()
    good_jpeg = write_image(tmp_path / "whole.jpg", size=(64, 64))
    data = good_jpeg.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    png = write_image(tmp_path / "whole.png").read_bytes()
    noise = np.random.default_rng(1).integers(0, 256, len(png) - 80, dtype=np.uint8).tobytes()
    (folder / "corrupt.png").write_bytes(png[:60] + noise + png[-20:])  # header fine, pixel data garbage
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    return {p.stem: p for p in folder.iterdir()}
