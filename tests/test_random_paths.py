"""spos/random_paths.py: how well a supernet learned, on random paths under the FLOPs limit scored as trials score
candidates."""
import json

import pytest
from conftest import digits_args

import tester
from network import paper_flops
from spos import random_paths
from spos.architecture import write_architecture
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_random_paths_are_scored_as_trials_and_drawn_under_the_flops_limit(digits_dir, digits_checkpoint, capsys,
                                                                          tmp_path):
    args = ["3", *digits_args(digits_dir, digits_checkpoint), "--flops-limit", "300e6"]
    summary = random_paths.main(args)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    paths = [tuple(a) for a in summary["architectures"]]
    assert summary["paths"] == 3 and len(set(paths)) == 3 and all(paper_flops(p) <= 300e6 for p in paths)
    assert summary["worst"] <= summary["mean"] <= summary["best"] and len(summary["accuracies"]) == 3
    assert summary["mean"] == pytest.approx(sum(summary["accuracies"]) / 3)
    write_architecture(str(tmp_path / "first.json"), paths[0])
    assert summary["accuracies"][0] == tester.main([*digits_args(digits_dir, digits_checkpoint),
                                                    "--fixed-arc", str(tmp_path / "first.json")])["accuracy"]
    assert random_paths.main(args)["architectures"] == summary["architectures"]  # the same paths for the same seed


def test_no_paths_is_refused(digits_dir, digits_checkpoint):
    with pytest.raises(UserError, match="must be positive, got 0"):
        random_paths.main(["0", *digits_args(digits_dir, digits_checkpoint)])
