"""The four candidate blocks of a SPOS choice layer (ShuffleNetV2 units, Megvii's layout).

Sequential indices and attribute names follow Megvii's official code so that official checkpoints
load with strict=True: ``branch_main.{i}`` and ``branch_proj.{i}`` count every conv, BN and ReLU.
"""

import torch
from torch import nn
from torch.nn import functional as F

CHOICE_NAMES = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")


def channel_shuffle(x):
    """Split channels into (even, odd): even ones pass through, odd ones enter the main branch."""
    return x[:, 0::2], x[:, 1::2]


# Feature maps of at most this many pixels go through PointwiseConv2d's matrix multiply (measured faster below).
MATMUL_MAX_PIXELS = 4


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution (an nn.Conv2d: same weights, names and checkpoints). On a CPU, for a feature map
    of a few pixels (stages 3 and 4 of a 32x32 input) it multiplies over the channels instead:
    oneDNN's convolution spends more time preparing its weights each call than computing there, and the
    matrix multiply is 1.2-2.9x faster. Larger maps (every map at 224x224) keep the convolution, which is
    faster for them."""

    def __init__(self, inp, oup, bias=False):
        super().__init__(inp, oup, 1, bias=bias)

    def forward(self, x, out_channels=None):
        """``out_channels``: compute only the first that many outputs (channel search); the conv reads as many
        input channels as ``x`` has, its first ones."""
        weight, bias = self.weight, self.bias
        if out_channels is not None or x.shape[1] != self.in_channels:
            weight = weight[:out_channels, :x.shape[1]]
            bias = None if bias is None else bias[:out_channels]
        if x.device.type == "cpu" and x.shape[2] * x.shape[3] <= MATMUL_MAX_PIXELS:
            # on a channels-last map the permutes are views, and the result is channels-last
            return F.linear(x.permute(0, 2, 3, 1), weight.reshape(weight.shape[0], -1), bias).permute(0, 3, 1, 2)
        return self._conv_forward(x, weight, bias)


# Maps of at most this many pixels go through DepthwiseConv2d's weighted sums (measured faster below: 2x2 maps
# 2-4x, 1x1 maps 20-100x; at 4x4 the convolution is faster).
SMALL_MAP_PIXELS = 4


class DepthwiseConv2d(nn.Conv2d):
    """A k x k depthwise convolution with padding k // 2 (an nn.Conv2d: same weights, names and checkpoints). On a
    CPU, for an input map of at most 4 pixels (stages 3 and 4 of a 32x32 input) each output pixel is a weighted sum
    of at most 4 input pixels, which it computes as such: oneDNN's convolution spends milliseconds there on work of
    microseconds (most of a 7x7 kernel only ever meets padding), in training above all (its backward). Larger maps
    (every map at 224x224) keep the convolution."""

    def __init__(self, channels, kernel_size, stride):
        super().__init__(channels, channels, kernel_size, stride, kernel_size // 2, groups=channels, bias=False)

    def forward(self, x):
        """On the first ``x.shape[1]`` channels of the kernel when ``x`` has fewer than it (channel search)."""
        weight, bias, channels = self.weight, self.bias, x.shape[1]
        if channels != self.in_channels:
            weight, bias = weight[:channels], None if bias is None else bias[:channels]
        if x.device.type == "cpu" and x.shape[2] * x.shape[3] <= SMALL_MAP_PIXELS:
            return self._small_map_forward(x, weight, bias)
        if channels != self.in_channels:
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, channels)
        return super().forward(x)

    def _small_map_forward(self, x, weight, bias):
        n, c, h, w = x.shape
        taps, out_h, out_w = _depthwise_taps(h, w, self.kernel_size[0], self.stride[0])
        taps = torch.from_numpy(taps)  # a tensor made at each call: under torch.export's tracing it is a fake one
        # kernel values per (output pixel, input pixel, channel); taps that only meet padding point at a zero
        kernel = torch.cat((weight.reshape(c, -1).t(), weight.new_zeros(1, c)))[taps]
        pixels = x.permute(0, 2, 3, 1).reshape(n, 1, h * w, c)  # a view of a channels-last map
        y = (pixels * kernel).sum(2) if h * w > 1 else pixels[:, :, 0] * kernel[:, 0]
        if bias is not None:  # after fold_batch_norms
            y = y + bias
        return y.reshape(n, out_h, out_w, c).permute(0, 3, 1, 2)  # channels-last, as the convolution gives


def _depthwise_taps(height, width, kernel_size, stride):
    """For each output pixel and input pixel of a depthwise convolution (padding kernel_size // 2), the index of
    the kernel tap joining them in the flattened kernel, or kernel_size ** 2 where none does, as a NumPy array, for
    every small map made once when this module loads: a kept tensor would keep the mode of its first caller
    (inference mode, or the fake tensors of an ONNX export's tracing) for every later one, and one made at a call
    would be a side effect to that tracing."""
    return _TAPS[height, width, kernel_size, stride]


def _make_depthwise_taps(height, width, kernel_size, stride):
    pad = kernel_size // 2
    out_h, out_w = (height + 2 * pad - kernel_size) // stride + 1, (width + 2 * pad - kernel_size) // stride + 1
    oy, ox, iy, ix = torch.meshgrid(torch.arange(out_h), torch.arange(out_w), torch.arange(height),
                                    torch.arange(width), indexing="ij")
    ky, kx = iy - oy * stride + pad, ix - ox * stride + pad
    inside = (ky >= 0) & (ky < kernel_size) & (kx >= 0) & (kx < kernel_size)
    taps = torch.where(inside, ky * kernel_size + kx, kernel_size ** 2)
    return taps.reshape(out_h * out_w, height * width).numpy(), out_h, out_w


_TAPS = {(h, w, k, s): _make_depthwise_taps(h, w, k, s) for h in range(1, SMALL_MAP_PIXELS + 1)
         for w in range(1, SMALL_MAP_PIXELS // h + 1) for k in (3, 5, 7) for s in (1, 2)}


class SliceableBatchNorm2d(nn.BatchNorm2d):
    """An nn.BatchNorm2d (same buffers, names and checkpoints) that also normalises an input with fewer channels
    than it has, with its first statistics and affine parameters (channel search: a narrow path of a wide block);
    training updates those first running statistics only."""

    def forward(self, x):
        channels = x.shape[1]
        if channels == self.num_features:
            return super().forward(x)
        momentum = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_statistics = self.training or self.running_mean is None

        def first(tensor):
            return None if tensor is None else tensor[:channels]

        return F.batch_norm(x, first(self.running_mean), first(self.running_var), first(self.weight),
                            first(self.bias), use_batch_statistics, momentum, self.eps)


def _conv_bn(inp, oup, kernel_size, stride, affine, depthwise=False, relu=True):
    if depthwise:
        conv = DepthwiseConv2d(inp, kernel_size, stride)
    elif kernel_size == 1 and stride == 1:
        conv = PointwiseConv2d(inp, oup)
    else:
        conv = nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False)
    layers = [
        conv,
        SliceableBatchNorm2d(oup, affine=affine),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class MainBranch(nn.Sequential):
    """A block's main branch (an nn.Sequential: Megvii's names ``branch_main.{i}``). ``branch(x, mid)`` runs it
    on the first ``mid`` of its middle channels (channel search; ``mid_outputs``: the indices of the 1x1 convs
    whose outputs are those channels; the depthwise convs and BNs follow the width they receive)."""

    def __init__(self, layers, mid_outputs):
        super().__init__(*layers)
        self.mid_outputs = frozenset(mid_outputs)

    def forward(self, x, mid=None):
        if mid is None:
            return super().forward(x)
        for index, layer in enumerate(self):
            x = layer(x, mid) if index in self.mid_outputs else layer(x)
        return x


class ShuffleUnit(nn.Module):
    """Common wiring of both block kinds: stride 2 concatenates a projection of the whole input,
    stride 1 passes half of the channels through untouched. ``block(x, mid)``: the main branch on its first
    ``mid`` middle channels (channel search); ``block(x)``: on all of them."""

    def __init__(self, inp, oup, stride, branch_main, proj_kernel, affine, mid_outputs):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.branch_main = MainBranch(branch_main, mid_outputs)
        if stride == 2:
            self.branch_proj = nn.Sequential(
                *_conv_bn(inp, inp, proj_kernel, 2, affine, depthwise=True, relu=False),
                *_conv_bn(inp, inp, 1, 1, affine),
            )
        else:
            self.branch_proj = None

    def forward(self, x, mid=None):
        if self.stride == 1:
            x_pass, x_main = channel_shuffle(x)
            return torch.cat((x_pass, self.branch_main(x_main, mid)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x, mid)), 1)


class ShuffleNetBlock(ShuffleUnit):
    """1x1 conv, k x k depthwise conv (carries the stride), 1x1 conv."""

    def __init__(self, inp, oup, mid_channels, *, ksize, stride, affine=False):
        branch_main = [
            *_conv_bn(inp, mid_channels, 1, 1, affine),
            *_conv_bn(mid_channels, mid_channels, ksize, stride, affine, depthwise=True, relu=False),
            *_conv_bn(mid_channels, oup - inp, 1, 1, affine),
        ]
        super().__init__(inp, oup, stride, branch_main, ksize, affine, mid_outputs=(0,))


class ShuffleXceptionBlock(ShuffleUnit):
    """Three (3x3 depthwise, 1x1 conv) pairs; the first depthwise conv carries the stride."""

    def __init__(self, inp, oup, mid_channels, *, stride, affine=False):
        branch_main = [
            *_conv_bn(inp, inp, 3, stride, affine, depthwise=True, relu=False),
            *_conv_bn(inp, mid_channels, 1, 1, affine),
            *_conv_bn(mid_channels, mid_channels, 3, 1, affine, depthwise=True, relu=False),
            *_conv_bn(mid_channels, mid_channels, 1, 1, affine),
            *_conv_bn(mid_channels, mid_channels, 3, 1, affine, depthwise=True, relu=False),
            *_conv_bn(mid_channels, oup - inp, 1, 1, affine),
        ]
        super().__init__(inp, oup, stride, branch_main, 3, affine, mid_outputs=(2, 7))


def make_block(choice, inp, oup, mid_channels, stride, affine):
    """Candidate ``choice`` (0..3, see CHOICE_NAMES) of a choice layer."""
    if choice in (0, 1, 2):
        return ShuffleNetBlock(inp, oup, mid_channels, ksize=3 + 2 * choice, stride=stride, affine=affine)
    if choice == 3:
        return ShuffleXceptionBlock(inp, oup, mid_channels, stride=stride, affine=affine)
    raise ValueError(f"choice must be 0, 1, 2 or 3, got {choice!r}")
