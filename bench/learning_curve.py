"""How fast a weight-sharing supernet learns on small data: the mean accuracy of 20 random FLOPs-legal paths, each
BN-recalibrated as the search scores it, at fixed step counts of supernet training, for each recipe variant.

    python bench/learning_curve.py                                   # every variant on digits: ~25 min on 2 cores
    python bench/learning_curve.py --variants warm-start --steps 100,250,500

Variants (the README's table says what each does to the method):
  megvii              Megvii's recipe from random weights: uniform FLOPs-binned paths from the first step
  warm-start          supernet.py --warm-start-steps: a 3x3-shuffle template path, its function copied into the
                      larger shuffle blocks and fitted into the Xception ones (spos/warm_start.py), then paths
  warm-start-no-fit   the same without the Xception fit: Xception blocks start from random weights
  two-path            the template phase alternates the all-3x3-shuffle and all-Xception paths; then the copy
  zero-init           affine BN with weight 0 ending every main branch, all shuffle kernels zero-padded copies of
                      the 3x3 ones and Xception's projection the 3x3's: every path starts as the same function
  kaiming             Kaiming (fan-in) init instead of Megvii's, learning rate 4x

Each run trains with Megvii's rules (SGD, momentum 0.9, weight decay on conv and linear weights, off-path blocks
untouched) and a learning rate that decays linearly to 0 at the last step count, on supernet.py's threads; the
template and fitting steps of the warm-start variants come first and are counted in the minutes. Training time is
timed apart from the evaluations.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dataloader import ImageFolderLoader  # noqa: E402
from network import NUM_LAYERS, FlopsBinnedSampler, ShuffleNetV2OneShot, paper_flops, random_architecture  # noqa: E402
from spos import warm_start  # noqa: E402
from spos.hardware import prepare_model, set_cpu_threads  # noqa: E402
from spos.loops import train_one_epoch  # noqa: E402
from spos.optim import make_lr_scheduler, make_optimizer, scaled_learning_rate  # noqa: E402
from spos.report import emit, markdown_table  # noqa: E402
from spos.scoring import evaluate_candidate, recalibrate_bn  # noqa: E402
from spos.scoring_data import scoring_batches  # noqa: E402
from utils import UserError, run_main, setup_logging  # noqa: E402

VARIANTS = ("megvii", "warm-start", "warm-start-no-fit", "two-path", "zero-init", "kaiming")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet-dir", default=os.path.join(ROOT, "data", "digits"))
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", default="250,500,1000,2000", help="path-sampling steps at which to evaluate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.5, help="for 1,024 images, scaled to the batch")
    parser.add_argument("--warm-start-steps", type=int, default=300)
    parser.add_argument("--warm-start-fit-steps", type=int, default=200)
    parser.add_argument("--paths", type=int, default=20, help="random FLOPs-legal paths scored at each step count")
    parser.add_argument("--flops-limit", type=float, default=330e6)
    parser.add_argument("--train-iters", type=int, default=20, help="recalibration batches, as the digits search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the table here (Markdown)")
    return parser.parse_args(argv)


def legal_paths(count, flops_limit, seed):
    rng, paths = random.Random(seed), []
    while len(paths) < count:
        path = random_architecture(rng)
        if paper_flops(path) <= flops_limit:
            paths.append(path)
    return paths


def forever(loader):
    while True:
        yield from loader


def zero_init_residuals(model):
    """Every main branch ends in an affine BN of weight 0 (its ReLU then outputs a constant), every shuffle kernel
    is a zero-padded copy of the 3x3 block's and Xception's projection the 3x3's: all paths compute one function."""
    for layer in model.features:
        for block in layer:
            last = block.branch_main[-2]
            block.branch_main[-2] = nn.BatchNorm2d(last.num_features, affine=True)
            nn.init.zeros_(block.branch_main[-2].weight)
            nn.init.constant_(block.branch_main[-2].bias, 1e-4)
    warm_start.copy_template_into_siblings(model)


class _Path(nn.Module):
    """One path of a supernet as a network of its own (for variants whose blocks path_network cannot copy)."""

    def __init__(self, supernet, architecture):
        super().__init__()
        self.supernet, self.architecture = supernet, architecture

    def forward(self, x):
        return self.supernet(x, self.architecture)


def score_paths(model, paths, recalibration, val, train_iters, copy_blocks):
    if copy_blocks:
        accuracies = [evaluate_candidate(model, path, recalibration, val, train_iters)["accuracy"] for path in paths]
    else:
        import copy

        from spos.loops import evaluate

        accuracies = []
        for path in paths:
            net = _Path(copy.deepcopy(model), path)
            recalibrate_bn(net, recalibration, train_iters)
            accuracies.append(evaluate(net, val, nn.CrossEntropyLoss())["top1"])
    model.train()
    return accuracies


def run_variant(variant, args, loader, recalibration, val, paths, steps_at):
    torch.manual_seed(args.seed)
    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=loader.num_classes)
    learning_rate = scaled_learning_rate(args.learning_rate, args.batch_size, 1024)
    if variant == "kaiming":
        learning_rate *= 4
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    if variant == "zero-init":
        zero_init_residuals(model)
    prepare_model(model, torch.device("cpu"), True)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    batches = forever(loader)
    started = time.perf_counter()
    if variant.startswith("warm-start") or variant == "two-path":
        optimizer = make_optimizer(model, learning_rate, 0.9, 4e-5)
        if variant == "two-path":
            for step in range(args.warm_start_steps):
                images, labels = next(batches)
                path = (0 if step % 2 == 0 else 3,) * NUM_LAYERS
                loss = criterion(model(images, path), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                for layer in model.features:
                    for choice in (1, 2):
                        warm_start._copy_padded(layer[0], layer[choice])
        elif variant == "warm-start-no-fit":
            warm_start.train_template_path(model, batches, args.warm_start_steps, criterion, optimizer)
            with torch.no_grad():
                for layer in model.features:
                    for choice in (1, 2):
                        warm_start._copy_padded(layer[0], layer[choice])
        else:
            warm_start.warm_start(model, batches, args.warm_start_steps, args.warm_start_fit_steps, criterion,
                                  optimizer)
    warm_seconds = time.perf_counter() - started
    optimizer = make_optimizer(model, learning_rate, 0.9, 4e-5)
    scheduler = make_lr_scheduler(optimizer, steps_at[-1])
    sampler = FlopsBinnedSampler(model, random.Random(args.seed))
    rows, done, train_seconds = [], 0, warm_seconds
    for target in steps_at:
        segment = [next(batches) for _ in range(target - done)]
        started = time.perf_counter()
        stats = train_one_epoch(model, segment, criterion, optimizer, scheduler, 0, 1, 10 ** 9, sampler)
        train_seconds += time.perf_counter() - started
        done = target
        accuracies = score_paths(model, paths, recalibration, val, args.train_iters,
                                 copy_blocks=variant != "zero-init")
        row = {"variant": variant, "steps": target, "minutes": train_seconds / 60,
               "ms_per_step": 1000 * (train_seconds - warm_seconds) / target, "train_top1": stats["top1"],
               "mean": sum(accuracies) / len(accuracies), "min": min(accuracies), "max": max(accuracies)}
        print(f"{variant}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    args = parse_args(argv)
    setup_logging(quiet=True)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"--variants: unknown {unknown[0]!r} (known: {', '.join(VARIANTS)})")
    steps_at = sorted(int(s) for s in args.steps.split(","))
    torch.set_flush_denormal(True)
    set_cpu_threads(torch.device("cpu"))  # as supernet.py trains
    loader = ImageFolderLoader(args.imagenet_dir, "train", train=True, batch_size=args.batch_size,
                               input_size=args.input_size, workers=1, seed=args.seed)
    recalibration, val, _, _ = scoring_batches(args.imagenet_dir, train_batch_size=64, train_iters=args.train_iters,
                                               test_batch_size=300, input_size=args.input_size, workers=1, seed=42)
    paths = legal_paths(args.paths, args.flops_limit, seed=1234)
    rows = [row for variant in variants for row in run_variant(variant, args, loader, recalibration, val, paths,
                                                                steps_at)]
    header = ["variant", "path steps", "minutes (incl. warm start)", "ms a step", "train top-1",
              f"mean of {args.paths} paths", "worst", "best"]
    table = markdown_table(header, [[r["variant"], str(r["steps"]), f"{r['minutes']:.1f}", f"{r['ms_per_step']:.0f}",
                                     f"{100 * r['train_top1']:.1f} %", f"{100 * r['mean']:.1f} %",
                                     f"{100 * r['min']:.1f} %", f"{100 * r['max']:.1f} %"] for r in rows])
    emit(f"{args.imagenet_dir}, {args.input_size}x{args.input_size}, batch {args.batch_size}, "
         f"{torch.get_num_threads()} threads; paths recalibrated on {args.train_iters} batches of 64\n\n{table}",
         args.output)


if __name__ == "__main__":
    run_main(main)
