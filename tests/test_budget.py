"""reproduction/budget.py: 3 random architectures x 2 seeds trained by scratch.py for 1 and for 2 epochs on the
small digits; budget.md's tau is that of the runs' own means; a rerun trains nothing; bad budgets are refused."""
import os
import re

import pytest

from reproduction import budget
from reproduction.stand_alone import finished_accuracy
from spos.stats import kendall_tau, mean
from utils import UserError


def test_the_budgets_tau_is_that_of_the_runs_means_and_a_rerun_trains_nothing(small_digits, tmp_path, capsys):
    argv = ["--imagenet-dir", str(small_digits), "--holdout-per-class", "4", "--architectures", "3", "--seeds", "2",
            "--epochs", "1", "2", "--jobs", "2", "--output-dir", str(tmp_path),
            "--scratch-args", "--input-size 32 --batch-size 64 --workers 1"]
    budget.main(argv)
    err = capsys.readouterr().err
    assert err.count("stand-alone runs: 0 of 6 finished earlier, 6 to run, 2 at a time") == 2
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert len(runs) == 12 and {name[:len("budget01_seed1")] for name in runs} == {
        f"budget0{a}_seed{s}" for a in (1, 2, 3) for s in (1, 2)}
    means = {}
    for epochs in (1, 2):
        accuracies = {}
        for name in runs:
            accuracy = finished_accuracy(tmp_path / "runs" / name, epochs)
            if accuracy is not None and finished_accuracy(tmp_path / "runs" / name, epochs + 1) is None:
                accuracies.setdefault(name[:len("budget01")], []).append(accuracy)
        assert sorted(accuracies) == ["budget01", "budget02", "budget03"]
        means[epochs] = [mean(accuracies[name]) for name in sorted(accuracies)]
    report = (tmp_path / "budget.md").read_text()
    tau = re.search(r"\| 1 vs 2 epochs: Kendall tau of the 2-seed means \| (\S+) \| (\S+, \S+) \|", report)
    assert tau and tau.group(1) == f"{kendall_tau(means[1], means[2]):.3f}"
    for epochs in (1, 2):
        assert f"| {epochs} epochs: mean top-1, seed standard deviation (points) | {100 * mean(means[epochs]):.2f} %" \
            in report
    assert report.count("| budget0") == 3
    budget.main(argv)
    assert capsys.readouterr().err.count("6 of 6 finished earlier, 0 to run") == 2


@pytest.mark.parametrize("epochs", [["4"], ["4", "1"], ["0", "4"], ["2", "2"]])
def test_budgets_are_two_or_more_shortest_first(epochs):
    with pytest.raises(UserError, match=f"--epochs {' '.join(epochs)}: give two budgets or more"):
        budget.parse_args(["--epochs", *epochs])
