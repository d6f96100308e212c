import numpy as np
import pytest
from PIL import Image

from pitscope.augment import KINDS, PseudoDefects
from pitscope.config import AugmentConfig


def _image(seed=0):
    return np.random.default_rng(seed).integers(60, 200, size=(48, 64, 3), dtype=np.uint8)


def test_kinds_table():
    assert list(KINDS) == ["noise", "scar", "normal", "pit"]


def test_kind_index_is_one_based_and_all_kinds_are_drawn():
    maker = PseudoDefects(AugmentConfig(kinds=["scar", "noise", "normal"]))
    assert maker.n_kinds == 3
    seen = set()
    for seed in range(40):
        out, mask, kind = maker(_image(), np.random.default_rng(seed))
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
        assert mask.shape == (48, 64) and mask.dtype == np.uint8 and mask.any()
        assert kind in (1, 2, 3)
        seen.add(kind)
    assert seen == {1, 2, 3}


def test_each_kind_runs_its_generator():
    # A single kind always returns index 1; outside the mask nothing changes.
    for name in KINDS:
        maker = PseudoDefects(AugmentConfig(kinds=[name]))
        image = _image(1)
        out, mask, kind = maker(image, np.random.default_rng(0))
        assert kind == 1
        np.testing.assert_array_equal(out[mask == 0], image[mask == 0])


def test_deterministic_and_ignores_the_global_rng():
    maker = PseudoDefects(AugmentConfig(kinds=["noise", "scar", "normal"]))
    image = _image(2)
    for seed in range(5):
        np.random.seed(0)
        a = maker(image, np.random.default_rng(seed))
        np.random.seed(1)
        b = maker(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2] == b[2]


def test_config_options_reach_paste_noise():
    # alpha fixed at 1: PasteNoise changes no pixel but still reports its mask.
    maker = PseudoDefects(AugmentConfig(kinds=["noise"], alpha_min=1.0, alpha_max=1.0))
    image = _image(3)
    out, mask, _ = maker(image, np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)
    assert mask.any()


def test_texture_dir_is_used(tmp_path):
    Image.fromarray(np.full((20, 20, 3), 7, dtype=np.uint8)).save(tmp_path / "dark.png")
    cfg = AugmentConfig(kinds=["noise"], texture_dir=str(tmp_path), alpha_min=0.0, alpha_max=0.0, randaugment_ops=0)
    out, mask, _ = PseudoDefects(cfg)(_image(4), np.random.default_rng(0))
    assert (out[mask == 1] == 7).all()


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="noise, scar, normal, pit"):
        PseudoDefects(AugmentConfig(kinds=["noise", "crack"]))
    with pytest.raises(ValueError):
        PseudoDefects(AugmentConfig(kinds=[]))
    with pytest.raises(ValueError, match="twice"):
        PseudoDefects(AugmentConfig(kinds=["scar", "scar"]))


def test_bad_image_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        PseudoDefects(AugmentConfig())(np.zeros((8, 8, 3), dtype=np.float32), np.random.default_rng(0))
