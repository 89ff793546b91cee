"""Megvii's optimisation: SGD with weight decay on conv and linear weights only, the learning rate scaled to the
batch and decayed every step."""
import math

import torch
from torch import nn

from utils import UserError


def scaled_learning_rate(learning_rate, batch_size, reference_batch_size):
    """Linear scaling rule: ``learning_rate`` is meant for ``reference_batch_size`` images a step."""
    return learning_rate * batch_size / reference_batch_size


def make_optimizer(model, lr, momentum, weight_decay):
    """SGD with weight decay on conv and linear weights only (Megvii's rule: BN and biases get none). foreach: a
    few multi-tensor kernels update a step's parameters, where a loop over the ~100 weight tensors of a supernet path
    costs more than the update itself on small inputs. Parameters without a gradient (blocks off the path) are
    skipped, momentum and weight decay included, as in the plain loop. (Fused SGD cannot take a step in which
    some parameters have a momentum buffer and others do not yet, as when a path first meets a block.)"""
    decayed, not_decayed = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decayed if is_weight else not_decayed).append(param)
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    if not_decayed:
        groups.append({"params": not_decayed, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=True)


def make_lr_scheduler(optimizer, total_iters, kind="linear"):
    """Stepped once per iteration: linear decay to 0 (Megvii) or a half cosine."""
    if kind == "linear":
        def factor(step):
            return max(0.0, 1.0 - step / total_iters)
    elif kind == "cosine":
        def factor(step):
            return 0.5 * (1 + math.cos(math.pi * min(step, total_iters) / total_iters))
    else:
        raise UserError(f"--lr-decay {kind!r}: expected 'linear' or 'cosine'")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
