"""tester.py: the search space for `nnictl ss_gen`, the candidate formats a trial takes, BN recalibration, and
one candidate scored on the digits data (as an NNI trial with NNI's calls recorded, and standalone)."""
import copy
import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import network
import tester
import utils
import tuner
from utils import UserError, load_architecture, write_architecture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)


def venv_env():
    """The environment of a user who activated the venv: its bin/ first on PATH (nnictl, python); one thread
    per process, as the CPU search config runs its trials."""
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny batches on a shared 2-core machine: one thread, denormals flushed (as tester.main does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushed = torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(threads)
    if flushed:
        torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """An untrained digits supernet (32x32, 10 classes) saved as supernet.py saves its epochs."""
    torch.manual_seed(0)
    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10)
    path = tmp_path_factory.mktemp("supernet") / "epoch_1.pth.tar"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, path)
    return str(path)


def digits_args(digits_dir, checkpoint, *extra):
    return ["--imagenet-dir", digits_dir, "--input-size", "32", "--checkpoint", checkpoint, "--train-iters", "3",
            "--train-batch-size", "32", "--test-batch-size", "100", "--workers", "1", "--device", "cpu", *extra]


def test_structure_constants_match_the_network():
    assert (tester.NUM_LAYERS, tester.NUM_CHOICES) == (network.NUM_LAYERS, network.NUM_CHOICES)


def test_nnictl_ss_gen_writes_the_nni1_search_space(tmp_path):
    target = tmp_path / "nni_auto_gen_search_space.json"
    started = time.monotonic()
    done = subprocess.run(["nnictl", "ss_gen", "-t", "python tester.py", "-f", str(target)], cwd=REPO,
                          env=venv_env(), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    text = target.read_text()
    space = json.loads(text)
    keys = [f"LayerChoice{i}" for i in range(1, 21)]
    assert list(space) == sorted(keys)  # NNI 1.x wrote the keys sorted
    assert all(space[k] == {"_type": "layer_choice", "_value": ["0", "1", "2", "3"]} for k in keys)
    assert elapsed < 30  # no torch, data or checkpoint involved


def test_candidate_formats():
    tuner_form = {f"LayerChoice{i + 1}": {"_value": str(c), "_idx": c} for i, c in enumerate(ARCH)}
    assert tester.candidate_from_parameters(tuner_form) == ARCH
    assert tester.candidate_from_parameters({f"LayerChoice{i + 1}": str(c) for i, c in enumerate(ARCH)}) == ARCH
    assert tester.candidate_from_parameters({f"LayerChoice{i + 1}": c for i, c in enumerate(ARCH)}) == ARCH
    assert tester.candidate_from_parameters(list(ARCH)) == ARCH
    with pytest.raises(UserError, match="no candidate"):
        tester.candidate_from_parameters({})
    with pytest.raises(UserError, match="LayerChoice20"):
        tester.candidate_from_parameters({k: v for k, v in tuner_form.items() if k != "LayerChoice20"})
    with pytest.raises(UserError, match="out of range"):
        tester.candidate_from_parameters({**tuner_form, "LayerChoice3": {"_value": "4", "_idx": 4}})


def test_resolve_checkpoint_takes_the_newest_epoch_of_a_folder(tmp_path):
    for epoch in (2, 10, 9):
        (tmp_path / f"epoch_{epoch}.pth.tar").write_bytes(b"")
    (tmp_path / "training_state.pth.tar").write_bytes(b"")
    assert tester.resolve_checkpoint(str(tmp_path)) == str(tmp_path / "epoch_10.pth.tar")
    assert tester.resolve_checkpoint(str(tmp_path / "epoch_2.pth.tar")) == str(tmp_path / "epoch_2.pth.tar")
    with pytest.raises(UserError, match="no epoch_N"):
        tester.resolve_checkpoint(str(_empty_dir(tmp_path)))


def _empty_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_cycle_batches_starts_the_loader_over():
    assert list(tester.cycle_batches([1, 2, 3], 7)) == [1, 2, 3, 1, 2, 3, 1]
    with pytest.raises(UserError, match="no batches"):
        list(tester.cycle_batches([], 2))


def test_recalibration_is_a_cumulative_average_over_the_path():
    torch.manual_seed(0)
    supernet = network.ShuffleNetV2OneShot(input_size=32, n_classes=10).eval()
    path = network.path_network(supernet, ARCH)
    batches = [(torch.randn(8, 3, 32, 32) * (i + 1), torch.zeros(8, dtype=torch.long)) for i in range(3)]
    tester.recalibrate_bn(path, batches, 5)  # 3 batches, then the first two again
    used = [batches[i % 3][0] for i in range(5)]
    with torch.no_grad():
        conv_means = [path.first_conv[0](x).mean(dim=(0, 2, 3)) for x in used]
    bn = path.first_conv[1]
    assert not path.training
    assert bn.momentum is None and int(bn.num_batches_tracked) == 5
    torch.testing.assert_close(bn.running_mean, torch.stack(conv_means).mean(0), rtol=1e-4, atol=1e-5)
    assert int(supernet.first_conv[1].num_batches_tracked) == 0  # the supernet is not touched


def _plain_candidate_accuracy(model, architecture, train, val):
    """NNI's tester as written: reset the supernet's BN statistics, forward the batches in train mode, then
    evaluate the supernet itself (no copy, no folding)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for images, _ in train:
            model(images, architecture)
        model.eval()
        correct = sum(int((model(images, architecture).argmax(1) == labels).sum()) for images, labels in val)
    return correct / sum(len(labels) for _, labels in val)


@pytest.mark.parametrize("channels_last", [False, True])
def test_evaluate_candidate_scores_as_plain_recalibration_and_leaves_the_supernet(channels_last):
    torch.manual_seed(0)
    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    # a classifier whose predictions vary with the input, so the accuracy tells folded and plain apart
    nn.init.normal_(model.classifier[0].weight, 0, 1)
    utils.prepare_model(model, torch.device("cpu"), channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))) for _ in range(3)]
    val = [(torch.randn(50, 3, 32, 32), torch.randint(0, 10, (50,))) for _ in range(2)]
    seen = []
    result = tester.evaluate_candidate(model, ARCH, train, val, 3, on_before_recalibration=seen.append)
    assert seen == [result["accuracy_before_recalibration"]]
    assert result["images"] == 100
    assert result["accuracy"] == pytest.approx(_plain_candidate_accuracy(model, ARCH, train, val), abs=1e-6)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_trial_reports_both_accuracies_to_nni(digits_dir, digits_checkpoint, monkeypatch):
    import nni

    reported = {"intermediate": [], "final": []}
    parameters = {f"LayerChoice{i + 1}": {"_value": str(c), "_idx": c} for i, c in enumerate(ARCH)}
    monkeypatch.setattr(nni, "get_next_parameter", lambda: parameters)
    monkeypatch.setattr(nni, "report_intermediate_result", reported["intermediate"].append)
    monkeypatch.setattr(nni, "report_final_result", reported["final"].append)
    result = tester.main(digits_args(digits_dir, digits_checkpoint))
    (final,) = reported["final"]
    assert final == {"default": result["accuracy"], "before_recalibration": result["accuracy_before_recalibration"]}
    assert reported["intermediate"] == [result["accuracy_before_recalibration"], result["accuracy"]]
    assert all(0.0 <= v <= 1.0 for v in reported["intermediate"])
    assert result["images"] == 300


def test_trial_without_a_candidate_says_how_to_run_it(digits_dir, digits_checkpoint, monkeypatch):
    import nni

    monkeypatch.setattr(nni, "get_next_parameter", lambda: {})
    with pytest.raises(UserError, match="nnictl create"):
        tester.main(digits_args(digits_dir, digits_checkpoint))


def test_fixed_arc_runs_standalone_and_prints_the_result(digits_dir, digits_checkpoint, tmp_path):
    arch_file = tmp_path / "arch.json"
    write_architecture(str(arch_file), ARCH)
    done = subprocess.run([sys.executable, "tester.py", *digits_args(digits_dir, os.path.dirname(digits_checkpoint)),
                           "--fixed-arc", str(arch_file)], cwd=REPO, env=venv_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert tuple(result["architecture"]) == ARCH
    assert result["checkpoint"] == digits_checkpoint  # the folder's newest epoch
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["accuracy_before_recalibration"] <= 1.0
    assert set(result["seconds"]) >= {"start_up", "data", "checkpoint_load", "recalibration", "evaluation_after"}
    assert "timing (s): start-up" in done.stderr
    assert "decoded as used" in done.stderr  # without --cache-dir a trial streams: no whole val set in memory


def test_wrong_checkpoint_is_one_clear_line(digits_dir, tmp_path):
    arch_file = tmp_path / "arch.json"
    write_architecture(str(arch_file), ARCH)
    done = subprocess.run([sys.executable, "tester.py", *digits_args(digits_dir, str(tmp_path / "nope.pth.tar")),
                           "--fixed-arc", str(arch_file)], cwd=REPO, env=venv_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "nope.pth.tar: checkpoint not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_in_process_search_writes_the_nnictl_exports_and_scores_as_a_trial(digits_dir, digits_checkpoint, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 2, num_population: 4, num_select: 2, num_mutation: 1, "
                      "num_crossover: 1, m_prob: 0.1, flops_limit: 330.0e+6, seed: 3}\n")
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = [*digits_args(digits_dir, digits_checkpoint), "--loader", "torch", "--cache-dir", str(cache)]
    done = subprocess.run([sys.executable, "tester.py", "--evolution", "--search-config", str(config),
                           "--output-dir", str(out), "--search-workers", "2", *common], cwd=REPO, env=venv_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scoring with 2 worker processes" in done.stderr and "in-process search: 8 candidates" in done.stderr
    resolved = json.loads((out / "args.json").read_text())  # the run's arguments, next to its outputs
    assert resolved["tuner"]["num_population"] == 4 and resolved["resolved_search_workers"] == 2
    exports = out / "checkpoints"
    with open(exports / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == tuner.TABLE_COLUMNS
    assert [r["round"] for r in rows] == ["1"] * 4 + ["2"] * 4
    assert all(r["status"] == "succeeded" and r["trial_job_id"] == "in-process" for r in rows)
    assert len({r["choices"] for r in rows}) == 8 and all(float(r["flops"]) <= 330e6 for r in rows)
    assert {"001_000.json", "001_001.json", "002_000.json", "002_001.json"} <= set(os.listdir(exports))
    best = max(rows, key=lambda r: float(r["accuracy"]))
    best_file = exports / "architecture_final.json"
    assert " ".join(map(str, load_architecture(str(best_file)))) == best["choices"]

    # one process instead of a worker per core: the same search, row for row
    single = subprocess.run([sys.executable, "tester.py", "--evolution", "--search-config", str(config),
                             "--output-dir", str(tmp_path / "single"), "--search-workers", "1", *common], cwd=REPO,
                            env=venv_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    assert (tmp_path / "single" / "checkpoints" / "candidates.csv").read_text() == \
        (exports / "candidates.csv").read_text()

    # one trial of the nnictl path, on the same cached data, gives the same numbers
    trial = subprocess.run([sys.executable, "tester.py", "--fixed-arc", str(best_file), *common], cwd=REPO,
                           env=venv_env(), capture_output=True, text=True, timeout=300)
    assert trial.returncode == 0, trial.stderr[-3000:]
    assert f"data from the cache {cache}" in trial.stderr
    result = json.loads(trial.stdout.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(float(best["accuracy"]), abs=1e-6)
    assert result["accuracy_before_recalibration"] == pytest.approx(float(best["accuracy_before_recalibration"]),
                                                                    abs=1e-6)


def test_in_process_search_with_a_bad_config_is_one_clear_line(digits_dir, digits_checkpoint, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 0}\n")
    done = subprocess.run([sys.executable, "tester.py", "--evolution", "--search-config", str(config),
                           *digits_args(digits_dir, digits_checkpoint)], cwd=REPO, env=venv_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert f"{config}: tuner.classArgs: max_epochs must be a positive integer" in done.stderr
    assert "Traceback" not in done.stderr
    both = subprocess.run([sys.executable, "tester.py", "--evolution", "--fixed-arc", "architecture_final.json",
                           *digits_args(digits_dir, digits_checkpoint)], cwd=REPO, env=venv_env(),
                          capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and "give one of them" in both.stderr and "Traceback" not in both.stderr


def test_in_process_search_names_a_dead_worker_in_one_line(digits_dir, digits_checkpoint, tmp_path, monkeypatch):
    """A worker killed by the system (out of memory) breaks the pool: one clear line, not a traceback."""
    import concurrent.futures.process

    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 1, num_population: 2, num_select: 1, num_mutation: 0, "
                      "num_crossover: 0, flops_limit: 330.0e+6, seed: 3}\n")

    def broken(*args):
        raise concurrent.futures.process.BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(tester, "_run_evolution", broken)
    args = tester.parse_args(["--evolution", "--search-config", str(config), "--output-dir", str(tmp_path / "out"),
                              "--search-workers", "1", "--loader", "torch",
                              *digits_args(digits_dir, digits_checkpoint)])
    with pytest.raises(UserError, match=f"a scoring worker process died .*{tmp_path / 'out'}.*fewer "
                                        f"--search-workers"):
        tester.search_in_process(args, torch.device("cpu"))
