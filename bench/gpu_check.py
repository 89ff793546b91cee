"""GPU throughput check: supernet training and candidate scoring images/s, fp32 vs bf16 and contiguous vs
channels-last, through the project's own code path on synthetic batches already on the GPU.

Training runs ``loops.train_one_epoch`` on the supernet as supernet.py sets it up (``prepare_model``,
``make_optimizer``, the linear schedule, label smoothing 0.1, a FLOPs-binned path a step). Scoring runs
what ``scoring.evaluate_candidate`` does for one candidate, each part timed alone: BN recalibration of the
path (train mode, no gradients) and evaluation with BN folded into the convs. Data loading is left out
(bench/bench_data.py measures it). Writes a Markdown table with ``--output``.

    python bench/gpu_check.py --output gpu_check.md             # on a GPU: 224x224, batch 256, 1,000 classes
    python bench/gpu_check.py --device cpu --steps 2 --batch-size 4 --input-size 64   # a trial run on a CPU
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see supernet.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from network import (NUM_CHOICES, NUM_LAYERS, FlopsBinnedSampler, ShuffleNetV2OneShot, fold_batch_norms,  # noqa: E402
                     path_network)
from spos.hardware import compute_dtype, prepare_model  # noqa: E402
from spos.loops import evaluate, train_one_epoch  # noqa: E402
from spos.optim import make_lr_scheduler, make_optimizer, scaled_learning_rate  # noqa: E402
from spos.report import emit, markdown_table  # noqa: E402
from spos.scoring import recalibrate_bn  # noqa: E402
from utils import UserError, run_main  # noqa: E402

NUM_CLASSES = 1000
GOAL_IMAGES_PER_S = 10_000
DISTINCT_BATCHES = 4  # the synthetic batches cycle through a few tensors: the GPU's memory is for the model
TRAINING_CONFIGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
SCORING_CONFIGS = (("fp32", False), ("bf16", True))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a trial run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--input-size", type=int, default=224, help="a multiple of 32")
    parser.add_argument("--steps", type=int, default=50, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=5,
                        help="batches before the clock starts (training adds one step per block choice first, "
                             "so cuDNN tunes every conv shape before it)")
    parser.add_argument("--output", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch-size and --steps must be positive and --warmup not negative")
    return args


def get_device(requested):
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA GPU is available here (torch {torch.__version__}, built "
                        f"for CUDA {torch.version.cuda}); this check is meant for a GPU machine, "
                        f"pass --device cpu for a trial run on the CPU")
    return torch.device(requested)


def synchronize(device):
    """Queued GPU work is finished before the clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batches(count, batch_size, input_size, device):
    """``count`` (images, labels) batches as the loaders give them: float32 NCHW and int64 labels on
    ``device``."""
    generator = torch.Generator().manual_seed(0)
    distinct = [(torch.randn(batch_size, 3, input_size, input_size, generator=generator).to(device),
                 torch.randint(NUM_CLASSES, (batch_size,), generator=generator).to(device))
                for _ in range(min(count, DISTINCT_BATCHES))]
    return [distinct[i % len(distinct)] for i in range(count)]


def new_supernet(args, device, channels_last):
    torch.manual_seed(0)
    # FLOPs computed, not read from data/op_flops_dict.pkl: that table only holds 224x224
    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=NUM_CLASSES, affine=False, op_flops_path=None)
    return prepare_model(model, device, channels_last)


def time_training(args, device, batches, precision, channels_last):
    """Supernet training images/s: ``train_one_epoch`` as supernet.py calls it."""
    model = new_supernet(args, device, channels_last)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = make_optimizer(model, scaled_learning_rate(0.5, args.batch_size, 1024), 0.9, 4e-5)
    warmup_steps = NUM_CHOICES + args.warmup
    scheduler = make_lr_scheduler(optimizer, warmup_steps + args.steps)
    sampler = FlopsBinnedSampler(model, random.Random(0))
    model.get_candidate_flops((0,) * NUM_LAYERS)  # builds the FLOPs table the sampler reads (seconds)
    autocast_dtype = compute_dtype(precision, device)
    # every block of every layer runs once (cuDNN tunes each conv shape on first sight), then sampled paths
    covering_paths = iter([(choice,) * NUM_LAYERS for choice in range(NUM_CHOICES)])

    def warmup_path():
        return next(covering_paths, None) or sampler()

    train_one_epoch(model, batches[:warmup_steps], criterion, optimizer, scheduler, 0, 2, warmup_steps,
                    warmup_path, autocast_dtype)
    synchronize(device)
    started = time.perf_counter()
    train_one_epoch(model, batches[:args.steps], criterion, optimizer, scheduler, 1, 2, args.steps, sampler,
                    autocast_dtype)
    synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - started)


def time_scoring(args, device, batches, precision, channels_last):
    """Images/s of the two parts of ``scoring.evaluate_candidate`` for one candidate: BN recalibration of its
    path and evaluation of the path with BN folded."""
    model = new_supernet(args, device, channels_last).eval()
    architecture = FlopsBinnedSampler(model, random.Random(0))()
    autocast_dtype = compute_dtype(precision, device)
    criterion = nn.CrossEntropyLoss()
    if args.warmup:  # fold_batch_norms works in place: the timed run starts from a fresh copy of the path
        warmup_path = path_network(model, architecture)
        recalibrate_bn(warmup_path, batches[:args.warmup], args.warmup, autocast_dtype=autocast_dtype)
        evaluate(fold_batch_norms(warmup_path), batches[:args.warmup], criterion, autocast_dtype=autocast_dtype)
    path = path_network(model, architecture)
    synchronize(device)
    started = time.perf_counter()
    recalibrate_bn(path, batches[:args.steps], args.steps, autocast_dtype=autocast_dtype)
    synchronize(device)
    recalibrated = time.perf_counter()
    evaluate(fold_batch_norms(path), batches[:args.steps], criterion, autocast_dtype=autocast_dtype)
    synchronize(device)
    evaluated = time.perf_counter()
    images = args.steps * args.batch_size
    return images / (recalibrated - started), images / (evaluated - recalibrated)


def config_name(precision, channels_last):
    return f"{precision} {'channels-last' if channels_last else 'contiguous'}"


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    if args.input_size % 32:
        raise UserError(f"--input-size must be a multiple of 32, got {args.input_size}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    batches = synthetic_batches(NUM_CHOICES + args.warmup + args.steps, args.batch_size, args.input_size, device)

    training = {}
    for precision, channels_last in TRAINING_CONFIGS:
        name = config_name(precision, channels_last)
        print(f"supernet training, {name} ...", file=sys.stderr, flush=True)
        training[name] = time_training(args, device, batches, precision, channels_last)
    recalibration, evaluation = {}, {}
    for precision, channels_last in SCORING_CONFIGS:
        name = config_name(precision, channels_last)
        print(f"candidate scoring, {name} ...", file=sys.stderr, flush=True)
        recalibration[name], evaluation[name] = time_scoring(args, device, batches, precision, channels_last)

    baseline = config_name("fp32", False)
    table_rows = [[what, name, f"{rate:,.0f}", f"{rate / rates[baseline]:.2f}x"]
                  for what, rates in (("supernet training", training),
                                      ("scoring: BN recalibration (train mode, no grad)", recalibration),
                                      ("scoring: evaluation (BN folded)", evaluation))
                  for name, rate in rates.items()]
    best_name = max(training, key=training.get)
    best = training[best_name]
    # the goal is for the real thing: a GPU at ImageNet's 224x224
    goal_met = device.type == "cuda" and args.input_size == 224 and best >= GOAL_IMAGES_PER_S
    where = f"on {device_name}" + (f", at {args.input_size}x{args.input_size}" if args.input_size != 224 else "")
    lines = [
        "# GPU check: SPOS supernet throughput",
        "",
        f"device: {device_name}; torch {torch.__version__}"
        + (f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if device.type == "cuda" else ""),
        "",
        f"{args.input_size}x{args.input_size}, {NUM_CLASSES:,} classes, batch {args.batch_size}, synthetic batches on "
        f"the device; {args.steps} timed batches per row after {args.warmup} warm-up batches (training: "
        f"{NUM_CHOICES} more first, one per block choice).",
        "",
        markdown_table(["measurement", "precision, memory format", "images/s", "vs fp32 contiguous"], table_rows),
        "",
        f"goal: >= {GOAL_IMAGES_PER_S:,} img/s supernet training on one H100: {'met' if goal_met else 'not met'} "
        f"(best {best:,.0f} img/s, {best_name}, {where})",
    ]
    emit("\n".join(lines), args.output)
    return training


if __name__ == "__main__":
    run_main(main)
