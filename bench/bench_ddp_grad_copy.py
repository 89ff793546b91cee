"""What DDP's "Grad strides do not match bucket view strides" warning costs a supernet step under torchrun.

DDP keeps one flat bucket per group of parameters and, each step, copies every gradient into its view of that
bucket (scaled by 1 / world size); the views take the parameters' strides. With channels-last weights, some
gradients come back with other strides: those of a 1x1 convolution run as a matrix multiply on a small map
(blocks.PointwiseConv2d), and those of a channel-search block's first channels (the slice's gradient). Every such
mismatch found here differs only on dimensions of size 1, where a stride means nothing: the gradient and its view
lay the same numbers out in the same order. This benchmark shows it: for the gradients of supernet paths it times
DDP's copy (``torch.mul(grad, 1 / world, out=view)``) into views with the parameters' strides, as DDP makes them,
against views with the gradients' own strides (no mismatch), side by side, alternating, and prints the ratio.

    python bench/bench_ddp_grad_copy.py                       # 32x32 and 224x224, block and channel search
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from network import FlopsBinnedSampler, ShuffleNetV2OneShot  # noqa: E402
from spos.hardware import prepare_model  # noqa: E402
from spos.report import emit, markdown_table  # noqa: E402
from utils import run_main  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=4, help="supernet paths whose gradients are copied")
    parser.add_argument("--repeats", type=int, default=200, help="copies of all a path's gradients, each way")
    parser.add_argument("--output", default=None, help="also write the table here (Markdown)")
    return parser.parse_args(argv)


def path_gradients(input_size, channel_search, seed):
    """(parameter, gradient) of each parameter a FLOPs-binned path uses, after one backward pass as supernet.py
    runs it (channels-last, batch 8)."""
    torch.manual_seed(seed)
    model = prepare_model(ShuffleNetV2OneShot(input_size=input_size, n_classes=10, channel_search=channel_search),
                          torch.device("cpu"), channels_last=True)
    path = FlopsBinnedSampler(model, random.Random(seed))()
    model(torch.randn(8, 3, input_size, input_size), path).sum().backward()
    return [(p, p.grad) for p in model.parameters() if p.grad is not None]


def differ_only_on_size_one_dims(param, grad):
    return all(a == b for n, a, b in zip(param.shape, param.stride(), grad.stride()) if n != 1)


def time_copies(pairs, repeats):
    """Seconds per copy of all the gradients, into views with the parameters' strides (as DDP) and into views with
    the gradients' own, measured alternately."""
    as_ddp = [(g, torch.empty_strided(p.shape, p.stride())) for p, g in pairs]
    as_grad = [(g, torch.empty_strided(g.shape, g.stride())) for _, g in pairs]
    times = {"as DDP": [], "matching": []}
    for repeat in range(repeats):
        for name, copies in (("as DDP", as_ddp), ("matching", as_grad))[::1 if repeat % 2 else -1]:
            started = time.perf_counter()
            for grad, view in copies:
                torch.mul(grad, 0.5, out=view)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)  # each torchrun process of a 2-core machine has one
    rows = []
    for input_size in (32, 224):
        for channel_search in (False, True):
            mismatched = total = 0
            same_layout = True
            seconds = {"as DDP": 0.0, "matching": 0.0}
            for seed in range(args.paths):
                pairs = path_gradients(input_size, channel_search, seed)
                different = [(p, g) for p, g in pairs if p.stride() != g.stride()]
                mismatched, total = mismatched + len(different), total + len(pairs)
                same_layout &= all(differ_only_on_size_one_dims(p, g) for p, g in different)
                for name, value in time_copies(pairs, args.repeats).items():
                    seconds[name] += value / args.paths
            rows.append([f"{input_size}x{input_size}", "block + channel" if channel_search else "block",
                         f"{mismatched} of {total}", "yes" if same_layout else "NO",
                         f"{1e6 * seconds['matching']:.0f}", f"{1e6 * seconds['as DDP']:.0f}",
                         f"{seconds['as DDP'] / seconds['matching']:.2f}x"])
    emit(f"DDP's gradient copy for {args.paths} supernet paths, median of {args.repeats} copies each way, "
         f"1 thread\n\n" + markdown_table(
             ["input", "search", "gradients with other strides", "only on size-1 dims",
              "copy into matching views (us)", "copy into DDP's views (us)", "ratio"], rows), args.output)


if __name__ == "__main__":
    run_main(main)
