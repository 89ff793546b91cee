"""Stand-alone runs: scratch.py itself, for one architecture and one seed, resumed where an earlier run stopped
(scratch.py --resume), several side by side (one per CPU core or GPU) or as the trials of an NNI experiment.

A run's folder is named by what the run is: its architecture, seed, epochs, scratch.py flags and data (the dataset's
folders and recipe, the images held out). A rerun reuses the finished runs that are the same and trains anew, in
a folder of its own, any whose identity changed, saying what changed; nothing is overwritten. Every child dies
with the process that started it (spos/processes.py); an NNI experiment is stopped however that process ends."""
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass

from dataloader import dataset_fingerprint
from spos.architecture import format_choices, write_architecture
from spos.checkpoint import STATE_FILE, load_training_state
from spos.files import write_text
from spos.options import PROJECT_DIR, RECIPE_FILE
from spos.processes import start_child
from utils import UserError

RUN_FILE = "run.json"  # a run's identity, in its folder
PLAN_FILE = "nni_plan.json"  # what reproduction/stand_alone_trial.py reads: the runs by name
NNI_SILENCE_S = 120  # an experiment whose web server stays silent this long has died


@dataclass(frozen=True)
class StandAloneRun:
    name: str  # the architecture's name in the comparison, e.g. "random03"
    seed: int
    epochs: int
    identity: dict  # what the run is: see plan_runs
    run_dir: str

    @property
    def label(self):
        return f"{self.name} seed {self.seed}"

    @property
    def architecture_file(self):
        return os.path.join(self.run_dir, "architecture.json")

    def arguments(self):
        """scratch.py and its flags (resumed where an earlier launch stopped)."""
        return [os.path.join(PROJECT_DIR, "scratch.py"), "--fixed-arc", self.architecture_file, "--imagenet-dir",
                self.identity["data"], "--holdout-per-class", str(self.identity["holdout_per_class"]), "--epochs",
                str(self.epochs), "--seed", str(self.seed), "--output-dir", self.run_dir, "--tb-dir",
                os.path.join(self.run_dir, "tb"), "--resume", *self.identity["scratch_args"]]

    def accuracy(self):
        return finished_accuracy(self.run_dir, self.epochs)


def finished_accuracy(run_dir, epochs):
    """The last epoch's val (test) top-1 of the run in ``run_dir`` once it has trained ``epochs``, else None."""
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    state = load_training_state(path)
    return state["history"][-1][0] if state["epoch"] >= epochs and state.get("history") else None


def plan_runs(output_dir, architectures, seeds, epochs, scratch_args, imagenet_dir, holdout_per_class):
    """A StandAloneRun for each (name, genes) of ``architectures`` and each seed, the seeds' first ones first (a
    partial reproduction then compares every architecture). A run's folder is <output_dir>/runs/<name>_seed<seed>_
    <hash of its identity>; its identity: the genes, seed, epochs, scratch.py's flags, the data (where, its
    fingerprint, its recipe's scratch.py section) and the images held out."""
    data = os.path.abspath(imagenet_dir)
    recipe_path = os.path.join(data, RECIPE_FILE)
    recipe = {}
    if os.path.exists(recipe_path):
        with open(recipe_path) as f:
            recipe = json.load(f).get("scratch.py", {})
    common = {"epochs": epochs, "scratch_args": shlex.split(scratch_args), "data": data,
              "dataset": dataset_fingerprint(data), "recipe": recipe, "holdout_per_class": holdout_per_class}
    runs = []
    for seed in seeds:
        for name, genes in architectures:
            identity = json.loads(json.dumps({"genes": list(genes), "seed": seed, **common}))
            digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
            runs.append(StandAloneRun(name, seed, epochs, identity,
                                      os.path.join(os.path.abspath(output_dir), "runs", f"{name}_seed{seed}_{digest}")))
    return runs


def prepare(runs, log):
    """Write each run's architecture file and identity into its folder (once), and say for each run to train why:
    new, or what changed since the run of that name and seed found beside it."""
    for run in runs:
        run_file = os.path.join(run.run_dir, RUN_FILE)
        if os.path.exists(run_file):
            with open(run_file) as f:
                if json.load(f) != run.identity:
                    raise UserError(f"{run_file}: another run's identity in the folder of {run.label}; move it away")
        else:
            write_architecture(run.architecture_file, tuple(run.identity["genes"]))
            write_text(run_file, json.dumps(run.identity, indent=1) + "\n")
        if run.accuracy() is None:
            log(f"{run.label}: to train ({why_trained(run)})")


def why_trained(run):
    """What differs between ``run`` and the runs of its name and seed beside it, or why it is new."""
    runs_dir, prefix = os.path.dirname(run.run_dir), f"{run.name}_seed{run.seed}_"
    others = []
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name, RUN_FILE)
        if name.startswith(prefix) and os.path.join(runs_dir, name) != run.run_dir and os.path.exists(path):
            with open(path) as f:
                others.append(json.load(f))
    if not others:
        return "new" if not os.path.exists(os.path.join(run.run_dir, STATE_FILE)) else "interrupted: resumed"
    changed = sorted({key for other in others for key in run.identity if other.get(key) != run.identity[key]})
    described = [f"genes {format_choices(others[-1]['genes'])} -> {format_choices(run.identity['genes'])}"
                 if key == "genes" else f"{key} {others[-1].get(key)!r:.60} -> {run.identity[key]!r:.60}"
                 for key in changed]
    return "changed since the last run of it: " + "; ".join(described)


def run_locally(runs, jobs, device_count, log):
    """scratch.py for each run not finished yet, ``jobs`` at a time (a GPU each when there are GPUs), each a child
    that dies with this process; the first that fails ends the others and is named."""
    pending = [run for run in runs if run.accuracy() is None]
    log(f"stand-alone runs: {len(runs) - len(pending)} of {len(runs)} finished earlier, {len(pending)} to run, "
        f"{jobs} at a time")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    running, slot_free, started = [], list(range(jobs)), time.perf_counter()
    try:
        while pending or running:
            while pending and slot_free:
                run, slot = pending.pop(0), slot_free.pop(0)
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                if device_count:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot)
                log_file = open(os.path.join(run.run_dir, "stdout.log"), "a")
                process = start_child([sys.executable, *run.arguments()], env=env, stdout=log_file,
                                      stderr=log_file, cwd=PROJECT_DIR)
                running.append((process, log_file, run, slot))
            time.sleep(0.5)
            for entry in list(running):
                process, log_file, run, slot = entry
                if process.poll() is None:
                    continue
                log_file.close()
                running.remove(entry)
                slot_free.append(slot)
                if process.returncode != 0:
                    raise UserError(f"the stand-alone run {run.label} failed (exit {process.returncode}); see "
                                    f"{os.path.join(run.run_dir, 'stdout.log')}")
                log(f"stand-alone run {run.label} done: {run.accuracy():.4f} ({len(runs) - len(pending) - len(running)}"
                    f"/{len(runs)}, {time.perf_counter() - started:.0f} s)")
    finally:
        for process, log_file, _, _ in running:  # an error or Ctrl-C: the others end too
            process.terminate()
            process.wait()
            log_file.close()


def run_as_nni_trials(runs, jobs, device_count, output_dir, training_service, port, log):
    """The unfinished runs as the trials of one NNI experiment (a grid search over their folders' names): each
    trial is reproduction/stand_alone_trial.py for one run. Waits until every run has finished, then stops the
    experiment; a guard stops it too if this process is killed."""
    import yaml

    from spos.nni_experiment import (NNI_GAVE_UP, StopWithThisProcess, create_experiment, experiment_status,
                                     nnictl_env, stop_experiment)

    pending = {os.path.basename(run.run_dir): run for run in runs if run.accuracy() is None}
    log(f"stand-alone runs: {len(runs) - len(pending)} of {len(runs)} finished earlier, {len(pending)} to run as "
        f"NNI trials, {jobs} at a time")
    if not pending:
        return
    plan_path = os.path.abspath(os.path.join(output_dir, PLAN_FILE))
    write_text(plan_path, json.dumps({"runs": {name: {"run_dir": run.run_dir, "epochs": run.epochs,
                                                      "arguments": run.arguments()}
                                               for name, run in pending.items()}}, indent=1))
    service = {"platform": "local"}
    if training_service:
        try:
            with open(training_service) as f:
                loaded = yaml.safe_load(f)
            service = loaded.get("trainingService", loaded)
            service["platform"]
        except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError) as e:
            raise UserError(f"{training_service}: no trainingService with a platform in it ({e})") from None
    threads = max(1, (os.cpu_count() or 1) // jobs) if not device_count else 1
    experiments = os.path.abspath(os.path.join(output_dir, "nni-experiments"))
    config = {"experimentName": "SPOS reproduction: stand-alone runs",
              "searchSpace": {"run": {"_type": "choice", "_value": sorted(pending)}},
              "trialCommand": f"OMP_NUM_THREADS={threads} python -m reproduction.stand_alone_trial --plan "
                              f"{shlex.quote(plan_path)}",
              "trialCodeDirectory": PROJECT_DIR, "trialConcurrency": jobs, "trialGpuNumber": 1 if device_count else 0,
              "maxTrialNumber": len(pending), "tuner": {"name": "GridSearch"},
              "experimentWorkingDirectory": experiments, "trainingService": service}
    config_path = os.path.join(output_dir, "config_stand_alone.yml")
    write_text(config_path, yaml.safe_dump(config, sort_keys=False))
    env = nnictl_env()
    experiment_id, port = create_experiment(config_path, os.path.join(output_dir, "logs", "nnictl.log"), env,
                                            PROJECT_DIR, port)
    guard = StopWithThisProcess(experiment_id, env, PROJECT_DIR)
    log(f"NNI experiment {experiment_id}: its web UI listens on every interface at port {port}; if this command "
        f"stops, run it again: finished runs are skipped, interrupted ones resume")
    try:
        started, done, last_answer = time.perf_counter(), 0, time.monotonic()
        while True:  # until NNI says every trial is over: a run's files are complete before its trial reports
            finished = sum(run.accuracy() is not None for run in pending.values())
            if finished != done:
                done = finished
                log(f"stand-alone runs as NNI trials: {done} of {len(pending)} done "
                    f"({time.perf_counter() - started:.0f} s)")
            status = experiment_status(port)
            if status is not None:
                last_answer = time.monotonic()
            elif time.monotonic() - last_answer > NNI_SILENCE_S:
                raise UserError(f"NNI experiment {experiment_id} has not answered on port {port} for "
                                f"{NNI_SILENCE_S} s; see {experiments}/{experiment_id}/log")
            if status == "DONE" or status in NNI_GAVE_UP:
                break
            time.sleep(3)
        unfinished = [run.label for run in pending.values() if run.accuracy() is None]
        if unfinished:
            raise UserError(f"NNI experiment {experiment_id} is {status} with {len(unfinished)} of {len(pending)} "
                            f"runs unfinished ({', '.join(unfinished)}); see the trials' logs under "
                            f"{experiments}/{experiment_id}/environments and each run's stdout.log")
    finally:
        stop_experiment(experiment_id, env, PROJECT_DIR)
        guard.release()
