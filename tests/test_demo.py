"""`make demo`'s path, reduced (conftest.demo_run, once a session; every test of its run is here, so that one
process runs them): its summary read back against the files the run wrote (the random paths' scores, the tuner's
table and state, the architecture file, the scratch run's state, NNI's own record of every trial, the plot decoded);
the warm-started supernet far above chance on random paths, one trained cold not; Ctrl-C during a search of that
supernet stops the experiment; a folder the demo did not write is never replaced."""
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys

import torch
from conftest import DEMO_TIMEOUT_S, REPO, assert_drawn_png, demo_command, venv_env
from nni_helpers import Search, assert_every_candidate_scored_once

from torch import nn

from dataloader import ImageFolderLoader
from network import FlopsBinnedSampler, ShuffleNetV2OneShot, paper_flops, random_architecture
from spos.architecture import format_choices, load_architecture
from spos.checkpoint import load_training_state
from spos.nni_experiment import experiment_status, free_port
from spos.optim import make_optimizer
from spos.scoring import evaluate_candidate
from spos.search_state import BEST_FILE, TABLE_FILE, read_table, summarize


def summary_of(stdout):
    """The summary's rows as {name: value}."""
    return dict(re.findall(r"^  (\S.*?\S)\s{2,}(\S.*)$", stdout.split("=== summary", 1)[1], flags=re.M))


def test_the_summary_is_what_the_run_wrote(demo_run):
    out, port, done = demo_run
    values = summary_of(done.stdout)
    logs = out / "logs"

    # the supernet line: tester's scores of 4 random paths, far above chance (10 %) after a warm start
    paths = json.loads((logs / "supernet_paths.log").read_text().strip().splitlines()[-1])
    assert values["supernet: 4 random paths (recalibrated)"] == \
        f"mean {paths['mean']:.1%}, worst {paths['worst']:.1%}, best {paths['best']:.1%}"
    assert paths["paths"] == 4 and paths["mean"] > 0.3, paths

    # the search: the tuner's table and state, every candidate scored once as NNI itself recorded it
    (experiment_id,) = [name for name in os.listdir(out / "nni-experiments") if name != "_latest"]
    search = Search(out / "nni-experiments", experiment_id, port)
    state, _ = assert_every_candidate_scored_once(search, rounds=2, population=4)
    rounds = summarize(read_table(str(search.exports / TABLE_FILE)))
    for number, best, mean, _ in rounds:
        assert values[f"search round {number}: best, mean"] == f"{best:.1%}, {mean:.1%}"
    assert values["last round's best - first round's mean"] == f"{100 * (rounds[-1][1] - rounds[0][2]):+.1f} points"
    assert {r["origin"] for r in search.rows() if r["round"] == "2"} >= {"mutation"}  # one parent: no crossover
    best = load_architecture(str(search.exports / BEST_FILE))
    assert list(best) == state["best"]["choices"] and values["best architecture"] == format_choices(best)
    assert values["its FLOPs at 224x224"] == f"{paper_flops(best) / 1e6:.1f}M" and paper_flops(best) <= 330e6
    assert values["its search accuracy (after BN recalibration)"] == f"{state['best']['accuracy']:.1%}"
    assert values["candidates scored"] == "8 of 8 (0 failed)"
    assert values["rounds"] == "2, 2 of them closed with every result"
    assert os.path.normpath(os.path.join(REPO, values["architecture file"])) == str(search.exports / BEST_FILE)

    # from scratch: the last epoch's val top-1 its training state keeps, far above chance after 3 epochs
    scratch = load_training_state(str(out / "scratch" / "training_state.pth.tar"))
    assert scratch["epoch"] == 3 and load_architecture(str(out / "scratch" / "architecture.json")) == best
    assert values["its accuracy trained from scratch"] == f"{scratch['history'][-1][0]:.1%}"
    assert scratch["history"][-1][0] > 0.5

    assert_drawn_png(os.path.join(REPO, values["search plot"]), (3 * 572, 484), colours=[(255, 0, 0)])
    steps = {name[len("time: "):]: int(value[:-2]) for name, value in values.items() if name.startswith("time: ")}
    # "data" when the clone had no data/digits yet
    assert set(steps) - {"data"} == {"supernet", "supernet paths", "ss_gen", "search", "plot", "scratch", "total"}
    assert sum(seconds for step, seconds in steps.items() if step != "total") <= steps["total"] + len(steps)
    assert {"supernet.log", "supernet_paths.log", "scratch.log", "nnictl_create.log"} <= set(os.listdir(logs))
    assert "stopped NNI experiment" in done.stdout and experiment_status(port) is None
    # no warning that is not the user's to act on: setuptools' on nnictl's import, DALI's on a reset mid-epoch
    assert "pkg_resources" not in done.stdout + done.stderr
    assert "does not support resetting" not in done.stdout + done.stderr


def test_ctrl_c_during_the_search_stops_the_experiment(demo_run, tmp_path):
    supernet = demo_run[0] / "supernet"
    port = free_port()
    # Ctrl-C comes from a terminal; a suite run as a shell's background job (make test &) has SIGINT ignored, and
    # a child would inherit that, so the demo is started with SIGINT at its default, as a terminal starts it
    process = subprocess.Popen(demo_command(tmp_path / "out", port, "--supernet", str(supernet)), cwd=REPO,
                               env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if "round 1/2: " in line:  # the tuner's progress: the search runs
                break
        assert any("round 1/2: " in line for line in output), "".join(output[-40:])
        assert not any("=== supernet\n" in line for line in output)  # the trained one, not trained again
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest, _ = process.communicate(timeout=DEMO_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, "".join(output[-20:]) + rest
    assert "interrupted" in rest and "stopped NNI experiment" in rest
    assert experiment_status(port) is None, f"an NNI experiment still answers on port {port}"


def test_demo_never_replaces_a_folder_it_did_not_write(tmp_path):
    precious = tmp_path / "notes.txt"
    precious.write_text("a week of work")
    done = subprocess.run([sys.executable, "demo.py", "--output-dir", str(tmp_path)], cwd=REPO, env=venv_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"--output-dir {tmp_path}: exists and is not a demo output folder" in done.stderr
    assert precious.read_text() == "a week of work"


def test_the_warm_started_supernet_scores_random_paths_far_above_chance_and_a_cold_one_does_not(demo_run, digits_dir):
    """The point of it: the demo's supernet (100 template steps, 200 fitting steps, one epoch of path sampling on
    digits) scores random paths, each BN-recalibrated as the search does it, far above chance (10 %); the same
    supernet trained from scratch for 100 steps of path sampling stays near chance (SPEC section 11)."""
    scored = json.loads((demo_run[0] / "logs" / "supernet_paths.log").read_text().strip().splitlines()[-1])
    assert scored["worst"] > 0.3 and scored["mean"] > 0.45, scored

    common = dict(input_size=32, workers=1, backend="torch")
    loader = ImageFolderLoader(digits_dir, "train", train=True, batch_size=64, **common)
    recalibration = list(itertools.islice(iter(ImageFolderLoader(digits_dir, "train", train=True, batch_size=64,
                                                                 seed=1, **common)), 5))
    val = list(ImageFolderLoader(digits_dir, "val", train=False, batch_size=300, classes=loader.classes, **common))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    torch.manual_seed(0)
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=None).train()
    batches = itertools.cycle(loader)
    optimizer = make_optimizer(model, 0.03125, 0.9, 4e-5)
    sampler = FlopsBinnedSampler(model, random.Random(0))
    for _ in range(100):
        images, labels = next(batches)
        loss = criterion(model(images, sampler()), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    cold = [evaluate_candidate(model, random_architecture(random.Random(i)), recalibration, val, 5)["accuracy"]
            for i in range(5)]
    assert sum(cold) / 5 < 0.2, cold


def test_a_search_config_the_demo_cannot_point_at_its_supernet_is_refused_before_any_work(tmp_path):
    config = tmp_path / "search.yml"
    config.write_text("trialCommand: python tester.py --checkpoint elsewhere\n")
    for given, message in ((config, "its trialCommand has no '--checkpoint checkpoints'"),
                           (tmp_path / "missing.yml", "not a readable YAML file")):
        done = subprocess.run([sys.executable, "demo.py", "--search-config", str(given), "--output-dir",
                               str(tmp_path / "out")], cwd=REPO, env=venv_env(), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and f"--search-config {given}: {message}" in done.stderr
        assert not (tmp_path / "out").exists()
