"""Does the supernet rank architectures? Kendall tau between the accuracy a supernet gives N architectures and the
accuracy they reach trained alone from scratch.

    python bench/bench_ranking.py --checkpoint demo_output/supernet          # digits, after `make demo`

1. N architectures under the FLOPs limit, spread over the FLOPs range (the search's best among them when
   --architecture-final is given);
2. each scored with the supernet as the search scores a candidate (spos/scoring.py: BN recalibrated, the trial
   settings of the dataset's recipe or the flags given);
3. each trained from scratch with scratch.py itself, the same epochs and recipe for all (--epochs, or the
   "bench_ranking.py" section of the dataset's recipe.json), once per seed: runs go to processes side by side
   (one per CPU core, or one per GPU), and a rerun skips finished runs and resumes interrupted ones
   (scratch.py --resume);
4. Kendall tau and Spearman rho between supernet score and stand-alone accuracy (mean over seeds), each with a
   bootstrap interval over the architectures; the seed-to-seed tau of the stand-alone accuracies, the ceiling
   at this budget (how well one seed's ranking predicts another's; the supernet is compared with the mean over
   seeds, which is less noisy than one seed, so its tau can come out above it); top-k overlap.

Writes to --output-dir: runs.csv (every run), ranking.png (supernet score against stand-alone accuracy, error
bars over seeds), summary.md (the table printed), architectures/ and runs/<architecture>_seed<seed>/.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from ranking import bootstrap_interval, kendall_tau, spearman_rho, top_k_overlap  # noqa: E402
from report import emit, markdown_table  # noqa: E402

from spos.architecture import load_architecture, write_architecture  # noqa: E402
from spos.options import parse_args_with_recipe  # noqa: E402
from utils import UserError, run_main  # noqa: E402

SCRATCH_STATE = "training_state.pth.tar"  # scratch.STATE_FILE (scratch.py is run, not imported)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="the supernet: a file, or supernet.py's folder")
    parser.add_argument("--imagenet-dir", default=os.path.join(ROOT, "data", "digits"))
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
    parser.add_argument("--tester-args", default="",
                        help="more tester.py flags for the supernet scores, e.g. \"--train-iters 100\"")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="which architectures are drawn")
    parser.add_argument("--output-dir", default="ranking_output")
    return parse_args_with_recipe(parser, argv, "bench_ranking.py")


def choose_architectures(count, flops_limit, seed, final=None):
    """``count`` architectures spread evenly over the FLOPs range of random legal ones (and ``final``)."""
    from network import paper_flops
    from spos.scoring import random_legal_paths

    pool = sorted(random_legal_paths(40 * count, flops_limit, seed), key=paper_flops)
    picks = [pool[round(i * (len(pool) - 1) / max(count - 1, 1))] for i in range(count)]
    if final is not None and final not in picks:
        picks[len(picks) // 2] = final  # it replaces the one of median FLOPs
    return picks


def supernet_scores(args, architectures, cache_path):
    """Each architecture's accuracy with the supernet's weights, scored as a trial does; each score is kept in
    ``cache_path`` as soon as it is known, with the checkpoint and settings it belongs to, so a rerun (after a
    kill too) scores only the architectures it lacks."""
    import shlex

    import torch

    import tester
    from spos.architecture import format_choices
    from spos.hardware import compute_dtype, get_device
    from spos.scoring import evaluate_candidate, load_scoring_data, load_supernet
    from spos.search_state import write_atomically

    trial_args = tester.parse_args(["--imagenet-dir", args.imagenet_dir, "--checkpoint", args.checkpoint,
                                    *shlex.split(args.tester_args)])
    checkpoint = tester.find_checkpoint(trial_args)
    device = get_device(trial_args.device)
    autocast_dtype = compute_dtype(trial_args.precision, device)
    key = {"checkpoint": os.path.abspath(checkpoint), "mtime_ns": os.stat(checkpoint).st_mtime_ns,
           "data": os.path.abspath(trial_args.imagenet_dir), "compute_dtype": str(autocast_dtype),
           "settings": {k: getattr(trial_args, k) for k in ("input_size", "spos_preprocessing", "train_batch_size",
                                                            "train_iters", "test_batch_size", "seed")}}
    known = {}
    if os.path.exists(cache_path):
        try:
            with open(cache_path) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                known = dict(cached["accuracies"])
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
            print(f"{cache_path}: unreadable ({e}); scoring again", file=sys.stderr, flush=True)
    missing = [a for a in architectures if format_choices(a) not in known]
    if missing:
        print(f"supernet scores: {len(architectures) - len(missing)} of {len(architectures)} known, "
              f"{len(missing)} to score", file=sys.stderr, flush=True)
        torch.set_flush_denormal(True)
        train, val, classes, _ = load_scoring_data(trial_args, device, keep=True)
        model = load_supernet(checkpoint, trial_args.input_size, len(classes), device, trial_args.channels_last)
        for number, architecture in enumerate(missing, 1):
            torch.manual_seed(trial_args.seed)
            result = evaluate_candidate(model, architecture, train, val, trial_args.train_iters,
                                        autocast_dtype=autocast_dtype)
            known[format_choices(architecture)] = result["accuracy"]
            write_atomically(cache_path, json.dumps({"key": key, "accuracies": known}, indent=1))
            print(f"supernet score {number}/{len(missing)}: {result['accuracy']:.4f}", file=sys.stderr, flush=True)
    return [known[format_choices(a)] for a in architectures], checkpoint


def finished_accuracy(run_dir, epochs):
    """The last epoch's val top-1 of a finished stand-alone run, or None when it has not finished."""
    from spos.checkpoint import load_training_state

    path = os.path.join(run_dir, SCRATCH_STATE)
    if not os.path.exists(path):
        return None
    state = load_training_state(path)
    return state["history"][-1][0] if state["epoch"] >= epochs and state.get("history") else None


def scratch_arguments(args, architecture_file, seed, run_dir):
    """scratch.py and its flags for one stand-alone run (resumed where an earlier one stopped)."""
    import shlex

    return [os.path.join(ROOT, "scratch.py"), "--fixed-arc", architecture_file, "--imagenet-dir", args.imagenet_dir,
            "--epochs", str(args.epochs), "--seed", str(seed), "--output-dir", run_dir, "--tb-dir",
            os.path.join(run_dir, "tb"), "--resume", *shlex.split(args.scratch_args)]


def run_stand_alone(args, runs, jobs, device_count):
    """scratch.py for each (architecture file, seed, run folder) not finished yet, ``jobs`` at a time."""
    pending = [run for run in runs if finished_accuracy(run[2], args.epochs) is None]
    print(f"stand-alone runs: {len(runs) - len(pending)} of {len(runs)} finished earlier, {len(pending)} to run, "
          f"{jobs} at a time", file=sys.stderr, flush=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    running, slot_free, started = [], list(range(jobs)), time.perf_counter()
    while pending or running:
        while pending and slot_free:
            architecture_file, seed, run_dir = pending.pop(0)
            slot = slot_free.pop(0)
            os.makedirs(run_dir, exist_ok=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            if device_count:
                env["CUDA_VISIBLE_DEVICES"] = str(slot)
            log = open(os.path.join(run_dir, "stdout.log"), "a")
            command = [sys.executable, *scratch_arguments(args, architecture_file, seed, run_dir)]
            running.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT),
                            log, run_dir, slot))
        time.sleep(0.5)
        for entry in list(running):
            process, log, run_dir, slot = entry
            if process.poll() is None:
                continue
            log.close()
            running.remove(entry)
            slot_free.append(slot)
            if process.returncode != 0:
                for other, other_log, *_ in running:
                    other.terminate()
                    other.wait()
                    other_log.close()
                raise UserError(f"a stand-alone run failed (exit {process.returncode}); see "
                                f"{os.path.join(run_dir, 'stdout.log')}")
            done = len(runs) - len(pending) - len(running)
            print(f"stand-alone run {run_dir} done ({done}/{len(runs)}, {time.perf_counter() - started:.0f} s)",
                  file=sys.stderr, flush=True)


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
    if args.architectures < 2 or args.seeds < 1 or args.epochs < 1 or args.jobs < 0:
        raise UserError("--architectures must be 2 or more, --seeds and --epochs positive, --jobs 0 or more")
    import torch

    device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    jobs = args.jobs or device_count or os.cpu_count() or 1
    os.makedirs(os.path.join(args.output_dir, "architectures"), exist_ok=True)
    final = load_architecture(args.architecture_final) if args.architecture_final else None
    architectures = choose_architectures(args.architectures, args.flops_limit, args.seed, final)
    from network import paper_flops

    flops = [paper_flops(a) for a in architectures]
    names = [f"arch{i:02d}" for i in range(len(architectures))]
    files = []
    for name, architecture in zip(names, architectures):
        files.append(os.path.join(args.output_dir, "architectures", f"{name}.json"))
        write_architecture(files[-1], architecture)

    started = time.perf_counter()
    scores, checkpoint = supernet_scores(args, architectures, os.path.join(args.output_dir, "supernet_scores.json"))
    scoring_seconds = time.perf_counter() - started
    seeds = list(range(1, args.seeds + 1))
    runs = [(file, seed, os.path.join(args.output_dir, "runs", f"{name}_seed{seed}"))
            for name, file in zip(names, files) for seed in seeds]
    started = time.perf_counter()
    run_stand_alone(args, runs, jobs, device_count)
    training_seconds = time.perf_counter() - started
    accuracies = [[finished_accuracy(os.path.join(args.output_dir, "runs", f"{name}_seed{seed}"), args.epochs)
                   for seed in seeds] for name in names]

    with open(os.path.join(args.output_dir, "runs.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["architecture", "choices", "flops", "supernet_accuracy", "seed", "epochs",
                         "stand_alone_accuracy"])
        for name, architecture, flop, score, per_seed in zip(names, architectures, flops, scores, accuracies):
            for seed, accuracy in zip(seeds, per_seed):
                writer.writerow([name, " ".join(map(str, architecture)), flop, f"{score:.6f}", seed, args.epochs,
                                 f"{accuracy:.6f}"])

    means = [statistics.mean(a) for a in accuracies]
    tau, rho = kendall_tau(scores, means), spearman_rho(scores, means)
    tau_low, tau_high = bootstrap_interval(kendall_tau, scores, means)
    rho_low, rho_high = bootstrap_interval(spearman_rho, scores, means)
    rows = [["Kendall tau, supernet vs stand-alone", f"{tau:.3f}", f"[{tau_low:.3f}, {tau_high:.3f}]"],
            ["Spearman rho, supernet vs stand-alone", f"{rho:.3f}", f"[{rho_low:.3f}, {rho_high:.3f}]"]]
    if len(seeds) > 1:
        first, second = [a[0] for a in accuracies], [a[1] for a in accuracies]
        ceiling = kendall_tau(first, second)
        ceiling_low, ceiling_high = bootstrap_interval(kendall_tau, first, second)
        rows.append(["Kendall tau, stand-alone seed 1 vs seed 2 (the ceiling)", f"{ceiling:.3f}",
                     f"[{ceiling_low:.3f}, {ceiling_high:.3f}]"])
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
    table = markdown_table(["statistic", "value", "95 % bootstrap interval"], rows)
    per_architecture = markdown_table(
        ["architecture", "choices", "FLOPs", "supernet", *[f"seed {s}" for s in seeds]],
        [[n, " ".join(map(str, a)), f"{f / 1e6:.1f}M", f"{100 * s:.1f} %", *[f"{100 * v:.1f} %" for v in acc]]
         for n, a, f, s, acc in zip(names, architectures, flops, scores, accuracies)])
    plot(os.path.join(args.output_dir, "ranking.png"), scores, accuracies, flops,
         f"Kendall tau {tau:.2f} [{tau_low:.2f}, {tau_high:.2f}], {len(architectures)} architectures")
    emit(f"{header}\n\n{table}\n\n{per_architecture}", os.path.join(args.output_dir, "summary.md"))


if __name__ == "__main__":
    run_main(main)
