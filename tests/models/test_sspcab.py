"""SSPCAB: the authors' masked convolution exactly, its place in the network, and its loss."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pitscope.config import ModelConfig, load_config
from pitscope.models.network import DoubleSelfSupervisedNet
from pitscope.models.sspcab import SSPCAB, reconstruction_loss
from pitscope.training import compute_loss


def authors_masked_conv(block: SSPCAB, x: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """SSPCAB's masked convolution as its paper's reference code writes it (pad k + d, windows cut
    k + 2d + 1 from the far side), with the weights of `block`, before the attention."""
    pad, border = kernel_size + dilation, kernel_size + 2 * dilation + 1
    p = F.pad(x, (pad, pad, pad, pad))
    top_left, top_right, bottom_left, bottom_right = block.masked.convs
    out = (
        top_left(p[:, :, :-border, :-border])
        + bottom_left(p[:, :, border:, :-border])
        + top_right(p[:, :, :-border, border:])
        + bottom_right(p[:, :, border:, border:])
    )
    return torch.relu(out)


@pytest.mark.parametrize(("kernel_size", "dilation"), [(1, 1), (1, 0), (2, 1), (3, 2)])
def test_masked_convolution_equals_the_authors_formula(kernel_size, dilation):
    torch.manual_seed(0)
    block = SSPCAB(4, kernel_size=kernel_size, dilation=dilation, reduction=2).double()
    x = torch.randn(2, 4, 11, 13, dtype=torch.float64)
    expected = authors_masked_conv(block, x, kernel_size, dilation)
    torch.testing.assert_close(block.masked(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(block(x), block.attention(expected), rtol=0, atol=1e-12)


def test_default_block_reads_only_two_pixels_away_diagonally():
    torch.manual_seed(0)
    block = SSPCAB(3).double()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    block.masked(x)[0, :, 4, 4].sum().backward()
    seen = {(int(i) - 4, int(j) - 4) for i, j in torch.nonzero(x.grad[0].abs().sum(0))}
    assert seen == {(-2, -2), (-2, 2), (2, -2), (2, 2)}


def test_block_replaces_the_penultimate_convolution_and_hands_out_its_input_and_output():
    torch.manual_seed(0)
    net = DoubleSelfSupervisedNet(dataclasses.replace(ModelConfig(), sspcab=True, target="none")).eval()
    assert net.backbone.layer4[-1].conv1 is net.sspcab and isinstance(net.sspcab, SSPCAB)
    assert not any(k.startswith("sspcab.") for k in net.state_dict())  # held once, inside the backbone
    x = torch.randn(2, 3, 128, 128)
    out = net(x)
    block_in, block_out = out.sspcab
    assert block_in.shape == block_out.shape == (2, 512, 4, 4)
    with torch.no_grad():
        before = net.backbone.layer4[0](out.features["layer3"])
    torch.testing.assert_close(block_in, before)
    torch.testing.assert_close(block_out, net.sspcab(block_in))
    torch.testing.assert_close(out.embedding, out.features["layer4"].mean(dim=(2, 3)))
    assert not net.sspcab._forward_hooks  # the hook lives for one call only


def test_residual_path_keeps_small_maps_informative():
    """At 64 px the layer4 map is 2 x 2 and the block reads only padding: its output is the same for
    every image, but the basic block's residual connection still carries the image through."""
    torch.manual_seed(0)
    net = DoubleSelfSupervisedNet(dataclasses.replace(ModelConfig(), sspcab=True, target="none")).eval()
    out = net(torch.randn(3, 3, 64, 64))
    block_out = out.sspcab[1]
    torch.testing.assert_close(block_out[0], block_out[1])
    assert (out.embedding[0] - out.embedding[1]).abs().max() > 1e-3


def test_without_the_option_there_is_no_block():
    net = DoubleSelfSupervisedNet(ModelConfig())
    assert net.sspcab is None and not any(k.startswith("sspcab.") for k in net.state_dict())
    assert net.eval()(torch.randn(1, 3, 64, 64)).sspcab is None


def test_loss_adds_the_weighted_reconstruction_and_trains_the_block(tmp_path):
    cfg = load_config(
        None,
        [
            "data.image_size=128",
            "model.target=none",
            "model.head=multiclass",
            "augment.kinds=[normal, scar]",
            "model.sspcab=true",
            "model.sspcab_weight=0.25",
        ],
    )
    torch.manual_seed(0)
    net = DoubleSelfSupervisedNet(cfg.model, n_kinds=2).train()
    # 128 px: a 4 x 4 layer4, where the block's taps two positions away land inside the map
    normal, defective = torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128)
    batch = (normal, defective, torch.zeros(2, 128, 128), torch.tensor([1, 2]))
    loss, parts = compute_loss(net, cfg, batch)
    assert set(parts) == {"ce", "sspcab", "loss"}
    assert parts["loss"] == pytest.approx(parts["ce"] + 0.25 * parts["sspcab"], rel=1e-5)
    loss.backward()
    assert net.sspcab.masked.convs[0].weight.grad.abs().sum() > 0
    assert net.backbone.layer4[-1].conv2.weight.grad.abs().sum() > 0


def test_reconstruction_loss_is_the_mean_squared_error():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(reconstruction_loss(a, b), ((a - b) ** 2).mean())
    assert reconstruction_loss(a, a) == 0
