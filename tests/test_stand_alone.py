"""reproduction/stand_alone.py: a stand-alone run is kept by what it is. Its folder is named by its architecture,
seed, epochs, flags and data; a run that changed is a new folder, trained anew with the reason said, and one that
did not is reused. (The runs themselves: test_reproduce.py, test_rank.py.)"""
import json
import os

import pytest
import torch

from reproduction.stand_alone import RUN_FILE, plan_runs, prepare
from spos.checkpoint import STATE_FILE
from utils import UserError

ANSWER, OTHER = (2,) * 20, (1,) * 20


def finish(run, accuracy):
    """What scratch.py leaves after its last epoch, as far as finished runs are concerned."""
    torch.save({"state_dict": {}, "optimizer": {}, "scheduler": {}, "epoch": run.epochs, "rng": {},
                "history": [[accuracy, 1.0]]}, os.path.join(run.run_dir, STATE_FILE))


def test_a_run_is_reused_only_while_it_is_the_same(small_digits, tmp_path):
    said = []
    plan = plan_runs(tmp_path, [("answer", ANSWER), ("random01", OTHER)], [1, 2], 3, "--batch-size 64",
                     small_digits, 0)
    assert [(run.name, run.seed) for run in plan] == [("answer", 1), ("random01", 1), ("answer", 2), ("random01", 2)]
    assert len({run.run_dir for run in plan}) == 4 and all(os.path.basename(run.run_dir).startswith(
        f"{run.name}_seed{run.seed}_") for run in plan)
    prepare(plan, said.append)
    assert said == [f"{run.label}: to train (new)" for run in plan]
    with open(os.path.join(plan[0].run_dir, RUN_FILE)) as f:
        identity = json.load(f)
    assert identity["genes"] == list(ANSWER) and identity["seed"] == 1 and identity["epochs"] == 3
    assert identity["scratch_args"] == ["--batch-size", "64"] and identity["data"] == str(small_digits)
    assert plan[0].arguments()[plan[0].arguments().index("--epochs") + 1] == "3"
    for run in plan:
        finish(run, 0.5)
    assert [run.accuracy() for run in plan] == [0.5] * 4

    said.clear()  # the same plan again: every run finished, nothing to say
    prepare(plan_runs(tmp_path, [("answer", ANSWER), ("random01", OTHER)], [1, 2], 3, "--batch-size 64",
                      small_digits, 0), said.append)
    assert said == []

    # another draw of random01, another budget for all: only what changed is new, and says what changed
    changed = plan_runs(tmp_path, [("answer", ANSWER), ("random01", (0,) * 20)], [1], 3, "--batch-size 64",
                        small_digits, 0)
    assert changed[0].run_dir == plan[0].run_dir and changed[0].accuracy() == 0.5
    prepare(changed, said.append)
    assert said == ["random01 seed 1: to train (changed since the last run of it: genes 1 1 1 1 1 1 1 1 1 1 1 1 1 1 "
                    "1 1 1 1 1 1 -> 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0)"]
    said.clear()
    longer = plan_runs(tmp_path, [("answer", ANSWER)], [1], 5, "--batch-size 64", small_digits, 4)
    prepare(longer, said.append)
    assert said == ["answer seed 1: to train (changed since the last run of it: epochs 3 -> 5; "
                    "holdout_per_class 0 -> 4)"]
    assert plan[0].accuracy() == 0.5  # the old run is kept


def test_another_runs_identity_in_a_runs_folder_is_refused(small_digits, tmp_path):
    (run,) = plan_runs(tmp_path, [("answer", ANSWER)], [1], 1, "", small_digits, 0)
    prepare([run], lambda message: None)
    with open(os.path.join(run.run_dir, RUN_FILE), "w") as f:
        json.dump({**run.identity, "seed": 9}, f)
    with pytest.raises(UserError, match="another run's identity in the folder of answer seed 1"):
        prepare([run], lambda message: None)
