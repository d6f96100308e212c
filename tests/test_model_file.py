"""The model file's layout: the network kept only as deep as scoring reads, precisions packed."""

import pytest
import torch

from pitscope.config import apply_overrides, load_config
from pitscope.data import build_dataset
from pitscope.inference import Detector
from pitscope.model_file import scored_stage
from pitscope.models.network import ScoringNetwork
from pitscope.tensors import images_to_batch

MAP_MAX = ["score.image_method=map_max", "score.image_features=layer4", "score.pixel_stages=[conv1]"]


def test_scored_stage_is_the_deepest_pixel_stage_only_when_scoring_reads_nothing_else(tiny_detector_overrides):
    cfg = load_config(None, [*tiny_detector_overrides, *MAP_MAX])
    assert scored_stage(cfg) == "conv1"
    assert scored_stage(apply_overrides(cfg, ["score.pixel_stages=[conv1, layer2]"])) == "layer2"
    assert scored_stage(apply_overrides(cfg, ["score.image_method=embedding"])) is None
    assert (
        scored_stage(load_config(None, tiny_detector_overrides)) is None
    )  # the default: an image embedding from layer4


def test_a_map_max_model_keeps_the_backbone_up_to_its_stage_and_scores_the_same(tmp_path, fit_tiny_detector):
    detector, path, cfg = fit_tiny_detector(tmp_path, *MAP_MAX)
    train = build_dataset(cfg.data, "train", cfg.seed)
    raw = torch.load(path, weights_only=True)
    assert raw["network"] == {"kept_stage": "conv1"}
    net_keys = {k for k in raw["state_dict"] if k.startswith("net.")}
    assert net_keys and all(k.startswith(("net.backbone.conv1.", "net.backbone.bn1.")) for k in net_keys)
    assert "pixel_scorer.precision_" not in raw["state_dict"]
    c = detector.pixel_scorer.precision_.shape[-1]
    assert raw["state_dict"]["pixel_scorer.precision_packed_"].shape[-1] == c * (c + 1) // 2

    loaded = Detector.load(path)
    assert isinstance(loaded.net, ScoringNetwork)
    assert torch.equal(loaded.pixel_scorer.precision_, detector.pixel_scorer.precision_)
    x = images_to_batch([train[i].image for i in range(4)])
    s0, m0 = detector(x)
    s1, m1 = loaded(x)
    assert torch.equal(s0, s1) and torch.equal(m0, m1)
    assert float(loaded.threshold) == float(detector.threshold)

    full = tmp_path / "full.pt"  # the same detector with every tensor, as files were written before
    torch.save({**raw, "state_dict": detector.state_dict()}, full)
    del raw
    assert path.stat().st_size < full.stat().st_size / 4

    # saved again, the loaded detector writes the same file content
    again = torch.load(loaded.save(tmp_path / "again.pt"), weights_only=True)
    assert again["network"] == {"kept_stage": "conv1"}
    assert sorted(again["state_dict"]) == sorted(torch.load(path, weights_only=True)["state_dict"])


def test_a_kept_part_of_the_network_refuses_settings_that_need_more(tmp_path, fit_tiny_detector):
    loaded = Detector.load(fit_tiny_detector(tmp_path, *MAP_MAX)[1])
    for more in (["score.image_method=embedding"], ["score.pixel_stages=[conv1, layer1]"]):
        cfg = apply_overrides(loaded.cfg, more)
        with pytest.raises(ValueError, match="keeps its network only up to conv1"):
            Detector(cfg, loaded.n_kinds, net=loaded.net)
    # the same stage, other score settings: allowed
    cfg = apply_overrides(loaded.cfg, ["score.smoothing_sigma=1"])
    refit = Detector(cfg, loaded.n_kinds, net=loaded.net).fit(
        build_dataset(cfg.data, "train", cfg.seed), progress=False
    )
    assert torch.isfinite(refit.threshold)


def test_an_embedding_model_keeps_the_whole_network_and_packs_its_precisions(tmp_path, fit_tiny_detector):
    detector, path, cfg = fit_tiny_detector(tmp_path)
    train = build_dataset(cfg.data, "train", cfg.seed)
    raw = torch.load(path, weights_only=True)
    assert "network" not in raw
    assert any(k.startswith("net.backbone.layer4.") for k in raw["state_dict"])
    assert "pixel_scorer.precision_packed_" in raw["state_dict"]
    loaded = Detector.load(path)
    x = images_to_batch([train[i].image for i in range(4)])
    s0, m0 = detector(x)
    s1, m1 = loaded(x)
    assert torch.equal(s0, s1) and torch.equal(m0, m1)


def test_evaluate_refuses_an_image_embedding_a_map_max_model_never_fitted(tmp_path, fit_tiny_detector, capsys):
    from pitscope.cli import main

    path = fit_tiny_detector(tmp_path, *MAP_MAX)[1]
    assert main(["evaluate", str(path), "--set", "score.image_method=embedding", "--quiet"]) == 2
    assert "no fitted image embedding scorer" in capsys.readouterr().err
