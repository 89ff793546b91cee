"""The search as a user runs it: the configs load as `nnictl create` loads them, and real `nnictl` searches on
digits (a supernet checkpoint, tester.py trials that exit right after reporting, 2 trials at a time):
- a search stopped after its first round and continued with `nnictl resume` finishes every round, with no
  candidate scored twice, every result the one NNI itself recorded, and the candidates of the same search never
  stopped (the demo's search, test_demo.py, is the one never stopped: it loses no result);
- NNI's built-in regularized evolution tuner runs the same search space and trials;
- a search on NNI's remote service, over SSH.
Each experiment gets a free port and a temporary experimentWorkingDirectory, and is always stopped, by its id."""
import csv
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import REPO, venv_env
from nni.experiment.config import ExperimentConfig
from nni_helpers import (SEARCH_TIMEOUT_S, Search, assert_every_candidate_scored_once, free_port, nnictl, rest, start,
                         status)

import network
from spos.search_space import write_search_space
from spos.search_state import EXPORT_DIR, TABLE_FILE
from tuner import EvolutionWithFlops

CONFIGS = ["config_search.yml", "config_search_cpu.yml", "config_search_nni_evolution.yml", "config_search_remote.yml",
           "config_search_latency.yml"]


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
    if name == "config_search_latency.yml":  # the table it names is the user's to build: a stand-in here
        from test_evolution import latency_table_file

        cpu = yaml.safe_load(open(os.path.join(REPO, "config_search_cpu.yml")))
        assert config["trialCommand"] == cpu["trialCommand"]
        assert args["flops_limit"] is None and args["latency_limit"] > 0
        tuner = EvolutionWithFlops(**{**args, "latency_table": latency_table_file(tmp_path)})
        assert tuner.evolution.settings.latency_limit == args["latency_limit"]
        return
    tuner = EvolutionWithFlops(**args)  # the class arguments are ones the tuner takes
    assert tuner.evolution.settings.flops_limit == 330e6
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


def test_nnictl_search_stopped_after_round_1_resumes_and_finishes(digits_dir, tmp_path):
    """`nnictl stop` once round 1 closed, `nnictl resume`: every round finishes, no candidate is scored twice,
    and the candidates are those of the same search never stopped."""
    rounds, population = 3, 4
    config = digits_config(tmp_path, digits_dir, max_epochs=rounds, num_population=population, num_select=2,
                           num_mutation=1, num_crossover=1)
    experiment_id, port = start("create", "--config", str(config))
    try:
        search = Search(tmp_path / "experiments", experiment_id, port)
        search.wait(lambda state: state["rounds_done"] >= 1)
        stopped = nnictl("stop", experiment_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        before = search.state()
        assert not before["finished"] and before["rounds_done"] < rounds, before["rounds"]

        started = time.monotonic()
        experiment_id, port = start("resume", experiment_id)
        search = Search(tmp_path / "experiments", experiment_id, port)
        search.wait(lambda state: state["finished"])
        state, reported_again = assert_every_candidate_scored_once(search, rounds, population)
        assert {r["origin"] for r in search.rows() if r["round"] != "1"} >= {"mutation", "crossover"}
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
    done = subprocess.run([sys.executable, "-m", "spos.search", *trial_flags, "--search-config",
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
    trials = 4  # 3 random, then one mutant of the best of 2 sampled
    config = digits_config(tmp_path, digits_dir, "config_search_nni_evolution.yml", population_size=3, sample_size=2)
    spec = yaml.safe_load(config.read_text())
    spec["maxTrialNumber"] = trials
    config.write_text(yaml.safe_dump(spec))
    experiment_id, port = start("create", "--config", str(config))
    search = Search(tmp_path / "experiments", experiment_id, port)
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


def test_an_nnictl_search_under_a_latency_limit_scores_only_candidates_under_it(digits_dir, tmp_path):
    """config_search_latency.yml's tuner arguments with a table of this machine (32x32, batch 1, one thread; built
    here with few repeats), the limit at the median prediction of random architectures: every candidate NNI scored
    is predicted under it, its prediction in the table."""
    from network import random_architecture
    from spos import latency

    table_path = tmp_path / "latency.json"
    latency.main(["build", "--input-size", "32", "--n-classes", "10", "--warmup", "2", "--repeats", "5", "--output",
                  str(table_path)])
    table = latency.load_table(str(table_path))
    rng = random.Random(0)
    limit = statistics.median(latency.predict(table, random_architecture(rng)) for _ in range(200))
    rounds, population = 2, 4
    config = digits_config(tmp_path, digits_dir, "config_search_latency.yml", max_epochs=rounds,
                           num_population=population, num_select=2, num_mutation=1, num_crossover=1,
                           latency_limit=limit, latency_table=str(table_path))
    experiment_id, port = start("create", "--config", str(config))
    search = Search(tmp_path / "experiments", experiment_id, port)
    try:
        state = search.wait(lambda s: s["finished"])
        assert state["error"] is None and state["settings"]["flops_limit"] is None
        rows = search.rows()
        assert len(rows) == rounds * population and all(r["status"] == "succeeded" for r in rows)
        for row in rows:
            genes = tuple(map(int, row["choices"].split()))
            assert float(row["latency_ms"]) == pytest.approx(latency.predict(table, genes), abs=1e-5)
            assert float(row["latency_ms"]) <= limit
        assert state["best"]["latency_ms"] <= limit
    finally:
        nnictl("stop", experiment_id)


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

    # one round of 3: NNI's remote service runs one trial at a time on a machine (about 12 s each here); the
    # local searches test the rounds
    rounds, population = 1, 3
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
    search = Search(tmp_path / "experiments", experiment_id, port)
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
