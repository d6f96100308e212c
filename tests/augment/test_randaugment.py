import numpy as np
import pytest

from pitscope.augment.randaugment import OPS, choose_ops, rand_augment


def _image(seed=0, shape=(32, 40)):
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def test_ops_are_the_six_of_the_paper():
    assert set(OPS) == {"autocontrast", "posterize", "solarize", "sharpness", "brightness", "color"}


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_op_keeps_shape_and_dtype(name):
    out = OPS[name](_image(), np.random.default_rng(0))
    assert out.shape == (32, 40, 3) and out.dtype == np.uint8


def test_choose_ops_gives_distinct_names_in_random_order():
    orders = set()
    for seed in range(30):
        names = choose_ops(np.random.default_rng(seed), 3)
        assert len(names) == 3 and len(set(names)) == 3 and set(names) <= set(OPS)
        orders.add(tuple(names))
    assert len(orders) > 10


def test_rand_augment_applies_exactly_the_chosen_ops_in_order():
    image = _image(1)
    for seed in range(10):
        out = rand_augment(image, np.random.default_rng(seed), n_ops=3)
        replay = np.random.default_rng(seed)
        expected = image
        for name in choose_ops(replay, 3):
            expected = OPS[name](expected, replay)
        np.testing.assert_array_equal(out, expected)
        assert out.dtype == np.uint8 and out.shape == image.shape


def test_rand_augment_is_deterministic_and_ignores_the_global_rng():
    image = _image(2)
    np.random.seed(0)
    a = rand_augment(image, np.random.default_rng(3))
    np.random.seed(1)
    b = rand_augment(image, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, rand_augment(image, np.random.default_rng(4)))


def test_rand_augment_does_not_modify_its_input():
    image = _image(3)
    before = image.copy()
    rand_augment(image, np.random.default_rng(0), n_ops=6)
    np.testing.assert_array_equal(image, before)


def test_too_many_ops_is_an_error_naming_the_ops():
    with pytest.raises(ValueError, match="autocontrast"):
        rand_augment(_image(), np.random.default_rng(0), n_ops=7)
