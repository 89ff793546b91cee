"""The yardstick: a plain eager ShuffleNetV2 one-shot supernet written the way Megvii's and NNI's
originals are (contiguous NCHW tensors, reshape/permute channel shuffle, BN kept at evaluation, fp32).

It exists only so that bench/ can measure this project's code path against a plain implementation of
the same network in one run. Nothing outside bench/ imports it.
"""
import torch
from torch import nn


def _shuffle(x):
    batch, channels, height, width = x.data.size()
    x = x.reshape(batch * channels // 2, 2, height * width).permute(1, 0, 2)
    x = x.reshape(2, -1, channels // 2, height, width)
    return x[0], x[1]


class PlainBlock(nn.Module):
    def __init__(self, inp, oup, mid, ksize, stride, xception):
        super().__init__()
        self.stride = stride
        outputs = oup - inp
        if xception:
            main = [nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp, affine=False),
                    nn.Conv2d(inp, mid, 1, 1, 0, bias=False), nn.BatchNorm2d(mid, affine=False), nn.ReLU(inplace=True),
                    nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid, affine=False),
                    nn.Conv2d(mid, mid, 1, 1, 0, bias=False), nn.BatchNorm2d(mid, affine=False), nn.ReLU(inplace=True),
                    nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid, affine=False),
                    nn.Conv2d(mid, outputs, 1, 1, 0, bias=False), nn.BatchNorm2d(outputs, affine=False),
                    nn.ReLU(inplace=True)]
        else:
            main = [nn.Conv2d(inp, mid, 1, 1, 0, bias=False), nn.BatchNorm2d(mid, affine=False), nn.ReLU(inplace=True),
                    nn.Conv2d(mid, mid, ksize, stride, ksize // 2, groups=mid, bias=False),
                    nn.BatchNorm2d(mid, affine=False),
                    nn.Conv2d(mid, outputs, 1, 1, 0, bias=False), nn.BatchNorm2d(outputs, affine=False),
                    nn.ReLU(inplace=True)]
        self.branch_main = nn.Sequential(*main)
        if stride == 2:
            self.branch_proj = nn.Sequential(
                nn.Conv2d(inp, inp, ksize, 2, ksize // 2, groups=inp, bias=False), nn.BatchNorm2d(inp, affine=False),
                nn.Conv2d(inp, inp, 1, 1, 0, bias=False), nn.BatchNorm2d(inp, affine=False), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x_proj, x = _shuffle(x)
            return torch.cat((x_proj, self.branch_main(x)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class PlainSupernet(nn.Module):
    def __init__(self, n_classes=1000):
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16, affine=False),
                                        nn.ReLU(inplace=True))
        self.features = nn.ModuleList()
        inp = 16
        for repeats, oup in zip((4, 4, 8, 4), (64, 160, 320, 640)):
            for i in range(repeats):
                block_inp, stride = (inp, 2) if i == 0 else (oup // 2, 1)
                self.features.append(nn.ModuleList(
                    [PlainBlock(block_inp, oup, oup // 2, k, stride, False) for k in (3, 5, 7)]
                    + [PlainBlock(block_inp, oup, oup // 2, 3, stride, True)]))
            inp = oup
        self.conv_last = nn.Sequential(nn.Conv2d(640, 1024, 1, 1, 0, bias=False), nn.BatchNorm2d(1024, affine=False),
                                       nn.ReLU(inplace=True))
        self.globalpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Sequential(nn.Linear(1024, n_classes, bias=False))

    def forward(self, x, architecture):
        x = self.first_conv(x)
        for choices, choice in zip(self.features, architecture):
            x = choices[choice](x)
        x = self.conv_last(x)
        x = self.dropout(self.globalpool(x).view(x.shape[0], -1))
        return self.classifier(x)
