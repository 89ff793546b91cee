"""reproduction/reproduce.py: the FLOPs band and the search's best candidates on fixed data; a tiny real reproduction
(supernet trained by it, a 4-candidate search, 3 architectures, 1 epoch, 1 seed) writes its table, CSV and plot;
a rerun skips every finished step; the stand-alone runs as trials of a real NNI experiment (local service)."""
import csv
import json
import os
import re
import sqlite3
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, assert_drawn_png, venv_env

from network import paper_flops
from reproduction import reproduce
from spos.architecture import load_architecture
from spos.nni_experiment import experiment_status, free_port
from utils import UserError

SCRIPT = ["-m", "reproduction.reproduce"]
SMALL = {"--supernet-args": "--input-size 32 --batch-size 64 --epochs 1 --workers 1",
         "--tester-args": "--train-iters 2 --train-batch-size 32 --test-batch-size 100 --workers 1",
         "--search-args": "--search-workers 1",
         "--scratch-args": "--input-size 32 --batch-size 64 --workers 1"}


def test_the_flops_band_holds_the_answers_is_wide_enough_and_under_the_limit():
    assert reproduce.flops_band([300e6, 310e6], 330e6, 0.0) == (300e6, 310e6)
    assert reproduce.flops_band([300e6, 302e6], 330e6, 0.1) == pytest.approx((284.5e6, 317.5e6))
    assert reproduce.flops_band([328e6], 330e6, 0.1) == pytest.approx((297e6, 330e6))  # shifted under the limit


def test_best_candidates_are_distinct_best_first_and_too_few_are_refused():
    def record(choices, accuracy):
        return {"choices": choices, "accuracy": accuracy}

    state = {"history": [record([0] * 20, 0.5), record([1] * 20, 0.9), record([2] * 20, None),
                         record([1] * 20, 0.9), record([3] * 20, 0.7)]}
    assert reproduce.best_candidates(state, 3) == [(1,) * 20, (3,) * 20, (0,) * 20]
    with pytest.raises(UserError, match="scored only 3 distinct candidates; --next-best needs 4"):
        reproduce.best_candidates(state, 4)


def tiny_search_config(path):
    with open(os.path.join(REPO, "config_search_cpu.yml")) as f:
        config = yaml.safe_load(f)
    config["tuner"]["classArgs"].update(max_epochs=1, num_population=4, num_select=1, num_mutation=2,
                                        num_crossover=1)
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)


def command(data, output_dir, search_config, *extra):
    flags = [flag for pair in SMALL.items() for flag in pair]
    return [sys.executable, *SCRIPT, "--imagenet-dir", str(data), "--search-config", search_config, "--seeds", "1",
            "--epochs", "1", "--output-dir", str(output_dir), *flags, *extra]


@pytest.fixture(scope="module")
def tiny_reproduction(small_digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    config = tiny_search_config(root / "search.yml")
    run = command(small_digits, root / "out", config, "--next-best", "0", "--one-choice", "0", "--random", "1",
                  "--jobs", "2")
    done = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, run, done


def read_rows(output_dir):
    with open(os.path.join(output_dir, "runs.csv")) as f:
        return list(csv.DictReader(f))


def test_a_tiny_reproduction_writes_the_comparison_its_runs_and_plot(tiny_reproduction):
    root, _, done = tiny_reproduction
    out = root / "out"
    rows = read_rows(out)
    assert [(r["architecture"], r["role"], r["seed"], r["epochs"]) for r in rows] == [
        ("answer", "search's answer", "1", "1"), ("one_choice0", "all Shuffle 3x3", "1", "1"),
        ("random01", "random in the band", "1", "1")]
    answer = load_architecture(str(out / "search" / "checkpoints" / "architecture_final.json"))
    assert rows[0]["genes"] == " ".join(map(str, answer))  # the search's own answer
    assert rows[1]["genes"] == " ".join(["0"] * 20)
    band = re.search(r"random architectures drawn in ([\d.]+)-([\d.]+)M FLOPs", done.stdout).groups()
    assert float(band[0]) <= int(rows[2]["flops"]) / 1e6 <= float(band[1]) <= 330.0
    assert float(band[0]) <= int(rows[0]["flops"]) / 1e6  # the band holds the answer
    for row in rows:
        assert int(row["flops"]) == paper_flops(tuple(map(int, row["genes"].split())))
        assert 0 <= float(row["stand_alone_accuracy"]) <= 1 and 0 <= float(row["supernet_accuracy"]) <= 1
    summary = (out / "comparison.md").read_text()
    assert summary in done.stdout
    for statistic in ("answer's percentile among the random architectures", "answer - best one-choice network "
                      "(all Shuffle 3x3)", "Kendall tau, supernet score vs stand-alone mean, all 3 architectures",
                      "ceiling: seed-to-seed Kendall tau of the stand-alone runs, all 3 architectures | n/a"):
        assert statistic in summary
    accuracy = 100 * float(rows[0]["stand_alone_accuracy"])
    assert f"| {accuracy:.2f} ± 0.00 % | {accuracy:.2f} |" in summary
    assert_drawn_png(out / "comparison.png", (1210, 506), colours=[(214, 39, 40)])  # the answer's red star
    assert "time: supernet " in summary and "search " in summary and "stand-alone runs " in summary


def test_a_rerun_skips_the_supernet_the_search_the_scores_and_every_finished_run(tiny_reproduction):
    root, run, _ = tiny_reproduction
    rows = read_rows(root / "out")
    again = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 of 3 finished earlier, 0 to run" in again.stderr
    assert "supernet score" not in again.stderr
    logs = root / "out" / "logs"
    assert "nothing left to train" in (logs / "supernet.log").read_text()
    assert "is already finished: nothing to score" in (logs / "search.log").read_text()
    assert read_rows(root / "out") == rows


def test_the_stand_alone_runs_as_trials_of_an_nni_experiment(tiny_reproduction, small_digits):
    """--engine nni: one trial per run through NNI's local service; NNI's own database holds each trial's final
    result, which is the run's accuracy; the experiment is stopped at the end."""
    root, _, _ = tiny_reproduction
    out, port = root / "nni", free_port()
    run = command(small_digits, out, str(root / "search.yml"), "--checkpoint", str(root / "out" / "supernet"),
                  "--next-best", "0", "--one-choice", "--random", "1", "--jobs", "2", "--engine", "nni",
                  "--port", str(port))
    done = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 of 2 finished earlier, 2 to run as NNI trials, 2 at a time" in done.stderr
    experiment = re.search(r"NNI experiment (\w+): its web UI listens on every interface at port (\d+)",
                           done.stderr)
    assert experiment and int(experiment.group(2)) == port
    assert experiment_status(port) is None  # stopped
    database = out / "nni-experiments" / experiment.group(1) / "db" / "nni.sqlite"
    with sqlite3.connect(database) as connection:
        events = connection.execute("SELECT trialJobId, event, data FROM TrialJobEvent").fetchall()
        finals = dict(connection.execute("SELECT parameterId, data FROM MetricData WHERE type = 'FINAL'"))
    started = [json.loads(data) for _, event, data in events if event == "RUNNING"]
    # by parameter id, not trial id: NNI 3.0 may give two trials started together each other's parameters
    run_of = {str(trial["parameter_id"]): trial["parameters"]["run"] for trial in started}
    assert sorted(run_of.values()) == ["answer_seed1", "random01_seed1"]
    assert len({trial for trial, event, _ in events if event == "SUCCEEDED"}) == 2
    accuracy = {f"{r['architecture']}_seed{r['seed']}": float(r["stand_alone_accuracy"]) for r in read_rows(out)}
    assert {run_of[parameter]: float(value.strip('"')) for parameter, value in finals.items()} == \
        pytest.approx(accuracy)


def test_failing_nni_trials_are_one_line_naming_the_unfinished_runs_and_the_experiment_is_stopped(
        tiny_reproduction, small_digits):
    root, _, _ = tiny_reproduction
    out, port = root / "nni_failing", free_port()
    run = command(small_digits, out, str(root / "search.yml"), "--checkpoint", str(root / "out" / "supernet"),
                  "--next-best", "0", "--one-choice", "--random", "1", "--jobs", "2", "--engine", "nni",
                  "--port", str(port), "--scratch-args", SMALL["--scratch-args"] + " --lr-decay bogus")
    done = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 2, done.stderr[-3000:]
    experiment = re.search(r"NNI experiment (\w+): its web UI", done.stderr).group(1)
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: NNI experiment {experiment} is \w+ with 2 of 2 runs unfinished; see the "
                        r"trials' logs under .* and each run's stdout\.log", last), last
    assert "Traceback" not in done.stderr
    assert experiment_status(port) is None  # stopped
    for name in ("answer_seed1", "random01_seed1"):
        assert "invalid choice: 'bogus'" in (out / "runs" / name / "stdout.log").read_text()


def test_a_missing_data_folder_is_one_line_and_status_2(tmp_path):
    done = subprocess.run([sys.executable, *SCRIPT, "--imagenet-dir", str(tmp_path / "none"), "--output-dir",
                           str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'none'}: no train/ folder" in done.stderr
