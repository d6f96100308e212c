import numpy as np
import pytest
from PIL import Image

from pitscope.augment.textures import FolderTextures, ProceduralTextures, make_texture_source
from pitscope.data.types import BadImageError


def test_procedural_textures_are_vivid_varied_and_deterministic():
    source = ProceduralTextures()
    textures = [source.sample(np.random.default_rng(seed), (48, 64)) for seed in range(12)]
    for texture in textures:
        assert texture.shape == (48, 64, 3) and texture.dtype == np.uint8
    np.testing.assert_array_equal(textures[0], source.sample(np.random.default_rng(0), (48, 64)))
    assert len({t.tobytes() for t in textures}) == 12
    # Vivid: clearly coloured (channels differ) and not flat.
    chroma = np.mean([np.ptp(t.astype(int), axis=2).mean() for t in textures])
    assert chroma > 30
    assert min(t.std() for t in textures) > 5


def test_procedural_textures_ignore_the_global_rng():
    np.random.seed(0)
    a = ProceduralTextures().sample(np.random.default_rng(9), (32, 32))
    np.random.seed(1)
    b = ProceduralTextures().sample(np.random.default_rng(9), (32, 32))
    np.testing.assert_array_equal(a, b)


def _write_images(folder, n=3):
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir()
    paths = []
    for i in range(n):
        path = folder / ("sub" if i == 0 else "") / f"tex{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(30 + 10 * i, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    Image.fromarray(rng.integers(0, 256, size=(20, 20), dtype=np.uint8)).save(folder / "grey.jpg")
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_folder_textures_find_sorted_images_recursively(tmp_path):
    _write_images(tmp_path)
    source = FolderTextures(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in source.files]
    assert names == ["grey.jpg", "sub/tex0.png", "tex1.png", "tex2.png"]


def test_folder_textures_sample_crops_and_resizes(tmp_path):
    _write_images(tmp_path)
    source = FolderTextures(tmp_path)
    seen = set()
    for seed in range(20):
        texture = source.sample(np.random.default_rng(seed), (24, 36))
        assert texture.shape == (24, 36, 3) and texture.dtype == np.uint8
        seen.add(texture.tobytes())
    assert len(seen) == 20
    again = [source.sample(np.random.default_rng(1), (24, 36)) for _ in range(2)]
    np.testing.assert_array_equal(again[0], again[1])


def test_folder_without_images_is_an_error_naming_it(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        FolderTextures(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        FolderTextures(tmp_path / "missing")


def test_make_texture_source(tmp_path):
    assert isinstance(make_texture_source(None), ProceduralTextures)
    _write_images(tmp_path)
    assert isinstance(make_texture_source(str(tmp_path)), FolderTextures)


def test_folder_with_an_undecodable_image_names_it(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    source = FolderTextures(tmp_path)
    with pytest.raises(BadImageError, match="broken.png"):
        source.sample(np.random.default_rng(0), (8, 8))
