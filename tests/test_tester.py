"""tester.py: the candidate formats a trial takes, and one candidate scored on the digits data (as an NNI trial
with NNI's calls recorded, and standalone)."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, digits_args, venv_env

import tester
from spos.architecture import write_architecture
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
# one thread per process, as the CPU search config runs its trials
TRIAL_ENV = venv_env(OMP_NUM_THREADS="1")
ARCH = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)


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
                           "--fixed-arc", str(arch_file)], cwd=REPO, env=TRIAL_ENV, capture_output=True,
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
                           "--fixed-arc", str(arch_file)], cwd=REPO, env=TRIAL_ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "nope.pth.tar: checkpoint not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_searches_of_old_are_commands_of_their_own(digits_dir, digits_checkpoint):
    for flag, command in (("--evolution", "python -m spos.search"), ("--random-paths", "python -m spos.random_paths")):
        with pytest.raises(UserError, match=f"{flag} is a command of its own now: {command}"):
            tester.parse_args([*digits_args(digits_dir, digits_checkpoint), flag])


def test_a_block_and_channel_candidate_is_scored_on_a_channel_supernet_and_refused_by_a_block_one(
        digits_dir, digits_checkpoint, tmp_path):
    import network
    from spos.checkpoint import save_weights

    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10, channel_search=True)
    save_weights(str(tmp_path / "channel"), 1, model.state_dict(), model.options())
    genes = ARCH + (6, 5, 3, 5, 2, 6, 3, 4, 2, 5, 7, 5, 4, 6, 7, 4, 4, 5, 4, 3)
    arch_file = tmp_path / "arch.json"
    write_architecture(str(arch_file), genes)
    done = subprocess.run([sys.executable, "tester.py", *digits_args(digits_dir, str(tmp_path / "channel")),
                           "--fixed-arc", str(arch_file)], cwd=REPO, env=TRIAL_ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert tuple(result["architecture"]) == genes and 0.0 <= result["accuracy"] <= 1.0
    assert result["flops"] == model.get_candidate_flops(genes)
    assert tester.candidate_from_parameters({**{f"LayerChoice{i + 1}": {"_value": str(c), "_idx": c}
                                                for i, c in enumerate(ARCH)},
                                             **{f"ChannelChoice{i + 1}": {"_value": "1.4", "_idx": 6}
                                                for i in range(20)}}) == ARCH + (6,) * 20
    refused = subprocess.run([sys.executable, "tester.py", *digits_args(digits_dir, os.path.dirname(digits_checkpoint)),
                              "--fixed-arc", str(arch_file)], cwd=REPO, env=TRIAL_ENV, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "trained without channel search" in refused.stderr.strip().splitlines()[-1]
