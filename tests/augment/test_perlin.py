import numpy as np
import pytest
from scipy import ndimage

from pitscope.augment.perlin import perlin_mask, perlin_noise


def test_noise_is_deterministic_per_seed_and_differs_across_seeds():
    a = perlin_noise((48, 40), (4, 2), np.random.default_rng(7))
    b = perlin_noise((48, 40), (4, 2), np.random.default_rng(7))
    c = perlin_noise((48, 40), (4, 2), np.random.default_rng(8))
    assert a.dtype == np.float32 and a.shape == (48, 40)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_noise_statistics():
    rng = np.random.default_rng(0)
    values = np.stack([perlin_noise((32, 32), (4, 4), rng) for _ in range(200)])
    assert abs(values.mean()) < 0.05
    assert 0.2 < values.std() < 0.45
    assert np.abs(values).max() <= 1.01


def test_noise_is_zero_at_lattice_points():
    noise = perlin_noise((64, 48), (4, 8), np.random.default_rng(1))
    lattice = noise[::16, ::6]  # 64 / 4 and 48 / 8 pixels per cell
    assert lattice.shape == (4, 8)
    np.testing.assert_array_equal(lattice, 0.0)
    assert np.abs(noise).max() > 0.1


def test_noise_works_when_shape_is_not_a_multiple_of_res():
    noise = perlin_noise((37, 53), (4, 8), np.random.default_rng(2))
    assert noise.shape == (37, 53)
    assert np.isfinite(noise).all() and noise.std() > 0.05


def test_coarse_noise_is_smooth():
    noise = perlin_noise((64, 64), (1, 1), np.random.default_rng(3))
    assert np.abs(np.diff(noise, axis=0)).max() < 0.1
    assert np.abs(np.diff(noise, axis=1)).max() < 0.1


@pytest.mark.parametrize("rotate", [True, False])
def test_mask_is_nonempty_boolean_and_deterministic(rotate):
    for seed in range(10):
        a = perlin_mask((40, 56), np.random.default_rng(seed), rotate=rotate)
        b = perlin_mask((40, 56), np.random.default_rng(seed), rotate=rotate)
        assert a.dtype == bool and a.shape == (40, 56) and a.any()
        np.testing.assert_array_equal(a, b)


def test_mask_falls_back_to_a_blob_when_the_threshold_is_unreachable():
    mask = perlin_mask((32, 32), np.random.default_rng(0), threshold=2.0)
    assert mask.any() and not mask.all()


def test_mask_draws_the_scale_of_each_axis():
    # Only coarse scales: few, large regions; only fine ones: many small regions.
    def regions(scales, seed):
        mask = perlin_mask((64, 64), np.random.default_rng(seed), scales=scales, threshold=0.2, rotate=False)
        return ndimage.label(mask)[1]

    assert max(regions((1, 2), s) for s in range(5)) < min(regions((16, 32), s) for s in range(5))


def test_mask_ignores_the_global_rng():
    np.random.seed(0)
    a = perlin_mask((32, 32), np.random.default_rng(5))
    np.random.seed(1)
    b = perlin_mask((32, 32), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_mask_is_thresholded_noise_at_a_scale_drawn_per_axis():
    # Replaying the documented draws: res = (choice, choice), then the noise, then the threshold.
    scales = (2, 4, 8)
    for seed in range(5):
        replay = np.random.default_rng(seed)
        res = (int(replay.choice(scales)), int(replay.choice(scales)))
        expected = perlin_noise((32, 48), res, replay) > 0.0
        mask = perlin_mask((32, 48), np.random.default_rng(seed), scales=scales, threshold=0.0, rotate=False)
        np.testing.assert_array_equal(mask, expected)
