"""Where and how a network runs: the device, its memory format and the precision of its arithmetic."""
import contextlib
import os

import torch

from utils import UserError


def get_device(requested="auto"):
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA GPU is available here")
    return torch.device(requested)


def compute_dtype(precision, device):
    """The autocast dtype for ``--precision`` on ``device``; None means plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


def autocast(device, dtype):
    """bf16 autocast when ``dtype`` is set; nothing otherwise."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def prepare_model(model, device, channels_last):
    """The model on ``device`` in the memory format its forward then gives its input too."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # 80 conv shapes in all: each is tuned once
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def set_cpu_threads(device, context=None):
    """Training on a CPU: one thread fewer than the cores this process may use, unless OMP_NUM_THREADS says
    otherwise or torchrun shares the cores out (distributed.init). The data loader's threads (DALI) or processes
    need a core: on 2 cores a digits step took 78 ms with one compute thread, 78 with two spinning and 190
    with two sleeping while they wait, and beside two busy processes 167, 265 and 280 (bench/bench_train_step.py,
    the README's Performance section)."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ or (context is not None and context.enabled):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores - 1))
