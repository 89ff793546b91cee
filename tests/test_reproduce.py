"""reproduction/reproduce.py end to end, tiny: a supernet trained by it on the small digits less 4 images a class held
out, a 4-candidate search scored on those, the answer, the all-3x3 network at its FLOPs and 2 random ones, 2 seeds,
1 epoch, reported on val/; a rerun with another --seed trains exactly the new random ones; SIGKILLed during the
search and during the runs it leaves no process behind and a rerun goes on; a second one in the same folder is
refused; the stand-alone runs as the trials of a real NNI experiment, stopped by its guard when the reproduction is
killed."""
import csv
import json
import os
import re
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from conftest import REPO, assert_drawn_png, venv_env

from network import paper_flops
from spos.architecture import load_architecture
from spos.nni_experiment import experiment_status, free_port

SMALL = {"--supernet-args": "--input-size 32 --batch-size 64 --epochs 1 --workers 1",
         "--tester-args": "--train-iters 2 --train-batch-size 32 --test-batch-size 100 --workers 1",
         "--search-args": "--search-workers 1",
         "--scratch-args": "--input-size 32 --batch-size 64 --workers 1"}


def tiny_search_config(path):
    with open(os.path.join(REPO, "config_search_cpu.yml")) as f:
        config = yaml.safe_load(f)
    config["tuner"]["classArgs"].update(max_epochs=1, num_population=4, num_select=1, num_mutation=2,
                                        num_crossover=1)
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return str(path)


def command(data, output_dir, search_config, *extra, small=SMALL):
    flags = [flag for pair in small.items() for flag in pair]
    return [sys.executable, "-m", "reproduction.reproduce", "--imagenet-dir", str(data), "--search-config",
            search_config, "--holdout-per-class", "4", "--seeds", "2", "--epochs", "1", "--output-dir",
            str(output_dir), *flags, *extra]


TINY = ("--next-best", "0", "--one-choice", "0", "--random", "2", "--jobs", "2")


@pytest.fixture(scope="module")
def tiny_reproduction(small_digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    config = tiny_search_config(root / "search.yml")
    run = command(small_digits, root / "out", config, *TINY)
    done = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, run, done


def read_rows(output_dir):
    with open(os.path.join(output_dir, "runs.csv")) as f:
        return list(csv.DictReader(f))


def test_a_tiny_reproduction_reports_on_test_data_the_search_never_saw(tiny_reproduction):
    root, _, done = tiny_reproduction
    out = root / "out"
    rows = read_rows(out)
    assert [(r["architecture"], r["seed"]) for r in rows] == [
        (name, seed) for name in ("answer", "one_choice0", "random01", "random02") for seed in ("1", "2")]
    (search_dir,) = (out / "search").iterdir()
    answer = load_architecture(str(search_dir / "checkpoints" / "architecture_final.json"))
    assert rows[0]["genes"] == " ".join(map(str, answer))  # the search's own answer
    one_choice = tuple(map(int, rows[2]["genes"].split()))
    assert one_choice[:20] == (0,) * 20 and abs(paper_flops(one_choice) - paper_flops(answer)) <= 0.02 * paper_flops(
        answer)  # all 3x3 with its widths scaled to the answer's FLOPs
    assert rows[2]["supernet_accuracy"] == ""  # a block supernet has no such widths to score
    for row in rows:
        assert int(row["flops"]) == paper_flops(tuple(map(int, row["genes"].split())))
        assert 0 <= float(row["stand_alone_accuracy"]) <= 1
    # the search and the supernet on the 40 held-out images, every network on the other 360, reported on val/
    held = (out / "holdout.txt").read_text().splitlines()
    assert len(held) == 40 and all(line.startswith("train/") for line in held)
    assert (out / "supernet" / "holdout.txt").read_text().splitlines() == held
    assert (search_dir / "holdout.txt").read_text().splitlines() == held
    scored_with = json.loads((search_dir / "checkpoints" / "search_state.json").read_text())["scored_with"]
    assert scored_with["settings"]["holdout_per_class"] == 4
    assert "40 held-out images (4 a class of train/)" in (out / "logs" / "search.log").read_text()
    run_log = (out / "runs" / os.path.basename(rows[0]["run_dir"]) / "scratch.log").read_text()
    assert "360 train / 100 val images" in run_log
    summary = (out / "comparison.md").read_text()
    assert summary in done.stdout
    assert "the search and the supernet scored on 4 images a class held out of train/; the stand-alone " \
           "accuracies are on val/, the test data" in summary
    for statistic in ("answer's percentile among the 2 random architectures of its band",
                      "answer - the random architectures' mean (points)", "answer - all Shuffle 3x3 at ",
                      "Kendall tau, supernet (after BN recalibration) vs stand-alone means, the 2 random ones",
                      "Kendall tau, supernet (before BN recalibration)", "attainable tau against 2-seed means",
                      "seed-to-seed tau (two single runs; the random ones)", "single-run reliability r1",
                      "seed standard deviation of one run (pooled, points)"):
        assert statistic in summary
    answer_runs = [100 * float(r["stand_alone_accuracy"]) for r in rows[:2]]
    assert " ".join(f"{v:.2f}" for v in answer_runs) in summary
    assert_drawn_png(out / "comparison.png", (1210, 506), colours=[(214, 39, 40)])  # the answer's red star
    assert "time: supernet " in summary and "search " in summary and "stand-alone runs " in summary


def test_a_rerun_with_another_seed_trains_exactly_the_new_random_ones(tiny_reproduction, small_digits):
    root, run, _ = tiny_reproduction
    rows = read_rows(root / "out")
    other = [*run, "--seed", "1"]
    again = subprocess.run(other, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 of 8 finished earlier, 4 to run" in again.stderr
    said = re.findall(r"^(\w+ seed \d): to train \((.*)\)$", again.stderr, flags=re.M)
    assert sorted(label for label, _ in said) == ["random01 seed 1", "random01 seed 2", "random02 seed 1",
                                                  "random02 seed 2"]
    assert all(why.startswith("changed since the last run of it: genes ") for _, why in said)
    assert "nothing left to train" in (root / "out" / "logs" / "supernet.log").read_text()
    assert "is already finished: nothing to score" in (root / "out" / "logs" / "search.log").read_text()
    assert "supernet scores: 1 of 3 known, 2 to score" in again.stderr  # the answer kept, the new ones scored
    new_rows = read_rows(root / "out")
    assert new_rows[:4] == rows[:4] and new_rows[4:] != rows[4:]
    back = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert back.returncode == 0 and "8 of 8 finished earlier, 0 to run" in back.stderr  # the first draw's runs kept
    assert read_rows(root / "out") == rows


def descendants_until(process, seen, lines, until, timeout=600):
    """Read ``process``'s lines until one holds ``until``; meanwhile note every process it has started."""
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        lines.append(line)
        seen.update(psutil.Process(process.pid).children(recursive=True))
        if until(line) or time.monotonic() > deadline:
            return
    raise AssertionError("".join(lines[-30:]))


def test_killed_at_any_step_it_leaves_no_process_behind_and_a_rerun_goes_on(tiny_reproduction, small_digits,
                                                                            tmp_path):
    """SIGKILL during the search (two scoring workers) and during the stand-alone runs: every process it started
    dies with it; a second reproduction in the same folder is refused while one runs; the last launch finishes."""
    root, _, _ = tiny_reproduction
    small = {**SMALL, "--search-args": "--search-workers 2"}
    run = command(small_digits, tmp_path / "out", str(root / "search.yml"), *TINY, "--seeds", "1", "--checkpoint",
                  str(root / "out" / "supernet"), small=small)  # 4 runs: the answer, all 3x3, 2 random, 1 seed
    for stop_at in ("scoring with 2 worker processes", "stand-alone runs: "):
        process = subprocess.Popen(run, cwd=REPO, env=venv_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        seen, lines = set(), []
        try:
            if stop_at.startswith("scoring"):  # the search's log is a file: wait for its workers there
                descendants_until(process, seen, lines, lambda line: line.startswith("search: "))
                log = tmp_path / "out" / "logs" / "search.log"
                deadline = time.monotonic() + 300
                while stop_at not in (log.read_text() if log.exists() else ""):
                    assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
                    time.sleep(0.1)
                seen.update(psutil.Process(process.pid).children(recursive=True))
            else:
                descendants_until(process, seen, lines, lambda line: line.startswith(stop_at))
                deadline = time.monotonic() + 60
                while sum("scratch.py" in " ".join(p.cmdline()) for p in psutil.Process(process.pid).children()) < 2:
                    assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
                    time.sleep(0.1)
                seen.update(psutil.Process(process.pid).children(recursive=True))
                second = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=120)
                assert second.returncode == 2 and "another reproduction is writing there" in second.stderr
            assert len(seen) >= 2, "".join(lines)
            process.kill()
            process.wait()
        finally:
            if process.poll() is None:
                process.kill()
        _, alive = psutil.wait_procs(list(seen), timeout=60)
        assert not alive, [p.cmdline() for p in alive]
    done = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(read_rows(tmp_path / "out")) == 4


def test_the_stand_alone_runs_as_nni_trials_and_an_experiment_stopped_when_the_reproduction_is_killed(
        tiny_reproduction, small_digits):
    """--engine nni: one trial per run through NNI's local service. SIGKILLed once the experiment runs, the
    reproduction's guard stops it; relaunched, it finishes: NNI's own database holds each trial's final result,
    which is the run's accuracy; the experiment is stopped at the end."""
    root, _, _ = tiny_reproduction
    out = root / "nni"
    run = command(small_digits, out, str(root / "search.yml"), "--checkpoint", str(root / "out" / "supernet"),
                  "--next-best", "0", "--one-choice", "--random", "2", "--seeds", "1", "--jobs", "2", "--engine",
                  "nni")
    port = free_port()
    process = subprocess.Popen([*run, "--port", str(port)], cwd=REPO, env=venv_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        descendants_until(process, set(), lines, lambda line: "NNI experiment" in line)
        assert experiment_status(port) is not None
        process.kill()
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 120
    while experiment_status(port) is not None:  # the guard stops it
        assert time.monotonic() < deadline, "the experiment outlived the reproduction"
        time.sleep(1)

    port = free_port()
    done = subprocess.run([*run, "--port", str(port)], cwd=REPO, env=venv_env(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "to run as NNI trials, 2 at a time" in done.stderr
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
    accuracy = {os.path.basename(r["run_dir"]): float(r["stand_alone_accuracy"]) for r in read_rows(out)}
    assert {run_of[parameter]: float(value.strip('"')) for parameter, value in finals.items()} == \
        pytest.approx({name: accuracy[name] for name in run_of.values()})
    assert set(run_of.values()) <= set(accuracy) and len(accuracy) == 3


def test_failing_nni_trials_are_one_line_naming_the_unfinished_runs_and_the_experiment_is_stopped(
        tiny_reproduction, small_digits):
    root, _, _ = tiny_reproduction
    out, port = root / "nni_failing", free_port()
    run = command(small_digits, out, str(root / "search.yml"), "--checkpoint", str(root / "out" / "supernet"),
                  "--next-best", "0", "--one-choice", "--random", "2", "--seeds", "1", "--jobs", "2", "--engine",
                  "nni", "--port", str(port),
                  small={**SMALL, "--scratch-args": SMALL["--scratch-args"] + " --lr-decay bogus"})
    done = subprocess.run(run, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 2, done.stderr[-3000:]
    experiment = re.search(r"NNI experiment (\w+): its web UI", done.stderr).group(1)
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: NNI experiment {experiment} is \w+ with 3 of 3 runs unfinished \(answer seed 1, "
                        r"random01 seed 1, random02 seed 1\); see the trials' logs under .* and each run's "
                        r"stdout\.log", last), last
    assert "Traceback" not in done.stderr
    assert experiment_status(port) is None  # stopped
    logs = [path for path in (out / "runs").glob("*/stdout.log")]
    assert len(logs) == 3 and all("invalid choice: 'bogus'" in path.read_text() for path in logs)


def test_a_missing_data_folder_is_one_line_and_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "reproduction.reproduce", "--imagenet-dir", str(tmp_path / "none"),
                           "--output-dir", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'none'}: no train/ folder" in done.stderr
