import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pitscope.config import ConfigError, ModelConfig, load_config
from pitscope.data import build_dataset
from pitscope.inference import Detector
from pitscope.models.network import DoubleSelfSupervisedNet
from pitscope.models.segmentation import SegmentationHead, focal_loss
from pitscope.training import compute_loss


def test_focal_loss_closed_form():
    logits = torch.tensor([[[0.0, 2.0]]])
    target = torch.tensor([[[1.0, 0.0]]])
    p = torch.sigmoid(logits)
    # pixel 1: p_true = 0.5, alpha 0.75; pixel 2: p_true = 1 - sigmoid(2), weight 0.25
    expected = (0.75 * 0.5**2 * -np.log(0.5) + 0.25 * float(p[0, 0, 1]) ** 2 * -np.log(1 - float(p[0, 0, 1]))) / 2
    assert float(focal_loss(logits, target)) == pytest.approx(expected, rel=1e-6)
    # gamma 0, alpha 0.5 is half the plain BCE
    assert float(focal_loss(logits, target, gamma=0.0, alpha=0.5)) == pytest.approx(
        0.5 * float(F.binary_cross_entropy_with_logits(logits, target)), rel=1e-6
    )


def test_head_reads_stages_at_the_first_stage_resolution():
    head = SegmentationHead({"layer1": 64, "layer2": 128}, ["layer1", "layer2"])
    out = head({"layer1": torch.randn(2, 64, 16, 16), "layer2": torch.randn(2, 128, 8, 8)})
    assert out.shape == (2, 16, 16)
    with pytest.raises(ValueError, match="layer1"):
        SegmentationHead({"layer1": 64}, ["layer9"])


def test_network_with_segmentation_trains_the_head():
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig(), segment=True, target="none")
    net = DoubleSelfSupervisedNet(cfg, n_kinds=1).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert out.seg_logits.shape == (2, 16, 16)  # layer1 at 64 px
    full = load_config(None, ["model.segment=true", "model.target=none", "data.image_size=64"])
    normal, defective = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 64, 64)
    mask[:, 10:20, 10:20] = 1
    loss, parts = compute_loss(net, full, (normal, defective, mask, torch.ones(2, dtype=torch.long)))
    assert "seg" in parts and parts["loss"] == pytest.approx(parts["ce"] + parts["seg"], rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in net.segmenter.parameters())


def test_segmentation_maps_are_probabilities():
    cfg = load_config(
        None,
        [
            "data.image_size=64",
            "data.synthetic.n_train=6",
            "data.synthetic.n_test_normal=2",
            "data.synthetic.n_test_defect=2",
            "model.segment=true",
            "score.pixel_method=segmentation",
            "score.map_normalisation=none",
            "score.batch_size=8",
        ],
    )
    torch.manual_seed(0)
    detector = Detector(cfg, n_kinds=2).fit(build_dataset(cfg.data, "train", 0), progress=False)
    assert not detector.pixel_scorer.is_fitted  # no PaDiM work when the head makes the maps
    scores, maps = detector.score_dataset(build_dataset(cfg.data, "test", 0), progress=False)
    assert maps.shape == (4, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    assert np.isfinite(scores).all()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = detector.net(x)
        embedding = detector._features(x)[0]
    torch.testing.assert_close(embedding, out.projection)  # the image embedding, as on the backbone path


def test_segmentation_maps_need_the_head():
    with pytest.raises(ConfigError, match="model.segment"):
        load_config(None, ["score.pixel_method=segmentation"])
