"""A warm start that makes a weight-sharing supernet learn on small data in minutes (supernet.py --warm-start-steps).

From random weights, uniform path sampling leaves a SPOS supernet at chance for thousands of steps on small data
(SPEC section 11): each choice block is trained in the company of ever-different neighbours, and no two of them
agree on what their features mean. One fixed path of the same net learns digits in a few hundred steps. The warm
start gives every path that fixed path's function before sampling begins:

1. train one template path (the 3x3 shuffle block, choice 0, in every layer) for ``steps`` steps;
2. give every other choice of every layer the template block's function: the 5x5 and 7x7 shuffle blocks get its
   weights with the depthwise kernels zero-padded (the same function exactly), the Xception block gets
   its projection branch (the same layout) and has its main branch fitted to the template's main-branch output
   on the template path's own features (``fit_steps`` steps of Adam on a normalised squared error, all layers at
   once);
3. uniform path sampling then starts from a supernet whose 4^20 paths all compute nearly one function, and each
   choice drifts from there according to what it can do.

All four choices start from the same function; none starts from random weights while the others start trained.
The BN running statistics are copied with the weights (recalibration replaces them before any path is scored).

With channel search every step of 1. and 2. draws a width per layer (uniformly, as path sampling will): the template
path learns a function whose narrower widths are its first channels (each width uses the first channels of the
widest, so every (block, width) pair shares it), and the Xception branches are fitted at the widths drawn.
"""
import time

import torch
from torch import nn
from torch.nn import functional as F

from blocks import ShuffleNetBlock
from network import NUM_LAYERS, NUM_SCALES
from utils import logger

# The 3x3 shuffle block: its function is one that the larger kernels hold exactly.
TEMPLATE_CHOICE = 0


def template_path(model):
    """The template path of one step: the template block everywhere, at uniformly drawn widths (torch's generator)
    in a channel-search supernet."""
    blocks = (TEMPLATE_CHOICE,) * NUM_LAYERS
    if not model.channel_search:
        return blocks
    return blocks + tuple(torch.randint(NUM_SCALES, (NUM_LAYERS,)).tolist())


def train_template_path(model, batches, steps, criterion, optimizer, log_frequency=10):
    """``steps`` SGD steps of the template path, on batches from ``batches`` (an iterator)."""
    model.train()
    started = time.perf_counter()
    correct = seen = 0
    for step in range(steps):
        images, labels = next(batches)
        output = model(images, template_path(model))
        loss = criterion(output, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        correct += int((output.detach().argmax(1) == labels).sum())
        seen += len(labels)
        if (step + 1) % log_frequency == 0 or step + 1 == steps:
            logger.info("warm start: template path [%d/%d]  loss %.4f  top1 %.4f (last %d steps)  %.1f steps/s",
                        step + 1, steps, loss.item(), correct / seen, log_frequency, (step + 1) /
                        (time.perf_counter() - started))
            correct = seen = 0


@torch.no_grad()
def copy_template_into_siblings(model):
    """Every larger-kernel shuffle block takes the template's weights (depthwise kernels zero-padded) and BN
    statistics; every Xception block takes the template's projection branch. Returns the Xception main branches
    still to fit, each with the template main branch it must match."""
    to_fit = []
    for layer in model.features:
        template = layer[TEMPLATE_CHOICE]
        for choice, block in enumerate(layer):
            if choice == TEMPLATE_CHOICE:
                continue
            if isinstance(block, ShuffleNetBlock):
                _copy_padded(template, block)
            else:
                if template.branch_proj is not None:
                    _copy_padded(template.branch_proj, block.branch_proj)
                to_fit.append((block.branch_main, template.branch_main))
    return to_fit


def _copy_padded(source, target):
    """``target``'s parameters and buffers from ``source``'s, the same module layout with depthwise kernels as
    large or larger: those are zero-padded around the source's, which gives the same function."""
    for (name, src), (_, dst) in zip(source.state_dict().items(), target.state_dict().items()):
        if src.shape == dst.shape:
            dst.copy_(src)
        elif src.dim() == 4 and src.shape[:2] == dst.shape[:2] and src.shape[-1] < dst.shape[-1]:
            offset = (dst.shape[-1] - src.shape[-1]) // 2
            dst.zero_()
            dst[..., offset:offset + src.shape[-2], offset:offset + src.shape[-1]] = src
        else:
            raise ValueError(f"cannot copy {name} of shape {tuple(src.shape)} into {tuple(dst.shape)}")


def fit_branches(model, batches, pairs, steps, learning_rate=1e-3, log_frequency=50):
    """Fit each student main branch to the output of its template main branch, all at once, on the inputs (and
    widths) the template path gives them (train mode, as in training): ``steps`` Adam steps on the squared error
    divided by the target's variance, averaged over the branches. Returns the last normalised error."""
    if not pairs:
        return 0.0
    students = [student for student, _ in pairs]
    optimizer = torch.optim.Adam([p for student in students for p in student.parameters()], lr=learning_rate)
    features = {}

    def keep_input_and_output(template, inputs, output):  # inputs: (x,) or (x, width)
        features[template] = (inputs, output.detach())

    hooks = [template.register_forward_hook(keep_input_and_output) for _, template in pairs]
    model.train()
    error = float("nan")
    try:
        for step in range(steps):
            images, _ = next(batches)
            with torch.no_grad():
                model(images, template_path(model))
            loss = sum(F.mse_loss(student(*features[template][0]), features[template][1])
                       / features[template][1].var().clamp_min(1e-6) for student, template in pairs) / len(pairs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            error = loss.item()
            if (step + 1) % log_frequency == 0 or step + 1 == steps:
                logger.info("warm start: fitting %d Xception branches [%d/%d]  normalised error %.3f", len(pairs),
                            step + 1, steps, error)
    finally:
        for hook in hooks:
            hook.remove()
    return error


def warm_start(model, batches, steps, fit_steps, criterion, optimizer, log_frequency=10):
    """The whole warm start (see the module docstring) on ``model``, a supernet, in place; ``optimizer`` (SGD over
    the supernet) trains the template path."""
    if not isinstance(model.features[0], nn.ModuleList):
        raise ValueError("the warm start is for a supernet")
    started = time.perf_counter()
    train_template_path(model, batches, steps, criterion, optimizer, log_frequency)
    pairs = copy_template_into_siblings(model)
    error = fit_branches(model, batches, pairs, fit_steps)
    logger.info("warm start done in %.1f s: every choice of every layer starts from the template path's blocks "
                "(Xception main branches fitted to a normalised error of %.3f)", time.perf_counter() - started, error)
