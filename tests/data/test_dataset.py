from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pitscope.config import DataConfig
from pitscope.data import FORMATS, build_dataset
from pitscope.data.dataset import AnomalyDataset, Record, pair_masks, rasterise_polygons
from pitscope.data.imageio import read_image
from pitscope.data.types import BadImageError, DatasetLayoutError, Sample


def test_rectangle_polygon_fills_its_pixels_inclusive():
    mask = rasterise_polygons([((2, 3), (9, 3), (9, 7), (2, 7))], height=16, width=12)
    assert mask.shape == (16, 12) and mask.dtype == np.uint8
    assert mask.sum() == 8 * 5  # columns 2..9, rows 3..7, outline included
    assert mask[3:8, 2:10].all()


def test_triangle_polygon_is_close_to_its_area():
    mask = rasterise_polygons([((10, 10), (210, 10), (10, 210))], height=256, width=256)
    assert abs(int(mask.sum()) - 20000) / 20000 < 0.03


def test_polygons_union_and_degenerate_ones_are_harmless():
    square = ((0, 0), (3, 0), (3, 3), (0, 3))
    mask = rasterise_polygons([square, square, ((5, 5),)], height=8, width=8)
    assert mask.sum() == 16


def test_pair_masks_uses_exact_stems(tmp_path):
    images = [tmp_path / "num_1.png", tmp_path / "num_10.png", tmp_path / "num_100.png"]
    masks = [tmp_path / "m" / f"{n}_mask.png" for n in ("num_100", "num_10", "num_1")]
    pairs = pair_masks(images, masks, ("_mask",))
    assert {image.stem: mask.stem for image, mask in pairs.items()} == {
        "num_1": "num_1_mask",
        "num_10": "num_10_mask",
        "num_100": "num_100_mask",
    }


def test_pair_masks_refuses_missing_orphan_and_ambiguous(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    with pytest.raises(DatasetLayoutError, match="b.png: defective image has no mask"):
        pair_masks([a, b], [tmp_path / "a_mask.png"], ("_mask",))
    with pytest.raises(DatasetLayoutError, match="c_mask.png: mask belongs to no image"):
        pair_masks([a], [tmp_path / "a_mask.png", tmp_path / "c_mask.png"], ("_mask",))
    with pytest.raises(DatasetLayoutError, match="more than one mask"):
        pair_masks([a], [tmp_path / "a.png", tmp_path / "a_mask.jpg"], ("", "_mask"))


def _records(tmp_path, write_image, write_mask):
    """A normal image, one with a mask file and one with a polygon, all 40x30 (W x H)."""
    normal = write_image(tmp_path / "c_normal.png", size=(40, 30), seed=1)
    masked = write_image(tmp_path / "b_masked.png", size=(40, 30), seed=2)
    mask = write_mask(tmp_path / "masks" / "b_masked.png", box=(4, 5, 14, 10), size=(40, 30))
    drawn = write_image(tmp_path / "a_drawn.jpg", size=(40, 30), seed=3)
    return [
        Record(normal, 0),
        Record(masked, 1, mask_path=mask),
        Record(drawn, 1, polygons=(((0, 0), (9, 0), (9, 9), (0, 9)),)),
    ]


def test_samples_at_native_size(tmp_path, write_image, write_mask):
    dataset = AnomalyDataset(_records(tmp_path, write_image, write_mask), size=None)
    assert [Path(p).name for p in dataset.paths] == ["a_drawn.jpg", "b_masked.png", "c_normal.png"]
    drawn, masked, normal = dataset[0], dataset[1], dataset[-1]
    assert isinstance(drawn, Sample)
    assert drawn.image.shape == (30, 40, 3) and drawn.mask.shape == (30, 40)
    assert drawn.mask.sum() == 100 and drawn.label == 1
    assert masked.mask.sum() == 50 and masked.mask[5:10, 4:14].all()
    np.testing.assert_array_equal(masked.image, read_image(tmp_path / "b_masked.png"))
    assert normal.mask.sum() == 0 and normal.label == 0
    np.testing.assert_array_equal(dataset.labels, [1, 1, 0])
    assert dataset.labels.dtype == np.int64
    assert dataset.describe() == {"total": 3, "normal": 1, "defective": 2}


def test_resize_squashes_image_and_keeps_mask_binary(tmp_path, write_image, write_mask):
    dataset = AnomalyDataset(_records(tmp_path, write_image, write_mask), size=20)
    for sample in dataset:
        assert sample.image.shape == (20, 20, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (20, 20) and set(np.unique(sample.mask)) <= {0, 1}
    masked = dataset[1].mask  # box x 4..13 of 40 -> 2..6 of 20, y 5..9 of 30 -> about 3..6 of 20
    assert masked[4, 3] == 1 and masked[15, 15] == 0


def test_cache_keeps_samples_and_can_be_turned_off(tmp_path, write_image, write_mask):
    records = _records(tmp_path, write_image, write_mask)
    cached = AnomalyDataset(records, size=16, cache=True)
    assert cached[0] is cached[0]
    uncached = AnomalyDataset(records, size=16, cache=False)
    assert uncached[0] is not uncached[0]
    np.testing.assert_array_equal(uncached[0].image, cached[0].image)


def test_mask_of_another_size_is_a_layout_error_naming_both(tmp_path, write_image, write_mask):
    image = write_image(tmp_path / "img.png", size=(32, 32))
    mask = write_mask(tmp_path / "img_mask.png", box=(0, 0, 4, 4), size=(16, 32))
    dataset = AnomalyDataset([Record(image, 1, mask_path=mask)], size=32)
    with pytest.raises(DatasetLayoutError) as info:
        dataset[0]
    assert str(image) in str(info.value) and str(mask) in str(info.value)


def test_check_skips_bad_files_and_reports_each(tmp_path, write_image, bad_files):
    good = write_image(tmp_path / "good.png")
    records = [Record(good, 0)] + [Record(path, 1) for path in bad_files.values()]
    dataset = AnomalyDataset(records, size=16, on_bad_file="skip", name="t")
    with pytest.warns(UserWarning) as caught:
        bad = dataset.check(progress=False)
    assert sorted(path for path, _ in bad) == sorted(str(p) for p in bad_files.values())
    assert all(reason for _, reason in bad)
    message = str(caught[0].message)
    for path in bad_files.values():
        assert str(path) in message
    assert dataset.paths == [str(good)] and len(dataset) == 1
    assert dataset[0].image.shape == (16, 16, 3)


def test_check_on_good_data_returns_nothing(tmp_path, write_image, write_mask):
    dataset = AnomalyDataset(_records(tmp_path, write_image, write_mask), size=16)
    assert dataset.check(progress=False) == []
    assert len(dataset) == 3


def test_check_reports_a_bad_mask_file(tmp_path, write_image, bad_files):
    image = write_image(tmp_path / "img.png")
    dataset = AnomalyDataset([Record(image, 1, mask_path=bad_files["text"])])
    with pytest.warns(UserWarning, match="text.jpg"):
        bad = dataset.check(progress=False)
    assert bad[0][0] == str(bad_files["text"]) and len(dataset) == 0


def test_check_with_error_raises_the_first_bad_file(tmp_path, write_image, bad_files):
    records = [Record(write_image(tmp_path / "good.png"), 0)] + [Record(p, 1) for p in bad_files.values()]
    dataset = AnomalyDataset(records, on_bad_file="error")
    first_bad = sorted(str(p) for p in bad_files.values())[0]
    with pytest.raises(BadImageError) as info:
        dataset.check(progress=False)
    assert info.value.path == first_bad
    assert len(dataset) == 5


def test_constructor_refuses_bad_options_and_duplicates(tmp_path):
    with pytest.raises(ValueError, match="on_bad_file"):
        AnomalyDataset([], on_bad_file="ignore")
    record = Record(tmp_path / "a.png", 0)
    with pytest.raises(DatasetLayoutError, match="listed twice"):
        AnomalyDataset([record, record])


def test_build_dataset_checks_format_and_split():
    assert set(FORMATS) == {"bsdata", "mvtec", "folder", "synthetic"}
    with pytest.raises(ValueError, match="bsdata, mvtec, folder, synthetic"):
        build_dataset(DataConfig(format="nope"), "train", 0)
    with pytest.raises(ValueError, match="train, test"):
        build_dataset(DataConfig(format="folder", root="."), "val", 0)


def test_build_dataset_dispatches_to_the_format(tmp_path, write_image):
    write_image(tmp_path / "good" / "a.png")
    dataset = build_dataset(DataConfig(format="folder", root=str(tmp_path / "good"), image_size=32), "train", 0)
    assert isinstance(dataset, AnomalyDataset) and len(dataset) == 1


def test_joined_sample_set_reads_its_parts_in_order(tmp_path):
    from pitscope.data.dataset import JoinedSampleSet
    from pitscope.data.synthetic import SyntheticDataset

    first = SyntheticDataset(n_normal=3, n_defect=1, height=32, width=32, seed=1)
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(tmp_path / "b.png")
    second = AnomalyDataset([Record(tmp_path / "b.png", 0), Record(tmp_path / "a.png", 0)])
    joined = JoinedSampleSet([first, second], name="both")
    assert len(joined) == 6 and joined.has_masks
    assert joined.labels.tolist() == first.labels.tolist() + [0, 0]
    assert joined.paths == first.paths + [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert joined.describe() == {"total": 6, "normal": 5, "defective": 1}
    np.testing.assert_array_equal(joined[2].image, first[2].image)
    assert joined[4].image.max() == 7 and joined[5].image.max() == 9 and joined[-1].image.max() == 9
    with pytest.raises(IndexError):
        joined[6]
    (tmp_path / "a.png").write_bytes(b"not an image")  # unreadable: check() drops it, later indices move up
    fresh = JoinedSampleSet([first, AnomalyDataset([Record(tmp_path / "a.png", 0), Record(tmp_path / "b.png", 0)])])
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        bad = fresh.check(progress=False)
    assert [Path(p).name for p, _ in bad] == ["a.png"] and len(fresh) == 5 and fresh[4].image.max() == 9
    with pytest.raises(ValueError, match="at least one"):
        JoinedSampleSet([])
