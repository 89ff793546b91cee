"""The yardstick of bench/bench_model.py: the SPOS supernet written the plain way (as NNI's example ran it),
fp32, default memory format, BN as separate layers, scored on the supernet itself. It keeps the official
module names, so it loads the same state dict as network.ShuffleNetV2OneShot and computes the same function.
Not used by the project's scripts."""
import torch
from torch import nn


def conv_bn(inp, oup, kernel_size, stride, depthwise=False, relu=True):
    layers = [nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, groups=inp if depthwise else 1, bias=False),
              nn.BatchNorm2d(oup, affine=False)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class PlainBlock(nn.Module):
    def __init__(self, choice, inp, oup, mid, stride):
        super().__init__()
        self.stride = stride
        out = oup - inp
        if choice < 3:
            k = 3 + 2 * choice
            main = conv_bn(inp, mid, 1, 1) + conv_bn(mid, mid, k, stride, True, False) + conv_bn(mid, out, 1, 1)
        else:
            k = 3
            main = (conv_bn(inp, inp, 3, stride, True, False) + conv_bn(inp, mid, 1, 1)
                    + conv_bn(mid, mid, 3, 1, True, False) + conv_bn(mid, mid, 1, 1)
                    + conv_bn(mid, mid, 3, 1, True, False) + conv_bn(mid, out, 1, 1))
        self.branch_main = nn.Sequential(*main)
        if stride == 2:
            self.branch_proj = nn.Sequential(*conv_bn(inp, inp, k, 2, True, False), *conv_bn(inp, inp, 1, 1))

    def forward(self, x):
        if self.stride == 1:
            return torch.cat((x[:, 0::2], self.branch_main(x[:, 1::2])), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class PlainSupernet(nn.Module):
    def __init__(self, n_classes=1000):
        super().__init__()
        self.first_conv = nn.Sequential(*conv_bn(3, 16, 3, 2))
        layers, inp = [], 16
        for repeats, oup in zip((4, 4, 8, 4), (64, 160, 320, 640)):
            for i in range(repeats):
                block_inp, stride = (inp, 2) if i == 0 else (oup // 2, 1)
                layers.append(nn.ModuleList(PlainBlock(c, block_inp, oup, oup // 2, stride) for c in range(4)))
            inp = oup
        self.features = nn.ModuleList(layers)
        self.conv_last = nn.Sequential(*conv_bn(640, 1024, 1, 1))
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Sequential(nn.Linear(1024, n_classes, bias=False))

    def forward(self, x, architecture):
        x = self.first_conv(x)
        for choices, choice in zip(self.features, architecture):
            x = choices[choice](x)
        x = self.conv_last(x).mean((2, 3))
        return self.classifier(self.dropout(x))


def plain_train_step(model, optimizer, criterion, images, labels, architecture):
    model.train()
    loss = criterion(model(images, architecture), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def plain_accuracy(model, batches, architecture):
    model.eval()
    correct = sum(int((model(images, architecture).argmax(1) == labels).sum()) for images, labels in batches)
    return correct / sum(len(labels) for _, labels in batches)


@torch.no_grad()
def plain_score(model, architecture, train_batches, val_batches):
    """NNI's tester: accuracy, BN statistics reset and re-estimated on the supernet in train mode, accuracy."""
    before = plain_accuracy(model, val_batches, architecture)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for images, _ in train_batches:
        model(images, architecture)
    return before, plain_accuracy(model, val_batches, architecture)
