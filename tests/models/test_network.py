"""The whole network: paper tables 1 and 2 at 256 px, and every config variant builds and trains."""

import dataclasses

import pytest
import torch

from pitscope.config import ModelConfig
from pitscope.models import DoubleSelfSupervisedNet, HogDecoder, NetOutput, count_parameters
from pitscope.models.mscm import MaskedSplitConv


def test_tables_1_and_2_at_256():
    torch.manual_seed(0)
    net = DoubleSelfSupervisedNet(ModelConfig()).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 256, 256))
        # Table 1: conv1 128x128x64, conv2_x 64x64x64, conv3_x 32x32x128, conv4_x 16x16x256, conv5_x 8x8x512.
        assert {name: tuple(f.shape) for name, f in out.features.items()} == {
            "conv1": (1, 64, 128, 128),
            "layer1": (1, 64, 64, 64),
            "layer2": (1, 128, 32, 32),
            "layer3": (1, 256, 16, 16),
            "layer4": (1, 512, 8, 8),
        }
        # Table 2, on conv2_x after MSCM and CAM: 32x32, 16x16, flatten 4096, linear 3780.
        masked = net.attention(net.mask(out.features["layer1"]))
        assert isinstance(net.mask, MaskedSplitConv) and masked.shape == (1, 64, 64, 64)
        first = net.decoder.block1(masked)
        assert first.shape == (1, 32, 32, 32)
        second = net.decoder.block2(first)
        assert second.shape == (1, 16, 16, 16)
        assert torch.equal(net.decoder.pool(second), second)  # the adaptive pool is the identity here
        flat = second.flatten(1)
        assert flat.shape == (1, 4096)
        assert net.decoder.linear(flat).shape == (1, 3780)
        torch.testing.assert_close(net.decoder.linear(flat), out.target_pred)
    assert out.embedding.shape == (1, 512) and out.projection.shape == (1, 512)
    assert out.logits.shape == (1,)
    torch.testing.assert_close(out.embedding, out.features["layer4"].mean(dim=(2, 3)))


VARIANTS = [
    {},
    {"target": "rgb"},
    {"target": "none"},
    {"mask_type": "none"},
    {"mask_type": "dropout"},
    {"mask_type": "rectangle"},
    {"head": "multiclass"},
    {"classify": False},
    {"classify": False, "target": "rgb", "mask_type": "rectangle"},
    {"mscm_stage": "layer2"},
    {"mscm_stage": "layer3", "mask_type": "dropout"},
    {"mscm_stage": "layer4", "head": "multiclass"},
    {"projector_layers": 3, "projector_hidden": 128, "mscm_dilation": 1, "se_reduction": 4},
    {"projector_layers": 0},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_every_variant_builds_runs_and_backpropagates(overrides):
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig(), **overrides)
    net = DoubleSelfSupervisedNet(cfg, n_kinds=2).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert isinstance(out, NetOutput)
    assert out.embedding.shape == (2, 512)

    if cfg.classify:
        expected = (2,) if cfg.head == "binary" else (2, 3)  # normal + 2 pseudo-defect kinds
        assert out.logits.shape == expected
        assert out.projection.shape == (2, cfg.projector_hidden if cfg.projector_layers else 512)
    else:
        assert out.logits is None and out.projection is None and net.projector is None

    features = {"hog": 3780, "rgb": 3 * 35 * 36}  # both targets share the 3780-wide decoder
    if cfg.target == "none":
        assert out.target_pred is None and net.decoder is None
    else:
        assert out.target_pred.shape == (2, features[cfg.target])

    loss = out.embedding.sum() * 0
    for tensor in (out.logits, out.target_pred):
        if tensor is not None:
            loss = loss + tensor.float().pow(2).mean()
    loss.backward()
    assert net.backbone.conv1.weight.grad is not None
    # A switched-off branch owns no parameters, so every parameter gets a gradient.
    assert all(p.grad is not None for p in net.parameters())


def test_decoder_reads_other_input_sizes():
    decoder = HogDecoder(in_channels=128)
    for size in (3, 16, 33):
        assert decoder(torch.randn(2, 128, size, size)).shape == (2, 3780)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("head", "3way", "binary, multiclass"), ("target", "lab", "hog, rgb, none"), ("mscm_stage", "layer9", "layer1")],
)
def test_bad_choices_are_refused_with_the_valid_names(field, value, message):
    with pytest.raises(ValueError, match=message):
        DoubleSelfSupervisedNet(dataclasses.replace(ModelConfig(), **{field: value}))


def test_count_parameters():
    torch.manual_seed(0)
    net = DoubleSelfSupervisedNet(ModelConfig(target="none", classify=False))
    assert count_parameters(net) == count_parameters(net.backbone) == 11_176_512  # ResNet-18 without fc
    for p in net.backbone.layer4.parameters():
        p.requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == 11_176_512 - count_parameters(net.backbone.layer4)
