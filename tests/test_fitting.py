"""The public API: `fit` trains, fits and saves in one call; the saved model predicts the same."""

import logging
from pathlib import Path

import numpy as np
import pytest

import pitscope
from pitscope import Config, Detector, Prediction, fit, load_config
from pitscope.training import chance_cross_entropy, chance_record, classifier_near_chance


def test_public_names_are_exported():
    assert set(pitscope.__all__) >= {"Config", "Detector", "Prediction", "fit", "load_config"}
    for name in pitscope.__all__:
        assert getattr(pitscope, name) is not None


def test_fit_trains_saves_and_the_file_predicts_the_same(tmp_path, caplog, tiny_detector_overrides):
    overrides = [*tiny_detector_overrides, "train.epochs=1", "train.batch_size=4", f"output_dir={tmp_path}"]
    with caplog.at_level(logging.INFO, logger="pitscope"):
        detector = fit(None, overrides, progress=False)
    assert isinstance(detector, Detector) and np.isfinite(float(detector.threshold))
    assert detector.metadata["training"]["epochs"] == 1 and detector.metadata["training"]["images"] == 12
    assert detector.metadata["training"]["precision"] == "float32"  # the test's config trains in float32
    assert "training on 12 defect-free images" in caplog.text
    losses = detector.metadata["training"]["losses"]  # one record per epoch, as the log printed it
    assert [e["epoch"] for e in losses] == [1] and {"loss", "ce", "mse"} <= set(losses[0])
    near = classifier_near_chance(losses, detector.cfg.model.head, detector.n_kinds)
    assert ("classifier ended near chance" in caplog.text) == (near is not None)
    assert detector.metadata["training"].get("classifier_near_chance") == chance_record(
        losses, detector.cfg.model.head, detector.n_kinds
    )
    image = np.full((40, 90, 3), 120, np.uint8)
    loaded = Detector.load(tmp_path / "model.pt").predict(image)
    assert isinstance(loaded, Prediction)
    assert loaded.score == pytest.approx(detector.predict(image).score, rel=1e-6)


def test_fit_takes_a_config_and_leaves_it_as_it_was(tmp_path, tiny_detector_overrides):
    cfg = load_config(None, [*tiny_detector_overrides, "train.epochs=0", f"output_dir={tmp_path}"])
    assert isinstance(cfg, Config)
    detector = fit(cfg, ["score.threshold_quantile=0.5"], progress=False, save=False)
    assert detector.cfg.score.threshold_quantile == 0.5 and cfg.score.threshold_quantile == 0.75
    assert not (tmp_path / "model.pt").exists()
    with pytest.raises(ValueError, match="train.epochs"):
        fit(cfg, ["train.epochs=x"], progress=False, save=False)


def test_scorers_fitted_at_a_scoring_size_apart_from_the_training_size(tmp_path, tiny_detector_overrides):
    from pitscope.fitting import fit

    detector = fit(
        None,
        [
            *tiny_detector_overrides,
            "train.epochs=1",
            "train.batch_size=4",
            "score.image_size=96",
            f"output_dir={tmp_path}",
        ],
        progress=False,
    )
    assert detector.cfg.data.image_size == 96 and detector.cfg.score.image_size == 96
    loaded = type(detector).load(tmp_path / "model.pt")
    assert loaded.cfg.data.image_size == 96
    image = np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    prediction = loaded.predict(image)
    assert prediction.anomaly_map.shape == (80, 120) and np.isfinite(prediction.score)
    training_config = (tmp_path / "config.yaml").read_text()
    assert "image_size: 64" in training_config  # the network trained at the data size


def test_refit_fits_the_scorers_at_the_scoring_size(tmp_path, tiny_detector_overrides):
    """`refit` with score.image_size set: the network as it was, the scorers fitted and the maps drawn
    at that height, the given config left as it was."""
    from pitscope.config import apply_overrides
    from pitscope.data import build_dataset
    from pitscope.fitting import fit, refit

    base = fit(None, [*tiny_detector_overrides, "train.epochs=1", "train.batch_size=4"], progress=False, save=False)
    assert base.cfg.data.image_size == 64
    cfg = apply_overrides(base.cfg, ["score.image_size=96"])
    taller = refit(base, cfg, "base.pt", progress=False)
    assert cfg.data.image_size == 64  # left as it was
    assert taller.cfg.data.shape == (96, 96) and taller.cfg.score.image_size == 96
    assert taller.net is base.net
    test = build_dataset(taller.cfg.data, "test", 0)
    _, maps = taller.score_dataset(test, progress=False)
    assert maps.shape[-2:] == (96, 96)
    same = refit(base, base.cfg, "base.pt", progress=False)
    assert same.cfg.data.shape == (64, 64)


def test_a_fixed_step_tiny_training_scores_as_recorded(tmp_path):
    """Training, fitting and scoring give the numbers recorded in tests/fixtures (regenerated only
    when a change of the numbers is intended): a change of the code's shape leaves them as they are."""
    import importlib.util
    import json

    path = Path(__file__).parent / "fixtures" / "tiny_training_scores.py"
    spec = importlib.util.spec_from_file_location("tiny_training_scores", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recordings = json.loads(module.FILE.read_text())
    if module.capability() not in recordings:
        pytest.skip(
            f"no recording for CPU capability {module.capability()} (recorded: {', '.join(recordings)}); "
            "add one with python tests/fixtures/tiny_training_scores.py"
        )
    measured = module.measure(tmp_path)

    def differences(recorded: dict) -> list[str]:
        numbers = {k: v for k, v in recorded.items() if k != "cpu"}
        assert measured.keys() == numbers.keys()
        return [k for k, v in numbers.items() if measured[k] != pytest.approx(v, rel=1e-5, abs=1e-6)]

    compared = {
        r.get("cpu", "a CPU not named"): differences(r) for r in module.recordings_of(recordings, module.capability())
    }
    assert any(not keys for keys in compared.values()), (
        f"this CPU ({module.cpu_kind()}) matches no recording; keys that differ, per recording: {compared}"
    )


def test_chance_cross_entropy_closed_form():
    assert chance_cross_entropy("binary", 3) == pytest.approx(np.log(2))
    # half the batch normal, the other half spread evenly over 4 kinds: -(0.5 ln 0.5 + 4 * 0.125 ln 0.125)
    assert chance_cross_entropy("multiclass", 4) == pytest.approx(-(0.5 * np.log(0.5) + 4 * 0.125 * np.log(0.125)))


def test_classifier_near_chance_reads_the_last_epoch():
    learnt = [{"epoch": 1, "ce": 0.69}, {"epoch": 2, "ce": 0.40}]
    stuck = [{"epoch": 1, "ce": 0.50}, {"epoch": 2, "ce": 0.68}]
    assert classifier_near_chance(learnt, "binary", 3) is None
    assert classifier_near_chance(stuck, "binary", 3) == pytest.approx(0.68)
    assert classifier_near_chance(stuck, "multiclass", 3) is None  # chance is ln 2 + ln(3) / 2 there
    assert classifier_near_chance([], "binary", 3) is None
    assert classifier_near_chance([{"epoch": 1, "seg": 0.2}], "binary", 3) is None  # no classifier


def test_chance_record_keeps_the_last_cross_entropy_beside_chance():
    assert chance_record([{"epoch": 1, "ce": 0.69031}], "binary", 3) == {"cross_entropy": 0.6903, "chance": 0.6931}
    assert chance_record([{"epoch": 1, "ce": 0.36}], "binary", 3) is None
    assert chance_record([], "binary", 3) is None
