"""The defect probe: its regression against scikit-learn's, its inputs, and `finetune_probe` from a
tiny model to a saved model whose maps are the probe's."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from test_warm_start import labelled_folder, tiny_overrides

from pitscope.cli import main
from pitscope.config import ConfigError, load_config
from pitscope.data.labelled import load_labelled_defects
from pitscope.defect_probe import DefectProbe, probe_inputs
from pitscope.fitting import finetune_probe, fit
from pitscope.inference import Detector
from pitscope.tensors import images_to_batch, resize_image


def test_probe_is_scikit_learns_weighted_logistic_regression():
    """Same objective: scikit-learn's C * sum(w_i loss_i) + |w|^2 / 2 on standardised inputs, with the
    positives weighted by the negatives' count over theirs, is the probe's loss times 1 / (wd * sum w)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)) * [1.0, 3.0, 0.5, 2.0, 1.0] + [0.0, 5.0, -1.0, 0.0, 2.0]
    y = (x[:, 0] + 0.3 * x[:, 1] + rng.normal(size=600) > 2.5).astype(float)
    wd = 0.01
    probe = DefectProbe(weight_decay=wd, max_iter=500).fit(torch.from_numpy(x), torch.from_numpy(y))
    z = (x - x.mean(0)) / x.std(0, ddof=1)
    weights = np.where(y > 0, (y == 0).sum() / (y > 0).sum(), 1.0)
    reference = LogisticRegression(C=1 / (wd * weights.sum()), tol=1e-10, max_iter=10_000)
    reference.fit(z, y, sample_weight=weights)
    np.testing.assert_allclose(probe.weight_.double().numpy(), reference.coef_[0], atol=2e-4)
    np.testing.assert_allclose(float(probe.bias_), reference.intercept_[0], atol=2e-4)
    assert float(probe.positive_weight_) == pytest.approx((y == 0).sum() / (y > 0).sum(), rel=1e-6)


def test_probe_inputs_are_the_features_then_the_log_distance():
    patches = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    distances = torch.full((2, 4, 5), np.e - 1)
    inputs = probe_inputs(patches, distances)
    assert inputs.shape == (2, 4, 5, 4)
    assert torch.equal(inputs[1, 2, 3, :3], patches[1, :, 2, 3])
    assert torch.allclose(inputs[..., 3], torch.ones(2, 4, 5))


def test_probe_refuses_one_class_and_bad_shapes():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="both marked and unmarked"):
        DefectProbe().fit(x, torch.zeros(10))
    with pytest.raises(ValueError, match="expected inputs"):
        DefectProbe().fit(x, torch.zeros(9))
    with pytest.raises(RuntimeError, match="not fitted"):
        DefectProbe().logits(x)


def test_a_defect_probe_needs_labelled_photos_and_padim():
    with pytest.raises(ConfigError, match="data.labelled_defects"):
        load_config(None, ["score.defect_probe=true"])
    with pytest.raises(ConfigError, match="pixel_method=padim"):
        load_config(None, ["score.defect_probe=true", "data.labelled_defects=x", "score.pixel_method=patch"])
    with pytest.raises(ConfigError, match="image_method=embedding"):
        load_config(None, ["score.defect_probe=true", "data.labelled_defects=x", "score.image_method=map_max"])
    with pytest.raises(ConfigError, match="calibration_fraction > 0"):
        load_config(None, ["score.defect_probe=true", "data.labelled_defects=x", "score.calibration_fraction=0"])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """(base detector, its path, the labelled folder, the probed detector, its path)."""
    out = tmp_path_factory.mktemp("probe")
    overrides = tiny_overrides(out / "base", n_train=12)
    base = fit(None, overrides, progress=False)
    folder = labelled_folder(out / "marked", n=3)
    probed = finetune_probe(out / "base" / "model.pt", folder, out / "probe", progress=False)
    return base, out / "base" / "model.pt", folder, probed, out / "probe" / "model.pt"


def test_finetune_probe_keeps_the_image_side_and_draws_probability_maps(tuned):
    base, _, folder, probed, path = tuned
    x = torch.randn(3, 3, 64, 64)
    base_scores, _ = base(x)
    scores, maps = probed(x)
    assert torch.equal(scores, base_scores)  # network, image Gaussian and image threshold stay
    assert float(probed.threshold) == float(base.threshold)
    assert probed.cfg.score.map_normalisation == "none" and base.cfg.score.map_normalisation == "image_mean"
    assert maps.min() >= 0 and maps.max() <= 1  # P(defect), smoothed, not divided by its mean
    record = probed.metadata["calibration"]
    assert record["probe"]["photos"] == 3 and record["probe"]["marked_positions"] > 0
    assert record["pixel_threshold"] == pytest.approx(float(probed.pixel_threshold))
    names = [d["name"] for d in probed.metadata["labelled_defects"]]
    assert names == ["pit0.png", "pit1.png", "pit2.png"]
    loaded = Detector.load(path)
    assert torch.equal(loaded(x)[1], maps)


def test_the_probe_marks_what_was_marked(tuned):
    """On its own marked photos the probe puts the marked squares above the rest of the photo."""
    _, _, folder, probed, _ = tuned
    for defect in load_labelled_defects(folder):
        _, maps = probed(images_to_batch([resize_image(defect.image, (64, 64))]))
        inside, outside = maps[0][torch.from_numpy(defect.mask)], maps[0][torch.from_numpy(~defect.mask)]
        assert float(inside.mean()) > float(outside.quantile(0.99))


def test_finetune_probe_refuses_settings_it_cannot_change_and_its_own_folder(tuned):
    _, base_path, folder, _, _ = tuned
    for setting in ("score.smoothing_sigma=1", "seed=3"):  # the seed drew the photos the Gaussians never saw
        with pytest.raises(ValueError, match="takes only"):
            finetune_probe(base_path, folder, base_path.parent / "other", [setting], progress=False)
    with pytest.raises(ValueError, match="holds the model itself"):
        finetune_probe(base_path, folder, base_path.parent, progress=False)


def test_finetune_command_fits_a_probe_by_default(tuned, tmp_path: Path, capsys):
    _, base_path, folder, _, _ = tuned
    code = main(["finetune", str(base_path), "--defects", str(folder), "--output-dir", str(tmp_path), "--quiet"])
    assert code == 0
    assert "trained with 3 labelled photos" in capsys.readouterr().out
    probe = Detector.load(tmp_path / "model.pt").defect_probe
    assert probe is not None and probe.is_fitted


def test_the_report_and_the_service_say_a_probe_draws_the_maps(tuned, tmp_path: Path):
    from fastapi.testclient import TestClient

    from pitscope.data import build_dataset
    from pitscope.report import build_report
    from pitscope.serve import create_app

    _, _, _, probed, _ = tuned
    split = build_dataset(probed.cfg.data, "test", 0)
    html = build_report(probed, split, tmp_path / "report", progress=False, gallery_size=0).read_text()
    assert "maps come from a defect probe fitted on 3 photos with marked defects" in html
    with TestClient(create_app(probed)) as client:
        info = client.get("/model").json()
    assert info["defect_probe"] is True and info["labelled_defects"] == ["pit0.png", "pit1.png", "pit2.png"]


def test_the_anchor_reads_the_features_alone_and_is_not_saved(tuned, tmp_path: Path):
    from pitscope.fitting import anchor_probe

    base, base_path, folder, probed, _ = tuned
    anchor = anchor_probe(base_path, folder, progress=False)
    assert anchor.defect_probe.inputs == "features"
    assert anchor.defect_probe.weight_.shape[0] == probed.defect_probe.weight_.shape[0] - 1  # no distance
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(anchor(x)[0], base(x)[0])
    assert not torch.equal(anchor(x)[1], probed(x)[1])
    with pytest.raises(ValueError, match="not saved"):
        anchor.save(tmp_path / "anchor.pt")


def test_refit_fits_the_probe_again_on_the_new_gaussians(tuned):
    from pitscope.config import apply_overrides
    from pitscope.fitting import refit

    _, _, _, probed, path = tuned
    again = refit(probed, apply_overrides(probed.cfg, ["score.pixel_channels=8"]), path, progress=False)
    assert again.defect_probe.is_fitted and again.pixel_scorer.channel_index_.numel() == 8
    assert again.metadata["labelled_defects"] == probed.metadata["labelled_defects"]
    assert again.metadata["calibration"]["probe"]["photos"] == 3
