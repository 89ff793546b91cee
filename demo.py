"""The three SPOS steps end to end on the embedded digits dataset, as a new user would run them.

  python demo.py          (what `make demo` runs after installing)

1. data/digits (written once, with its recipe.json of defaults for each step), 2. supernet.py (warm-started),
then spos.random_paths: how well it learned, as the search will score paths (``--supernet`` skips the training and
uses a supernet trained before), 3. `nnictl ss_gen` and a real `nnictl create` evolution search with
config_search_cpu.yml (or --search-config), waited for until the tuner's search_state.json says it is finished,
then stopped, 4. scratch.py on the best architecture found, 5. the search plot and a summary.
Everything goes to demo_output/ (replaced on each run); the experiment is stopped and child processes ended also
when a step fails or on Ctrl-C.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import yaml

from spos.architecture import format_choices, load_architecture
from spos.nni_experiment import NNI_GAVE_UP, create_experiment, experiment_status, nnictl_env, stop_experiment
from spos.options import RECIPE_FILE
from spos.search_state import BEST_FILE, EXPORT_DIR, STATE_FILE, TABLE_FILE, progress, read_state, read_table, summarize
from utils import UserError, run_main

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(ROOT, "data", "digits")
SEARCH_CONFIG = os.path.join(ROOT, "config_search_cpu.yml")
# written into the output folder, so that a rerun only ever replaces a folder an earlier demo wrote
DEMO_MARKER = ".spos_demo_output"
DEFAULT_OUTPUT = os.path.join(ROOT, "demo_output")  # gitignored, and earlier demos wrote it without the marker


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet-epochs", type=int, default=None, help="default: data/digits/recipe.json's")
    parser.add_argument("--supernet-warm-start-steps", type=int, default=None,
                        help="default: data/digits/recipe.json's")
    parser.add_argument("--channel-search", action="store_true",
                        help="search each block's middle channels too (supernet.py --channel-search): the supernet, "
                             "the search's candidates and the network trained from scratch carry a scale per layer")
    parser.add_argument("--supernet", default=None, metavar="CHECKPOINT",
                        help="search this trained supernet (supernet.py's folder or a weights file) instead of "
                             "training one")
    parser.add_argument("--supernet-paths", type=int, default=20,
                        help="random paths scored to tell how well the supernet learned")
    parser.add_argument("--scratch-epochs", type=int, default=None, help="default: data/digits/recipe.json's")
    parser.add_argument("--port", type=int, default=0, help="NNI web UI port (default: a free one)")
    parser.add_argument("--search-config", default=SEARCH_CONFIG, metavar="YAML",
                        help="the NNI config of the search, its trialCommand naming '--checkpoint checkpoints' "
                             "(default: config_search_cpu.yml; config_search_latency.yml: under a latency limit)")
    parser.add_argument("--search-timeout", type=int, default=900, help="seconds to wait for the search")
    parser.add_argument("--search-rounds", type=int, default=None,
                        help="evolution rounds (default: the search config's)")
    parser.add_argument("--search-population", type=int, default=None,
                        help="candidates a round (default: the search config's)")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT,
                        help="where everything the demo writes goes (replaced on each run)")
    args = parser.parse_args(argv)
    trains = [flag for flag, value in (("--supernet-epochs", args.supernet_epochs), ("--channel-search",
              args.channel_search), ("--supernet-warm-start-steps", args.supernet_warm_start_steps)) if value]
    if args.supernet and trains:
        parser.error(f"--supernet uses a trained supernet: {trains[0]} is for training one")
    read_search_config(args.search_config)  # a bad file is refused before any work
    return args


def read_search_config(path):
    """The NNI config of the search; one UserError when it cannot be pointed at the demo's supernet."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"--search-config {path}: not a readable YAML file ({e})") from None
    if not isinstance(config, dict) or "--checkpoint checkpoints" not in str(config.get("trialCommand")):
        raise UserError(f"--search-config {path}: its trialCommand has no '--checkpoint checkpoints' to point at "
                        f"the demo's supernet")
    return config


class Demo:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.output_dir)
        self.child = None
        self.experiment_id = None
        self.search_state = None  # the tuner's search_state.json once the search finished
        self.timings = {}
        self.env = nnictl_env()

    def run(self, name, command, log_name):
        """Run one step as a child process, its output teed to demo_output/logs/<log_name>."""
        log_path = os.path.join(self.out, "logs", log_name)
        print(f"\n=== {name}\n$ {' '.join(command)}\n  (log: {shown(log_path)})", flush=True)
        started = time.perf_counter()
        with open(log_path, "w") as log:
            self.child = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for line in self.child.stdout:
                log.write(line)
                if " Step [" not in line:
                    print("  " + line, end="", flush=True)
            code = self.child.wait()
        self.child = None
        self.timings[name] = time.perf_counter() - started
        if code != 0:
            raise UserError(f"{name} failed (exit {code}); see {log_path}")
        with open(log_path) as f:
            return f.read()

    def stop_child(self):
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)  # the step's own process group, started above
            try:
                self.child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)

    def stop_experiment(self):
        if self.experiment_id:
            stop_experiment(self.experiment_id, self.env, ROOT)
            print(f"stopped NNI experiment {self.experiment_id}", flush=True)
            self.experiment_id = None

    def main(self):
        args = self.args
        marker = os.path.join(self.out, DEMO_MARKER)
        if os.path.isdir(self.out) and os.listdir(self.out):
            if not os.path.exists(marker) and self.out != DEFAULT_OUTPUT:  # never wipe a folder it did not write
                raise UserError(f"--output-dir {self.out}: exists and is not a demo output folder (no {DEMO_MARKER}); "
                                f"pick a new or empty folder")
            shutil.rmtree(self.out)
        elif os.path.exists(self.out) and not os.path.isdir(self.out):
            raise UserError(f"--output-dir {self.out}: exists and is not a folder")
        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)
        open(marker, "w").close()
        started = time.perf_counter()

        if not os.path.isfile(os.path.join(DATA, RECIPE_FILE)):  # missing, or written before there were recipes
            self.run("data", [sys.executable, "data/make_digits.py"], "data.log")
        else:
            print(f"=== data: reusing {shown(DATA)}", flush=True)

        supernet_dir = os.path.abspath(args.supernet) if args.supernet else os.path.join(self.out, "supernet")
        if not args.supernet:
            self.run("supernet", [sys.executable, "supernet.py", "--imagenet-dir", DATA, "--output-dir", supernet_dir,
                                  *flag("--epochs", args.supernet_epochs),
                                  *flag("--warm-start-steps", args.supernet_warm_start_steps),
                                  *(["--channel-search"] if args.channel_search else [])], "supernet.log")
        log = self.run("supernet paths", [sys.executable, "-m", "spos.random_paths", str(args.supernet_paths),
                                          "--imagenet-dir", DATA, "--checkpoint", supernet_dir], "supernet_paths.log")
        paths = json.loads(log.strip().splitlines()[-1])

        # the trial command names the supernet: ss_gen writes its space (with channel choices for a channel supernet)
        self.run("ss_gen", ["nnictl", "ss_gen", "-t", f"python tester.py --checkpoint {shlex.quote(supernet_dir)}"],
                 "ss_gen.log")
        search_dir = self.search(supernet_dir)

        table = os.path.join(search_dir, TABLE_FILE)
        best_file = os.path.join(search_dir, BEST_FILE)
        state = self.search_state
        self.run("plot", [sys.executable, "plot_search.py", table, "-o", os.path.join(self.out, "search.png")],
                 "plot.log")

        log = self.run("scratch", [sys.executable, "scratch.py", "--fixed-arc", best_file, "--imagenet-dir", DATA,
                                   *flag("--epochs", args.scratch_epochs),
                                   "--output-dir", os.path.join(self.out, "scratch"),
                                   "--tb-dir", os.path.join(self.out, "runs")], "scratch.log")
        scratch_top1 = float(re.findall(r"last \(epoch \d+\) top-1 ([0-9.]+)", log)[-1])

        genes = load_architecture(best_file)
        rows_of_table = read_table(table)
        best = state["best"]
        complete = sum(r["scored"] == r["candidates"] for r in state["rounds"])
        rounds = summarize(rows_of_table)
        rows = [(f"supernet: {paths['paths']} random paths (recalibrated)",
                 f"mean {paths['mean']:.1%}, worst {paths['worst']:.1%}, best {paths['best']:.1%}"),
                *[(f"search round {r}: best, mean", f"{best_acc:.1%}, {mean_acc:.1%}")
                  for r, best_acc, mean_acc, _ in rounds],
                ("last round's best - first round's mean", f"{100 * (rounds[-1][1] - rounds[0][2]):+.1f} points"),
                ("best architecture", format_choices(genes)),
                ("its FLOPs at 224x224", f"{best['flops'] / 1e6:.1f}M"),
                *([("its latency as the table predicts it", f"{best['latency_ms']:.3f} ms")]
                  if best.get("latency_ms") is not None else []),
                ("its search accuracy (after BN recalibration)", f"{best['accuracy']:.1%}"),
                ("candidates scored", f"{state['candidates_scored']} of {state['candidates']} "
                                      f"({state['candidates_failed']} failed)"),
                ("rounds", f"{state['rounds_done']}, {complete} of them closed with every result"),
                *([("candidates carrying their 20 scales",
                    f"{sum(len(row['scales'].split()) == 20 for row in rows_of_table)} of {len(rows_of_table)}")]
                  if args.channel_search else []),
                ("its accuracy trained from scratch", f"{scratch_top1:.1%}"),
                ("architecture file", shown(best_file)),
                ("search plot", shown(os.path.join(self.out, "search.png"))),
                ("logs", shown(os.path.join(self.out, "logs")))]
        rows += [(f"time: {step}", f"{seconds:.0f} s") for step, seconds in self.timings.items()]
        rows.append(("time: total", f"{time.perf_counter() - started:.0f} s"))
        width = max(len(k) for k, _ in rows)
        print("\n=== summary")
        for key, value in rows:
            print(f"  {key:<{width}}  {value}")

    def search(self, supernet_dir):
        """nnictl create with --search-config pointed at this run's supernet; waits and stops."""
        config = read_search_config(self.args.search_config)
        config["trialCommand"] = config["trialCommand"].replace(
            "--checkpoint checkpoints", f"--checkpoint {supernet_dir}")
        config["searchSpaceFile"] = os.path.join(ROOT, config["searchSpaceFile"])
        config["trialCodeDirectory"] = ROOT
        config["tuner"]["codeDirectory"] = ROOT
        tuner_args = config["tuner"]["classArgs"]
        if self.args.search_rounds:
            tuner_args["max_epochs"] = self.args.search_rounds
        if self.args.search_population:  # keep Megvii's proportions: a fifth parents, 2/5 mutants, 2/5 crosses
            population = tuner_args["num_population"] = self.args.search_population
            tuner_args["num_select"] = max(1, population // 5)
            tuner_args["num_mutation"] = tuner_args["num_crossover"] = population * 2 // 5
        config["experimentWorkingDirectory"] = os.path.join(self.out, "nni-experiments")
        config_path = os.path.join(self.out, "config_search_demo.yml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)

        name = "search"
        print(f"\n=== {name}\n$ nnictl create --config {shown(config_path)}", flush=True)
        started = time.perf_counter()
        self.experiment_id, port = create_experiment(config_path, os.path.join(self.out, "logs", "nnictl_create.log"),
                                                     self.env, ROOT, self.args.port)
        print(f"  experiment {self.experiment_id}: NNI's web UI listens on every interface at port {port} while the "
              f"search runs", flush=True)
        search_dir = os.path.join(self.out, "nni-experiments", self.experiment_id, "log", EXPORT_DIR)
        state_path = os.path.join(search_dir, STATE_FILE)
        state, status, last_line = None, None, None
        deadline = time.monotonic() + self.args.search_timeout
        # the tuner says when the search is over: NNI's status shows TUNER_NO_MORE_TRIAL between rounds too
        while time.monotonic() < deadline:
            if os.path.exists(state_path):
                state = read_state(state_path)
                line = progress(state)
                if line != last_line:
                    print(f"  {line}", flush=True)
                    last_line = line
                if state["finished"]:
                    break
            status = experiment_status(port)
            if status in NNI_GAVE_UP:
                break
            time.sleep(3)
        self.timings[name] = time.perf_counter() - started
        self.stop_experiment()
        log_dir = os.path.dirname(search_dir)
        if state is None or not state["finished"]:
            why = (f"NNI's experiment status is {status}" if status in NNI_GAVE_UP else
                   f"it did not finish within --search-timeout {self.args.search_timeout} s")
            raise UserError(f"the search did not finish: {why}; see {log_dir} (dispatcher.log, nnimanager.log)")
        if state["error"]:
            raise UserError(f"the search stopped early: {state['error']}")
        table = os.path.join(search_dir, TABLE_FILE)
        rows = len(read_table(table))
        if rows != state["candidates_done"]:
            raise UserError(f"{table}: {rows} rows, but {state_path} counts {state['candidates_done']} "
                            f"candidates with an outcome")
        self.search_state = state
        return search_dir


def flag(name, value):
    """``[name, value]`` when a value is given, else nothing (the step then takes the dataset's recipe)."""
    return [] if value is None else [name, str(value)]


def shown(path):
    """A path as the user would type it: relative inside the project, absolute outside it."""
    relative = os.path.relpath(path, ROOT)
    return path if relative.startswith(os.pardir) else relative


def main():
    demo = Demo(parse_args())
    try:
        demo.main()
    finally:  # a failed step or Ctrl-C too: no experiment or child process is left running
        demo.stop_child()
        demo.stop_experiment()


if __name__ == "__main__":
    run_main(main)
