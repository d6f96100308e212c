import numpy as np
import pytest
from PIL import Image, ImageFile

from pitscope.data.imageio import IMAGE_SUFFIXES, list_images, read_image, read_mask
from pitscope.data.types import BadImageError


def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image, pixels)


def test_greyscale_is_repeated_over_three_channels(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (16, 24), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (16, 24, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], grey)


def test_rgba_drops_alpha_and_keeps_colours(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[:, :, :3])


def test_palette_is_expanded_to_its_colours(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    image.putdata([0, 1, 2, 1, 0, 2, 2, 1])
    image.save(tmp_path / "p.png")
    rgb = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(rgb[0, 1], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, 2], [0, 0, 255])
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])


def test_16_bit_greyscale_is_scaled_to_8_bit(tmp_path):
    wide = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    image = read_image(tmp_path / "w.png")
    np.testing.assert_array_equal(image[0, :, 0], [0, 100, 255])
    np.testing.assert_array_equal(image[:, :, 0], image[:, :, 2])


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (40, 20, 3)


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "empty", "text"])
def test_unreadable_files_raise_bad_image_error_naming_the_path(bad_files, kind):
    path = bad_files[kind]
    with pytest.raises(BadImageError) as info:
        read_image(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value) and info.value.reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_missing_file_raises_bad_image_error(tmp_path):
    with pytest.raises(BadImageError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_mask_nonzero_is_one(tmp_path):
    values = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1]])


def test_colour_mask_counts_any_channel_and_ignores_alpha(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque everywhere
    rgba[0, 1, 2] = 1  # faint blue: defective
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[0, 1, 0]])


def test_bad_mask_raises(bad_files):
    with pytest.raises(BadImageError):
        read_mask(bad_files["corrupt"])


def test_list_images_is_sorted_case_insensitive_and_flat(tmp_path, write_image):
    for name in ["b.PNG", "a.jpg", "c.JPEG", "d.tif", "e.Bmp", "f.tiff"]:
        write_image(tmp_path / name, size=(4, 4))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.jpg").write_bytes(b"macos companion")
    write_image(tmp_path / "sub" / "z.png", size=(4, 4))
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.JPEG", "d.tif", "e.Bmp", "f.tiff"]
    assert {n.rsplit(".", 1)[1].lower() for n in names} == {s[1:] for s in IMAGE_SUFFIXES}


def test_list_images_of_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images(tmp_path / "nope")
