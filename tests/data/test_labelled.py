import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pitscope.data.labelled import (
    Cutout,
    LabelledDefect,
    count_distinct_defects,
    defect_cutouts,
    load_labelled_defects,
)
from pitscope.data.types import DatasetLayoutError
from pitscope.tensors import resize_image

LOGGER = "pitscope.data.labelled"


def _photo(path: Path, size=(32, 32), seed=0) -> Path:
    """A seeded random RGB photo of `size` (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, boxes=((4, 4, 10, 10),), size=(32, 32), value=255) -> Path:
    """A PNG mask of `size` (W, H) that is `value` inside each box (x0, y0, x1, y1), x1/y1 exclusive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = value
    Image.fromarray(mask).save(path)
    return path


def _labelme(path: Path, points, label="Pitting") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = [{"label": label, "points": points, "shape_type": "polygon"}]
    path.write_text(json.dumps({"shapes": shapes, "imageHeight": 32, "imageWidth": 32}))
    return path


def _defect(mask: np.ndarray, name="a.png") -> LabelledDefect:
    """A LabelledDefect with a grey gradient photo, built in memory."""
    height, width = mask.shape
    grey = np.linspace(0, 255, height * width).reshape(height, width).astype(np.uint8)
    return LabelledDefect(Path(name), "0" * 64, np.repeat(grey[..., None], 3, axis=2), mask.astype(bool))


# -- pairing ---------------------------------------------------------------------------------
def test_masks_pair_by_exact_stem_in_every_layout(tmp_path):
    for stem in ("a", "a1", "b", "c", "d"):
        _photo(tmp_path / f"{stem}.png")
    _mask(tmp_path / "masks" / "a.png", boxes=((1, 1, 3, 3),))  # 4 px
    _mask(tmp_path / "masks" / "a1_mask.png", boxes=((1, 1, 4, 4),), value=1)  # 9 px, values {0, 1}
    _mask(tmp_path / "masks" / "b_mask.bmp", boxes=((0, 0, 4, 4),))  # 16 px
    _labelme(tmp_path / "c.json", [[4, 4], [12, 4], [12, 12], [4, 12]])
    _labelme(tmp_path / "label" / "d.json", [[20, 20], [28, 20], [28, 28], [20, 28]])
    defects = load_labelled_defects(tmp_path, on_bad_file="error")
    assert [d.path.name for d in defects] == ["a.png", "a1.png", "b.png", "c.png", "d.png"]
    assert [int(d.mask.sum()) for d in defects[:3]] == [4, 9, 16]
    for defect in defects:
        assert defect.image.shape == (32, 32, 3) and defect.image.dtype == np.uint8
        assert defect.mask.shape == (32, 32) and defect.mask.dtype == bool
    # labelme polygons are filled at native size: interior and outline, nothing else
    for defect, (lo, hi) in zip(defects[3:], [(4, 12), (20, 28)]):
        expected = np.zeros((32, 32), dtype=bool)
        expected[lo : hi + 1, lo : hi + 1] = True
        np.testing.assert_array_equal(defect.mask, expected)


def test_masks_folder_comes_before_labelme(tmp_path, caplog):
    _photo(tmp_path / "a.png")
    _mask(tmp_path / "masks" / "a.png", boxes=((0, 0, 2, 2),))
    _labelme(tmp_path / "a.json", [[4, 4], [12, 4], [12, 12], [4, 12]])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (defect,) = load_labelled_defects(tmp_path, on_bad_file="error")
    assert defect.mask.sum() == 4
    assert "a.json: not used" in caplog.text


def test_sha256_is_of_the_file_bytes(tmp_path):
    photo = _photo(tmp_path / "a.jpg")
    _mask(tmp_path / "masks" / "a.png")
    (defect,) = load_labelled_defects(tmp_path)
    assert defect.sha256 == hashlib.sha256(photo.read_bytes()).hexdigest()


# -- bad input -------------------------------------------------------------------------------
def _bad_tree(tmp_path: Path, kind: str) -> Path:
    """A good photo `good.png` and one bad input of `kind`; returns the file the message must name."""
    _photo(tmp_path / "good.png")
    _mask(tmp_path / "masks" / "good.png")
    if kind == "no mask":
        return _photo(tmp_path / "lonely.png")
    if kind == "mask without photo":
        return _mask(tmp_path / "masks" / "ghost_mask.png")
    if kind == "labelme without photo":
        return _labelme(tmp_path / "label" / "ghost.json", [[1, 1], [5, 1], [5, 5]])
    _photo(tmp_path / "x.png")
    if kind == "size":
        return _mask(tmp_path / "masks" / "x.png", size=(16, 32))
    if kind == "empty":
        return _mask(tmp_path / "masks" / "x.png", boxes=())
    if kind == "empty labelme":
        return _labelme(tmp_path / "x.json", [[40, 40], [50, 40], [50, 50]])  # outside the photo
    if kind == "three values":
        path = _mask(tmp_path / "masks" / "x.png")
        values = np.asarray(Image.open(path)).copy()
        values[0, 0] = 128
        Image.fromarray(values).save(path)
        return path
    if kind == "two values without 0":
        values = np.full((32, 32), 100, dtype=np.uint8)
        values[:4, :4] = 255
        Image.fromarray(values).save(tmp_path / "masks" / "x.png")
        return tmp_path / "masks" / "x.png"
    if kind == "unreadable photo":
        (tmp_path / "x.png").write_bytes(b"not an image")
        _mask(tmp_path / "masks" / "x.png")
        return tmp_path / "x.png"
    if kind == "unreadable mask":
        (tmp_path / "masks" / "x.png").write_bytes(b"")
        return tmp_path / "masks" / "x.png"
    if kind == "other label":
        return _labelme(tmp_path / "label" / "x.json", [[1, 1], [5, 1], [5, 5]], label="Scratch")
    if kind == "broken labelme":
        (tmp_path / "x.json").write_text("{not json")
        return tmp_path / "x.json"
    raise AssertionError(kind)


BAD = [
    "no mask",
    "mask without photo",
    "labelme without photo",
    "size",
    "empty",
    "empty labelme",
    "three values",
    "two values without 0",
    "unreadable photo",
    "unreadable mask",
    "other label",
    "broken labelme",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_raises_naming_the_file(tmp_path, kind):
    culprit = _bad_tree(tmp_path, kind)
    with pytest.raises(DatasetLayoutError, match=str(culprit).replace("\\", "\\\\")):
        load_labelled_defects(tmp_path, on_bad_file="error")


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_skipped_with_a_warning(tmp_path, caplog, kind):
    culprit = _bad_tree(tmp_path, kind)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        defects = load_labelled_defects(tmp_path)
    assert [d.path.name for d in defects] == ["good.png"]
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(culprit) in warnings[0]


def test_jpeg_mask_is_refused_with_a_hint(tmp_path):
    _photo(tmp_path / "a.png", size=(64, 64))
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:30, 10:30] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "a.jpg", quality=50)
    with pytest.raises(DatasetLayoutError, match="save them as PNG"):
        load_labelled_defects(tmp_path, on_bad_file="error")


def test_colour_and_bool_masks_are_binary(tmp_path):
    _photo(tmp_path / "a.png")
    _photo(tmp_path / "b.png")
    red = np.zeros((32, 32, 3), dtype=np.uint8)
    red[2:5, 2:5] = (255, 0, 0)
    (tmp_path / "masks").mkdir()
    Image.fromarray(red).save(tmp_path / "masks" / "a.png")
    flags = np.zeros((32, 32), dtype=bool)
    flags[0:2, 0:2] = True
    Image.fromarray(flags).save(tmp_path / "masks" / "b.png")  # mode "1"
    defects = load_labelled_defects(tmp_path, on_bad_file="error")
    assert [int(d.mask.sum()) for d in defects] == [9, 4]


def test_photos_sharing_a_stem_are_refused(tmp_path):
    _photo(tmp_path / "a.png")
    _photo(tmp_path / "a.jpg")
    _mask(tmp_path / "masks" / "a.png")
    with pytest.raises(DatasetLayoutError, match="share the stem 'a'"):
        load_labelled_defects(tmp_path, on_bad_file="error")


def test_missing_folder_and_nothing_usable_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_labelled_defects(tmp_path / "nowhere")
    _photo(tmp_path / "lonely.png")
    with pytest.raises(DatasetLayoutError, match="no usable labelled photo"):
        load_labelled_defects(tmp_path)
    with pytest.raises(ValueError, match="on_bad_file"):
        load_labelled_defects(tmp_path, on_bad_file="ignore")


# -- cutouts ---------------------------------------------------------------------------------
def test_two_blobs_give_two_cutouts_at_the_training_size():
    # 64 x 64 -> 32 x 32: an 8 x 8 blob on even pixels becomes exactly 4 x 4 (bilinear, > 0.5).
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:16, 8:16] = True
    mask[40:48, 20:28] = True
    defect = _defect(mask)
    cutouts = defect_cutouts([defect], image_size=32, margin=2)
    assert len(cutouts) == 2
    for cutout in cutouts:
        assert isinstance(cutout, Cutout) and cutout.source == 0
        assert cutout.image.shape == (8, 8, 3) and cutout.image.dtype == np.uint8
        assert cutout.mask.shape == (8, 8) and cutout.mask.dtype == bool
        assert cutout.mask.sum() == 16 and cutout.mask[2:6, 2:6].all()
    np.testing.assert_array_equal(cutouts[0].image, resize_image(defect.image, 32)[2:10, 2:10])


def test_margin_is_clipped_at_the_border_and_holds_only_its_own_component():
    mask = np.zeros((64, 64), dtype=bool)
    mask[0:8, 56:64] = True  # top right corner -> rows 0:4, cols 28:32 at 32
    mask[10:14, 48:56] = True  # close by -> rows 5:7, cols 24:28: inside the first one's margin
    cutouts = defect_cutouts([_defect(np.zeros((64, 64), bool)), _defect(mask)], image_size=32, margin=2)
    assert [c.source for c in cutouts] == [1, 1]
    corner = cutouts[0]
    assert corner.mask.shape == (6, 6)  # rows 0:6, cols 26:32
    assert corner.mask.sum() == 16 and corner.mask[0:4, 2:6].all()


def test_defects_that_vanish_are_dropped_and_none_left_is_an_error(caplog):
    tiny = np.zeros((64, 64), dtype=bool)
    tiny[31, 31] = True  # one native pixel: a quarter of a pixel at 32
    big = np.zeros((64, 64), dtype=bool)
    big[8:16, 8:16] = True
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cutouts = defect_cutouts([_defect(tiny, "tiny.png"), _defect(big, "big.png")], image_size=32)
    assert [c.source for c in cutouts] == [1]
    assert "tiny.png" in caplog.text
    with pytest.raises(DatasetLayoutError, match="tiny.png"):
        defect_cutouts([_defect(tiny, "tiny.png")], image_size=32)
    with pytest.raises(ValueError, match="margin"):
        defect_cutouts([_defect(big)], image_size=32, margin=-1)


def test_count_distinct_defects_uses_eight_connectivity():
    a = np.zeros((16, 16), dtype=bool)
    a[1, 1] = a[2, 2] = True  # diagonal neighbours: one defect
    a[10:12, 10:12] = True
    b = np.zeros((16, 16), dtype=bool)
    b[0, 0] = b[0, 2] = b[5, 5] = True
    assert count_distinct_defects([_defect(a), _defect(b)]) == 5
    assert count_distinct_defects([]) == 0
