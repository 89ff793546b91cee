"""The search as a user runs it: both configs load as `nnictl create` loads them, and a real `nnictl create`
on a digits supernet (2 rounds of 3 candidates, 2 trials at a time) ends by itself with its exports and
table. The experiment is always stopped, by its id."""
import csv
import json
import os
import re
import socket
import subprocess
import time
import urllib.request

import pytest
import torch
import yaml
from nni.experiment.config import ExperimentConfig

import network
from architecture import load_architecture
from conftest import REPO, venv_env
from search_space import write_search_space
from tuner import BEST_FILE, EXPORT_DIR, TABLE_FILE, EvolutionWithFlops

SEARCH_TIMEOUT_S = 420



def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["config_search.yml", "config_search_cpu.yml"])
def test_configs_load_as_nnictl_create_loads_them(name, tmp_path):
    config = yaml.safe_load(open(os.path.join(REPO, name)))
    assert config["tuner"]["className"] == "tuner.EvolutionWithFlops"
    # nnictl create checks that the search space file exists: point it at one ss_gen would write
    write_search_space(str(tmp_path / "space.json"))
    config["searchSpaceFile"] = str(tmp_path / "space.json")
    config["trialCodeDirectory"] = config["tuner"]["codeDirectory"] = REPO
    (tmp_path / name).write_text(yaml.safe_dump(config))
    loaded = ExperimentConfig.load(str(tmp_path / name))
    loaded.validate()
    args = config["tuner"]["classArgs"]
    tuner = EvolutionWithFlops(**args)  # the class arguments are ones the tuner takes
    assert tuner.flops_limit == 330e6
    assert config["maxTrialNumber"] == args["max_epochs"] * args["num_population"]
    if name == "config_search.yml":
        assert config["trialCommand"] == "python tester.py --spos-preprocessing"
        assert (config["trialConcurrency"], config["trialGpuNumber"]) == (4, 1)
        assert args == {"max_epochs": 20, "num_population": 50, "num_select": 10, "num_mutation": 25,
                        "num_crossover": 25, "m_prob": 0.1, "flops_limit": 330e6, "seed": 42}
    else:
        assert config["trialGpuNumber"] == 0 and "--input-size 32" in config["trialCommand"]


def nnictl(*args, timeout=120):
    return subprocess.run(["nnictl", *args], cwd=REPO, env=venv_env(), capture_output=True, text=True,
                          timeout=timeout)


def status(port):
    with urllib.request.urlopen(f"http://localhost:{port}/api/v1/nni/check-status", timeout=10) as response:
        return json.load(response)["status"]


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(missing)"


def test_nnictl_search_on_digits_ends_by_itself(digits_dir, tmp_path):
    torch.manual_seed(0)
    checkpoints = tmp_path / "supernet"
    checkpoints.mkdir()
    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10)
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, checkpoints / "epoch_1.pth.tar")
    write_search_space(str(tmp_path / "nni_auto_gen_search_space.json"))

    config = yaml.safe_load(open(os.path.join(REPO, "config_search_cpu.yml")))
    config["trialCommand"] = (config["trialCommand"].replace("data/digits", digits_dir)
                              .replace("--checkpoint checkpoints", f"--checkpoint {checkpoints}")
                              .replace("--train-iters 20", "--train-iters 4"))
    assert digits_dir in config["trialCommand"] and str(checkpoints) in config["trialCommand"]
    assert "--train-iters 4" in config["trialCommand"]
    rounds, population = 2, 3  # 3 candidates for 2 slots: the third round-1 request waits for round 2
    config.update(searchSpaceFile=str(tmp_path / "nni_auto_gen_search_space.json"), trialCodeDirectory=REPO,
                  experimentWorkingDirectory=str(tmp_path / "experiments"), maxTrialNumber=rounds * population)
    config["tuner"]["codeDirectory"] = REPO
    config["tuner"]["classArgs"].update(max_epochs=rounds, num_population=population, num_select=2,
                                        num_mutation=1, num_crossover=1)
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))

    # nnictl gives NNI's web server about 3 s to come up: on 2 busy cores that can be too short, so try again
    for attempt in range(3):
        port = free_port()
        created = nnictl("create", "--config", str(tmp_path / "config.yml"), "--port", str(port))
        output = re.sub(r"\x1b\[[0-9;]*m", "", created.stdout + created.stderr)
        match = re.search(r"Experiment ID: (\w+)", output)
        assert match, output
        experiment_id = match.group(1)
        if created.returncode == 0 or "Create experiment failed" not in output or attempt == 2:
            break
        nnictl("stop", experiment_id)
    log_dir = tmp_path / "experiments" / experiment_id / "log"
    table = log_dir / EXPORT_DIR / TABLE_FILE
    try:
        assert created.returncode == 0, output
        deadline = time.monotonic() + SEARCH_TIMEOUT_S
        state, finished = None, False
        while time.monotonic() < deadline:
            state = status(port)
            finished = "search finished" in tail(log_dir / "dispatcher.log", 1000)
            if state == "ERROR" or (state == "DONE" and finished):
                break
            time.sleep(2)
        trials = tmp_path / "experiments" / experiment_id / "environments" / "local-env" / "trials"
        trial_log = tail(trials / sorted(os.listdir(trials))[0] / "trial.stderr", 8) if trials.is_dir() else ""
        diagnostics = (f"status {state}\n--- dispatcher.log\n{tail(log_dir / 'dispatcher.log')}\n--- nnimanager.log\n"
                       f"{tail(log_dir / 'nnimanager.log')}\n--- a trial's stderr\n{trial_log}")
        assert state == "DONE" and finished, diagnostics

        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == rounds * population, diagnostics
        assert all(r["status"] == "succeeded" for r in rows), rows
        assert len({r["choices"] for r in rows}) == len(rows)
        assert all(0.0 <= float(r["accuracy"]) <= 1.0 and 0.0 <= float(r["accuracy_before_recalibration"]) <= 1.0
                   for r in rows)
        assert all(int(r["flops"]) <= 330e6 for r in rows)
        assert {r["origin"] for r in rows if r["round"] == "2"} >= {"mutation", "crossover"}
        exported = log_dir / EXPORT_DIR
        best = max(rows, key=lambda r: (float(r["accuracy"]), -int(r["parameter_id"])))
        assert load_architecture(str(exported / BEST_FILE)) == tuple(map(int, best["choices"].split()))
        for round_ in (1, 2):
            assert load_architecture(str(exported / f"{round_:03d}_000.json"))
            assert load_architecture(str(exported / f"{round_:03d}_001.json"))
    finally:
        stopped = nnictl("stop", experiment_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
