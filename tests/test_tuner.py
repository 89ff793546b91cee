"""tuner.EvolutionWithFlops driven as NNI's dispatcher drives it, without NNI running: legality, no
duplicates, elitism across rounds, the FLOPs limit, failed trials, reproducibility, the end of the search."""
import csv
import logging
import os
import random
import time

import nni
import pytest

from architecture import load_architecture, parse_architecture
from search_space import search_space
from tuner import BEST_FILE, EXPORT_DIR, TABLE_FILE, EvolutionWithFlops, parse_result, reference_flops_model

SMALL = dict(max_epochs=3, num_population=8, num_select=3, num_mutation=3, num_crossover=3)


def score(candidate):
    """A deterministic accuracy in [0, 1] that favours block 3 early on (so evolution has something to find)."""
    return (sum(c == 3 for c in candidate[:8]) + 0.1 * sum(candidate[8:]) / 3) / 10


def make_tuner(tmp_path, **kwargs):
    tuner = EvolutionWithFlops(**{**SMALL, "output_dir": str(tmp_path), **kwargs})
    tuner.update_search_space(search_space())
    return tuner


def drive(tuner, accuracy=score, concurrency=3, fail=(), seed=0, end_first=()):
    """Run the search as NNI does: ask for `concurrency` trials, finish one at a time (in a random order),
    report its result (unless its parameter id is in `fail`) and its end, ask for one more. Returns the
    (parameter id, candidate) pairs in the order handed out, and how many came through st_callback."""
    rng = random.Random(seed)
    handed, running, callbacks = [], [], []
    next_id = 0

    def callback(parameter_id, parameters):
        callbacks.append(parameter_id)
        running.append((parameter_id, parameters))
        handed.append((parameter_id, parse_architecture(parameters, "test")))

    def request(count):
        nonlocal next_id
        ids = list(range(next_id, next_id + count))
        next_id += count
        for parameter_id, parameters in zip(ids, tuner.generate_multiple_parameters(ids, st_callback=callback)):
            running.append((parameter_id, parameters))
            handed.append((parameter_id, parse_architecture(parameters, "test")))

    request(concurrency)
    for _ in range(10_000):
        if not running:
            break
        parameter_id, parameters = running.pop(rng.randrange(len(running)))
        candidate = parse_architecture(parameters, "test")
        if parameter_id in end_first:  # NNI may report the end before the metric
            tuner.trial_end(parameter_id, True)
        if parameter_id not in fail:
            value = accuracy(candidate)
            tuner.receive_trial_result(parameter_id, parameters, {"default": value, "before_recalibration": value / 2},
                                       trial_job_id=f"job{parameter_id}")
        tuner.trial_end(parameter_id, parameter_id not in fail)
        request(1)
    return handed, len(callbacks)


def read_rows(tmp_path):
    with open(os.path.join(tmp_path, EXPORT_DIR, TABLE_FILE), newline="") as f:
        return list(csv.DictReader(f))


def test_a_search_runs_its_rounds_and_exports_them(tmp_path):
    tuner = make_tuner(tmp_path)
    handed, through_callback = drive(tuner)
    assert tuner.finished and tuner.round == 3
    assert len(handed) == 3 * 8
    assert through_callback > 0  # ids asked for at a round's end were served when the next round began
    rows = read_rows(tmp_path)
    assert [int(r["round"]) for r in rows].count(2) == 8 and len(rows) == 24
    assert all(r["status"] == "succeeded" and r["trial_job_id"] for r in rows)
    origins = [r["origin"] for r in rows if r["round"] == "2"]
    assert origins.count("mutation") == 3 and origins.count("crossover") == 3 and origins.count("random") == 2
    for row in rows:
        candidate = tuple(map(int, row["choices"].split()))
        assert float(row["accuracy"]) == pytest.approx(score(candidate), abs=1e-6)
        assert float(row["accuracy_before_recalibration"]) == pytest.approx(score(candidate) / 2, abs=1e-6)
        assert int(row["flops"]) == reference_flops_model().get_candidate_flops(candidate)
    best = max(rows, key=lambda r: (float(r["accuracy"]), -int(r["parameter_id"])))
    exported = os.path.join(tmp_path, EXPORT_DIR)
    assert load_architecture(os.path.join(exported, BEST_FILE)) == tuple(map(int, best["choices"].split()))
    for round_ in (1, 2, 3):
        files = [load_architecture(os.path.join(exported, f"{round_:03d}_{k:03d}.json")) for k in range(3)]
        scores = [score(c) for c in files]
        assert scores == sorted(scores, reverse=True)
    assert not os.path.exists(os.path.join(exported, "004_000.json"))


def test_candidates_are_legal_and_never_repeat(tmp_path):
    tuner = make_tuner(tmp_path, max_epochs=4, flops_limit=300e6, m_prob=0.05)
    handed, _ = drive(tuner)
    candidates = [c for _, c in handed]
    assert len(candidates) == len(set(candidates)) == 4 * 8
    assert max(reference_flops_model().get_candidate_flops(c) for c in candidates) <= 300e6
    assert len({pid for pid, _ in handed}) == len(handed)


def test_parents_are_the_best_seen_in_all_rounds(tmp_path):
    """Round 1 scores high, later rounds low: the parents of round 3 must still be round 1's best (NNI's
    example wrongly took the current round's)."""
    tuner = make_tuner(tmp_path, max_epochs=3, m_prob=0.05)
    first_round = set()

    def accuracy(candidate):
        if tuner.history[candidate]["round"] == 1:
            first_round.add(candidate)
            return 0.5 + score(candidate) / 10
        return score(candidate) / 10

    drive(tuner, accuracy)
    elite = sorted(first_round, key=lambda c: -accuracy(c))[:3]
    assert tuner.parents() == elite
    third = [c for c, r in tuner.history.items() if r["round"] == 3]
    for child in third:
        origin = tuner.history[child]["origin"]
        if origin == "crossover":  # every gene from one of two elite parents
            assert any(all(g in (a, b) for g, a, b in zip(child, p, q)) for p in elite for q in elite)
        elif origin == "mutation":  # a few genes away from an elite parent
            assert min(sum(g != a for g, a in zip(child, p)) for p in elite) <= 8


def test_a_failed_trial_does_not_stall_its_round(tmp_path):
    tuner = make_tuner(tmp_path)
    handed, _ = drive(tuner, fail={1, 5, 12})
    assert tuner.finished and len(handed) == 24
    rows = read_rows(tmp_path)
    failed = [r for r in rows if r["status"] == "failed"]
    assert sorted(int(r["parameter_id"]) for r in failed) == [1, 5, 12]
    assert all(r["accuracy"] == "" for r in failed)
    assert all(tuner.history[c]["accuracy"] is not None for c in tuner.parents())


def test_a_result_after_the_trial_end_is_still_recorded(tmp_path, caplog):
    tuner = make_tuner(tmp_path, max_epochs=2)
    with caplog.at_level(logging.WARNING, logger="spos.tuner"):
        handed, _ = drive(tuner, end_first={2})
    assert tuner.finished and len(handed) == 16
    (candidate,) = [c for pid, c in handed if pid == 2]
    assert tuner.history[candidate]["accuracy"] == pytest.approx(score(candidate))
    statuses = [r["status"] for r in read_rows(tmp_path) if r["parameter_id"] == "2"]
    assert statuses == ["no result", "succeeded (late)"]
    assert "late result" in caplog.text


def test_a_round_where_every_trial_failed_stops_the_search(tmp_path, caplog):
    tuner = make_tuner(tmp_path)
    with caplog.at_level(logging.ERROR, logger="spos.tuner"):
        handed, _ = drive(tuner, fail=set(range(100)))
    assert tuner.finished and tuner.round == 1 and len(handed) == 8
    assert "all 8 trials of round 1 failed" in caplog.text


def test_the_same_seed_gives_the_same_search(tmp_path):
    runs = []
    for seed, folder in ((7, "a"), (7, "b"), (8, "c")):
        tuner = make_tuner(tmp_path / folder, seed=seed)
        handed, _ = drive(tuner, seed=seed * 13)  # results arrive in a different order each run
        runs.append(sorted((tuner.history[c]["round"], tuner.history[c]["order"], c) for _, c in handed))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_no_more_trials_after_max_epochs(tmp_path):
    tuner = make_tuner(tmp_path, max_epochs=1)
    drive(tuner)
    assert tuner.finished
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(1000)
    assert tuner.generate_multiple_parameters([1000, 1001], st_callback=lambda *a: None) == []


def test_an_impossible_limit_is_reported_instead_of_searched(tmp_path, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="spos.tuner"):
        tuner = make_tuner(tmp_path, flops_limit=1)
    assert time.monotonic() - started < 30
    assert tuner.finished
    assert "flops_limit 1 is below the smallest candidate" in caplog.text
    assert tuner.generate_multiple_parameters([0, 1, 2], st_callback=lambda *a: None) == []


def test_a_limit_few_candidates_meet_gives_up_after_bounded_draws(tmp_path, caplog):
    probe = make_tuner(tmp_path / "probe")
    limit = probe.min_flops() + 2e6  # legal, but almost no random candidate is under it
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="spos.tuner"):
        tuner = make_tuner(tmp_path / "tight", flops_limit=limit, max_attempts=300)
        drive(tuner)
    assert time.monotonic() - started < 60
    assert tuner.finished
    assert "found only" in caplog.text or "no legal candidate" in caplog.text
    assert all(r["flops"] <= limit for r in tuner.history.values())


def test_a_narrowed_search_space_is_respected(tmp_path):
    space = search_space()
    space["LayerChoice1"]["_value"] = ["3"]
    space["LayerChoice20"]["_value"] = ["0", "2"]
    tuner = EvolutionWithFlops(**SMALL, output_dir=str(tmp_path))
    tuner.update_search_space(space)
    handed, _ = drive(tuner)
    assert all(c[0] == 3 and c[19] in (0, 2) for _, c in handed)


def test_bad_class_arguments_and_search_spaces_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_select"):
        EvolutionWithFlops(num_population=5, num_select=6, num_mutation=1, num_crossover=1)
    with pytest.raises(ValueError, match="num_mutation"):
        EvolutionWithFlops(num_population=10, num_mutation=6, num_crossover=6, num_select=2)
    with pytest.raises(ValueError, match="m_prob"):
        EvolutionWithFlops(m_prob=2)
    with pytest.raises(ValueError, match="flops_limit"):
        EvolutionWithFlops(flops_limit="lots")
    assert EvolutionWithFlops(flops_limit="330e6").flops_limit == 330e6  # YAML reads 330e6 as text
    tuner = EvolutionWithFlops(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="LayerChoice1..LayerChoice20"):
        tuner.update_search_space({"LayerChoice1": {"_type": "layer_choice", "_value": ["0"]}})
    space = search_space()
    space["LayerChoice4"]["_value"] = ["0", "7"]
    with pytest.raises(ValueError, match="LayerChoice4"):
        tuner.update_search_space(space)


def test_results_are_read_as_numbers_or_nnis_default_dict():
    assert parse_result(0.5) == (0.5, None)
    assert parse_result({"default": 0.7, "before_recalibration": 0.2}) == (0.7, 0.2)
    assert parse_result({"default": float("nan")}) == (None, None)
    assert parse_result("0.5") == (None, None)
    assert parse_result(True) == (None, None)


def test_an_earlier_search_in_the_same_folder_is_moved_aside(tmp_path):
    drive(make_tuner(tmp_path, max_epochs=1))
    make_tuner(tmp_path, max_epochs=1)
    moved = [name for name in os.listdir(tmp_path) if name.startswith(EXPORT_DIR + "-")]
    assert len(moved) == 1
    with open(tmp_path / moved[0] / TABLE_FILE, newline="") as f:
        assert len(list(csv.DictReader(f))) == 8
    assert read_rows(tmp_path) == []
