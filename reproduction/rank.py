"""Does the supernet rank architectures? Kendall tau between the accuracy a supernet gives N architectures and the
accuracy they reach trained alone from scratch.

    python -m reproduction.rank --checkpoint demo_output/supernet          # digits, after `make demo`

1. N architectures under the FLOPs limit, spread over the FLOPs range (the search's best among them when
   --architecture-final is given);
2. each scored with the supernet as the search scores a candidate (spos/scoring.py: BN recalibrated, the trial
   settings of the dataset's recipe or the flags given);
3. each trained from scratch with scratch.py itself, the same epochs and recipe for all (--epochs, or the
   "reproduction.rank" section of the dataset's recipe.json), once per seed: runs go to processes side by side
   (one per CPU core, or one per GPU), kept by what they are (reproduction/stand_alone.py): a rerun skips finished
   runs, resumes interrupted ones and trains anew what changed;
4. Kendall tau and Spearman rho between supernet score and stand-alone accuracy (mean over seeds), the tau's
   interval carrying the seed noise (spos/stats.py); the seed-to-seed tau of the stand-alone runs and the
   tau a perfect predictor attains against the seed means (the ceiling for the supernet's); top-k overlap.

Writes to --output-dir: runs.csv (every run), ranking.png (supernet score against stand-alone accuracy, error
bars over seeds), summary.md (the table printed), runs/<architecture>_seed<seed>_<identity>/.
"""
import argparse
import csv
import os
import statistics
import sys
import time

from reproduction.stand_alone import plan_runs, prepare, run_locally
from reproduction.supernet_scores import supernet_scores
from spos.architecture import load_architecture
from spos.options import PROJECT_DIR, parse_args_with_recipe
from spos.report import emit, markdown_table
from spos.stats import (attainable_tau, bootstrap_interval, kendall_tau, pooled_seed_variance, reliability_from_tau,
                        seed_to_seed_interval, seed_to_seed_tau, spearman_rho, tau_interval, top_k_overlap)
from utils import UserError, run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduction.rank", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the supernet: a file, or supernet.py's folder")
    parser.add_argument("--imagenet-dir", default=os.path.join(PROJECT_DIR, "data", "digits"))
    parser.add_argument("--architectures", type=int, default=10, help="how many architectures to rank")
    parser.add_argument("--architecture-final", default=None, metavar="FILE",
                        help="also rank this one (the search's architecture_final.json)")
    parser.add_argument("--seeds", type=int, default=2, help="stand-alone runs per architecture (seeds 1..N)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="stand-alone training epochs, the same for all (a dataset's recipe.json may set it)")
    parser.add_argument("--flops-limit", type=float, default=330e6, help="FLOPs at 224x224, as the search's")
    parser.add_argument("--jobs", type=int, default=0,
                        help="stand-alone runs side by side; 0: one per GPU, else one per CPU core")
    parser.add_argument("--scratch-args", default="",
                        help="more flags for every scratch.py run, e.g. \"--batch-size 256 --workers 8\"")
    parser.add_argument("--holdout-per-class", type=int, default=0, metavar="N",
                        help="score on N images a class held out of train/, train the stand-alone runs on the rest "
                             "and report them on val/ (see python -m reproduction.reproduce)")
    parser.add_argument("--tester-args", default="",
                        help="more tester.py flags for the supernet scores, e.g. \"--train-iters 100\"")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="which architectures are drawn")
    parser.add_argument("--output-dir", default="ranking_output")
    return parse_args_with_recipe(parser, argv, "reproduction.rank")


def choose_architectures(count, flops_limit, seed, final=None):
    """``count`` architectures spread evenly over the FLOPs range of random legal ones (and ``final``)."""
    from network import paper_flops
    from spos.scoring import random_legal_paths

    pool = sorted(random_legal_paths(40 * count, flops_limit, seed), key=paper_flops)
    picks = [pool[round(i * (len(pool) - 1) / max(count - 1, 1))] for i in range(count)]
    if final is not None and final not in picks:
        picks[len(picks) // 2] = final  # it replaces the one of median FLOPs
    return picks


def plot(path, scores, accuracies, flops, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [statistics.mean(a) for a in accuracies]
    low = [m - min(a) for m, a in zip(means, accuracies)]
    high = [max(a) - m for m, a in zip(means, accuracies)]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), constrained_layout=True)
    ax.errorbar([100 * s for s in scores], [100 * m for m in means], yerr=[[100 * v for v in low],
                                                                            [100 * v for v in high]],
                fmt="none", ecolor="gray", elinewidth=1, capsize=3, zorder=1)
    points = ax.scatter([100 * s for s in scores], [100 * m for m in means], c=[f / 1e6 for f in flops],
                        cmap="viridis", s=40, zorder=2)
    fig.colorbar(points, ax=ax).set_label("FLOPs (M, 224x224)")
    ax.set_xlabel("supernet accuracy, BN recalibrated (%)")
    ax.set_ylabel("stand-alone accuracy, mean over seeds (%; bars: min to max)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.architectures < 2 or args.seeds < 1 or args.epochs < 1 or args.jobs < 0 or args.holdout_per_class < 0:
        raise UserError("--architectures must be 2 or more, --seeds and --epochs positive, --jobs and "
                        "--holdout-per-class 0 or more")
    import torch

    from network import paper_flops

    device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    jobs = args.jobs or device_count or os.cpu_count() or 1
    final = load_architecture(args.architecture_final) if args.architecture_final else None
    architectures = choose_architectures(args.architectures, args.flops_limit, args.seed, final)
    flops = [paper_flops(a) for a in architectures]
    names = [f"arch{i:02d}" for i in range(len(architectures))]

    started = time.perf_counter()
    pairs, checkpoint = supernet_scores(args, architectures, os.path.join(args.output_dir, "supernet_scores.json"))
    scores = [after for after, _ in pairs]
    scoring_seconds = time.perf_counter() - started
    seeds = list(range(1, args.seeds + 1))
    runs = plan_runs(args.output_dir, list(zip(names, architectures)), seeds, args.epochs, args.scratch_args,
                     args.imagenet_dir, args.holdout_per_class)
    prepare(runs, log)
    started = time.perf_counter()
    run_locally(runs, jobs, device_count, log)
    training_seconds = time.perf_counter() - started
    accuracy = {(run.name, run.seed): run.accuracy() for run in runs}
    accuracies = [[accuracy[name, seed] for seed in seeds] for name in names]

    with open(os.path.join(args.output_dir, "runs.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["architecture", "choices", "flops", "supernet_accuracy", "seed", "epochs",
                         "stand_alone_accuracy"])
        for name, architecture, flop, score, per_seed in zip(names, architectures, flops, scores, accuracies):
            for seed, value in zip(seeds, per_seed):
                writer.writerow([name, " ".join(map(str, architecture)), flop, f"{score:.6f}", seed, args.epochs,
                                 f"{value:.6f}"])

    means = [statistics.mean(a) for a in accuracies]
    tau, rho = kendall_tau(scores, means), spearman_rho(scores, means)
    variance = pooled_seed_variance(accuracies)
    tau_low, tau_high = tau_interval(scores, accuracies, variance)
    rho_low, rho_high = bootstrap_interval(spearman_rho, scores, means)
    rows = [["Kendall tau, supernet vs stand-alone means", f"{tau:.3f}", f"[{tau_low:.3f}, {tau_high:.3f}]"],
            ["Spearman rho, supernet vs stand-alone means", f"{rho:.3f}", f"[{rho_low:.3f}, {rho_high:.3f}]"]]
    if len(seeds) > 1:
        seed_to_seed = seed_to_seed_tau(accuracies)
        rows.append(["seed-to-seed tau (two single runs)", f"{seed_to_seed:.3f}",
                     "[{:.3f}, {:.3f}]".format(*seed_to_seed_interval(accuracies))])
        rows.append([f"attainable tau against {len(seeds)}-seed means (a perfect predictor)",
                     f"{attainable_tau(reliability_from_tau(seed_to_seed), len(seeds)):.3f}", ""])
    k = min(args.top_k, len(architectures))
    rows.append([f"top-{k} overlap, supernet vs stand-alone", f"{top_k_overlap(scores, means, k):.2f}", ""])
    spread = [100 * (max(values) - min(values)) for values in (scores, means)]
    header = (f"{len(architectures)} architectures under {args.flops_limit / 1e6:.0f}M FLOPs, {len(seeds)} seed(s) "
              f"x {args.epochs} epochs each, on {args.imagenet_dir}"
              f"{f' (recipe {args.recipe})' if args.recipe else ''}; supernet {checkpoint}\n"
              f"supernet scores {100 * min(scores):.1f}-{100 * max(scores):.1f} % (spread {spread[0]:.1f} points), "
              f"stand-alone {100 * min(means):.1f}-{100 * max(means):.1f} % (spread {spread[1]:.1f}); "
              f"time: supernet scores {scoring_seconds:.0f} s, stand-alone runs {training_seconds:.0f} s "
              f"({jobs} side by side)")
    table = markdown_table(["statistic", "value", "95 % interval"], rows)
    per_architecture = markdown_table(
        ["architecture", "choices", "FLOPs", "supernet", *[f"seed {s}" for s in seeds]],
        [[n, " ".join(map(str, a)), f"{f / 1e6:.1f}M", f"{100 * s:.1f} %", *[f"{100 * v:.1f} %" for v in acc]]
         for n, a, f, s, acc in zip(names, architectures, flops, scores, accuracies)])
    plot(os.path.join(args.output_dir, "ranking.png"), scores, accuracies, flops,
         f"Kendall tau {tau:.2f} [{tau_low:.2f}, {tau_high:.2f}], {len(architectures)} architectures")
    emit(f"{header}\n\n{table}\n\n{per_architecture}", os.path.join(args.output_dir, "summary.md"))


def log(message):
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_main(main)
