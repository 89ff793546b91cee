"""What the tests of real nnictl searches share (test_search_e2e.py, test_demo.py): nnictl and NNI's REST API on a
free port, where an experiment's search writes, and the check that a search lost no result, against NNI's own
database."""
import csv
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from conftest import REPO, venv_env

from spos.architecture import load_architecture
from spos.nni_experiment import free_port
from spos.search_state import BEST_FILE, EXPORT_DIR, STATE_FILE, TABLE_FILE, read_state

SEARCH_TIMEOUT_S = 420


def nnictl(*args, timeout=120):
    return subprocess.run(["nnictl", *args], cwd=REPO, env=venv_env(), capture_output=True, text=True,
                          timeout=timeout)


def rest(port, path):
    with urllib.request.urlopen(f"http://localhost:{port}/api/v1/nni/{path}", timeout=10) as response:
        return json.load(response)


def status(port):
    try:
        return rest(port, "check-status")["status"]
    except (urllib.error.URLError, OSError):
        return None


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(missing)"


def start(*command, experiment_id=None):
    """`nnictl create ...` or `nnictl resume ID`, on a free port, tried again when NNI's web server is slow
    (nnictl gives it about 3 s: on 2 busy cores that can be too short). Returns (experiment id, port)."""
    for attempt in range(3):
        port = free_port()
        done = nnictl(*command, "--port", str(port))
        output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
        match = re.search(r"Experiment ID: (\w+)", output)
        assert match, output
        experiment_id = match.group(1)
        if done.returncode == 0 and "Create experiment failed" not in output:
            return experiment_id, port
        nnictl("stop", experiment_id)
        assert attempt < 2 and "Create experiment failed" in output, output
    raise AssertionError("unreachable")


class Search:
    """Where an experiment's search writes (``experiments``: its experimentWorkingDirectory), and the diagnostics
    to show when it goes wrong."""

    def __init__(self, experiments, experiment_id, port):
        self.root = experiments / experiment_id
        self.exports = self.root / "log" / EXPORT_DIR
        self.experiment_id, self.port = experiment_id, port

    def state(self):
        path = self.exports / STATE_FILE
        return read_state(str(path)) if path.exists() else None

    def rows(self):
        with open(self.exports / TABLE_FILE, newline="") as f:
            return list(csv.DictReader(f))

    def wait(self, done, timeout=SEARCH_TIMEOUT_S):
        """Poll search_state.json until ``done(state)``; the experiment failing ends the wait."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state is not None and done(state):
                return state
            assert status(self.port) != "ERROR", self.diagnostics()
            time.sleep(1)
        raise AssertionError(f"timed out\n{self.diagnostics()}")

    def diagnostics(self):
        trials = self.root / "environments" / "local-env" / "trials"
        trial_log = tail(trials / sorted(os.listdir(trials))[0] / "trial.stderr", 8) if trials.is_dir() else ""
        return (f"status {status(self.port)}, state {self.state() and self.state()['rounds']}\n--- dispatcher.log\n"
                f"{tail(self.root / 'log' / 'dispatcher.log')}\n--- nnimanager.log\n"
                f"{tail(self.root / 'log' / 'nnimanager.log')}\n--- a trial's stderr\n{trial_log}")

    def scored_trials(self):
        """(trial id, candidate, accuracy) of every final result NNI recorded (its database), the candidate as
        the trial itself logged it (NNI's database may record a trial with another trial's parameters: see
        tuner.import_data)."""
        import sqlite3

        with sqlite3.connect(self.root / "db" / "nni.sqlite") as db:
            finals = db.execute("SELECT trialJobId, data FROM MetricData WHERE type = 'FINAL'").fetchall()
        trials = self.root / "environments" / "local-env" / "trials"
        scored = []
        for trial, data in finals:
            stderr = (trials / trial / "trial.stderr").read_text()
            logged = re.findall(rf"candidate \(NNI trial {trial}\): ([0-3 ]+)", stderr)
            scored.append((trial, logged[-1], json.loads(json.loads(data))["default"]))
        return scored


def assert_every_candidate_scored_once(search, rounds, population):
    state = search.state()
    assert state["finished"] and state["error"] is None, search.diagnostics()
    assert state["rounds_done"] == rounds
    assert [(r["candidates"], r["scored"], r["closed"]) for r in state["rounds"]] == [(population, population,
                                                                                       True)] * rounds
    rows = search.rows()
    assert len(rows) == rounds * population == len({r["choices"] for r in rows})
    assert all(r["status"] == "succeeded" and 0.0 <= float(r["accuracy"]) <= 1.0
               and 0.0 <= float(r["accuracy_before_recalibration"]) <= 1.0 and int(r["flops"]) <= 330e6
               for r in rows)
    # NNI's own record: each candidate scored by one trial, with the accuracy in the table. (After a resume NNI
    # re-runs the trials its database had as running at the stop, also one that had reported but not yet
    # exited: that trial then reports twice, under its one id.)
    scored = search.scored_trials()
    trials = {}
    for trial, candidate, _ in scored:
        trials.setdefault(candidate, set()).add(trial)
    assert sorted(trials) == sorted(r["choices"] for r in rows)
    assert all(len(ids) == 1 for ids in trials.values()), trials
    accuracy = {r["choices"]: float(r["accuracy"]) for r in rows}
    assert all(accuracy[candidate] == pytest.approx(value, abs=1e-6) for _, candidate, value in scored)
    best = max(rows, key=lambda r: (float(r["accuracy"]), -int(r["parameter_id"] or 0)))
    assert load_architecture(str(search.exports / BEST_FILE)) == tuple(map(int, best["choices"].split()))
    for round_ in range(1, rounds + 1):
        assert load_architecture(str(search.exports / f"{round_:03d}_000.json"))
    return state, len(scored) - len(trials)
