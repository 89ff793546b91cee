"""The search on digits, candidates per hour: a real `nnictl create` with config_search_cpu.yml (one trial
process per candidate, two at a time, as demo.py runs it) against `python -m spos.search` (the same evolution, the
same settings, in one process), side by side in one run; and where one nnictl trial's time goes.

Both are timed by the wall clock from the command to the last scored candidate, start-up included (the nnictl
search as demo.py's summary times it). The supernet is an untrained one (speed does not depend on the weights)
unless --checkpoint names one.

    python bench/bench_search.py                      # 4 rounds of 10 candidates each way: about 5 minutes
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import glob  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from network import ShuffleNetV2OneShot  # noqa: E402
from spos.report import emit  # noqa: E402
from spos.search_state import EXPORT_DIR, TABLE_FILE, read_table  # noqa: E402
from utils import run_main  # noqa: E402

DIGITS = os.path.join(ROOT, "data", "digits")
SEARCH_CONFIG = os.path.join(ROOT, "config_search_cpu.yml")

TRIAL_PARTS = ("start-up", "data", "checkpoint load", "evaluation before", "BN recalibration", "evaluation after",
               "total")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="default: config_search_cpu.yml's (4)")
    parser.add_argument("--population", type=int, default=None, help="default: config_search_cpu.yml's (10)")
    parser.add_argument("--checkpoint", default=None, help="a digits supernet (default: an untrained one)")
    parser.add_argument("--output", default=None, help="also write the tables here (Markdown)")
    return parser.parse_args(argv)


def in_process_command(config, checkpoint, search_config, output_dir):
    """A config's trial command with its settings, turned into the in-process search with its tuner's."""
    words = shlex.split(config["trialCommand"])
    start = words.index("tester.py") + 1
    settings = words[start:]
    settings[settings.index("--checkpoint") + 1] = checkpoint
    return [sys.executable, "-m", "spos.search", "--search-config", search_config, "--output-dir", output_dir,
            *settings]


def scored(search_dir):
    return sum(row["accuracy"] is not None for row in read_table(os.path.join(search_dir, TABLE_FILE)))


def trial_breakdown(experiment_dir):
    """Mean seconds of each part of a trial, from the "timing (s): ..." lines of the trials' stderr."""
    totals, count = dict.fromkeys(TRIAL_PARTS, 0.0), 0
    for log in glob.glob(os.path.join(experiment_dir, "**", "trials", "*", "trial.stderr"), recursive=True):
        with open(log, errors="replace") as f:
            found = re.search(r"timing \(s\): (.*)", f.read())
        if found:
            parts = {name.strip(): float(value) for name, value in re.findall(r"([a-zA-Z -]+) ([0-9.]+)",
                                                                                  found.group(1))}
            for part in TRIAL_PARTS:
                totals[part] += parts[part]
            count += 1
    return {part: total / max(count, 1) for part, total in totals.items()}, count


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(os.path.join(DIGITS, "val")):
        subprocess.run([sys.executable, "data/make_digits.py"], cwd=ROOT, check=True)
    with open(SEARCH_CONFIG) as f:
        config = yaml.safe_load(f)
    work = tempfile.mkdtemp(prefix="bench_search_")
    checkpoint = args.checkpoint
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = os.path.join(work, "supernet", "epoch_1.pth.tar")
        os.makedirs(os.path.dirname(checkpoint))
        torch.save({"state_dict": ShuffleNetV2OneShot(input_size=32, n_classes=10).state_dict()}, checkpoint)
    tuner_args = config["tuner"]["classArgs"]
    rounds, population = args.rounds or tuner_args["max_epochs"], args.population or tuner_args["num_population"]

    # nnictl, as the demo runs it (config_search_cpu.yml, rounds and population overridden alike), timed by it
    demo_dir = os.path.join(work, "nnictl")
    done = subprocess.run([sys.executable, "demo.py", "--supernet", checkpoint, "--supernet-paths", "1",
                           "--scratch-epochs", "1", "--search-rounds", str(rounds), "--search-population",
                           str(population), "--output-dir", demo_dir], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the nnictl search (demo.py) failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    nnictl_seconds = float(re.search(r"time: search\s+(\d+) s", done.stdout).group(1))
    (search_dir,) = glob.glob(os.path.join(demo_dir, "nni-experiments", "*", "log", EXPORT_DIR))
    nnictl_scored = scored(search_dir)
    breakdown, trials = trial_breakdown(os.path.dirname(os.path.dirname(search_dir)))

    # in process, with the tuner arguments the nnictl search used
    command = in_process_command(config, os.path.dirname(checkpoint), os.path.join(demo_dir, "config_search_demo.yml"),
                                 os.path.join(work, "in_process"))
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    in_process_seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the in-process search failed:\n{done.stderr[-3000:]}")
    in_process_scored = scored(os.path.join(work, "in_process", EXPORT_DIR))

    nnictl_rate = nnictl_scored / nnictl_seconds * 3600
    in_process_rate = in_process_scored / in_process_seconds * 3600
    lines = [f"### search on digits: {rounds} rounds x {population} candidates, "
             f"{os.cpu_count()} CPU cores, settings of config_search_cpu.yml", "",
             "| search | candidates scored | wall clock (s) | candidates/hour | ratio |", "|---|---:|---:|---:|---:|",
             f"| nnictl create (a process per candidate, 2 at a time) | {nnictl_scored} | {nnictl_seconds:.1f} | "
             f"{nnictl_rate:.0f} | 1.00x |",
             f"| python -m spos.search (one process) | {in_process_scored} | {in_process_seconds:.1f} | "
             f"{in_process_rate:.0f} | {in_process_rate / nnictl_rate:.2f}x |", "",
             f"### one nnictl trial, mean of {trials} (s)", "",
             "| " + " | ".join(TRIAL_PARTS) + " |", "|" + "---:|" * len(TRIAL_PARTS),
             "| " + " | ".join(f"{breakdown[part]:.2f}" for part in TRIAL_PARTS) + " |"]
    emit("\n".join(lines), args.output)


if __name__ == "__main__":
    run_main(main)
