"""One stand-alone run of the reproduction as an NNI trial (``python -m reproduction.reproduce --engine nni``): the
experiment's grid search hands each trial one run's name; the trial runs scratch.py for it (a child that dies with
the trial) with the flags the reproduction wrote into its plan (resumed where an earlier trial of that run stopped,
skipped when the run has finished) and reports the run's last val top-1 as the trial's final result, which NNI's
web UI lists.

    python -m reproduction.stand_alone_trial --plan reproduce_output/nni_plan.json      # the trialCommand
"""
import argparse
import json
import os
import subprocess
import sys

from reproduction.stand_alone import finished_accuracy
from spos.options import PROJECT_DIR
from spos.processes import run_child
from utils import UserError, run_main


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduction.stand_alone_trial",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--plan", required=True, help="reproduce.py's nni_plan.json")
    args = parser.parse_args(argv)
    import nni

    try:
        with open(args.plan) as f:
            plan = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{args.plan}: not a readable plan ({e})") from None
    name = (nni.get_next_parameter() or {}).get("run")
    if name not in plan.get("runs", {}):
        raise UserError(f"NNI gave this trial the run {name!r}, which {args.plan} does not hold")
    run = plan["runs"][name]
    accuracy = finished_accuracy(run["run_dir"], run["epochs"])
    if accuracy is None:
        os.makedirs(run["run_dir"], exist_ok=True)
        log_path = os.path.join(run["run_dir"], "stdout.log")
        with open(log_path, "a") as log:
            code = run_child([sys.executable, *run["arguments"]], cwd=PROJECT_DIR, stdout=log,
                             stderr=subprocess.STDOUT).returncode
        if code != 0:
            raise UserError(f"stand-alone run {name} failed (exit {code}); see {log_path}")
        accuracy = finished_accuracy(run["run_dir"], run["epochs"])
    print(f"stand-alone run {name}: val top-1 {accuracy:.4f}", flush=True)
    nni.report_final_result(accuracy)


if __name__ == "__main__":
    run_main(main)
