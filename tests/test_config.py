import re

import pytest
import yaml

from pitscope.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    preset_names,
    save_config,
    to_dict,
)


def test_defaults_are_valid():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.data.format == "synthetic"


def test_every_preset_loads():
    assert preset_names(), "configs/ holds no presets"
    for name in preset_names():
        load_config(name)


def test_paper_preset_matches_the_paper():
    cfg = load_config("paper")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (800, 32, 0.03)
    assert (cfg.train.momentum, cfg.train.weight_decay) == (0.9, 3e-5)
    assert cfg.data.image_size == 256 and cfg.data.format == "bsdata"


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=5", "train.lr=0.1", "augment.kinds=[noise]", "data.root=null", "seed=7"])
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.1
    assert cfg.augment.kinds == ["noise"] and cfg.data.root is None and cfg.seed == 7


def test_int_is_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epoch=5", ["train.epoch", "epochs", "batch_size"]),
        ("trian.epochs=5", ["trian", "train", "data"]),
        ("train.epochs=five", ["train.epochs", "integer", "five"]),
        ("train.lr=fast", ["train.lr", "number"]),
        ("data.format=png", ["data.format", "bsdata", "mvtec", "folder", "synthetic"]),
        ("augment.kinds=[noise, glitter]", ["glitter", "scar"]),
        ("data.cache=maybe", ["data.cache", "true or false"]),
        ("train.epochs", ["section.key=value"]),
        ("score.calibration_fraction=1", ["score.calibration_fraction", "[0, 1)"]),
        ("score.calibration_fraction=-0.1", ["score.calibration_fraction", "[0, 1)"]),
        ("score.threshold_from=test", ["score.threshold_from", "out_of_fold", "held_back"]),
    ],
)
def test_errors_name_the_key_and_the_choices(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value)


def test_unknown_key_in_a_preset_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  warmup: 2\n")
    with pytest.raises(ConfigError, match="train.warmup"):
        load_config(str(path))


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="paper"):
        load_config("no-such-preset")


def test_alpha_range_checked():
    with pytest.raises(ConfigError, match="alpha"):
        from_dict({"augment": {"alpha_min": 0.9, "alpha_max": 0.5}})


def test_parse_override_reads_yaml():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=x=y") == ("a", "x=y")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "augment.kinds=[scar]"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 3
    assert load_config(str(path)) == cfg


def test_map_channels_must_divide_into_their_groups():
    with pytest.raises(ConfigError, match="score.pixel_channels=100 does not divide into score.channel_groups=3"):
        load_config(None, ["score.channel_groups=3"])
    with pytest.raises(ConfigError, match="score.channel_groups: must be >= 1"):
        load_config(None, ["score.channel_groups=0"])
    assert load_config(None, ["score.pixel_channels=200", "score.channel_groups=4"]).score.channel_groups == 4
    assert load_config(None, ["score.pixel_channels=null", "score.channel_groups=3"]).score.channel_groups == 3


def test_projection_image_features_need_the_image_branch():
    with pytest.raises(ConfigError, match="score.image_features=layer4"):
        load_config(None, ["model.classify=false"])
    cfg = load_config(None, ["model.classify=false", "score.image_features=layer4"])
    assert cfg.score.image_features == "layer4"
    assert load_config(None, []).score.image_features == "projection"
    with pytest.raises(ConfigError, match="image_features"):
        load_config(None, ["score.image_features=layer3"])
    assert load_config("cpu").score.image_features == "layer1+layer4"
    with pytest.raises(ConfigError, match="can be 0 or below"):
        load_config("cpu", ["score.map_normalisation=image_score"])


@pytest.mark.parametrize(
    "key, instead",
    [
        ("train.average_from", "last weights"),
        ("score.channel_seed", "seed"),
    ],
)
def test_a_removed_option_is_refused_with_what_to_do_instead(tmp_path, key, instead):
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} was removed: .*{instead}"):
        load_config(None, [f"{key}=0.5"])
    section, name = key.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({section: {name: None}}))
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} was removed"):
        load_config(str(path))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=-3", "train.epochs: must be >= 0, got -3"),
        ("train.lr=0", "train.lr: must be > 0"),
        ("train.batch_size=0", "train.batch_size: must be >= 1"),
        ("train.momentum=1.5", "train.momentum: must be >= 0 and <= 1"),
        ("augment.perlin_threshold=1.2", "augment.perlin_threshold: must be > 0 and <= 1"),
        ("score.smoothing_sigma=-1", "score.smoothing_sigma: must be >= 0"),
        ("score.neighbourhood=-1", "score.neighbourhood: must be >= 0"),
        ("score.region_core=1.2", "score.region_core: must be >= 0 and <= 1, got 1.2"),
        ("score.peak_region_max=-0.1", "score.peak_region_max: must be >= 0 and <= 1, got -0.1"),
        ("data.synthetic.n_train=0", "data.synthetic.n_train: must be >= 1"),
        ("train.budget_minutes=0", "train.budget_minutes: must be > 0"),
    ],
)
def test_numbers_out_of_range_are_refused_with_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_edges_of_the_ranges_and_null_are_accepted():
    cfg = load_config(
        None, ["train.epochs=0", "train.budget_minutes=null", "score.pixel_channels=null", "train.momentum=0"]
    )
    assert cfg.train.epochs == 0 and cfg.train.budget_minutes is None and cfg.score.pixel_channels is None


def test_the_scoring_size_is_checked():
    from pitscope.config import ConfigError, load_config

    assert load_config(None, ["score.image_size=512"]).score.image_size == 512
    with pytest.raises(ConfigError, match="score.image_size"):
        load_config(None, ["score.image_size=16"])


def test_configs_written_before_regions_after_background_cut_regions_from_the_map_before_the_steps():
    saved = to_dict(load_config("cpu"))
    assert saved["score"]["regions_after_background"] is True  # the preset cuts them after the background step
    del saved["score"]["regions_after_background"]
    assert from_dict(saved).score.regions_after_background is False
    with pytest.raises(ConfigError, match="map_background_window"):
        apply_overrides(load_config("cpu"), ["score.map_background_window=0"])
