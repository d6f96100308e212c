import numpy as np
from scipy import ndimage

from pitscope.augment.pastenoise import MIN_AREA_FRACTION, noise_region, paste_noise
from pitscope.augment.randaugment import rand_augment
from pitscope.augment.textures import ProceduralTextures


class UniformNoiseTextures:
    """Texture of uniform random pixels: differs from any image almost everywhere."""

    def sample(self, rng, shape):
        return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _image(shape=(64, 64)):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    grey = (110 + 30 * np.sin(x / 3.0)).astype(np.uint8)
    return np.dstack([grey, grey, grey])


def test_output_types_and_mask():
    out, mask = paste_noise(_image(), np.random.default_rng(0), ProceduralTextures())
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert ndimage.label(mask, structure=np.ones((3, 3)))[1] == 1  # only the largest region


def test_changes_stay_inside_the_mask_and_fill_most_of_it():
    image = _image()
    for textures in (UniformNoiseTextures(), ProceduralTextures()):
        for seed in range(8):
            out, mask = paste_noise(image, np.random.default_rng(seed), textures, alpha_range=(0.5, 0.5))
            inside = mask.astype(bool)
            changed = (out != image).any(axis=2)
            np.testing.assert_array_equal(out[~inside], image[~inside])
            assert changed[inside].mean() > 0.5


def test_blend_is_equation_3():
    image = _image()
    textures = ProceduralTextures()
    for seed in range(5):
        out, mask = paste_noise(image, np.random.default_rng(seed), textures, alpha_range=(0.5, 1.0))
        replay = np.random.default_rng(seed)
        m = noise_region((64, 64), replay)[..., None].astype(np.float64)
        texture = rand_augment(textures.sample(replay, (64, 64)), replay, 3).astype(np.float64)
        alpha = replay.uniform(0.5, 1.0)
        expected = (1 - m) * image + alpha * (m * image) + (1 - alpha) * (m * texture)
        np.testing.assert_array_equal(mask, m[..., 0])
        assert np.abs(out.astype(np.float64) - expected).max() <= 0.5 + 1e-6


def test_mask_is_the_pasted_region_even_when_alpha_is_one():
    image = _image()
    out, mask = paste_noise(image, np.random.default_rng(0), ProceduralTextures(), alpha_range=(1.0, 1.0))
    np.testing.assert_array_equal(out, image)
    assert mask.sum() > 0


def test_tiny_regions_are_redrawn():
    min_area = MIN_AREA_FRACTION * 64 * 64
    for seed in range(20):
        # Fine lattices at a high threshold make many specks of a few pixels.
        region = noise_region((64, 64), np.random.default_rng(seed), scales=(32,), threshold=0.6, rotate=False)
        assert region.sum() >= min_area


def test_deterministic_and_ignores_the_global_rng():
    image = _image()
    np.random.seed(0)
    a = paste_noise(image, np.random.default_rng(11), ProceduralTextures())
    np.random.seed(1)
    b = paste_noise(image, np.random.default_rng(11), ProceduralTextures())
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = paste_noise(image, np.random.default_rng(12), ProceduralTextures())
    assert not np.array_equal(a[1], c[1])


def test_input_is_not_modified():
    image = _image()
    before = image.copy()
    paste_noise(image, np.random.default_rng(0), ProceduralTextures())
    np.testing.assert_array_equal(image, before)
