"""spos/search.py: the in-process evolution search (python -m spos.search) writes the nnictl search's exports, gives
the same table for any number of workers, scores as a trial does, takes its settings from its flags before its
config's, and fails in one clear line."""
import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, digits_args, venv_env

from spos import search
from spos.architecture import load_architecture
from spos.search_state import TABLE_COLUMNS
from utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
# one thread per process, as the CPU search config runs its trials
TRIAL_ENV = venv_env(OMP_NUM_THREADS="1")


def test_in_process_search_writes_the_nnictl_exports_and_scores_as_a_trial(digits_dir, digits_checkpoint, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 2, num_population: 4, num_select: 2, num_mutation: 1, "
                      "num_crossover: 1, m_prob: 0.1, flops_limit: 330.0e+6, seed: 3}\n")
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = [*digits_args(digits_dir, digits_checkpoint), "--loader", "torch", "--cache-dir", str(cache)]
    done = subprocess.run([sys.executable, "-m", "spos.search", "--search-config", str(config),
                           "--output-dir", str(out), "--search-workers", "2", *common], cwd=REPO, env=TRIAL_ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scoring with 2 worker processes" in done.stderr and "in-process search: 8 candidates" in done.stderr
    resolved = json.loads((out / "args.json").read_text())  # the run's arguments, next to its outputs
    assert resolved["evolution"]["num_population"] == 4 and resolved["resolved_search_workers"] == 2
    # no --seed: the evolution's is the config's, the data's the trials' default (so that a trial scores alike)
    assert (resolved["evolution"]["seed"], resolved["seed"]) == (3, 42)
    exports = out / "checkpoints"
    with open(exports / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TABLE_COLUMNS
    assert [r["round"] for r in rows] == ["1"] * 4 + ["2"] * 4
    assert all(r["status"] == "succeeded" and r["trial_job_id"] == "in-process" for r in rows)
    assert len({r["choices"] for r in rows}) == 8 and all(float(r["flops"]) <= 330e6 for r in rows)
    assert {"001_000.json", "001_001.json", "002_000.json", "002_001.json"} <= set(os.listdir(exports))
    best = max(rows, key=lambda r: float(r["accuracy"]))
    best_file = exports / "architecture_final.json"
    assert " ".join(map(str, load_architecture(str(best_file)))) == best["choices"]

    # one process instead of a worker per core: the same search, row for row
    single = subprocess.run([sys.executable, "-m", "spos.search", "--search-config", str(config),
                             "--output-dir", str(tmp_path / "single"), "--search-workers", "1", *common], cwd=REPO,
                            env=TRIAL_ENV, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    assert (tmp_path / "single" / "checkpoints" / "candidates.csv").read_text() == \
        (exports / "candidates.csv").read_text()

    # one trial of the nnictl path, on the same cached data, gives the same numbers
    trial = subprocess.run([sys.executable, "tester.py", "--fixed-arc", str(best_file), *common], cwd=REPO,
                           env=TRIAL_ENV, capture_output=True, text=True, timeout=300)
    assert trial.returncode == 0, trial.stderr[-3000:]
    assert f"data from the cache {cache}" in trial.stderr
    result = json.loads(trial.stdout.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(float(best["accuracy"]), abs=1e-6)
    assert result["accuracy_before_recalibration"] == pytest.approx(float(best["accuracy_before_recalibration"]),
                                                                    abs=1e-6)


def test_in_process_search_with_a_bad_config_is_one_clear_line(digits_dir, digits_checkpoint, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 0}\n")
    done = subprocess.run([sys.executable, "-m", "spos.search", "--search-config", str(config),
                           *digits_args(digits_dir, digits_checkpoint)], cwd=REPO, env=TRIAL_ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert f"{config}: tuner.classArgs: max_epochs must be a positive integer" in done.stderr
    assert "Traceback" not in done.stderr
    nothing = subprocess.run([sys.executable, "-m", "spos.search", "--resume", "--output-dir",
                              str(tmp_path / "empty"), *digits_args(digits_dir, digits_checkpoint)], cwd=REPO,
                             env=TRIAL_ENV, capture_output=True, text=True, timeout=300)
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr
    assert f"--resume: {tmp_path / 'empty' / 'checkpoints'}: no search_state.json there" in nothing.stderr


def test_a_search_resumes_only_with_what_it_scored_with(digits_dir, digits_checkpoint, tmp_path):
    """--resume of a search scored with other settings (here the recalibration batches), or another supernet, is
    refused in one line naming what changed; without --resume the old search is moved aside."""
    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 1, num_population: 2, num_select: 1, num_mutation: 0, "
                      "num_crossover: 0, flops_limit: 330.0e+6}\n")
    common = ["--search-config", str(config), "--output-dir", str(tmp_path / "out"), "--search-workers", "1",
              "--loader", "torch", *digits_args(digits_dir, digits_checkpoint), "--holdout-per-class", "10"]
    search.main(common)
    assert len((tmp_path / "out" / "holdout.txt").read_text().splitlines()) == 100  # the images it scored on
    state = json.loads((tmp_path / "out" / "checkpoints" / "search_state.json").read_text())
    assert state["scored_with"]["settings"]["holdout_per_class"] == 10
    with pytest.raises(UserError, match="that search scored its candidates with another settings \\(settings .*"
                                        "'train_iters': 3.* there, .*'train_iters': 4"):
        search.main([*common, "--train-iters", "4", "--resume"])
    assert search.main([*common, "--resume"])["candidates"] == 0  # the same: finished, nothing to score
    search.main([*common, "--train-iters", "4"])  # a new search: the old one moved aside
    assert len([name for name in os.listdir(tmp_path / "out") if name.startswith("checkpoints-")]) == 1


def test_each_setting_is_the_flag_given_else_the_configs_else_megvii_s(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 4, num_population: 10, num_select: 3, num_mutation: 4, "
                      "num_crossover: 4, flops_limit: 330.0e+6, seed: 7, result_timeout: 60}\n")
    args = search.parse_args(["--search-config", str(config), "--flops-limit", "300e6", "--seed", "1"])
    settings, sources = search.resolve_settings(args)
    assert (settings.max_epochs, settings.flops_limit, settings.seed, settings.m_prob) == (4, 300e6, 1, 0.1)
    assert (sources["max_epochs"], sources["flops_limit"], sources["seed"], sources["m_prob"]) == (
        str(config), "flag", "flag", "default")
    assert args.seed == 1  # --seed seeds the data too
    args = search.parse_args(["--search-config", str(config)])
    assert (search.resolve_settings(args)[0].seed, args.seed) == (7, 42)  # the config's, the trials' default
    settings, sources = search.resolve_settings(search.parse_args([]))
    assert (settings.max_epochs, settings.num_population, settings.seed) == (20, 50, 42)
    assert set(sources.values()) == {"default"}
    with pytest.raises(UserError, match="the flags: num_select \\(60\\) must not exceed num_population \\(50\\)"):
        search.resolve_settings(search.parse_args(["--num-select", "60"]))
    config.write_text("tuner:\n  classArgs: {max_epoch: 4}\n")
    with pytest.raises(UserError, match="'max_epoch' is not a setting of the evolution"):
        search.resolve_settings(search.parse_args(["--search-config", str(config)]))


def test_the_nni_tuners_own_arguments_are_the_ones_the_search_leaves_out():
    import inspect

    from tuner import EvolutionWithFlops

    own = [name for name, p in inspect.signature(EvolutionWithFlops).parameters.items() if p.kind != p.VAR_KEYWORD]
    assert tuple(own) == search.NNI_TUNER_ONLY


def test_in_process_search_interrupted_mid_round_resumes_to_the_same_table(digits_dir, digits_checkpoint, tmp_path,
                                                                          monkeypatch):
    """Ctrl-C in round 2, then --resume: the candidates scored before are not scored again, and the table is
    the one of a search never interrupted."""
    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 3, num_population: 4, num_select: 2, num_mutation: 1, "
                      "num_crossover: 1, m_prob: 0.1, flops_limit: 330.0e+6, seed: 5}\n")

    def run(output_dir, *extra):
        return search.main(["--search-config", str(config), "--output-dir", str(output_dir), "--search-workers", "1",
                            "--loader", "torch", "--cache-dir", str(tmp_path / "cache"),
                            *digits_args(digits_dir, digits_checkpoint), *extra])

    assert run(tmp_path / "reference")["candidates"] == 12
    scored = []
    score = search._score

    def interrupted_at_the_sixth(candidate):
        if len(scored) == 5:
            raise KeyboardInterrupt
        scored.append(candidate)
        return score(candidate)

    monkeypatch.setattr(search, "_score", interrupted_at_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "search")
    state_file = tmp_path / "search" / "checkpoints" / "search_state.json"
    state = json.loads(state_file.read_text())
    assert (state["rounds_done"], state["candidates_done"], state["finished"]) == (1, 5, False)

    rescored = []

    def recorded(candidate):
        rescored.append(candidate)
        return score(candidate)

    monkeypatch.setattr(search, "_score", recorded)
    assert run(tmp_path / "search", "--resume")["candidates"] == 7
    assert not set(rescored) & set(scored) and len(rescored) == 7

    def table(output_dir):
        with open(output_dir / "checkpoints" / "candidates.csv") as f:
            return [{k: v for k, v in row.items() if k != "parameter_id"} for row in csv.DictReader(f)]

    assert table(tmp_path / "search") == table(tmp_path / "reference")
    state = json.loads(state_file.read_text())
    assert state["finished"] and state["rounds_done"] == 3 and state["candidates_scored"] == 12
    assert state["resumes"][0]["open_in_round"] == 3


def test_in_process_search_names_a_dead_worker_in_one_line(digits_dir, digits_checkpoint, tmp_path, monkeypatch):
    """A worker killed by the system (out of memory) breaks the pool: one clear line, not a traceback."""
    import concurrent.futures.process

    config = tmp_path / "config.yml"
    config.write_text("tuner:\n  classArgs: {max_epochs: 1, num_population: 2, num_select: 1, num_mutation: 0, "
                      "num_crossover: 0, flops_limit: 330.0e+6, seed: 3}\n")

    def broken(*args):
        raise concurrent.futures.process.BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(search, "_run_evolution", broken)
    with pytest.raises(UserError, match=f"a scoring worker process died .*{tmp_path / 'out'}.*fewer "
                                        f"--search-workers"):
        search.main(["--search-config", str(config), "--output-dir", str(tmp_path / "out"), "--search-workers", "1",
                     "--loader", "torch", *digits_args(digits_dir, digits_checkpoint)])
