"""Stand-alone runs: scratch.py itself, run for an architecture file and a seed into a run folder of its own,
resumed where an earlier run stopped (scratch.py --resume), several side by side (one per CPU core or GPU); a run
counts as finished when its training state holds every epoch."""
import os
import shlex
import subprocess
import sys
import time

from spos.checkpoint import STATE_FILE, load_training_state
from spos.options import PROJECT_DIR
from utils import UserError

def finished_accuracy(run_dir, epochs):
    """The last epoch's val top-1 of a finished stand-alone run, or None when it has not finished."""
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return None
    state = load_training_state(path)
    return state["history"][-1][0] if state["epoch"] >= epochs and state.get("history") else None


def scratch_arguments(args, architecture_file, seed, run_dir):
    """scratch.py and its flags for one stand-alone run (resumed where an earlier one stopped)."""
    return [os.path.join(PROJECT_DIR, "scratch.py"), "--fixed-arc", architecture_file, "--imagenet-dir", args.imagenet_dir,
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
            running.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_DIR),
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
