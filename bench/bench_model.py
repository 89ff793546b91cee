"""Supernet training and candidate scoring, images/s at 224x224: this project's code path, as supernet.py and
tester.py run it, against the plain eager implementation in bench/plain_shufflenet.py, side by side in one run
on the same weights, the same random paths and the same synthetic batches.

  training: loops.train_one_epoch on a channels-last model (supernet.py) vs plain_train_step (fp32, NCHW)
  scoring:  scoring.evaluate_candidate (a copy of the path, BN folded for evaluation) vs plain_score (NNI's
            tester on the supernet itself); both evaluate before and after recalibrating BN

    python bench/bench_model.py                      # CPU, batch 32: about 3 minutes on 2 cores
    python bench/bench_model.py --device cuda --batch-size 256
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from plain_shufflenet import PlainSupernet, plain_score, plain_train_step  # noqa: E402
from torch import nn  # noqa: E402

from network import FlopsBinnedSampler, ShuffleNetV2OneShot  # noqa: E402
from spos.hardware import get_device, prepare_model  # noqa: E402
from spos.loops import train_one_epoch  # noqa: E402
from spos.optim import make_lr_scheduler, make_optimizer  # noqa: E402
from spos.report import emit  # noqa: E402
from spos.scoring import evaluate_candidate  # noqa: E402
from utils import UserError, run_main  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--train-steps", type=int, default=8, help="timed training steps (after 2 warm-up)")
    parser.add_argument("--candidates", type=int, default=3, help="candidates scored (after 1 warm-up)")
    parser.add_argument("--recalibration-batches", type=int, default=4)
    parser.add_argument("--val-batches", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="(CPU) also show where one candidate's fp32 scoring spends its time, and the rate of "
                             "its convolutions against a large matrix multiply's")
    parser.add_argument("--output", default=None, help="also write the table here (Markdown)")
    return parser.parse_args(argv)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device, function):
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def batches(count, args, device, generator):
    return [(torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=generator).to(device),
             torch.randint(0, 1000, (args.batch_size,), generator=generator).to(device)) for _ in range(count)]


def bench_training(args, device, state, paths, data):
    """images/s of each implementation over the same paths and batches (2 warm-up steps first)."""
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    results = {}

    plain = PlainSupernet().to(device)
    plain.load_state_dict(state)
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    for (images, labels), path in zip(data[:2], paths):
        plain_train_step(plain, optimizer, criterion, images, labels, path)

    def run_plain():
        for (images, labels), path in zip(data[2:], paths[2:]):
            plain_train_step(plain, optimizer, criterion, images, labels, path)
    results["plain eager fp32 (yardstick)"] = timed(device, run_plain)

    for name, channels_last, dtype in (("this project, fp32 (supernet.py on a CPU)", True, None),
                                       ("this project, bf16 autocast (supernet.py on a GPU)", True, torch.bfloat16)):
        model = prepare_model(ShuffleNetV2OneShot(affine=False), device, channels_last)
        model.load_state_dict(state)
        optimizer = make_optimizer(model, 0.01, 0.9, 4e-5)
        scheduler = make_lr_scheduler(optimizer, 10 * len(data))
        steps = iter(paths)
        train_one_epoch(model, data[:2], criterion, optimizer, scheduler, 0, 1, 10 ** 9, steps.__next__, dtype)
        results[name] = timed(device, lambda: train_one_epoch(model, data[2:], criterion, optimizer, scheduler, 0, 1,
                                                              10 ** 9, steps.__next__, dtype))
    images = (len(data) - 2) * args.batch_size
    return {name: images / seconds for name, seconds in results.items()}


def bench_scoring(args, device, state, candidates, recalibration, val):
    """images/s (recalibration + evaluation before and after) of each implementation over the same candidates.
    (tests/test_tester.py checks that both give the same accuracies.)"""
    images = args.candidates * (len(recalibration) + 2 * len(val)) * args.batch_size
    results = {}

    plain = PlainSupernet().to(device)
    plain.load_state_dict(state)
    plain_score(plain, candidates[0], recalibration, val)
    plain.load_state_dict(state)
    results["plain eager fp32 (yardstick)"] = timed(device, lambda: [
        plain_score(plain, c, recalibration, val) for c in candidates[1:]])

    for name, dtype in (("this project, fp32 (tester.py on a CPU)", None),
                        ("this project, bf16 autocast (tester.py on a GPU; --precision bf16)", torch.bfloat16)):
        model = prepare_model(ShuffleNetV2OneShot(affine=False), device, True).eval()
        model.load_state_dict(state)
        evaluate_candidate(model, candidates[0], recalibration, val, len(recalibration), autocast_dtype=dtype)
        results[name] = timed(device, lambda: [
            evaluate_candidate(model, c, recalibration, val, len(recalibration), autocast_dtype=dtype)
            for c in candidates[1:]])
    return {name: images / seconds for name, seconds in results.items()}


def profile_scoring(args, device, state, candidate, recalibration, val):
    """Operators' shares of one candidate's scoring (scoring.evaluate_candidate, fp32), and the GFLOP/s of
    its convolutions and of a 2048^3 matrix multiply, on the same threads."""
    from torch.profiler import profile

    model = prepare_model(ShuffleNetV2OneShot(affine=False), device, True).eval()
    model.load_state_dict(state)
    evaluate_candidate(model, candidate, recalibration, val, len(recalibration))
    with profile(with_flops=True) as profiler:
        evaluate_candidate(model, candidate, recalibration, val, len(recalibration))
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    lines = ["### where one candidate's fp32 scoring spends its time (this project)", "",
             "| operator | share of the time |", "|---|---:|"]
    lines += [f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f} % |"
              for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]]
    conv = [e for e in events if e.key == "aten::conv2d"]  # FLOPs are recorded there; its time includes the kernel
    conv_flops, conv_seconds = sum(e.flops for e in conv), sum(e.cpu_time_total for e in conv) / 1e6
    a, b = torch.randn(2048, 2048, device=device), torch.randn(2048, 2048, device=device)
    a @ b
    seconds = timed(device, lambda: [a @ b for _ in range(5)])
    lines += ["", f"convolutions: {conv_flops / 1e9:.1f} GFLOP in {conv_seconds:.2f} s = "
                  f"{conv_flops / 1e9 / conv_seconds:.0f} GFLOP/s; a 2048^3 fp32 matrix multiply: "
                  f"{5 * 2 * 2048 ** 3 / 1e9 / seconds:.0f} GFLOP/s"]
    return "\n".join(lines)


def table(title, rates):
    yardstick = next(iter(rates.values()))
    lines = [f"### {title}", "", "| implementation | images/s | ratio |", "|---|---:|---:|"]
    lines += [f"| {name} | {rate:.1f} | {rate / yardstick:.2f}x |" for name, rate in rates.items()]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    if args.profile and device.type != "cpu":  # it reads operators' CPU time: on a GPU that is launch time
        raise UserError("--profile measures a CPU run: leave out --device, or use a GPU profiler")
    torch.manual_seed(0)
    # an untrained supernet's activations underflow to denormals, which slow both implementations alike
    torch.set_flush_denormal(True)
    state = ShuffleNetV2OneShot(affine=False).state_dict()
    rng = random.Random(0)
    sampler = FlopsBinnedSampler(ShuffleNetV2OneShot(input_size=args.input_size, affine=False), rng)
    generator = torch.Generator().manual_seed(0)

    train_paths = [sampler() for _ in range(args.train_steps + 2)]
    train_rates = bench_training(args, device, state, train_paths, batches(args.train_steps + 2, args, device,
                                                                            generator))
    candidates = [sampler() for _ in range(args.candidates + 1)]
    recalibration = batches(args.recalibration_batches, args, device, generator)
    val = batches(args.val_batches, args, device, generator)
    score_rates = bench_scoring(args, device, state, candidates, recalibration, val)

    header = (f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}, batch {args.batch_size}, "
              f"{args.input_size}x{args.input_size}, 1000 classes")
    text = "\n\n".join([header,
                        table(f"supernet training ({args.train_steps} steps)", train_rates),
                        table(f"candidate scoring ({args.candidates} candidates: {args.recalibration_batches} "
                              f"recalibration + 2 x {args.val_batches} evaluation batches each)", score_rates)])
    if args.profile:
        text += "\n\n" + profile_scoring(args, device, state, candidates[0], recalibration, val)
    emit(text, args.output)


if __name__ == "__main__":
    run_main(main)
