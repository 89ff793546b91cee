"""Is the stand-alone budget long enough to rank architectures? Kendall tau between the ranking of architectures
after each budget of --epochs and after the longest, over --architectures drawn at random in a FLOPs band, each
with --seeds seeds (SPEC section 16): a short budget may rank how fast a network starts to learn, not how good it
is. The reproduction's budget is one whose ranking this shows to agree with one at least 4 times longer.

    python -m reproduction.budget                 # data/fashion with its recipe: the reproduction's budget vs 4x
    python -m reproduction.budget --epochs 1 2 4 8

Every run is a reproduction stand-alone run (reproduction/stand_alone.py: scratch.py, the same training images,
the last epoch's top-1 on val/, kept by what it is), in --output-dir's runs/ beside the reproduction's: a rerun
trains only what it lacks. Prints and writes budget.md: each architecture's means; for each budget its tau against
the longest with an interval that carries the seed noise and the most two rankings that noisy can agree; the
seed-to-seed tau, the single-run reliability, the mean top-1, the seed standard deviation and a run's time.
"""
import argparse
import os
import sys
import time

from reproduction.architectures import RANDOM
from reproduction.comparison import interval, number, std
from reproduction.stand_alone import plan_runs, prepare, run_locally
from spos.architecture import format_choices
from spos.options import PROJECT_DIR, parse_args_with_recipe
from spos.report import emit, markdown_table
from spos.scoring import random_legal_paths
from spos.stats import (attainable_tau, icc1, kendall_tau, mean, mean_reliability, means_tau_interval,
                        pooled_seed_variance, reliability_from_tau, seed_to_seed_interval, seed_to_seed_tau)
from utils import UserError, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduction.budget", description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet-dir", default=os.path.join(PROJECT_DIR, "data", "fashion"))
    parser.add_argument("--holdout-per-class", type=int, default=0, metavar="N",
                        help="images a class held out of train/ (the reproduction's: its runs train on the rest)")
    parser.add_argument("--architectures", type=int, default=10, help="random architectures of the band")
    parser.add_argument("--band", type=float, nargs=2, default=(313.5e6, 330e6), metavar=("LOW", "HIGH"),
                        help="their FLOPs band (224x224, 1,000 classes); default: the 5 %% under the 330M limit")
    parser.add_argument("--seeds", type=int, default=3, help="stand-alone runs per architecture and budget")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 4], metavar="E",
                        help="the budgets, shortest first (the reproduction's), each compared with the last")
    parser.add_argument("--seed", type=int, default=0, help="which random architectures are drawn")
    parser.add_argument("--jobs", type=int, default=0, help="runs side by side; 0: one per GPU, else one per core")
    parser.add_argument("--scratch-args", default="", help="more flags for every scratch.py run")
    parser.add_argument("--output-dir", default="reproduce_output")
    args = parse_args_with_recipe(parser, argv, "reproduction.budget")
    if args.architectures < 3 or args.seeds < 2 or args.jobs < 0 or args.holdout_per_class < 0 \
            or not 0 <= args.band[0] < args.band[1]:
        raise UserError("--architectures must be 3 or more, --seeds 2 or more, --jobs and --holdout-per-class 0 or "
                        "more, --band LOW HIGH with LOW < HIGH")
    if len(args.epochs) < 2 or args.epochs[0] < 1 or sorted(set(args.epochs)) != list(args.epochs):
        raise UserError(f"--epochs {' '.join(map(str, args.epochs))}: give two budgets or more, positive, shortest "
                        f"first, each once")
    return args


def log(message):
    print(message, file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    import torch

    device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    jobs = args.jobs or device_count or os.cpu_count() or 1
    architectures = [(f"budget{i:02d}", genes) for i, genes in enumerate(
        random_legal_paths(args.architectures, args.band[1], args.seed, min_flops=args.band[0]), 1)]
    seeds = list(range(1, args.seeds + 1))
    runs, seconds = {}, {}
    for epochs in args.epochs:
        runs[epochs] = plan_runs(args.output_dir, architectures, seeds, epochs, args.scratch_args, args.imagenet_dir,
                                 args.holdout_per_class)
        prepare(runs[epochs], log)
        to_train = sum(run.accuracy() is None for run in runs[epochs])
        started = time.perf_counter()
        run_locally(runs[epochs], jobs, device_count, log)
        seconds[epochs] = (time.perf_counter() - started) * jobs / to_train if to_train else None
    accuracies = {epochs: [[next(run.accuracy() for run in runs[epochs] if (run.name, run.seed) == (name, seed))
                            for seed in seeds] for name, _ in architectures] for epochs in args.epochs}
    means = {epochs: [mean(a) for a in accuracies[epochs]] for epochs in args.epochs}
    variances = {epochs: pooled_seed_variance(accuracies[epochs]) for epochs in args.epochs}
    # the single-run reliability from the variance components (steadier than from the seed-to-seed tau with few
    # architectures), and that of a mean of the seeds
    reliabilities = {epochs: mean_reliability(max(0.0, icc1(accuracies[epochs])), len(seeds))
                     for epochs in args.epochs}
    longest = args.epochs[-1]
    rows = []
    for epochs in args.epochs[:-1]:
        label = f"{epochs} vs {longest} epochs"
        rows += [[f"{label}: Kendall tau of the {len(seeds)}-seed means",
                  number(kendall_tau(means[epochs], means[longest]), "{:.3f}"),
                  interval(means_tau_interval(accuracies[epochs], accuracies[longest], variances[epochs],
                                              variances[longest]), "{:.3f}")],
                 [f"{label}: the most two rankings that noisy agree (both reliabilities)",
                  number(attainable_tau(reliabilities[epochs] * reliabilities[longest], 1), "{:.3f}"), ""]]
    for epochs in args.epochs:
        rows += [[f"{epochs} epochs: seed-to-seed tau", number(seed_to_seed_tau(accuracies[epochs]), "{:.3f}"),
                  interval(seed_to_seed_interval(accuracies[epochs]), "{:.3f}")],
                 [f"{epochs} epochs: single-run reliability r1, from the seed-to-seed tau and from ICC(1)",
                  f"{number(reliability_from_tau(seed_to_seed_tau(accuracies[epochs])), '{:.2f}')}, "
                  f"{number(icc1(accuracies[epochs]), '{:.2f}')}", ""],
                 [f"{epochs} epochs: mean top-1, seed standard deviation (points)",
                  f"{100 * mean(means[epochs]):.2f} %, {number(variances[epochs] ** 0.5, '{:.2f}', 100)}", ""],
                 [f"{epochs} epochs: a run's time (s, on one of {jobs} slots)", number(seconds[epochs], "{:.0f}"),
                  ""]]
    per_architecture = markdown_table(
        ["architecture", "genes", *[f"{epochs} epochs: mean ± std" for epochs in args.epochs]],
        [[name, format_choices(genes), *[f"{100 * mean(accuracies[e][i]):.2f} ± {100 * std(accuracies[e][i]):.2f} %"
                                         for e in args.epochs]]
         for i, (name, genes) in enumerate(architectures)])
    emit(f"stand-alone budget: {args.architectures} architectures drawn ({RANDOM}: {args.band[0] / 1e6:.1f}-"
         f"{args.band[1] / 1e6:.1f}M FLOPs, seed {args.seed}) x {len(seeds)} seeds x "
         f"{', '.join(map(str, args.epochs))} epochs on {args.imagenet_dir}"
         f"{f' (recipe {args.recipe})' if args.recipe else ''}, top-1 on val/\n\n"
         f"{markdown_table(['statistic', 'value', '95 % interval'], rows)}\n\n{per_architecture}",
         os.path.join(args.output_dir, "budget.md"))


if __name__ == "__main__":
    run_main(main)
