"""blocks.py: the four candidates of a choice layer, their shapes and the channel shuffle."""
import pytest
import torch
from torch import nn

from blocks import (CHOICE_NAMES, DepthwiseConv2d, PointwiseConv2d, ShuffleNetBlock, ShuffleXceptionBlock,
                    channel_shuffle, make_block)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("choice", range(len(CHOICE_NAMES)))
@pytest.mark.parametrize("stride", [1, 2])
def test_block_output_shape(choice, stride, affine):
    # first layer of a stage (stride 2) sees all of the previous stage; others half of their own stage
    inp, oup, mid = (16, 64, 32) if stride == 2 else (32, 64, 32)
    block = make_block(choice, inp, oup, mid, stride, affine)
    x = torch.randn(2, inp if stride == 2 else 2 * inp, 16, 16)
    y = block(x)
    assert y.shape == (2, oup, 16 // stride, 16 // stride)
    batch_norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batch_norms and all(m.affine == affine for m in batch_norms)
    assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Conv2d))
    assert (block.branch_proj is not None) == (stride == 2)


@pytest.mark.parametrize("choice, kernel", [(0, 3), (1, 5), (2, 7), (3, 3)])
def test_block_kinds_and_kernels(choice, kernel):
    block = make_block(choice, 16, 64, 32, 2, False)
    assert isinstance(block, ShuffleXceptionBlock if choice == 3 else ShuffleNetBlock)
    depthwise = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert {m.kernel_size for m in depthwise} == {(kernel, kernel)}
    assert block.branch_proj[0].kernel_size == (kernel, kernel) and block.branch_proj[0].stride == (2, 2)


def kinds(sequence):
    return ["Conv2d" if isinstance(m, nn.Conv2d) else "BatchNorm2d" if isinstance(m, nn.BatchNorm2d)
            else type(m).__name__ for m in sequence]


def test_official_layer_order():
    """Sequential indices count every conv, BN and ReLU as Megvii's code does (checkpoint key names)."""
    shuffle = make_block(2, 32, 64, 32, 1, False)
    assert kinds(shuffle.branch_main) == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d", "ReLU"]
    xception = make_block(3, 16, 64, 32, 2, False)
    assert kinds(xception.branch_main) == [
        "Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d",
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d", "ReLU"]
    assert xception.branch_main[0].stride == (2, 2) and xception.branch_main[5].stride == (1, 1)
    assert kinds(xception.branch_proj) == ["Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d",
                                                                 "ReLU"]
    assert xception.branch_main[-3].out_channels == 64 - 16


def test_bad_choice_is_refused():
    with pytest.raises(ValueError):
        make_block(4, 16, 64, 32, 2, False)


def test_channel_shuffle_splits_even_and_odd():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)
    x_pass, x_main = channel_shuffle(x)
    assert torch.equal(x_pass, x[:, [0, 2, 4, 6]])
    assert torch.equal(x_main, x[:, [1, 3, 5, 7]])


@pytest.mark.parametrize("choice", range(len(CHOICE_NAMES)))
def test_stride_one_passes_even_channels_and_feeds_odd_ones_to_the_main_branch(choice):
    torch.manual_seed(0)
    block = make_block(choice, 16, 32, 16, 1, False).eval()
    x = torch.randn(2, 32, 8, 8)
    y = block(x)
    assert torch.equal(y[:, :16], x[:, 0::2])  # even input channels, in order, untouched
    assert torch.allclose(y[:, 16:], block.branch_main(x[:, 1::2]))
    # the main half depends on odd input channels only
    x_changed = x.clone()
    x_changed[:, 0::2] += 1.0
    assert torch.allclose(block(x_changed)[:, 16:], y[:, 16:])
    x_changed = x.clone()
    x_changed[:, 1::2] += 1.0
    assert not torch.allclose(block(x_changed)[:, 16:], y[:, 16:])


@pytest.mark.parametrize("choice", range(len(CHOICE_NAMES)))
def test_stride_two_concatenates_projection_and_main_branch(choice):
    torch.manual_seed(0)
    block = make_block(choice, 16, 64, 32, 2, False).eval()
    x = torch.randn(2, 16, 8, 8)
    y = block(x)
    assert torch.allclose(y[:, :16], block.branch_proj(x))
    assert torch.allclose(y[:, 16:], block.branch_main(x))


@pytest.mark.parametrize("pixels", [(1, 1), (2, 2), (4, 4), (7, 7)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pointwise_conv_matches_the_convolution_in_outputs_and_gradients(pixels, channels_last):
    """PointwiseConv2d multiplies over the channels on maps of up to MATMUL_MAX_PIXELS pixels: the same
    function and gradients as nn.Conv2d, on a channel-sliced input (as the stride-1 main branch gets)."""
    torch.manual_seed(0)
    fast = PointwiseConv2d(24, 40, bias=True)
    reference = nn.Conv2d(24, 40, 1, bias=True)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(8, 48, *pixels)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x[:, 1::2]
    x_fast, x_reference = x.detach().requires_grad_(), x.detach().requires_grad_()
    out_fast, out_reference = fast(x_fast), reference(x_reference)
    assert out_fast.shape == out_reference.shape == (8, 40, *pixels)
    torch.testing.assert_close(out_fast, out_reference, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out_reference)
    out_fast.backward(grad)
    out_reference.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_reference.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
@pytest.mark.parametrize("stride, pixels", [(1, (1, 1)), (1, (2, 2)), (1, (1, 2)), (2, (2, 2)), (1, (4, 4)),
                                            (2, (4, 4))])
@pytest.mark.parametrize("channels_last", [True, False])
def test_depthwise_conv_matches_the_convolution_in_outputs_and_gradients(kernel_size, stride, pixels, channels_last):
    """DepthwiseConv2d sums the taps that meet the map on maps of up to SMALL_MAP_PIXELS pixels: the same function
    and gradients as nn.Conv2d (also with the bias BN folding gives it), on a channel-sliced input."""
    torch.manual_seed(0)
    fast = DepthwiseConv2d(24, kernel_size, stride)
    fast.bias = nn.Parameter(torch.randn(24))
    reference = nn.Conv2d(24, 24, kernel_size, stride, kernel_size // 2, groups=24, bias=True)
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(8, 48, *pixels)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x[:, 1::2]
    x_fast, x_reference = x.detach().requires_grad_(), x.detach().requires_grad_()
    out_fast, out_reference = fast(x_fast), reference(x_reference)
    assert out_fast.shape == out_reference.shape
    torch.testing.assert_close(out_fast, out_reference, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out_reference)
    out_fast.backward(grad)
    out_reference.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_reference.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-4)


def test_depthwise_conv_trains_after_a_first_use_in_inference_mode():
    """Scoring (inference mode) may be the first to build a map size's tap table; training then uses it."""
    conv = DepthwiseConv2d(8, 5, 1)
    with torch.inference_mode():
        conv(torch.randn(2, 8, 1, 2))
    x = torch.randn(2, 8, 1, 2, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_blocks_use_pointwise_and_depthwise_convs_for_every_such_conv():
    block = make_block(3, 32, 64, 32, 2, affine=False)
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            assert isinstance(m, PointwiseConv2d) == (m.kernel_size == (1, 1) and m.groups == 1)
            assert isinstance(m, DepthwiseConv2d) == (m.groups > 1)
