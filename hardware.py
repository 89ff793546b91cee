"""Where and how a network runs: the device, its memory format and the precision of its arithmetic."""
import contextlib

import torch

from errors import UserError


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
