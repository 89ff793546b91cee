"""The search as a user runs it: the configs load as `nnictl create` loads them, and real `nnictl` searches on
digits (a supernet checkpoint, tester.py trials that exit right after reporting, 2 trials at a time):
- a search loses no result: one row per candidate, each with its accuracy, every round run and closed with
  all its results, and each accuracy the one NNI itself recorded for that candidate's trial;
- a search stopped after its first round and continued with `nnictl resume` finishes every round, with no
  candidate scored twice;
- NNI's built-in regularized evolution tuner runs the same search space and trials.
Each experiment gets a free port and a temporary experimentWorkingDirectory, and is always stopped, by its id."""
import csv
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
import yaml
from conftest import REPO, venv_env
from nni.experiment.config import ExperimentConfig

import network
from spos.architecture import load_architecture
from spos.search_space import write_search_space
from spos.search_state import BEST_FILE, EXPORT_DIR, STATE_FILE, TABLE_FILE, read_state
from tuner import EvolutionWithFlops

SEARCH_TIMEOUT_S = 420
CONFIGS = ["config_search.yml", "config_search_cpu.yml", "config_search_nni_evolution.yml", "config_search_remote.yml"]


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_load_as_nnictl_create_loads_them(name, tmp_path):
    config = yaml.safe_load(open(os.path.join(REPO, name)))
    # nnictl create checks that the search space file exists: point it at one ss_gen would write
    write_search_space(str(tmp_path / "space.json"))
    config["searchSpaceFile"] = str(tmp_path / "space.json")
    config["trialCodeDirectory"] = REPO
    if "codeDirectory" in config["tuner"]:
        config["tuner"]["codeDirectory"] = REPO
    for machine in config["trainingService"].get("machineList", []):  # NNI checks that the key file exists
        (tmp_path / "key").touch()
        machine["sshKeyFile"] = str(tmp_path / "key")
    (tmp_path / name).write_text(yaml.safe_dump(config))
    loaded = ExperimentConfig.load(str(tmp_path / name))
    loaded.validate()
    args = config["tuner"]["classArgs"]
    if name == "config_search_nni_evolution.yml":  # NNI's tuner on config_search_cpu.yml's trials and budget
        cpu = yaml.safe_load(open(os.path.join(REPO, "config_search_cpu.yml")))
        assert config["tuner"]["name"] == "RegularizedEvolutionTuner"
        assert config["trialCommand"] == cpu["trialCommand"]
        cpu_args = cpu["tuner"]["classArgs"]
        assert config["maxTrialNumber"] == cpu_args["max_epochs"] * cpu_args["num_population"]
        assert args["population_size"] == cpu_args["num_population"]
        return
    assert config["tuner"]["className"] == "tuner.EvolutionWithFlops"
    tuner = EvolutionWithFlops(**args)  # the class arguments are ones the tuner takes
    assert tuner.evolution.flops_limit == 330e6
    assert "maxTrialNumber" not in config  # the tuner ends the search; a resumed one may need a few more trials
    if name == "config_search_remote.yml":  # the ImageNet search, its trials on other machines
        imagenet = yaml.safe_load(open(os.path.join(REPO, "config_search.yml")))
        assert config["trialCommand"].startswith(imagenet["trialCommand"] + " --imagenet-dir /")
        assert {**config["tuner"], "codeDirectory": "."} == imagenet["tuner"]
        service = config["trainingService"]
        assert service["platform"] == "remote" and service["reuseMode"] is True
        assert all({"host", "user", "sshKeyFile", "pythonPath"} <= set(machine) for machine in service["machineList"])
    elif name == "config_search.yml":
        assert config["trialCommand"] == "python tester.py --spos-preprocessing"
        assert (config["trialConcurrency"], config["trialGpuNumber"]) == (4, 1)
        assert args == {"max_epochs": 20, "num_population": 50, "num_select": 10, "num_mutation": 25,
                        "num_crossover": 25, "m_prob": 0.1, "flops_limit": 330e6, "seed": 42, "result_timeout": 60}
    else:
        assert config["trialGpuNumber"] == 0 and "--input-size 32" in config["trialCommand"]


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


def digits_config(tmp_path, digits_dir, config_name="config_search_cpu.yml", **class_args):
    """config_search_cpu.yml's trials (or another config's tuner) on a digits supernet under tmp_path, 4
    recalibration batches a trial."""
    torch.manual_seed(0)
    checkpoints = tmp_path / "supernet"
    checkpoints.mkdir()
    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10)
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, checkpoints / "epoch_1.pth.tar")
    write_search_space(str(tmp_path / "nni_auto_gen_search_space.json"))
    config = yaml.safe_load(open(os.path.join(REPO, config_name)))
    config["trialCommand"] = (config["trialCommand"].replace("data/digits", digits_dir)
                              .replace("--checkpoint checkpoints", f"--checkpoint {checkpoints}")
                              .replace("--train-iters 20", "--train-iters 4")
                              .replace("data/cache", str(tmp_path / "cache")))
    assert digits_dir in config["trialCommand"] and str(checkpoints) in config["trialCommand"]
    assert "--train-iters 4" in config["trialCommand"]
    config.update(searchSpaceFile=str(tmp_path / "nni_auto_gen_search_space.json"), trialCodeDirectory=REPO,
                  experimentWorkingDirectory=str(tmp_path / "experiments"))
    if "codeDirectory" in config["tuner"]:
        config["tuner"]["codeDirectory"] = REPO
    config["tuner"]["classArgs"].update(class_args)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


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
    """Where an experiment's search writes, and the diagnostics to show when it goes wrong."""

    def __init__(self, tmp_path, experiment_id, port):
        self.root = tmp_path / "experiments" / experiment_id
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


def test_nnictl_search_on_digits_loses_no_result(digits_dir, tmp_path):
    """Trials exit right after reporting, so NNI often reports a trial's end seconds before its result: every
    round must still close with all its results."""
    rounds, population = 2, 4  # 4 candidates for 2 slots: requests wait for the next round's start
    config = digits_config(tmp_path, digits_dir, max_epochs=rounds, num_population=population, num_select=2,
                           num_mutation=1, num_crossover=1)
    experiment_id, port = start("create", "--config", str(config))
    search = Search(tmp_path, experiment_id, port)
    try:
        search.wait(lambda state: state["finished"])
        state, _ = assert_every_candidate_scored_once(search, rounds, population)
        assert {r["origin"] for r in search.rows() if r["round"] == "2"} >= {"mutation", "crossover"}
        print(f"results after their trial's end: {state['results_after_trial_end']}")
    finally:
        stopped = nnictl("stop", experiment_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_nnictl_search_stopped_after_round_1_resumes_and_finishes(digits_dir, tmp_path):
    """`nnictl stop` once round 1 closed, `nnictl resume`: every round finishes, no candidate is scored twice,
    and the candidates are those of the same search never stopped."""
    rounds, population = 3, 4
    config = digits_config(tmp_path, digits_dir, max_epochs=rounds, num_population=population, num_select=2,
                           num_mutation=1, num_crossover=1)
    experiment_id, port = start("create", "--config", str(config))
    try:
        search = Search(tmp_path, experiment_id, port)
        search.wait(lambda state: state["rounds_done"] >= 1)
        stopped = nnictl("stop", experiment_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        before = search.state()
        assert not before["finished"] and before["rounds_done"] < rounds, before["rounds"]

        started = time.monotonic()
        experiment_id, port = start("resume", experiment_id)
        search = Search(tmp_path, experiment_id, port)
        search.wait(lambda state: state["finished"])
        state, reported_again = assert_every_candidate_scored_once(search, rounds, population)
        (resume,) = state["resumes"]
        assert resume["rounds_done"] == before["rounds_done"]
        assert resume["replayed"]["records"] >= before["candidates_scored"]  # NNI replays its finished trials
        print(f"stopped after {before['rounds_done']} rounds, {before['candidates_done']} outcomes; resumed to "
              f"the end in {time.monotonic() - started:.0f} s; what the resume found: {resume}; trials NNI re-ran "
              f"after they had reported: {reported_again}")
    finally:
        stopped = nnictl("stop", experiment_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    # the same search never stopped, in one process on the same data: the same candidates round by round
    spec = yaml.safe_load(config.read_text())
    in_process = tmp_path / "in_process.yml"
    in_process.write_text(yaml.safe_dump({"tuner": {"classArgs": spec["tuner"]["classArgs"]}}))
    trial_flags = shlex.split(spec["trialCommand"])[3:]  # after "OMP_NUM_THREADS=1 python tester.py"
    done = subprocess.run([sys.executable, "tester.py", *trial_flags, "--evolution", "--search-config",
                           str(in_process), "--output-dir", str(tmp_path / "never_stopped"), "--search-workers", "1"],
                          cwd=REPO, env=venv_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "never_stopped" / EXPORT_DIR / TABLE_FILE, newline="") as f:
        never_stopped = list(csv.DictReader(f))
    rows = search.rows()
    assert [(r["round"], r["origin"], r["choices"]) for r in rows] == \
        [(r["round"], r["origin"], r["choices"]) for r in never_stopped]
    assert [float(r["accuracy"]) for r in rows] == pytest.approx([float(r["accuracy"]) for r in never_stopped],
                                                                 abs=1e-6)


def test_nnis_regularized_evolution_runs_the_same_trials(digits_dir, tmp_path):
    trials = 6
    config = digits_config(tmp_path, digits_dir, "config_search_nni_evolution.yml", population_size=3, sample_size=2)
    spec = yaml.safe_load(config.read_text())
    spec["maxTrialNumber"] = trials
    config.write_text(yaml.safe_dump(spec))
    experiment_id, port = start("create", "--config", str(config))
    search = Search(tmp_path, experiment_id, port)
    try:
        deadline = time.monotonic() + SEARCH_TIMEOUT_S
        while status(port) not in ("DONE", "ERROR") and time.monotonic() < deadline:
            time.sleep(2)
        assert status(port) == "DONE", search.diagnostics()
        jobs = rest(port, "trial-jobs")
        assert len(jobs) == trials and all(job["status"] == "SUCCEEDED" for job in jobs), jobs
        scored = search.scored_trials()
        assert len(scored) == trials
        assert all(len(candidate.split()) == 20 and 0.0 <= value <= 1.0 for _, candidate, value in scored)
        assert not (search.exports / TABLE_FILE).exists()  # NNI's tuner writes none of ours
    finally:
        stopped = nnictl("stop", experiment_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


SSHD = "/usr/sbin/sshd"
REMOTE_EXPERIMENTS = "/tmp/nni-experiments"  # NNI's folder on a remote machine


@pytest.fixture
def ssh_server(tmp_path):
    """An OpenSSH server on 127.0.0.1 and a free port, accepting only a key made for this test (for this user):
    what NNI's remote training service logs into. .ci/run installs Debian's openssh-server."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is missing: apt-get install openssh-server (.ci/run does)")
    folder = tmp_path / "ssh"
    folder.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    port = free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        f"Subsystem sftp internal-sftp\n")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=subprocess.DEVNULL,
                              stderr=open(folder / "sshd.log", "w"))
    try:
        login = ["ssh", "-i", str(folder / "user_key"), "-p", str(port), "-o", "StrictHostKeyChecking=no",
                 "-o", f"UserKnownHostsFile={folder / 'known_hosts'}", "-o", "BatchMode=yes", "127.0.0.1", "true"]
        deadline = time.monotonic() + 30
        while subprocess.run(login, capture_output=True, timeout=30).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, (folder / "sshd.log").read_text()
            time.sleep(0.2)
        yield {"host": "127.0.0.1", "port": port, "user": os.environ.get("USER") or "root",
               "sshKeyFile": str(folder / "user_key"), "log": folder / "sshd.log"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_search_on_nnis_remote_service_over_ssh(digits_dir, tmp_path, ssh_server):
    """config_search_remote.yml's training service (remote, reuseMode) pointed at a real SSH server on this
    machine: NNI logs in, copies the trial code, runs the trials there; every candidate's result arrives and
    the search finishes."""
    import getpass

    rounds, population = 2, 3
    config_path = digits_config(tmp_path, digits_dir, max_epochs=rounds, num_population=population, num_select=2,
                                num_mutation=1, num_crossover=1)
    config = yaml.safe_load(config_path.read_text())
    remote = yaml.safe_load(open(os.path.join(REPO, "config_search_remote.yml")))["trainingService"]
    machine = {"host": ssh_server["host"], "port": ssh_server["port"], "user": getpass.getuser(),
               "sshKeyFile": ssh_server["sshKeyFile"], "pythonPath": os.path.dirname(sys.executable)}
    config["trainingService"] = {"platform": "remote", "reuseMode": remote["reuseMode"], "machineList": [machine]}
    config["trialGpuNumber"] = 0
    config["nniManagerIp"] = "127.0.0.1"  # where the trials report back to: this machine, on loopback only
    config_path.write_text(yaml.safe_dump(config))
    experiment_id, port = start("create", "--config", str(config_path))
    search = Search(tmp_path, experiment_id, port)
    remote_root = os.path.join(REMOTE_EXPERIMENTS, experiment_id)  # where NNI works on the "remote" machine
    try:
        state = search.wait(lambda s: s["finished"])
        stopped = nnictl("stop", experiment_id)
        assert stopped.returncode == 0, stopped.stderr
        assert state["error"] is None and state["rounds_done"] == rounds, search.diagnostics()
        rows = search.rows()
        assert len(rows) == rounds * population and all(r["status"] == "succeeded" and r["accuracy"] for r in rows)
        assert "Accepted publickey" in ssh_server["log"].read_text()  # NNI came in over SSH
        # the trials ran on the copy NNI made there: the code, not the data, the venv or the checkpoints
        trials = os.listdir(os.path.join(remote_root, "trials"))
        assert len(trials) == rounds * population
        copied = os.listdir(os.path.join(remote_root, "trials", trials[0], "code"))
        assert {"tester.py", "tuner.py", "network.py", "spos", "utils.py"} <= set(copied)
        assert not {".venv", "data", ".git", "tests"} & set(copied)
    finally:
        nnictl("stop", experiment_id)
        shutil.rmtree(remote_root, ignore_errors=True)
