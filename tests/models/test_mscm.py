"""MSCM never sees the pixel it predicts; CAM gates channels; every table 9 mask keeps shapes."""

import pytest
import torch
from torch import nn

from pitscope.models.mscm import (
    MASKS,
    ChannelAttention,
    FeatureDropout,
    MaskedSplitConv,
    NoMask,
    RectangleMask,
    build_mask,
)


def _support(kernel_size: int, dilation: int) -> set[tuple[int, int]]:
    """Offsets (di, dj) the output at a pixel may read: the four corner k x k sub-kernels."""
    near = range(dilation, dilation + kernel_size)
    sides = [-o for o in near] + list(near)
    return {(di, dj) for di in sides for dj in sides}


@pytest.mark.parametrize(("kernel_size", "dilation"), [(1, 1), (1, 2), (2, 1), (3, 2)])
def test_mscm_output_never_reads_the_masked_centre(kernel_size, dilation):
    torch.manual_seed(0)
    module = MaskedSplitConv(3, kernel_size=kernel_size, dilation=dilation).double()
    size, centre = 15, 7
    x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    module(x)[0, :, centre, centre].sum().backward()
    grad = x.grad[0].abs().sum(0)  # (H, W)
    assert grad[centre, centre] == 0
    seen = {(int(i) - centre, int(j) - centre) for i, j in torch.nonzero(grad)}
    assert seen == _support(kernel_size, dilation)
    # The whole centre square |di|, |dj| < d is blind, not only the pixel itself.
    d = dilation
    assert torch.all(grad[centre - d + 1 : centre + d, centre - d + 1 : centre + d] == 0)


def test_mscm_no_pixel_depends_on_itself_anywhere():
    torch.manual_seed(1)
    module = MaskedSplitConv(2, dilation=2).double()
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(module, x)[0, :, :, :, 0]  # (C, H, W, C, H, W)
    for i in range(6):
        for j in range(7):
            assert torch.all(jac[:, i, j, :, i, j] == 0), (i, j)


@pytest.mark.parametrize(("kernel_size", "dilation"), [(1, 2), (3, 2)])
def test_mscm_equals_one_convolution_with_a_masked_kernel(kernel_size, dilation):
    """The four windows are the four corner sub-kernels of one (2d + 2k - 1)-wide kernel (SSPCAB)."""
    torch.manual_seed(2)
    k, d, c = kernel_size, dilation, 4
    module = MaskedSplitConv(c, kernel_size=k, dilation=d).double()
    side = 2 * d + 2 * k - 1
    weight = torch.zeros(c, c, side, side, dtype=torch.float64)
    tl, tr, bl, br = (conv.weight for conv in module.convs)
    weight[..., :k, :k], weight[..., :k, -k:], weight[..., -k:, :k], weight[..., -k:, -k:] = tl, tr, bl, br
    bias = sum(conv.bias for conv in module.convs)
    x = torch.randn(2, c, 9, 12, dtype=torch.float64)
    expected = torch.sigmoid(nn.functional.conv2d(x, weight, bias, padding=d + k - 1))  # eq. 7's sigmoid
    torch.testing.assert_close(module(x), expected)
    assert torch.all(weight[..., side // 2, side // 2] == 0)


def test_mscm_keeps_shape_and_gate_is_configurable():
    x = torch.randn(2, 8, 5, 9)
    assert MaskedSplitConv(8)(x).shape == x.shape
    assert (MaskedSplitConv(8, gate_layer=nn.ReLU)(x) >= 0).all()
    with pytest.raises(ValueError, match="dilation"):
        MaskedSplitConv(8, dilation=0)


def test_channel_attention_rescales_each_channel():
    torch.manual_seed(3)
    attention = ChannelAttention(32, reduction=16)
    assert attention.fc1.out_features == 2
    x = torch.rand(2, 32, 6, 6) + 0.5
    y = attention(x)
    scale = y / x  # one value per (sample, channel), in (0, 1)
    torch.testing.assert_close(scale, scale[:, :, :1, :1].expand_as(scale))
    assert ((scale > 0) & (scale < 1)).all()
    assert ChannelAttention(8, reduction=16).fc1.out_features == 1
    hard = ChannelAttention(32, act_layer=nn.GELU, gate_layer=nn.Hardsigmoid)
    assert hard(x).shape == x.shape


@pytest.mark.parametrize("name", list(MASKS))
def test_every_mask_keeps_shape_in_train_and_eval(name):
    torch.manual_seed(4)
    mask = build_mask(name, channels=16, dilation=2)
    x = torch.rand(2, 16, 12, 12) + 0.1
    for training in (True, False):
        mask.train(training)
        assert mask(x).shape == x.shape
    if name != "mscm":  # the stochastic masks and "none" are the identity at inference
        assert torch.equal(mask.eval()(x), x)


def test_build_mask_lists_valid_names():
    with pytest.raises(ValueError, match="none, dropout, rectangle, mscm"):
        build_mask("cutout", 8)
    assert isinstance(build_mask("none", 8), NoMask)


def test_feature_dropout_zeroes_half_and_rescales():
    x = torch.ones(4, 8, 16, 16)
    y = FeatureDropout(0.5, generator=torch.Generator().manual_seed(0)).train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert abs((y == 0).float().mean().item() - 0.5) < 0.05
    again = FeatureDropout(0.5, generator=torch.Generator().manual_seed(0)).train()(x)
    assert torch.equal(y, again)


def test_rectangle_mask_zeroes_one_rectangle_of_half_the_area():
    x = torch.ones(8, 3, 20, 30)
    y = RectangleMask(0.5, generator=torch.Generator().manual_seed(0)).train()(x)
    assert torch.equal(y[:, 0], y[:, 2])  # same rectangle in every channel
    for sample in y[:, 0] == 0:
        rows, cols = sample.any(1).nonzero(), sample.any(0).nonzero()
        box = sample[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and sample.sum() == box.numel()  # the zeros fill one box exactly
        assert abs(sample.float().mean().item() - 0.5) < 0.02
    again = RectangleMask(0.5, generator=torch.Generator().manual_seed(0)).train()(x)
    assert torch.equal(y, again)
    assert torch.equal(RectangleMask(0.0).train()(x), x)
    assert not RectangleMask(1.0).train()(x).any()


def test_mscm_dilated_convolution_equals_the_four_windows_with_their_gradients():
    """k = 1 runs as one dilated 2 x 2 convolution; it must give the windows' sum and gradients."""
    torch.manual_seed(5)
    module = MaskedSplitConv(3, dilation=2).double()
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    grads = []
    for path in (module._dilated, module._windows):
        module.zero_grad()
        out = path(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)).sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in module.parameters()]))
    (dilated, dilated_grads), (windows, windows_grads) = grads
    torch.testing.assert_close(dilated, windows)
    for a, b in zip(dilated_grads, windows_grads, strict=True):
        torch.testing.assert_close(a, b)
