"""Is the stand-alone budget long enough to rank architectures? Kendall tau between the ranking of architectures
after --epochs of stand-alone training and after --factor times as many, over --architectures drawn at random in a
FLOPs band, each with --seeds seeds (SPEC section 16): a short budget may rank how fast a network starts to
learn, not how good it is. The reproduction's budget is one whose ranking this shows to agree with a longer one's.

    python -m reproduction.budget                 # data/fashion with the reproduction's recipe: --epochs vs 4x

Both budgets' runs are the reproduction's stand-alone runs (reproduction/stand_alone.py: scratch.py, the same
training images, top-1 on val/, kept by what they are), in --output-dir's runs/ beside the reproduction's: a rerun
trains only what it lacks. Prints and writes budget.md: each architecture's means, the tau between the budgets with
an interval that carries the seed noise, and at each budget the seed-to-seed tau, the mean top-1 and a run's time.
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
from spos.stats import (attainable_tau, kendall_tau, mean, mean_reliability, means_tau_interval, pooled_seed_variance,
                        reliability_from_tau, seed_to_seed_interval, seed_to_seed_tau)
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
    parser.add_argument("--epochs", type=int, default=1, help="the shorter budget, the reproduction's")
    parser.add_argument("--factor", type=int, default=4, help="the longer budget: this many times --epochs")
    parser.add_argument("--seed", type=int, default=0, help="which random architectures are drawn")
    parser.add_argument("--jobs", type=int, default=0, help="runs side by side; 0: one per GPU, else one per core")
    parser.add_argument("--scratch-args", default="", help="more flags for every scratch.py run")
    parser.add_argument("--output-dir", default="reproduce_output")
    args = parse_args_with_recipe(parser, argv, "reproduction.budget")
    if args.architectures < 3 or args.seeds < 2 or args.epochs < 1 or args.factor < 2 or args.jobs < 0 \
            or args.holdout_per_class < 0 or not 0 <= args.band[0] < args.band[1]:
        raise UserError("--architectures must be 3 or more, --seeds and --factor 2 or more, --epochs positive, "
                        "--jobs and --holdout-per-class 0 or more, --band LOW HIGH with LOW < HIGH")
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
    budgets = (args.epochs, args.factor * args.epochs)
    runs, seconds = {}, {}
    for epochs in budgets:
        runs[epochs] = plan_runs(args.output_dir, architectures, seeds, epochs, args.scratch_args, args.imagenet_dir,
                                 args.holdout_per_class)
        prepare(runs[epochs], log)
        to_train = sum(run.accuracy() is None for run in runs[epochs])
        started = time.perf_counter()
        run_locally(runs[epochs], jobs, device_count, log)
        seconds[epochs] = (time.perf_counter() - started) * jobs / to_train if to_train else None
    accuracies = {epochs: [[next(run.accuracy() for run in runs[epochs] if (run.name, run.seed) == (name, seed))
                            for seed in seeds] for name, _ in architectures] for epochs in budgets}
    short, long = (accuracies[epochs] for epochs in budgets)
    variances = {epochs: pooled_seed_variance(accuracies[epochs]) for epochs in budgets}
    tau = kendall_tau([mean(runs_) for runs_ in short], [mean(runs_) for runs_ in long])
    reliabilities = {epochs: mean_reliability(reliability_from_tau(seed_to_seed_tau(accuracies[epochs])), len(seeds))
                     for epochs in budgets}
    # two noisy rankings of the same true order agree at most this much
    ceiling = attainable_tau(reliabilities[budgets[0]] * reliabilities[budgets[1]], 1)
    rows = [[f"Kendall tau, {budgets[0]}-epoch means vs {budgets[1]}-epoch means ({len(architectures)} random "
             f"architectures, {len(seeds)} seeds)", number(tau, "{:.3f}"),
             interval(means_tau_interval(short, long, *variances.values()), "{:.3f}")],
            [f"the most two noisy rankings of one order agree (their {len(seeds)}-seed reliabilities)",
             number(ceiling, "{:.3f}"), ""]]
    for epochs in budgets:
        rows += [[f"{epochs} epochs: seed-to-seed tau", number(seed_to_seed_tau(accuracies[epochs]), "{:.3f}"),
                  interval(seed_to_seed_interval(accuracies[epochs]), "{:.3f}")],
                 [f"{epochs} epochs: mean top-1, seed standard deviation (points)",
                  f"{100 * mean([mean(a) for a in accuracies[epochs]]):.2f} %, "
                  f"{number(variances[epochs] ** 0.5, '{:.2f}', 100)}", ""],
                 [f"{epochs} epochs: a run's time (s, on one of {jobs} slots)", number(seconds[epochs], "{:.0f}"),
                  ""]]
    per_architecture = markdown_table(
        ["architecture", "genes", *[f"{epochs} epochs: mean ± std" for epochs in budgets]],
        [[name, format_choices(genes), *[f"{100 * mean(a):.2f} ± {100 * std(a):.2f} %" for a in (s_, l_)]]
         for (name, genes), s_, l_ in zip(architectures, short, long)])
    emit(f"stand-alone budget: {args.architectures} architectures drawn ({RANDOM}: {args.band[0] / 1e6:.1f}-"
         f"{args.band[1] / 1e6:.1f}M FLOPs, seed {args.seed}) x {len(seeds)} seeds x {budgets[0]} and {budgets[1]} "
         f"epochs on {args.imagenet_dir}{f' (recipe {args.recipe})' if args.recipe else ''}, top-1 on val/\n\n"
         f"{markdown_table(['statistic', 'value', '95 % interval'], rows)}\n\n{per_architecture}",
         os.path.join(args.output_dir, "budget.md"))


if __name__ == "__main__":
    run_main(main)
