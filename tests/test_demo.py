"""`make demo`'s path, reduced: demo.py with a short warm start and 1 epoch of supernet, 4 random paths scored,
a real nnictl search of 2 rounds of 4
candidates on real DALI, and 3 scratch epochs; and Ctrl-C during the search, which must stop the experiment.
Each run writes only under a temporary --output-dir (and data/digits, which the demo reuses)."""
import os
import re
import signal
import subprocess
import sys
import time

from conftest import REPO, venv_env

from spos.architecture import load_architecture
from spos.nni_experiment import experiment_status, free_port

DEMO_TIMEOUT_S = 900


def demo_command(output_dir, port, scratch_epochs=3):
    return [sys.executable, "demo.py", "--supernet-epochs", "1", "--supernet-warm-start-steps", "100",
            "--supernet-paths", "4", "--scratch-epochs", str(scratch_epochs),
            "--search-rounds", "2", "--search-population", "4", "--port", str(port), "--output-dir",
            str(output_dir)]


def assert_experiment_stopped(port):
    """NNI's REST server answers on the port until `nnictl stop` ends the experiment."""
    assert experiment_status(port) is None, f"an NNI experiment still answers on port {port}"


def test_reduced_demo_runs_every_step_and_summarises(tmp_path):
    port = free_port()
    done = subprocess.run(demo_command(tmp_path / "out", port), cwd=REPO, env=venv_env(), capture_output=True,
                          text=True, timeout=DEMO_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout.split("=== summary", 1)[1]
    values = dict(re.findall(r"^  (\S.*?\S)\s{2,}(\S.*)$", summary, flags=re.M))

    # recalibrated random paths of a warm-started supernet, far above chance (10 %) even after one epoch
    mean, worst, best = re.fullmatch(r"mean (\S+)%, worst (\S+)%, best (\S+)%",
                                     values["supernet: 4 random paths (recalibrated)"]).groups()
    assert 30.0 < float(mean) and float(worst) <= float(mean) <= float(best) <= 100.0
    for round_ in (1, 2):
        line = values[f"search round {round_}: best, mean"]
        best_of_round, mean_of_round = re.fullmatch(r"(\S+)%, (\S+)%", line).groups()
        assert float(mean_of_round) <= float(best_of_round)
    assert re.fullmatch(r"[+-]\d+\.\d points", values["last round's best - first round's mean"])
    # what the tuner's search_state.json says: every candidate scored, every round closed with all its results
    assert values["candidates scored"] == "8 of 8 (0 failed)"
    assert values["rounds"] == "2, 2 of them closed with every result"
    best_file = os.path.normpath(os.path.join(REPO, values["architecture file"]))
    assert best_file.startswith(str(tmp_path / "out"))
    choices = load_architecture(best_file)
    assert values["best architecture"] == " ".join(map(str, choices))
    assert float(values["its FLOPs at 224x224"].rstrip("M")) <= 330.0  # config_search_cpu.yml's limit
    # 3 epochs of scratch training on digits is far above chance (10 %) for any legal architecture
    assert float(values["its accuracy trained from scratch"].rstrip("%")) > 50.0
    plot = os.path.join(REPO, values["search plot"])
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for step in ("supernet", "supernet paths", "search", "scratch", "total"):
        assert values[f"time: {step}"].endswith(" s")
    logs = os.path.join(REPO, values["logs"])
    assert {"supernet.log", "supernet_paths.log", "scratch.log", "nnictl_create.log"} <= set(os.listdir(logs))
    assert "stopped NNI experiment" in done.stdout
    assert_experiment_stopped(port)
    # no warning that is not the user's to act on: setuptools' on nnictl's import, DALI's on a reset mid-epoch
    assert "pkg_resources" not in done.stdout + done.stderr
    assert "does not support resetting" not in done.stdout + done.stderr


def test_ctrl_c_during_the_search_stops_the_experiment(tmp_path):
    port = free_port()
    process = subprocess.Popen(demo_command(tmp_path / "out", port), cwd=REPO, env=venv_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        for line in process.stdout:
            output.append(line)
            if "round 1/2: " in line or time.monotonic() > deadline:  # the tuner's progress: the search runs
                break
        assert any("round 1/2: " in line for line in output), "".join(output[-40:])
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, "".join(output[-20:]) + rest
    assert "interrupted" in rest and "stopped NNI experiment" in rest
    assert_experiment_stopped(port)


def test_demo_never_replaces_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "notes.txt"
    precious.write_text("a week of work")
    done = subprocess.run([sys.executable, "demo.py", "--output-dir", str(tmp_path)], cwd=REPO, env=venv_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"--output-dir {tmp_path}: exists and is not a demo output folder" in done.stderr
    assert precious.read_text() == "a week of work"
