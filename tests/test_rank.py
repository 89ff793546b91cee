"""reproduction/rank.py: a tiny real ranking run (2 architectures, 1 epoch, 1 seed) writes its table, CSV and plot,
and a rerun skips its finished stand-alone runs."""
import csv
import os
import subprocess
import sys

from conftest import REPO, assert_drawn_png


def test_a_tiny_ranking_run_writes_its_outputs_and_a_rerun_skips_finished_runs(small_digits, digits_checkpoint,
                                                                               tmp_path):
    out = tmp_path / "ranking"
    command = [sys.executable, "-m", "reproduction.rank", "--checkpoint", digits_checkpoint,
               "--imagenet-dir", str(small_digits), "--architectures", "2", "--seeds", "1", "--epochs", "1",
               "--output-dir", str(out), "--jobs", "2",
               "--tester-args", "--input-size 32 --train-iters 2 --train-batch-size 32 --test-batch-size 100",
               "--scratch-args", "--input-size 32 --batch-size 64 --workers 1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 of 2 finished earlier, 2 to run" in done.stderr
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["architecture"], r["seed"], r["epochs"]) for r in rows] == [("arch00", "1", "1"), ("arch01", "1", "1")]
    assert all(0 <= float(r["stand_alone_accuracy"]) <= 1 and 0 <= float(r["supernet_accuracy"]) <= 1 for r in rows)
    assert int(rows[0]["flops"]) <= int(rows[1]["flops"]) <= 330e6  # spread over the FLOPs range, low to high
    assert_drawn_png(out / "ranking.png", (704, 528))
    summary = (out / "summary.md").read_text()
    assert "Kendall tau, supernet vs stand-alone" in summary and "Spearman rho" in summary
    assert summary in done.stdout
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 2 finished earlier, 0 to run" in again.stderr
    assert "supernet score" not in again.stderr  # kept from the first run, for the same checkpoint
    with open(out / "runs.csv") as f:
        assert list(csv.DictReader(f)) == rows
