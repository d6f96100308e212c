import numpy as np
from PIL import Image

from pitscope.augment import PseudoDefects
from pitscope.augment.preview import GAP, LABEL_HEIGHT, TILE_HEIGHT, preview_grid
from pitscope.config import AugmentConfig


def test_preview_writes_a_png_of_the_expected_size(tmp_path):
    rng = np.random.default_rng(0)
    # Grey images, so that pure red can only come from the outlines.
    images = [
        np.repeat(rng.integers(0, 256, size=(64, 64, 1), dtype=np.uint8), 3, axis=2),
        np.repeat(rng.integers(0, 256, size=(32, 64, 1), dtype=np.uint8), 3, axis=2),  # tiles 2 x TILE_HEIGHT wide
    ]
    maker = PseudoDefects(AugmentConfig(kinds=["scar", "normal"]))
    path = preview_grid(images, maker, np.random.default_rng(1), tmp_path / "out" / "grid.png", n_variants=2)
    assert path == tmp_path / "out" / "grid.png" and path.is_file()
    with Image.open(path) as sheet:
        assert sheet.format == "PNG"
        tiles = 1 + 3 * 2
        assert sheet.size == (tiles * 2 * TILE_HEIGHT + GAP * (tiles + 1), GAP + 2 * (LABEL_HEIGHT + TILE_HEIGHT + GAP))
        pixels = np.asarray(sheet.convert("RGB"))
    # The outline tiles draw red.
    red = (pixels[..., 0] == 255) & (pixels[..., 1] == 0) & (pixels[..., 2] == 0)
    assert red.any()


def test_preview_is_deterministic(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    maker = PseudoDefects(AugmentConfig())
    a = preview_grid([image], maker, np.random.default_rng(3), tmp_path / "a.png", n_variants=1)
    b = preview_grid([image], maker, np.random.default_rng(3), tmp_path / "b.png", n_variants=1)
    assert a.read_bytes() == b.read_bytes()
