"""An NNI experiment run with nnictl, as demo.py's search and the reproduction's stand-alone runs run one: the
environment nnictl and its trials need, ``nnictl create`` (retried when NNI's web server comes up too slowly for
it), the experiment's status from NNI's REST API, ``nnictl stop``, and a guard that stops the experiment when the
process that created it dies, SIGKILL included (NNI's manager runs detached and would go on with its trials).

    python -m spos.nni_experiment --stop-when-stdin-closes ID      # the guard (stop_with_this_process starts it)
"""
import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from utils import UserError

# NNI's states of an experiment that will run no more trials
NNI_GAVE_UP = ("ERROR", "STOPPED")
# nnictl imports setuptools' pkg_resources, which warns that it is deprecated: NNI's to fix, harmless, and
# nothing the user can act on, so the children filter it (a PYTHONWARNINGS entry)
PKG_RESOURCES_WARNING = "ignore:pkg_resources is deprecated"


def nnictl_env():
    """This environment with this Python's bin/ first on PATH: trials run ``python`` through the shell, and it
    must be this one (with torch and NNI), as nnictl must."""
    warnings = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), PKG_RESOURCES_WARNING]))
    return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                PYTHONUNBUFFERED="1", PYTHONWARNINGS=warnings)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def experiment_status(port):
    """NNI's status of the experiment on ``port`` (RUNNING, DONE, ERROR, ...), or None when none answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/nni/check-status", timeout=10) as response:
            return json.load(response).get("status")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def create_experiment(config_path, log_path, env, cwd, port=0, attempts=3):
    """``nnictl create --config config_path``; returns (experiment id, port). nnictl gives NNI's web server about
    3 s to come up; on a busy machine that can be too short, so a failed start is stopped and tried again on
    another port (of ``port``: 0 picks a free one each time). nnictl's output is appended to ``log_path``."""
    for attempt in range(attempts):
        chosen = port or free_port()
        created = subprocess.run(["nnictl", "create", "--config", config_path, "--port", str(chosen)], cwd=cwd,
                                 env=env, capture_output=True, text=True, timeout=300)
        with open(log_path, "a") as f:
            f.write(created.stdout + created.stderr)
        output = re.sub(r"\x1b\[[0-9;]*m", "", created.stdout + created.stderr)  # nnictl colours its output
        found = re.search(r"Experiment ID:\s*([A-Za-z0-9]+)", output)
        if created.returncode == 0 and found:
            return found.group(1), chosen
        if found:
            stop_experiment(found.group(1), env, cwd)
        if attempt == attempts - 1 or "Create experiment failed" not in output:
            raise UserError(f"nnictl create failed; see {log_path}")
        print("  NNI's web server did not come up in time; trying again on another port", flush=True)


def stop_experiment(experiment_id, env, cwd):
    subprocess.run(["nnictl", "stop", experiment_id], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)


class StopWithThisProcess:
    """Starts the guard of an experiment: a process in a session of its own that holds the reading end of a pipe
    whose writing end only this process holds. However this process ends, the pipe closes; the guard then runs
    ``nnictl stop ID``, unless this process said first (``release``) that it stopped the experiment itself."""

    def __init__(self, experiment_id, env, cwd):
        self.guard = subprocess.Popen([sys.executable, "-m", "spos.nni_experiment", "--stop-when-stdin-closes",
                                       experiment_id], stdin=subprocess.PIPE, env=env, cwd=cwd,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def release(self):
        """The experiment is stopped: the guard ends without stopping it again."""
        self.guard.stdin.write(b"stopped\n")
        self.guard.stdin.close()
        self.guard.wait(timeout=60)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m spos.nni_experiment", description=__doc__.splitlines()[0])
    parser.add_argument("--stop-when-stdin-closes", metavar="ID", required=True,
                        help="wait until standard input closes, then `nnictl stop ID` unless it said \"stopped\"")
    args = parser.parse_args(argv)
    said = sys.stdin.buffer.read()
    if b"stopped" not in said:
        stop_experiment(args.stop_when_stdin_closes, nnictl_env(), os.getcwd())


if __name__ == "__main__":
    main()
