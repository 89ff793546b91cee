"""tuner.EvolutionWithFlops driven as NNI's dispatcher drives it, without NNI running: rounds and their
exports, failed trials, the end of the search; a
trial's end and result in either order and from two threads at once (the order forced, never left to timing);
the bounded wait for a result; search_state.json; resuming a stopped search as `nnictl resume` does."""
import csv
import json
import logging
import os
import random
import threading

import nni
import pytest

from network import paper_flops
from spos.architecture import load_architecture, parse_architecture
from spos.search_space import search_space
from spos.search_state import BEST_FILE, EXPORT_DIR, STATE_FILE, TABLE_FILE, read_state
import tuner as tuner_module
from tuner import EvolutionWithFlops, parse_result, start_timer
from utils import UserError

SMALL = dict(max_epochs=3, num_population=8, num_select=3, num_mutation=3, num_crossover=3)


class ManualTimers:
    """The tuner's timers (tuner.start_timer), fired by the test when it chooses (``fire(key)``, the key being the
    timer's argument), never by the clock; ``seconds[key]``: what each was started with."""

    def __init__(self):
        self.pending, self.seconds = {}, {}

    def __call__(self, seconds, function, key):
        self.seconds[key] = seconds
        timer = self.pending[key] = ManualTimer(self, function, key)
        return timer

    def fire(self, key):
        self.pending.pop(key).function(key)


class ManualTimer:
    def __init__(self, timers, function, key):
        self.timers, self.function, self.key = timers, function, key

    def cancel(self):
        self.timers.pending.pop(self.key, None)


@pytest.fixture(autouse=True)
def timers(monkeypatch):
    """No tuner of these tests starts a real timer: each waits for the test to fire it."""
    manual = ManualTimers()
    monkeypatch.setattr(tuner_module, "start_timer", manual)
    return manual


def test_a_timer_calls_its_function_on_a_thread_of_its_own():
    called = threading.Event()
    timer = start_timer(0.01, lambda key: (threading.current_thread().name != "MainThread" and called.set()), "key")
    assert called.wait(30) and timer.daemon


def score(candidate):
    """A deterministic accuracy in [0, 1] that favours block 3 early on (so evolution has something to find)."""
    return (sum(c == 3 for c in candidate[:8]) + 0.1 * sum(candidate[8:]) / 3) / 10


def make_tuner(tmp_path, resume=False, **kwargs):
    """A tuner as NNI starts one: `nnictl resume` (``resume``) calls load_checkpoint first."""
    tuner = EvolutionWithFlops(**{**SMALL, "output_dir": str(tmp_path), **kwargs})
    if resume:
        tuner.load_checkpoint()
    tuner.update_search_space(search_space())
    return tuner


class FakeNNI:
    """NNI's dispatcher as the tuner sees it (nni/runtime/msg_dispatcher.py): asks for trials with its
    ``send_trial_callback`` as ``st_callback``, delivers each trial's result and end, and after a resume holds
    the trials it re-runs in ``recovered_trial_params`` (nni/recoverable.py) and replays their results through
    ``import_data``. Trials finish in a random order."""

    def __init__(self, tuner, seed=0, first_id=0, recovered=None):
        self.tuner = tuner
        self.rng = random.Random(seed)
        self.next_id = first_id
        self.recovered_trial_params = dict(recovered or {})
        self.running = [(pid, params, True) for pid, params in self.recovered_trial_params.items()]
        self.handed = []  # (parameter id, candidate), in the order handed out
        self.callbacks = 0

    def send_trial_callback(self, parameter_id, parameters):
        self.callbacks += 1
        self._start(parameter_id, parameters)

    def _start(self, parameter_id, parameters):
        self.running.append((parameter_id, parameters, False))
        self.handed.append((parameter_id, parse_architecture(parameters, "test")))

    def request(self, count):
        ids = list(range(self.next_id, self.next_id + count))
        self.next_id += count
        for parameter_id, parameters in zip(ids, self.tuner.generate_multiple_parameters(
                ids, st_callback=self.send_trial_callback)):
            self._start(parameter_id, parameters)

    def finish_one(self, accuracy=score, fail=(), end_first=(), index=None):
        """End one running trial (a random one unless ``index``): result (unless failed), then end."""
        index = self.rng.randrange(len(self.running)) if index is None else index
        parameter_id, parameters, recovered = self.running.pop(index)
        candidate = parse_architecture(parameters, "test")
        value = accuracy(candidate)
        value = {"default": value, "before_recalibration": value / 2}
        if recovered:  # NNI replays a re-run trial's result and drops its end
            self.tuner.import_data([{"parameter": parameters, "value": value}])
            return parameter_id, candidate
        if parameter_id in end_first:  # NNI may report the end before the metric
            self.tuner.trial_end(parameter_id, True)
        if parameter_id not in fail:
            self.tuner.receive_trial_result(parameter_id, parameters, value, trial_job_id=f"job{parameter_id}")
        self.tuner.trial_end(parameter_id, parameter_id not in fail)
        return parameter_id, candidate

    def run(self, concurrency=3, until=None, **finish):
        """Ask for ``concurrency`` trials, then finish one and ask for one more, until nothing runs (or
        ``until(self)`` says stop: the experiment stops with trials running)."""
        self.request(concurrency)
        for _ in range(10_000):
            if not self.running or (until is not None and until(self)):
                return
            self.finish_one(**finish)
            self.request(1)


def drive(tuner, accuracy=score, concurrency=3, fail=(), seed=0, end_first=()):
    """Run the whole search as NNI does. Returns the (parameter id, candidate) pairs in the order handed out,
    and how many came through st_callback."""
    nni_ = FakeNNI(tuner, seed=seed)
    nni_.run(concurrency, accuracy=accuracy, fail=fail, end_first=end_first)
    return nni_.handed, nni_.callbacks


def read_rows(tmp_path):
    with open(os.path.join(tmp_path, EXPORT_DIR, TABLE_FILE), newline="") as f:
        return list(csv.DictReader(f))


def test_a_search_runs_its_rounds_and_exports_them(tmp_path):
    tuner = make_tuner(tmp_path)
    handed, through_callback = drive(tuner)
    assert tuner.evolution.finished and tuner.evolution.round == 3
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
        assert int(row["flops"]) == paper_flops(candidate)
    best = max(rows, key=lambda r: (float(r["accuracy"]), -int(r["parameter_id"])))
    exported = os.path.join(tmp_path, EXPORT_DIR)
    assert load_architecture(os.path.join(exported, BEST_FILE)) == tuple(map(int, best["choices"].split()))
    for round_ in (1, 2, 3):
        files = [load_architecture(os.path.join(exported, f"{round_:03d}_{k:03d}.json")) for k in range(3)]
        scores = [score(c) for c in files]
        assert scores == sorted(scores, reverse=True)
    assert not os.path.exists(os.path.join(exported, "004_000.json"))


def test_a_failed_trial_does_not_stall_its_round(tmp_path):
    tuner = make_tuner(tmp_path)
    handed, _ = drive(tuner, fail={1, 5, 12})
    assert tuner.evolution.finished and len(handed) == 24
    rows = read_rows(tmp_path)
    failed = [r for r in rows if r["status"] == "failed"]
    assert sorted(int(r["parameter_id"]) for r in failed) == [1, 5, 12]
    assert all(r["accuracy"] == "" for r in failed)
    assert all(tuner.evolution.history[c]["accuracy"] is not None for c in tuner.evolution.parents())


def read_search_state(tmp_path):
    return read_state(os.path.join(tmp_path, EXPORT_DIR, STATE_FILE))


def value_of(accuracy):
    return {"default": accuracy, "before_recalibration": accuracy / 2}


ONE_ROUND_OF_FOUR = dict(max_epochs=2, num_population=4, num_select=2, num_mutation=1, num_crossover=1)


def test_a_trial_that_ends_before_its_result_keeps_its_round_open(tmp_path):
    tuner = make_tuner(tmp_path, **ONE_ROUND_OF_FOUR)
    nni_ = FakeNNI(tuner)
    nni_.request(4)
    last_id, last_parameters, _ = nni_.running.pop()
    for _ in range(3):
        nni_.finish_one(index=0)
    tuner.trial_end(last_id, True)  # NNI's assessor thread first, the metric still on its way
    nni_.request(1)  # the freed slot: nothing to hand out while round 1 is open
    assert tuner.evolution.round == 1 and nni_.handed[-1][0] == 3
    state = read_search_state(tmp_path)
    assert state["rounds_done"] == 0 and state["candidates_done"] == 3
    assert [r["status"] for r in state["history"]].count("awaiting result") == 1
    assert len(read_rows(tmp_path)) == 3  # a row only once the outcome is final

    # the result arrives: it counts, round 1 closes with all four, round 2 starts and serves the waiting id
    tuner.receive_trial_result(last_id, last_parameters, value_of(0.99), trial_job_id="late")
    last = parse_architecture(last_parameters, "test")
    assert tuner.evolution.round == 2 and nni_.callbacks == 1
    assert load_architecture(os.path.join(tmp_path, EXPORT_DIR, "001_000.json")) == last  # the best, counted
    rows = read_rows(tmp_path)
    assert len(rows) == 4 and all(r["status"] == "succeeded" and r["accuracy"] for r in rows)
    assert {r["trial_job_id"] for r in rows if r["parameter_id"] == str(last_id)} == {"late"}
    state = read_search_state(tmp_path)
    assert state["rounds"][0] == {"round": 1, "candidates": 4, "scored": 4, "failed": 0, "closed": True}
    assert state["results_after_trial_end"]["count"] == 1
    assert tuner.evolution.history[last]["result_delay_s"] is not None


def test_many_results_after_their_ends_lose_nothing(tmp_path):
    tuner = make_tuner(tmp_path)
    handed, _ = drive(tuner, end_first=set(range(0, 24, 2)))
    assert tuner.evolution.finished and len(handed) == 24
    rows = read_rows(tmp_path)
    assert len(rows) == 24 and len({r["choices"] for r in rows}) == 24
    assert all(r["status"] == "succeeded" and r["accuracy"] for r in rows)
    assert read_search_state(tmp_path)["results_after_trial_end"]["count"] == 12


class GatedLock:
    """Wraps the tuner's lock to see a thread arrive at it (``arrived[thread name]`` is set just before that
    thread blocks on the real lock)."""

    def __init__(self, lock):
        self.lock = lock
        self.arrived = {}

    def __enter__(self):
        name = threading.current_thread().name
        if name in self.arrived:
            self.arrived[name].set()
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


@pytest.mark.parametrize("first", ["trial_end", "receive_trial_result"])
def test_a_trials_end_and_result_from_two_threads_at_once(tmp_path, first):
    """NNI calls trial_end and receive_trial_result from two threads. Force one into the tuner (held inside,
    writing its files) while the other arrives: the other must wait at the lock, and together they must give
    one outcome with the accuracy, and close the round once."""
    tuner = make_tuner(tmp_path, **ONE_ROUND_OF_FOUR)
    nni_ = FakeNNI(tuner)
    nni_.request(4)
    parameter_id, parameters, _ = nni_.running.pop()
    for _ in range(3):
        nni_.finish_one(index=0)
    calls = {"trial_end": lambda: tuner.trial_end(parameter_id, True),
             "receive_trial_result": lambda: tuner.receive_trial_result(parameter_id, parameters, value_of(0.99),
                                                                        trial_job_id="raced")}
    second = next(name for name in calls if name != first)

    gate = tuner._lock = GatedLock(tuner._lock)
    gate.arrived["second"] = threading.Event()
    inside, release, second_done = threading.Event(), threading.Event(), threading.Event()
    save = tuner._save

    def held_save():
        if threading.current_thread().name == "first":
            inside.set()
            assert release.wait(30)
        save()

    tuner._save = held_save
    threads = [threading.Thread(target=calls[first], name="first"),
               threading.Thread(target=lambda: (calls[second](), second_done.set()), name="second")]
    threads[0].start()
    assert inside.wait(30)  # the first call is inside the tuner, holding its lock
    threads[1].start()
    assert gate.arrived["second"].wait(30)  # the second call took the lock too...
    assert not second_done.is_set()  # ...and waits there while the first is inside
    release.set()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()

    candidate = parse_architecture(parameters, "test")
    assert tuner.evolution.history[candidate]["status"] == "succeeded"
    assert tuner.evolution.history[candidate]["accuracy"] == pytest.approx(0.99)
    assert tuner.evolution.round == 2 and tuner.evolution.rounds_done == 1  # round 1 closed once, with all four
    assert load_architecture(os.path.join(tmp_path, EXPORT_DIR, "001_000.json")) == candidate
    rows = read_rows(tmp_path)
    assert len(rows) == 4 and all(r["accuracy"] for r in rows)
    assert [r["trial_job_id"] for r in rows].count("raced") == 1


def test_a_result_that_never_comes_counts_as_failed_after_result_timeout(tmp_path, caplog, timers):
    tuner = make_tuner(tmp_path, result_timeout=0.2, **ONE_ROUND_OF_FOUR)
    nni_ = FakeNNI(tuner)
    nni_.request(4)
    lost_id, lost_parameters, _ = nni_.running.pop()
    for _ in range(3):
        nni_.finish_one(index=0)
    lost = parse_architecture(lost_parameters, "test")
    with caplog.at_level(logging.WARNING, logger="spos.tuner"):
        tuner.trial_end(lost_id, True)  # returns with a timer started: NNI's thread never waits for the result
        assert timers.seconds[lost_id] == 0.2
        assert tuner.evolution.history[lost]["status"] == "awaiting result" and tuner.evolution.round == 1
        timers.fire(lost_id)  # result_timeout passes
        assert tuner.evolution.history[lost]["status"] == "no result"
        assert tuner.evolution.round == 2  # the round closed with three results and one failure
        assert f"the trial of parameter {lost_id} ({' '.join(map(str, lost))}) ended successfully but its " \
               f"result did not reach the tuner within 0.2 s: counted as failed" in caplog.text
        assert [r["status"] for r in read_rows(tmp_path) if r["choices"] == " ".join(map(str, lost))] == \
            ["no result"]
        # the result, after its round closed (its trial ran on: NNI had reported a sibling's end as its own):
        # counted, for the rounds to come; one row for it
        tuner.receive_trial_result(lost_id, lost_parameters, value_of(0.5), trial_job_id="too late")
    assert "came after an end counted it no result: taken (its round 1 closed without it" in caplog.text
    rows = [r for r in read_rows(tmp_path) if r["choices"] == " ".join(map(str, lost))]
    assert len(rows) == 1 and rows[0]["status"] == "succeeded" and float(rows[0]["accuracy"]) == 0.5
    assert lost in tuner.evolution.ranking
    assert tuner.evolution.round == 2 and not tuner.evolution.finished


def test_two_trials_that_swapped_their_parameters_lose_no_result(tmp_path, caplog, timers):
    """NNI 3.0 gives the queued parameters to trials in the order they ask, so two trials started together may
    each run the other's, while each trial's end names the parameter meant for it (what NNI's database and
    web UI show); the result names what the trial ran. Forced: a, b, c, d meant for trials A, B, C, D; A runs
    b and fails, B runs a, C runs d, D runs c, and C's end times out c before D reports it."""
    tuner = make_tuner(tmp_path, **ONE_ROUND_OF_FOUR)
    nni_ = FakeNNI(tuner)
    nni_.request(4)
    (a, pa, _), (b, pb, _), (c, pc, _), (d, pd, _) = nni_.running
    candidate = {i: parse_architecture(p, "test") for i, p in ((a, pa), (b, pb), (c, pc), (d, pd))}
    with caplog.at_level(logging.INFO, logger="spos.tuner"):
        tuner.trial_end(a, False)  # A (running b) failed
        tuner.receive_trial_result(d, pd, value_of(0.4), trial_job_id="C")
        tuner.trial_end(c, True)  # C's end, named c
        timers.fire(c)  # c counted as failed...
        assert tuner.evolution.history[candidate[c]]["status"] == "no result"
        tuner.receive_trial_result(a, pa, value_of(0.6), trial_job_id="B")  # ...and a too: their results come
        tuner.trial_end(b, True)
        tuner.receive_trial_result(c, pc, value_of(0.5), trial_job_id="D")
        tuner.trial_end(d, True)
        assert tuner.evolution.round == 1  # b, whose trial failed, still waits for a result
        timers.fire(b)
    history = tuner.evolution.history
    assert [history[candidate[i]]["status"] for i in (a, b, c, d)] == ["succeeded", "no result", "succeeded",
                                                                       "succeeded"]
    assert [history[candidate[i]]["accuracy"] for i in (a, c, d)] == pytest.approx([0.6, 0.5, 0.4])
    assert "came after an end counted it failed: taken" in caplog.text
    assert "came after an end counted it no result: taken" in caplog.text
    assert tuner.evolution.round == 2 and not timers.pending
    assert read_search_state(tmp_path)["rounds"][0] == {"round": 1, "candidates": 4, "scored": 3, "failed": 1,
                                                        "closed": True}


def test_the_state_file_says_where_the_search_stands(tmp_path):
    tuner = make_tuner(tmp_path)
    state = read_search_state(tmp_path)
    assert (state["round"], state["rounds_done"], state["finished"], state["candidates"]) == (1, 0, False, 8)
    assert state["settings"]["seed"] == 42 and state["error"] is None
    drive(tuner, fail={3})
    state = read_search_state(tmp_path)
    assert state["finished"] and state["error"] is None
    assert (state["round"], state["rounds_done"], state["candidates"], state["candidates_done"]) == (3, 3, 24, 24)
    assert (state["candidates_scored"], state["candidates_failed"]) == (23, 1)
    assert [(r["scored"], r["failed"], r["closed"]) for r in state["rounds"]] == [(7, 1, True), (8, 0, True),
                                                                                 (8, 0, True)]
    best = max(tuner.evolution.ranking, key=score)
    assert state["best"]["choices"] == list(best) and state["best"]["accuracy"] == pytest.approx(score(best))
    assert [tuple(r["choices"]) for r in state["history"]] == list(tuner.evolution.history)
    assert not [name for name in os.listdir(tmp_path / EXPORT_DIR) if name.startswith(".tmp")]


def test_no_more_trials_after_max_epochs(tmp_path):
    tuner = make_tuner(tmp_path, max_epochs=1)
    drive(tuner)
    assert tuner.evolution.finished
    with pytest.raises(nni.NoMoreTrialError):
        tuner.generate_parameters(1000)
    assert tuner.generate_multiple_parameters([1000, 1001], st_callback=lambda *a: None) == []


def test_a_result_that_comes_after_the_search_finished_is_recorded_and_can_become_the_answer(tmp_path, caplog):
    """A trial whose end was reported for a sibling's (NNI 3.0 hands out parameters in the order trials ask) can
    report after the last round closed: its result is kept, in the table, the state and, as the best,
    architecture_final.json."""
    tuner = make_tuner(tmp_path, max_epochs=1)
    handed, _ = drive(tuner, fail={2})
    assert tuner.evolution.finished
    failed = dict(handed)[2]
    assert load_architecture(os.path.join(tmp_path, EXPORT_DIR, BEST_FILE)) != failed
    with caplog.at_level(logging.WARNING, logger="spos.tuner"):
        tuner.receive_trial_result(2, tuner.to_parameters(failed), value_of(0.99), trial_job_id="after the end")
    assert "came after an end counted it failed: taken (the search finished" in caplog.text
    assert "it is the best candidate of the search: architecture_final.json rewritten" in caplog.text
    assert tuner.evolution.history[failed]["status"] == "succeeded"
    rows = [r for r in read_rows(tmp_path) if r["choices"] == " ".join(map(str, failed))]
    assert [(r["status"], float(r["accuracy"]), r["trial_job_id"]) for r in rows] == [
        ("succeeded", 0.99, "after the end")]
    state = read_search_state(tmp_path)
    assert state["finished"] and state["best"]["choices"] == list(failed) and state["candidates_failed"] == 0
    assert load_architecture(os.path.join(tmp_path, EXPORT_DIR, BEST_FILE)) == failed

    # one that is not the best: recorded, the answer kept
    tuner = make_tuner(tmp_path / "second", max_epochs=1)
    handed, _ = drive(tuner, fail={5})
    answer = load_architecture(os.path.join(tmp_path / "second", EXPORT_DIR, BEST_FILE))
    late = dict(handed)[5]
    tuner.receive_trial_result(5, tuner.to_parameters(late), value_of(0.0), trial_job_id="late and poor")
    assert tuner.evolution.history[late]["status"] == "succeeded"
    assert read_search_state(tmp_path / "second")["candidates_scored"] == 8
    assert load_architecture(os.path.join(tmp_path / "second", EXPORT_DIR, BEST_FILE)) == answer


def test_bad_class_arguments_are_refused_with_their_names(tmp_path):
    with pytest.raises(ValueError, match="num_select"):
        EvolutionWithFlops(num_population=5, num_select=6, num_mutation=1, num_crossover=1)
    with pytest.raises(ValueError, match="result_timeout"):
        EvolutionWithFlops(result_timeout=0)
    with pytest.raises(ValueError, match="LayerChoice1..LayerChoice20"):
        EvolutionWithFlops(output_dir=str(tmp_path)).update_search_space({"LayerChoice1": {"_type": "layer_choice",
                                                                                         "_value": ["0"]}})


def test_results_are_read_as_numbers_or_nnis_default_dict():
    assert parse_result(0.5) == (0.5, None)
    assert parse_result({"default": 0.7, "before_recalibration": 0.2}) == (0.7, 0.2)
    assert parse_result({"default": float("nan")}) == (None, None)
    assert parse_result("0.5") == (None, None)
    assert parse_result(True) == (None, None)


def test_an_earlier_search_in_the_same_folder_is_moved_aside(tmp_path):
    drive(make_tuner(tmp_path, max_epochs=1))
    make_tuner(tmp_path, max_epochs=1)  # a new search, not a resume
    moved = [name for name in os.listdir(tmp_path) if name.startswith(EXPORT_DIR + "-")]
    assert len(moved) == 1
    with open(tmp_path / moved[0] / TABLE_FILE, newline="") as f:
        assert len(list(csv.DictReader(f))) == 8
    assert read_state(tmp_path / moved[0] / STATE_FILE)["finished"]
    assert read_rows(tmp_path) == []
    assert not read_search_state(tmp_path)["finished"]


RESUMABLE = dict(max_epochs=4, num_population=6, num_select=2, num_mutation=2, num_crossover=2)


def rows_without_ids(path):
    """The table without NNI's parameter and trial ids (a resumed search hands out new ones)."""
    return [{k: v for k, v in row.items() if k not in ("parameter_id", "trial_job_id")} for row in read_rows(path)]


def test_a_search_stopped_mid_round_and_resumed_evaluates_the_same_candidates(tmp_path):
    reference = make_tuner(tmp_path / "reference", **RESUMABLE)
    drive(reference, seed=1)
    assert reference.evolution.finished

    # the same search, stopped in round 2 with four trials running; from then on only its files are used
    stopped = make_tuner(tmp_path / "search", **RESUMABLE)  # abandoned later: its timers are never fired
    before = FakeNNI(stopped, seed=2)
    before.run(concurrency=4, until=lambda n: stopped.evolution.rounds_done == 1 and sum(
        r["status"] == "succeeded" for r in stopped.evolution.history.values() if r["round"] == 2) >= 2)
    assert stopped.evolution.round == 2 and len(before.running) == 4
    (ended_id, ended, _), (reported_id, reported, _), (rerun_id, rerun, _), (cancelled_id, cancelled, _) = \
        before.running
    stopped.trial_end(ended_id, True)  # ended; its result never reached NNI
    scored_before_stop = {c for c, r in stopped.evolution.history.items() if r["status"] == "succeeded"}
    # what NNI replays on resume: every finished trial's result with the parameters its database recorded,
    # which for two trials started together are each other's; and one result the tuner never got
    replay = [{"parameter": EvolutionWithFlops.to_parameters(c), "value": value_of(score(c)), "trialJobId": f"t{i}"}
              for i, c in enumerate(sorted(scored_before_stop))]
    replay[0]["parameter"], replay[1]["parameter"] = replay[1]["parameter"], replay[0]["parameter"]
    replay.append({"parameter": reported, "value": value_of(score(parse_architecture(reported, "test"))),
                   "trialJobId": "reported just before the stop"})

    resumed = make_tuner(tmp_path / "search", resume=True, **RESUMABLE)  # as `nnictl resume` restarts it
    resumed.import_data(replay)  # then NNI replays the finished trials
    after = FakeNNI(resumed, seed=3, first_id=before.next_id, recovered={rerun_id: rerun})
    after.run(concurrency=4)
    assert resumed.evolution.finished and resumed.evolution.rounds_done == 4

    assert rows_without_ids(tmp_path / "search") == rows_without_ids(tmp_path / "reference")
    handed_after = [c for _, c in after.handed]
    assert len(handed_after) == len(set(handed_after))
    assert not set(handed_after) & scored_before_stop  # nothing with a result is handed out again
    # the candidates of round 2 without an outcome are evaluated again, except the one NNI re-runs
    again = {parse_architecture(p, "test") for p in (ended, cancelled, reported)}
    assert again <= set(handed_after)
    (resume,) = read_search_state(tmp_path / "search")["resumes"]
    assert resume["open_in_round"] == 6 - len(scored_before_stop - set(reference.evolution.members(1)))
    assert parse_architecture(rerun, "test") not in handed_after
    assert resume["trials_nni_resumes"] == 1
    assert resume["replayed"] == {"records": len(replay) + 1, "agree": len(replay) - 3,
                                  "disagree": 2, "ignored": 1, "from trials NNI re-ran": 1}


def test_a_resume_needs_the_state_and_the_same_settings(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / EXPORT_DIR}: no {STATE_FILE} there"):
        make_tuner(tmp_path, resume=True)
    drive(make_tuner(tmp_path, **RESUMABLE))
    with pytest.raises(ValueError, match=f"{tmp_path / EXPORT_DIR / STATE_FILE}: that search has other settings "
                                         f"\\(seed 42 there, 7 now\\)"):
        make_tuner(tmp_path, **RESUMABLE, seed=7, resume=True)
    space = search_space()
    space["LayerChoice1"]["_value"] = ["0"]
    with pytest.raises(ValueError, match="another search space"):
        resumed = EvolutionWithFlops(**RESUMABLE, output_dir=str(tmp_path))
        resumed.load_checkpoint()
        resumed.update_search_space(space)
    state_file = tmp_path / EXPORT_DIR / STATE_FILE
    complete = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**complete, "random_state": None}))
    with pytest.raises(ValueError, match=f"{state_file}: not a complete search state"):
        make_tuner(tmp_path, **RESUMABLE, resume=True)
    state_file.write_text("{\"rounds\": 3}")
    with pytest.raises(UserError, match=f"{state_file}: not a search state of format 1"):
        make_tuner(tmp_path, **RESUMABLE, resume=True)


def test_a_finished_search_resumed_hands_out_nothing(tmp_path):
    drive(make_tuner(tmp_path, **RESUMABLE))
    rows = read_rows(tmp_path)
    resumed = make_tuner(tmp_path, **RESUMABLE, resume=True)
    assert resumed.evolution.finished and resumed.evolution.rounds_done == 4
    assert resumed.generate_multiple_parameters([100, 101], st_callback=lambda *a: None) == []
    assert read_rows(tmp_path) == rows


def test_nnictl_resume_without_a_state_file_is_refused(tmp_path):
    """An experiment whose tuner wrote no search_state.json: NNI's replay alone cannot rebuild the search
    (it pairs some results with the wrong candidates), so the tuner says so instead of starting over."""
    resumed = EvolutionWithFlops(**RESUMABLE, output_dir=str(tmp_path))
    resumed.load_checkpoint()
    with pytest.raises(ValueError, match=f"no {STATE_FILE} there, so no search to resume \\(an experiment whose "
                                         f"tuner did not write it cannot be continued"):
        resumed.update_search_space(search_space())


def test_a_trial_nni_re_runs_that_never_reports_counts_as_failed_after_its_timeout(tmp_path, caplog, timers):
    """NNI reports no end for the trials it re-runs after a resume: if one never reports, its timer (not a
    waiting NNI thread) counts it as failed and the round goes on."""
    stopped = make_tuner(tmp_path, **ONE_ROUND_OF_FOUR)  # abandoned later: its timers are never fired
    before = FakeNNI(stopped)
    before.request(4)
    for _ in range(3):
        before.finish_one(index=0)
    ((rerun_id, rerun, _),) = before.running  # running when NNI stopped

    resumed = EvolutionWithFlops(**ONE_ROUND_OF_FOUR, output_dir=str(tmp_path), resumed_trial_timeout=5)
    resumed.load_checkpoint()
    resumed.update_search_space(search_space())
    resumed.import_data([])
    after = FakeNNI(resumed, first_id=4, recovered={rerun_id: rerun})
    after.request(2)
    assert after.handed == [] and resumed.evolution.round == 1  # its one open candidate is NNI's to re-run
    candidate = parse_architecture(rerun, "test")
    assert timers.seconds[candidate] == 5
    with caplog.at_level(logging.WARNING, logger="spos.tuner"):
        timers.fire(candidate)
    assert resumed.evolution.history[candidate]["status"] == "no result"
    assert f"the trial NNI re-ran for {' '.join(map(str, candidate))} (parameter {rerun_id}) sent no result " \
           f"within 5 s of the resume: counted as failed" in caplog.text
    assert resumed.evolution.round == 2 and after.callbacks == 2  # round 2 began and served the two waiting requests


def test_a_block_and_channel_search_hands_out_both_genes_and_resumes_with_them(tmp_path):
    def make(folder, resume=False):
        tuner = EvolutionWithFlops(**{**SMALL, "output_dir": str(folder)})
        if resume:
            tuner.load_checkpoint()
        tuner.update_search_space(search_space(channel_search=True))
        return tuner

    reference = make(tmp_path / "reference")
    handed, _ = drive(reference, seed=1)
    assert reference.evolution.finished and len(handed) == 24
    assert all(len(candidate) == 40 for _, candidate in handed)
    assert {s for _, candidate in handed for s in candidate[20:]} == set(range(8))
    parameters = EvolutionWithFlops.to_parameters(handed[0][1])
    assert parameters["ChannelChoice1"] == {"_value": ("0.2", "0.4", "0.6", "0.8", "1.0", "1.2", "1.4", "1.6")[
        handed[0][1][20]], "_idx": handed[0][1][20]}
    # mutation and crossover change the scales too: children whose blocks equal a parent's differ in scales
    history = reference.evolution.history
    later = [c for c, r in history.items() if r["origin"] in ("mutation", "crossover")]
    assert any(c[20:] not in {p[20:] for p in history if history[p]["round"] == 1} for c in later)
    rows = read_rows(tmp_path / "reference")
    for row in rows:
        candidate = tuple(map(int, row["choices"].split() + row["scales"].split()))
        assert len(candidate) == 40 and int(row["flops"]) == paper_flops(candidate) <= 330e6
    best = max(rows, key=lambda r: (float(r["accuracy"]), -int(r["parameter_id"])))
    assert load_architecture(os.path.join(tmp_path / "reference", EXPORT_DIR, BEST_FILE)) == tuple(
        map(int, best["choices"].split() + best["scales"].split()))
    state = read_search_state(tmp_path / "reference")
    assert all(len(entry["scales"]) == 20 for entry in state["history"]) and len(state["best"]["scales"]) == 20

    # stopped after round 1, resumed: the same search as the one never stopped
    stopped = make(tmp_path / "search")  # abandoned after round 1: its timers are never fired
    FakeNNI(stopped, seed=2).run(concurrency=1, until=lambda n: stopped.evolution.rounds_done == 1)
    resumed = make(tmp_path / "search", resume=True)
    drive(resumed, seed=3)
    assert rows_without_ids(tmp_path / "search") == rows_without_ids(tmp_path / "reference")


def test_a_round_under_a_latency_limit_hands_out_only_candidates_under_it(tmp_path):
    """The latency limit and table as the tuner's class arguments: what it hands NNI is under the limit as the
    table predicts it, and candidates.csv and search_state.json carry each prediction."""
    from test_evolution import latency_table_file

    from spos import latency

    table_path = latency_table_file(tmp_path)
    table = latency.load_table(table_path)
    limit = latency.predict(table, (0,) * 20) + 0.3 * (latency.predict(table, (3,) * 20)
                                                       - latency.predict(table, (0,) * 20))
    tuner = make_tuner(tmp_path / "search", max_epochs=2, latency_limit=limit, latency_table=table_path)
    handed, _ = drive(tuner)
    assert tuner.evolution.finished and len(handed) == 16
    assert all(latency.predict(table, candidate) <= limit for _, candidate in handed)
    rows = read_rows(tmp_path / "search")
    assert all(float(r["latency_ms"]) == pytest.approx(latency.predict(table, tuple(map(int, r["choices"].split()))),
                                                        abs=1e-5) for r in rows)
    state = read_search_state(tmp_path / "search")
    assert state["settings"]["latency_limit"] == limit and state["best"]["latency_ms"] <= limit
