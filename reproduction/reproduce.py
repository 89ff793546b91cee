"""The paper's comparison (SPEC sections 14 and 16): the search's answer against the four one-choice networks at its
FLOPs and against architectures drawn at random in the FLOPs band of the search's answers, all trained from scratch
alike, each with several seeds, reported on test data the search never saw.

    python -m reproduction.reproduce                      # data/fashion (data/make_fashion_mnist.py), its recipe
    python -m reproduction.reproduce --imagenet-dir data/imagenet --holdout-per-class 50 --checkpoint checkpoints

1. the supernet: --checkpoint, or supernet.py trained here with the data's recipe (<output-dir>/supernet) on train/
   less the --holdout-per-class images a class held out of it, which it validates on;
2. the search: python -m spos.search with the tuner settings of --search-config, scoring candidates on the
   held-out images (<output-dir>/search/<what it is>);
3. the architectures: the search's answer and its --next-best best other candidates; the one-choice networks
   (all Shuffle 3x3, 5x5, 7x7, Xception) with their middle channels scaled to the answer's FLOPs (within 2 %);
   --random architectures drawn uniformly among those in the FLOPs band of the answer and next best (at least
   --band-width of the limit wide, under the limit);
4. each scored by the supernet as a trial scores it (after and before BN recalibration), and trained from scratch by
   scratch.py itself, --seeds times, on the same training images, reporting top-1 on val/ (the test data): side by
   side here (one run per CPU core or GPU) or as the trials of an NNI experiment (--engine nni);
5. the comparison (reproduction/comparison.py): the answer's percentile among the random ones and its difference to
   their mean and to each one-choice network, with intervals that carry the seed noise; the supernet's Kendall tau
   over the random ones, after and before BN recalibration, beside the tau a perfect predictor attains.

Every step resumes and every result is kept by what it is: a rerun reuses the supernet, the search, the scores and
every finished run that is the same, and trains anew what changed (another --seed draws other random
architectures: only they are trained). The children die with this process; a second reproduction in the same
--output-dir is refused while one runs. Writes to --output-dir: comparison.md (what is printed), runs.csv (every
run), comparison.png, args.json, holdout.txt (the held-out images), supernet/, search/, runs/, logs/.
"""
import argparse
import csv
import hashlib
import io
import json
import os
import shlex
import signal
import sys
import time

from dataloader import HOLDOUT_LIST, ImageFolderLoader
from reproduction import stand_alone
from reproduction.architectures import best_candidates, choose
from reproduction.comparison import plot, statistics, std
from reproduction.supernet_scores import supernet_scores
from spos.architecture import format_choices
from spos.files import sole_writer, write_text
from spos.options import PROJECT_DIR, parse_args_with_recipe, project_file
from spos.processes import run_child
from spos.report import emit, markdown_table
from spos.stats import mean
from utils import UserError, run_main, save_args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduction.reproduce", description=__doc__.splitlines()[0])
    group = parser.add_argument_group("data and supernet")
    group.add_argument("--imagenet-dir", default=os.path.join(PROJECT_DIR, "data", "fashion"))
    group.add_argument("--holdout-per-class", type=int, default=0, metavar="N",
                       help="images a class held out of train/ for the search to score on (the supernet validates "
                            "on them too; every network trains on the rest); val/ then is the test data the "
                            "numbers are reported on. The paper: 50 of ImageNet's (default: the data's recipe's)")
    group.add_argument("--checkpoint", default=None,
                       help="the supernet (a file, or supernet.py's folder, trained with the same held-out "
                            "images); default: train one here")
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
                       help="which one-choice networks (0: all Shuffle 3x3 .. 3: all Xception), at the answer's FLOPs")
    group.add_argument("--random", type=int, default=20, help="random architectures in the answers' FLOPs band")
    group.add_argument("--band-width", type=float, default=0.05,
                       help="the band's least width, a fraction of the FLOPs limit")
    group.add_argument("--seeds", type=int, default=3, help="stand-alone runs per architecture (seeds 1..N)")
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
    if args.next_best < 0 or args.random < 2 or args.seeds < 1 or args.epochs < 1 or args.jobs < 0 \
            or args.holdout_per_class < 0 or not 0 <= args.band_width <= 1 \
            or any(c not in range(4) for c in args.one_choice):
        raise UserError("--next-best, --jobs and --holdout-per-class must be 0 or more, --random 2 or more, --seeds "
                        "and --epochs positive, --band-width between 0 and 1, --one-choice among 0 1 2 3")
    return args


def log(message):
    print(message, file=sys.stderr, flush=True)


def run_step(name, arguments, log_dir):
    """One step as a child process (this Python) that dies with this one, its output in <log_dir>/<name>.log."""
    log_path = os.path.join(log_dir, f"{name}.log")
    log(f"{name}: {' '.join(arguments)}\n  log: {log_path}")
    with open(log_path, "a") as out:
        code = run_child([sys.executable, *arguments], cwd=PROJECT_DIR, stdout=out, stderr=out).returncode
    if code != 0:
        raise UserError(f"{name} failed (exit {code}); see {log_path}")


def train_supernet(args, log_dir):
    """supernet.py with the data's recipe into <output-dir>/supernet, resumed (a finished one is reused; supernet.py
    refuses to continue one trained on other data or settings)."""
    output_dir = os.path.join(args.output_dir, "supernet")
    run_step("supernet", [os.path.join(PROJECT_DIR, "supernet.py"), "--imagenet-dir", args.imagenet_dir,
                          "--holdout-per-class", str(args.holdout_per_class), "--output-dir", output_dir, "--resume",
                          *shlex.split(args.supernet_args)], log_dir)
    return output_dir


def run_search(args, checkpoint, log_dir):
    """python -m spos.search into <output-dir>/search/<a hash of what it is: the supernet's file, the data, the
    flags, the config's text>, resumed where it stopped; another supernet or setting is another search. Returns its
    search_state.json."""
    from dataloader import dataset_fingerprint
    from spos.search_state import EXPORT_DIR, STATE_FILE, read_state

    with open(args.search_config) as f:
        config_text = f.read()
    stat = os.stat(checkpoint)
    identity = [os.path.abspath(checkpoint), stat.st_size, stat.st_mtime_ns, os.path.abspath(args.imagenet_dir),
                dataset_fingerprint(args.imagenet_dir), args.holdout_per_class, args.tester_args, args.search_args,
                config_text]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:10]
    output_dir = os.path.join(args.output_dir, "search", digest)
    state_path = os.path.join(output_dir, EXPORT_DIR, STATE_FILE)
    resume = ["--resume"] if os.path.exists(state_path) else []
    run_step("search", ["-m", "spos.search", "--imagenet-dir", args.imagenet_dir, "--holdout-per-class",
                        str(args.holdout_per_class), "--checkpoint", checkpoint, "--search-config",
                        args.search_config, "--output-dir", output_dir, *resume, *shlex.split(args.tester_args),
                        *shlex.split(args.search_args)], log_dir)
    state = read_state(state_path)
    if state["error"] or not state["finished"]:
        raise UserError(f"{state_path}: the search did not finish ({state['error'] or 'stopped'})")
    return state


def search_flops_limit(search_config):
    import yaml

    try:
        with open(search_config) as f:
            return float(yaml.safe_load(f)["tuner"]["classArgs"]["flops_limit"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{search_config}: cannot read tuner.classArgs.flops_limit from it ({e})") from None


def _interrupted(signum, frame):
    raise KeyboardInterrupt  # as Ctrl-C: the experiment is stopped and the children end on the way out


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(os.path.join(args.imagenet_dir, "train")):
        raise UserError(f"{args.imagenet_dir}: no train/ folder (Fashion-MNIST: `python data/make_fashion_mnist.py`"
                        f" after `apt-get install dataset-fashion-mnist`; or give --imagenet-dir)")
    signal.signal(signal.SIGTERM, _interrupted)
    with sole_writer(args.output_dir, "reproduction"):
        return reproduce(args)


def reproduce(args):
    import torch

    from network import architecture_flops, architecture_net, count_parameters
    from spos.checkpoint import checkpoint_options, find_checkpoint

    log_dir = os.path.join(args.output_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
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
    chosen, band = choose(best_candidates(state, 1 + args.next_best), args.one_choice, args.random, args.band_width,
                          limit, args.seed, channel_search)

    started = time.perf_counter()
    scoring = argparse.Namespace(imagenet_dir=args.imagenet_dir, checkpoint=checkpoint,
                                 holdout_per_class=args.holdout_per_class, tester_args=args.tester_args)
    scores, _ = supernet_scores(scoring, [genes for _, _, genes in chosen],
                                os.path.join(args.output_dir, "supernet_scores.json"))
    timings["supernet scores"] = time.perf_counter() - started

    seeds = list(range(1, args.seeds + 1))
    runs = stand_alone.plan_runs(args.output_dir, [(name, genes) for name, _, genes in chosen], seeds, args.epochs,
                                 args.scratch_args, args.imagenet_dir, args.holdout_per_class)
    stand_alone.prepare(runs, log)
    device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    jobs = args.jobs or device_count or os.cpu_count() or 1
    started = time.perf_counter()
    if args.engine == "nni":
        stand_alone.run_as_nni_trials(runs, jobs, device_count, args.output_dir, args.training_service, args.port,
                                      log)
    else:
        stand_alone.run_locally(runs, jobs, device_count, log)
    timings["stand-alone runs"] = time.perf_counter() - started
    accuracy = {(run.name, run.seed): run.accuracy() for run in runs}

    table = [{"name": name, "role": role, "genes": genes, "flops": architecture_flops(genes),
              "params": count_parameters(architecture_net(genes)), "score": score and score[0],
              "score_before": score and score[1], "runs": [accuracy[name, seed] for seed in seeds],
              "run_dirs": [run.run_dir for run in runs if run.name == name]}
             for (name, role, genes), score in zip(chosen, scores)]
    write_runs_csv(os.path.join(args.output_dir, "runs.csv"), table, seeds, args.epochs)
    if args.holdout_per_class:  # the images the search scored on, beside the numbers reported
        train = ImageFolderLoader(args.imagenet_dir, "train", train=False, batch_size=1, backend="torch",
                                  holdout_per_class=args.holdout_per_class)
        write_text(os.path.join(args.output_dir, HOLDOUT_LIST), train.held_out_list())
    rows, _ = statistics(table)
    scored_on = (f"{args.holdout_per_class} images a class held out of train/" if args.holdout_per_class
                 else "val/ (no holdout: the search saw the test data)")
    header = (f"{len(table)} architectures x {len(seeds)} seeds x {args.epochs} epochs from scratch on "
              f"{args.imagenet_dir}{f' (recipe {args.recipe})' if args.recipe else ''}; the search and the supernet "
              f"scored on {scored_on}; the stand-alone accuracies are on val/, the test data\n"
              f"supernet {checkpoint}; search: {state['candidates_scored']} candidates under {limit / 1e6:.0f}M FLOPs; "
              f"random architectures drawn in {band[0] / 1e6:.1f}-{band[1] / 1e6:.1f}M FLOPs; the one-choice networks' "
              f"middle channels scaled to the answer's FLOPs\n"
              f"time: " + ", ".join(f"{step} {seconds / 60:.1f} min" for step, seconds in timings.items())
              + f" ({jobs} run(s) side by side)")
    per_architecture = markdown_table(
        ["architecture", "role", "genes", "FLOPs", "params", "supernet (before recalibration)",
         "stand-alone mean ± std", "seeds"],
        [[row["name"], row["role"], format_choices(row["genes"]), f"{row['flops'] / 1e6:.1f}M",
          f"{row['params'] / 1e6:.2f}M", score_text(row),
          f"{100 * mean(row['runs']):.2f} ± {100 * std(row['runs']):.2f} %",
          " ".join(f"{100 * v:.2f}" for v in row["runs"])] for row in table])
    data_name = os.path.basename(os.path.normpath(args.imagenet_dir))
    plot(os.path.join(args.output_dir, "comparison.png"), table, band,
         f"{len(table)} architectures x {len(seeds)} seeds, {args.epochs} epochs from scratch, {data_name}")
    emit(f"{header}\n\n{markdown_table(['statistic', 'value', '95 % interval'], rows)}\n\n{per_architecture}",
         os.path.join(args.output_dir, "comparison.md"))


def score_text(row):
    if row["score"] is None:
        return "- (no such path)"
    return f"{100 * row['score']:.1f} % ({100 * row['score_before']:.1f} %)"


def write_runs_csv(path, table, seeds, epochs):
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["architecture", "role", "genes", "flops", "params", "supernet_accuracy",
                     "supernet_accuracy_before_recalibration", "seed", "epochs", "stand_alone_accuracy", "run_dir"])
    for row in table:
        for seed, accuracy, run_dir in zip(seeds, row["runs"], row["run_dirs"]):
            writer.writerow([row["name"], row["role"], " ".join(map(str, row["genes"])), row["flops"], row["params"],
                             "" if row["score"] is None else f"{row['score']:.6f}",
                             "" if row["score_before"] is None else f"{row['score_before']:.6f}", seed, epochs,
                             f"{accuracy:.6f}", run_dir])
    write_text(path, text.getvalue())


if __name__ == "__main__":
    run_main(main)
