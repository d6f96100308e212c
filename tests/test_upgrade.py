"""Old model files and checkpoints load through the one `upgrade()`."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pitscope.config import from_dict
from pitscope.inference import Detector
from pitscope.upgrade import fill_image_features, upgrade

OLD_MODEL = Path(__file__).parent / "fixtures" / "model_before_image_features.pt"  # see fixtures/README.md


def test_a_model_file_from_before_image_features_scores_as_its_weights_do_under_the_upgraded_config():
    old = torch.load(OLD_MODEL, weights_only=True)
    saved = old["config"]
    assert "image_features" not in saved["score"]  # the fixture is what it stands for
    assert saved["train"]["average_from"] is None and saved["score"]["channel_seed"] is None

    detector = Detector.load(OLD_MODEL)
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    got = detector.predict(image)
    assert np.isfinite(got.score) and got.anomaly_map.shape == (48, 80) and np.isfinite(got.anomaly_map).all()

    upgraded = copy.deepcopy(saved)  # by hand: fitted on layer4, the removed options left out
    del upgraded["train"]["average_from"], upgraded["score"]["channel_seed"]
    upgraded["score"]["image_features"] = "layer4"
    same = Detector(from_dict(upgraded), old["n_kinds"])
    same.load_state_dict(old["state_dict"])
    want = same.eval().predict(image)
    assert detector.cfg == same.cfg
    assert got.score == pytest.approx(want.score, rel=1e-5)
    np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=1e-5, atol=1e-5)
    assert got.is_defective == want.is_defective and got.threshold == want.threshold


def test_a_model_file_fills_what_older_files_lack():
    state = {"config": {"score": {"channel_seed": 3}, "train": {"average_from": 0.5}}, "state_dict": {}}
    with pytest.warns(UserWarning, match="calibrate --write"):
        upgraded = upgrade(state, "model")
    assert upgraded is state
    assert state["config"] == {
        "score": {"map_normalisation": "none", "recompute_batchnorm": False, "image_features": "layer4"},
        "train": {},
    }
    assert torch.isnan(state["state_dict"]["pixel_threshold"])
    kept = {
        "config": {"score": {"map_normalisation": "image_mean", "image_features": "projection"}},
        "state_dict": {"pixel_threshold": torch.tensor(2.0)},
    }
    upgrade(kept, "model")
    assert kept["config"]["score"]["map_normalisation"] == "image_mean"
    assert kept["config"]["score"]["image_features"] == "projection"
    assert float(kept["state_dict"]["pixel_threshold"]) == 2.0


def test_a_checkpoint_drops_the_weight_average_and_counts_its_kinds():
    state = {
        "config": {"train": {"average_from": 0.5}, "augment": {"kinds": ["noise", "scar", "pit"]}},
        "model": {},
        "average": {"state": {}, "epochs": [2, 3]},
    }
    upgrade(state, "checkpoint")
    assert "average" not in state and "average_from" not in state["config"]["train"]
    assert state["n_kinds"] == 3
    assert "image_features" not in state["config"]["score"]  # an unfitted network takes the default


def test_upgrade_names_the_kinds_it_knows():
    with pytest.raises(ValueError, match="model, checkpoint"):
        upgrade({"config": {}}, "snapshot")


def test_configs_saved_before_image_features_keep_scoring_as_then():
    assert fill_image_features({"score": {}}, fitted=True)["score"]["image_features"] == "layer4"
    assert "image_features" not in fill_image_features({"score": {}}, fitted=False)["score"]  # the default
    unclassified = fill_image_features({"model": {"classify": False}}, fitted=False)
    assert unclassified["score"]["image_features"] == "layer4"
    kept = {"score": {"image_features": "projection"}}
    assert fill_image_features(kept, fitted=True) is kept and kept["score"]["image_features"] == "projection"
