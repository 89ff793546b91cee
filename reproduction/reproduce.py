"""The paper's comparison (SPEC section 14): the search's answer against the four one-choice networks and against
architectures drawn at random in the FLOPs band of the search's answers, all trained from scratch alike, each
with several seeds.

    python -m reproduction.reproduce                      # data/fashion (data/make_fashion_mnist.py), its recipe
    python -m reproduction.reproduce --imagenet-dir data/digits --checkpoint demo_output/supernet

1. the supernet: --checkpoint, or supernet.py trained here with the data's recipe (<output-dir>/supernet);
2. the search: python -m spos.search with the tuner settings of --search-config (<output-dir>/search);
3. the architectures: the search's answer and its --next-best best other candidates; the one-choice networks
   (all Shuffle 3x3, 5x5, 7x7, Xception); --random architectures drawn uniformly among those in the FLOPs band
   of the answer and next-best candidates (at least --band-width of the limit wide, under the limit), so that
   FLOPs alone do not decide;
4. each scored with the supernet as a trial scores a candidate (reproduction/supernet_scores.py), and trained from
   scratch with scratch.py itself, --seeds times, with the same recipe: side by side on this machine (one run per
   CPU core or GPU), or as the trials of an NNI experiment (--engine nni: NNI's training services run them, its
   web UI shows them);
5. the comparison: a table; the answer's percentile among the random architectures and its difference to the
   best one-choice network, with bootstrap intervals over architectures and seeds; the supernet's Kendall tau
   over all architectures, and the seed-to-seed tau of the stand-alone runs (the ceiling of any ranking).

Every step resumes: a rerun reuses the supernet, the search, the scores and every finished run, and continues the
interrupted ones. Writes to --output-dir: comparison.md (what is printed), runs.csv (every run), comparison.png,
args.json, architectures/, runs/<architecture>_seed<seed>/, and supernet/, search/ when made here.
"""
import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time

from reproduction.stand_alone import finished_accuracy, run_stand_alone, scratch_arguments
from reproduction.stats import (bootstrap_interval, difference_interval, kendall_tau, mean, mean_difference_interval,
                                percentile, percentile_interval, pooled_seed_variance, seed_to_seed_interval,
                                seed_to_seed_tau)
from reproduction.supernet_scores import supernet_scores
from spos.architecture import format_choices, write_architecture
from spos.options import PROJECT_DIR, parse_args_with_recipe, project_file
from spos.report import emit, markdown_table
from utils import UserError, run_main, save_args

ONE_CHOICE_NAMES = ("all Shuffle 3x3", "all Shuffle 5x5", "all Shuffle 7x7", "all Xception")
NNI_SILENCE_S = 120  # an experiment whose web server stays silent this long has died
PLAN_FILE = "nni_plan.json"  # what reproduction/stand_alone_trial.py reads: the stand-alone runs by name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduction.reproduce", description=__doc__.splitlines()[0])
    group = parser.add_argument_group("data and supernet")
    group.add_argument("--imagenet-dir", default=os.path.join(PROJECT_DIR, "data", "fashion"))
    group.add_argument("--checkpoint", default=None,
                       help="the supernet (a file, or supernet.py's folder); default: train one here")
    group.add_argument("--supernet-args", default="", help="more supernet.py flags, when it is trained here")
    group = parser.add_argument_group("search")
    group.add_argument("--search-config", default=None,
                       help="the NNI config whose tuner.classArgs the search uses, its FLOPs limit included "
                            "(default: config_search_cpu.yml)")
    group.add_argument("--tester-args", default="",
                       help="more scoring flags (tester.py's) for the search and the supernet scores, e.g. "
                            "\"--train-iters 100\"")
    group.add_argument("--search-args", default="",
                       help="more flags for the search alone (python -m spos.search), e.g. \"--search-workers 1\"")
    group = parser.add_argument_group("comparison")
    group.add_argument("--next-best", type=int, default=2, help="the search's best candidates after its answer")
    group.add_argument("--one-choice", type=int, nargs="*", default=[0, 1, 2, 3], metavar="CHOICE",
                       help="which one-choice networks (0: all Shuffle 3x3 .. 3: all Xception)")
    group.add_argument("--random", type=int, default=20, help="random architectures in the answers' FLOPs band")
    group.add_argument("--band-width", type=float, default=0.05,
                       help="the band's least width, a fraction of the FLOPs limit")
    group.add_argument("--seeds", type=int, default=2, help="stand-alone runs per architecture (seeds 1..N)")
    group.add_argument("--epochs", type=int, default=20, help="stand-alone training epochs, the same for all")
    group.add_argument("--seed", type=int, default=0, help="which random architectures are drawn")
    group = parser.add_argument_group("running")
    group.add_argument("--engine", choices=("local", "nni"), default="local",
                       help="local: stand-alone runs side by side here; nni: as the trials of an NNI experiment")
    group.add_argument("--jobs", type=int, default=0,
                       help="stand-alone runs side by side (trialConcurrency); 0: one per GPU, else one per CPU core")
    group.add_argument("--training-service", default=None, metavar="YAML",
                       help="with --engine nni: the experiment's trainingService (e.g. config_search_remote.yml's "
                            "remote machines; the paths must be the same there); default: local")
    group.add_argument("--port", type=int, default=0, help="with --engine nni: the web UI's port (default: a free one)")
    group.add_argument("--scratch-args", default="",
                       help="more flags for every scratch.py run, e.g. \"--batch-size 256 --workers 8\"")
    group.add_argument("--output-dir", default="reproduce_output")
    args = parse_args_with_recipe(parser, argv, "reproduction.reproduce")
    if args.search_config is None:
        args.search_config = project_file("config_search_cpu.yml")
    if args.next_best < 0 or args.random < 1 or args.seeds < 1 or args.epochs < 1 or args.jobs < 0 \
            or not 0 <= args.band_width <= 1 or any(c not in range(4) for c in args.one_choice):
        raise UserError("--next-best and --jobs must be 0 or more, --random, --seeds and --epochs positive, "
                        "--band-width between 0 and 1, --one-choice among 0 1 2 3")
    return args


def train_supernet(args, log_dir):
    """supernet.py with the data's recipe into <output-dir>/supernet, resumed (a finished one is reused)."""
    output_dir = os.path.join(args.output_dir, "supernet")
    run_step("supernet", [os.path.join(PROJECT_DIR, "supernet.py"), "--imagenet-dir", args.imagenet_dir, "--output-dir",
                          output_dir, "--resume", *shlex.split(args.supernet_args)], log_dir)
    return output_dir


def run_search(args, checkpoint, log_dir):
    """tester.py --evolution into <output-dir>/search, resumed where it stopped; returns its search_state.json."""
    from spos.search_state import EXPORT_DIR, STATE_FILE, read_state

    output_dir = os.path.join(args.output_dir, "search")
    state_path = os.path.join(output_dir, EXPORT_DIR, STATE_FILE)
    resume = ["--resume"] if os.path.exists(state_path) else []
    run_step("search", ["-m", "spos.search", "--imagenet-dir", args.imagenet_dir,
                        "--checkpoint", checkpoint, "--search-config", args.search_config, "--output-dir",
                        output_dir, *resume, *shlex.split(args.tester_args), *shlex.split(args.search_args)], log_dir)
    state = read_state(state_path)
    if state["error"] or not state["finished"]:
        raise UserError(f"{state_path}: the search did not finish ({state['error'] or 'stopped'})")
    return state


def run_step(name, arguments, log_dir):
    """One step as a child process (this Python), its output in <log_dir>/<name>.log."""
    log_path = os.path.join(log_dir, f"{name}.log")
    print(f"{name}: {' '.join(arguments)}\n  log: {log_path}", file=sys.stderr, flush=True)
    with open(log_path, "a") as log:
        code = subprocess.run([sys.executable, *arguments], cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise UserError(f"{name} failed (exit {code}); see {log_path}")


def search_flops_limit(search_config):
    import yaml

    try:
        with open(search_config) as f:
            return float(yaml.safe_load(f)["tuner"]["classArgs"]["flops_limit"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{search_config}: cannot read tuner.classArgs.flops_limit from it ({e})") from None


def best_candidates(state, count):
    """The search's ``count`` best distinct scored candidates, best first (ties: the first generated)."""
    from spos.search_state import genes_of

    best = []
    for record in sorted((r for r in state["history"] if r["accuracy"] is not None), key=lambda r: -r["accuracy"]):
        genes = genes_of(record)
        if genes not in best:
            best.append(genes)
    if len(best) < count:
        raise UserError(f"the search scored only {len(best)} distinct candidates; --next-best needs {count}")
    return best[:count]


def flops_band(flops, limit, width):
    """[low, high] holding ``flops``, at least ``width * limit`` wide, not above ``limit``."""
    low, high = min(flops), max(flops)
    missing = max(0.0, width * limit - (high - low))
    high = min(limit, high + missing / 2)
    return max(0.0, min(low - missing / 2, high - width * limit)), high


def choose_architectures(args, searched, limit, channel_search):
    """(name, role, architecture) of every architecture compared."""
    from network import NUM_LAYERS, UNSCALED, paper_flops
    from spos.scoring import random_legal_paths

    def full(blocks):  # a one-choice net at 1.0x widths, in the supernet's genes
        return tuple(blocks) + ((UNSCALED,) * NUM_LAYERS if channel_search else ())

    chosen = [("answer", "search's answer", searched[0])]
    chosen += [(f"next_best{i}", f"search's #{i + 1}", a) for i, a in enumerate(searched[1:], 1)]
    chosen += [(f"one_choice{c}", ONE_CHOICE_NAMES[c], full([c] * NUM_LAYERS)) for c in args.one_choice]
    low, high = flops_band([paper_flops(a) for a in searched], limit, args.band_width)
    taken = {a for _, _, a in chosen}
    pool = random_legal_paths(args.random + len(taken), high, args.seed, channel_search, min_flops=low)
    drawn = [a for a in pool if a not in taken][:args.random]
    chosen += [(f"random{i:02d}", "random in the band", a) for i, a in enumerate(drawn, 1)]
    return chosen, (low, high)


def run_as_nni_trials(args, runs, jobs, device_count):
    """The unfinished runs as the trials of one NNI experiment (grid search over their names): each trial is
    reproduction/stand_alone_trial.py for one run. Waits until every run has finished, then stops the experiment."""
    import yaml

    from spos.nni_experiment import NNI_GAVE_UP, create_experiment, experiment_status, nnictl_env, stop_experiment

    pending = {os.path.basename(run_dir): (file, seed, run_dir) for file, seed, run_dir in runs
               if finished_accuracy(run_dir, args.epochs) is None}
    print(f"stand-alone runs: {len(runs) - len(pending)} of {len(runs)} finished earlier, {len(pending)} to run as "
          f"NNI trials, {jobs} at a time", file=sys.stderr, flush=True)
    if not pending:
        return
    plan_path = os.path.abspath(os.path.join(args.output_dir, PLAN_FILE))
    plan = {"epochs": args.epochs, "runs": {
        name: {"run_dir": os.path.abspath(run_dir),
               "arguments": scratch_arguments(args, os.path.abspath(file), seed, os.path.abspath(run_dir))}
        for name, (file, seed, run_dir) in pending.items()}}
    with open(plan_path, "w") as f:
        json.dump(plan, f, indent=1)
    training_service = {"platform": "local"}
    if args.training_service:
        try:
            with open(args.training_service) as f:
                loaded = yaml.safe_load(f)
            training_service = loaded.get("trainingService", loaded)
            training_service["platform"]
        except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError) as e:
            raise UserError(f"{args.training_service}: no trainingService with a platform in it ({e})") from None
    threads = max(1, (os.cpu_count() or 1) // jobs) if not device_count else 1
    config = {"experimentName": "SPOS reproduction: stand-alone runs",
              "searchSpace": {"run": {"_type": "choice", "_value": sorted(pending)}},
              "trialCommand": f"OMP_NUM_THREADS={threads} python -m reproduction.stand_alone_trial --plan "
                              f"{shlex.quote(plan_path)}",
              "trialCodeDirectory": PROJECT_DIR, "trialConcurrency": jobs, "trialGpuNumber": 1 if device_count else 0,
              "maxTrialNumber": len(pending), "tuner": {"name": "GridSearch"},
              "experimentWorkingDirectory": os.path.abspath(os.path.join(args.output_dir, "nni-experiments")),
              "trainingService": training_service}
    config_path = os.path.join(args.output_dir, "config_stand_alone.yml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    env = nnictl_env()
    log_path = os.path.join(args.output_dir, "logs", "nnictl.log")
    experiment_id, port = create_experiment(config_path, log_path, env, PROJECT_DIR, args.port)
    print(f"NNI experiment {experiment_id}: its web UI listens on every interface at port {port}; if this command "
          f"stops, run it again: finished runs are skipped, interrupted ones resume", file=sys.stderr, flush=True)
    trials = f"{config['experimentWorkingDirectory']}/{experiment_id}/environments"
    try:
        started, done, last_answer = time.perf_counter(), 0, time.monotonic()
        while True:  # until NNI says every trial is over: a run's files are complete before its trial reports
            finished = sum(finished_accuracy(r[2], args.epochs) is not None for r in pending.values())
            if finished != done:
                done = finished
                print(f"stand-alone runs as NNI trials: {done} of {len(pending)} done "
                      f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
            status = experiment_status(port)
            if status is not None:
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer > NNI_SILENCE_S:
                raise UserError(f"NNI experiment {experiment_id} has not answered on port {port} for "
                                f"{NNI_SILENCE_S} s; see {config['experimentWorkingDirectory']}/{experiment_id}/log")
            if status == "DONE" or status in NNI_GAVE_UP:
                break
            time.sleep(3)
        done = sum(finished_accuracy(r[2], args.epochs) is not None for r in pending.values())
        if done < len(pending):
            raise UserError(f"NNI experiment {experiment_id} is {status} with {len(pending) - done} of "
                            f"{len(pending)} runs unfinished; see the trials' logs under {trials} and each run's "
                            f"stdout.log")
    finally:
        stop_experiment(experiment_id, env, PROJECT_DIR)


def comparison(scores, accuracies, roles):
    """The statistics of the comparison, as (statistic, value, 95 % interval) rows, and the values for the plot."""
    random_runs = [a for a, role in zip(accuracies, roles) if role == "random in the band"]
    answer = accuracies[0]
    means = [mean(a) for a in accuracies]
    seed_variance = pooled_seed_variance(accuracies)
    lines = []
    lines.append(["answer's percentile among the random architectures (stand-alone means)",
                  f"{percentile(means[0], [mean(r) for r in random_runs]):.0f} %",
                  interval(percentile_interval(answer, random_runs, seed_variance), "{:.0f} %")])
    lines.append(["answer - mean of the random architectures",
                  f"{100 * (means[0] - mean([mean(r) for r in random_runs])):+.2f} points",
                  interval(mean_difference_interval(answer, random_runs, seed_variance), "{:+.2f} points", 100)])
    one_choice = [i for i, role in enumerate(roles) if role in ONE_CHOICE_NAMES]
    if one_choice:
        best = max(one_choice, key=lambda i: means[i])
        lines.append([f"answer - best one-choice network ({roles[best]})",
                      f"{100 * (means[0] - means[best]):+.2f} points",
                      interval(difference_interval(answer, accuracies[best], seed_variance), "{:+.2f} points", 100)])
    lines.append([f"Kendall tau, supernet score vs stand-alone mean, all {len(means)} architectures",
                  number(kendall_tau(scores, means), "{:.3f}"),
                  interval(bootstrap_interval(kendall_tau, scores, means), "{:.3f}")])
    random_scores = [s for s, role in zip(scores, roles) if role == "random in the band"]
    lines.append([f"Kendall tau, the same over the {len(random_runs)} random ones",
                  number(kendall_tau(random_scores, [mean(r) for r in random_runs]), "{:.3f}"),
                  interval(bootstrap_interval(kendall_tau, random_scores, [mean(r) for r in random_runs]), "{:.3f}")])
    for label, runs in ((f"all {len(accuracies)} architectures", accuracies),
                        (f"the {len(random_runs)} random ones", random_runs)):
        ceiling = seed_to_seed_tau(runs)
        lines.append([f"ceiling: seed-to-seed Kendall tau of the stand-alone runs, {label}",
                      number(ceiling, "{:.3f}"), interval(seed_to_seed_interval(runs), "{:.3f}")])
    return lines


def number(value, form):
    """``value`` in ``form``, or n/a where the statistic is undefined (one seed, one architecture, all tied)."""
    return "n/a" if math.isnan(value) else form.format(value)


def interval(bounds, form, scale=1):
    low, high = bounds
    return "n/a" if math.isnan(low) else f"[{form.format(scale * low)}, {form.format(scale * high)}]"


PLOT_STYLES = {"search's answer": ("*", "tab:red", 200), "search's next best": ("D", "tab:orange", 60),
               "one-choice": ("s", "tab:blue", 60), "random in the band": ("o", "tab:gray", 40)}


def role_group(role):
    return ("one-choice" if role in ONE_CHOICE_NAMES else "search's next best" if role.startswith("search's #")
            else role)


def plot(path, table, band, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_flops, by_score) = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    for label, (marker, colour, size) in PLOT_STYLES.items():
        members = [row for row in table if role_group(row["role"]) == label]
        if not members:
            continue
        for axis, x in ((by_flops, "flops"), (by_score, "score")):
            xs = [row[x] / 1e6 if x == "flops" else 100 * row[x] for row in members]
            ys = [100 * mean(row["runs"]) for row in members]
            errors = [100 * std(row["runs"]) for row in members]
            axis.errorbar(xs, ys, yerr=errors, fmt="none", ecolor=colour, elinewidth=1, capsize=2, alpha=0.6)
            axis.scatter(xs, ys, marker=marker, c=colour, s=size, label=label, zorder=3)
    for row in table:
        if row["role"].startswith("all "):
            by_flops.annotate(row["role"][4:], (row["flops"] / 1e6, 100 * mean(row["runs"])), fontsize=7,
                              xytext=(4, 4), textcoords="offset points")
    by_flops.axvspan(band[0] / 1e6, band[1] / 1e6, color="tab:gray", alpha=0.12, label="the random ones' band")
    by_flops.set_xlabel("FLOPs (M, 224x224, 1000 classes)")
    by_score.set_xlabel("supernet score, BN recalibrated (%)")
    for axis in (by_flops, by_score):
        axis.set_ylabel("stand-alone top-1, mean over seeds (%; bars: std)")
        axis.grid(alpha=0.3)
    by_flops.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def std(values):
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def main(argv=None):
    args = parse_args(argv)
    import torch

    from network import architecture_flops, architecture_net, count_parameters
    from spos.checkpoint import checkpoint_options, find_checkpoint

    if not os.path.isdir(os.path.join(args.imagenet_dir, "train")):
        raise UserError(f"{args.imagenet_dir}: no train/ folder (Fashion-MNIST: `python data/make_fashion_mnist.py`"
                        f" after `apt-get install dataset-fashion-mnist`; or give --imagenet-dir)")
    log_dir = os.path.join(args.output_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    os.makedirs(os.path.join(args.output_dir, "architectures"), exist_ok=True)
    save_args(args, args.output_dir)
    timings = {}

    checkpoint = args.checkpoint
    if checkpoint is None:
        started = time.perf_counter()
        checkpoint = train_supernet(args, log_dir)
        timings["supernet"] = time.perf_counter() - started
    checkpoint = find_checkpoint(checkpoint)
    channel_search = bool(checkpoint_options(checkpoint).get("channel_search"))

    started = time.perf_counter()
    state = run_search(args, checkpoint, log_dir)
    timings["search"] = time.perf_counter() - started
    limit = search_flops_limit(args.search_config)
    chosen, band = choose_architectures(args, best_candidates(state, 1 + args.next_best), limit, channel_search)
    names, roles, architectures = zip(*chosen)
    files = []
    for name, architecture in zip(names, architectures):
        files.append(os.path.join(args.output_dir, "architectures", f"{name}.json"))
        write_architecture(files[-1], architecture)

    started = time.perf_counter()
    scoring_args = argparse.Namespace(imagenet_dir=args.imagenet_dir, checkpoint=checkpoint,
                                      tester_args=args.tester_args)
    scores, _ = supernet_scores(scoring_args, list(architectures), os.path.join(args.output_dir,
                                                                               "supernet_scores.json"))
    timings["supernet scores"] = time.perf_counter() - started

    seeds = list(range(1, args.seeds + 1))
    runs = [(file, seed, os.path.join(args.output_dir, "runs", f"{name}_seed{seed}"))
            for seed in seeds for name, file in zip(names, files)]  # seed 1 of all first: a partial run compares
    device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    jobs = args.jobs or device_count or os.cpu_count() or 1
    started = time.perf_counter()
    if args.engine == "nni":
        run_as_nni_trials(args, runs, jobs, device_count)
    else:
        run_stand_alone(args, runs, jobs, device_count)
    timings["stand-alone runs"] = time.perf_counter() - started
    accuracies = [[finished_accuracy(os.path.join(args.output_dir, "runs", f"{name}_seed{seed}"), args.epochs)
                   for seed in seeds] for name in names]

    table = []
    for name, role, architecture, score, runs_of in zip(names, roles, architectures, scores, accuracies):
        table.append({"name": name, "role": role, "architecture": architecture,
                      "flops": architecture_flops(architecture),
                      "params": count_parameters(architecture_net(architecture)), "score": score, "runs": runs_of})
    with open(os.path.join(args.output_dir, "runs.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["architecture", "role", "genes", "flops", "params", "supernet_accuracy", "seed", "epochs",
                         "stand_alone_accuracy"])
        for row in table:
            for seed, accuracy in zip(seeds, row["runs"]):
                writer.writerow([row["name"], row["role"], " ".join(map(str, row["architecture"])), row["flops"],
                                 row["params"], f"{row['score']:.6f}", seed, args.epochs, f"{accuracy:.6f}"])

    statistics = comparison(list(scores), accuracies, list(roles))
    header = (f"{len(table)} architectures x {len(seeds)} seed(s) x {args.epochs} epochs from scratch on "
              f"{args.imagenet_dir}{f' (recipe {args.recipe})' if args.recipe else ''}; supernet {checkpoint}; "
              f"search: {state['candidates_scored']} candidates under {limit / 1e6:.0f}M FLOPs; random architectures "
              f"drawn in {band[0] / 1e6:.1f}-{band[1] / 1e6:.1f}M FLOPs\n"
              f"time: " + ", ".join(f"{step} {seconds / 60:.1f} min" for step, seconds in timings.items())
              + f" ({jobs} run(s) side by side)")
    per_architecture = markdown_table(
        ["architecture", "role", "genes", "FLOPs", "params", "supernet", "stand-alone mean ± std", "seeds"],
        [[row["name"], row["role"], format_choices(row["architecture"]), f"{row['flops'] / 1e6:.1f}M",
          f"{row['params'] / 1e6:.2f}M", f"{100 * row['score']:.1f} %",
          f"{100 * mean(row['runs']):.2f} ± {100 * std(row['runs']):.2f} %",
          " ".join(f"{100 * v:.2f}" for v in row["runs"])] for row in table])
    data_name = os.path.basename(os.path.normpath(args.imagenet_dir))
    plot(os.path.join(args.output_dir, "comparison.png"), table, band,
         f"{len(table)} architectures x {len(seeds)} seed(s), {args.epochs} epochs from scratch, {data_name}")
    emit(f"{header}\n\n{markdown_table(['statistic', 'value', '95 % bootstrap interval'], statistics)}\n\n"
         f"{per_architecture}", os.path.join(args.output_dir, "comparison.md"))


if __name__ == "__main__":
    run_main(main)
