"""spos/evolution.py, driven as both the NNI tuner and the in-process search drive it and with no NNI: legality,
no duplicates, elitism across rounds, the FLOPs limit, reproducibility, the end of the search, a state that
continues the same search, and bad arguments refused."""
import json
import logging
import random
import subprocess
import sys

import pytest
from conftest import REPO

from network import paper_flops
from spos.evolution import Evolution
from spos.search_space import search_space

SMALL = dict(max_epochs=3, num_population=8, num_select=3, num_mutation=3, num_crossover=3)


def score(candidate):
    """A deterministic accuracy in [0, 1] that favours block 3 early on (so evolution has something to find)."""
    return (sum(c == 3 for c in candidate[:8]) + 0.1 * sum(candidate[8:]) / 3) / 10


def make_evolution(space=None, **kwargs):
    evolution = Evolution(**{**SMALL, **kwargs})
    evolution.set_search_space(space or search_space())
    evolution.start()
    return evolution


def run(evolution, accuracy=score, fail=(), seed=0, stop_after=None):
    """Score every open candidate in a random order (as trials finish), record, advance, until the search is
    over (or ``stop_after`` outcomes). Returns the candidates in the order scored and the closed rounds."""
    rng, scored, closed = random.Random(seed), [], []
    while not evolution.finished:
        candidates = evolution.open_candidates()
        rng.shuffle(candidates)
        for candidate in candidates:
            if stop_after is not None and len(scored) == stop_after:
                return scored, closed
            if candidate in fail:
                evolution.record(candidate, "failed")
            else:
                evolution.record(candidate, "succeeded", accuracy(candidate), accuracy(candidate) / 2)
            scored.append(candidate)
        result = evolution.advance()
        if result is not None:
            closed.append(result)
    return scored, closed


def test_rounds_are_megvii_s_mutation_crossover_and_random_refill():
    evolution = make_evolution()
    scored, closed = run(evolution)
    assert evolution.finished and evolution.error is None and evolution.round == evolution.rounds_done == 3
    assert len(scored) == 24 and [number for number, _ in closed] == [1, 2, 3]
    origins = [evolution.history[c]["origin"] for c in evolution.members(2)]
    assert origins.count("mutation") == 3 and origins.count("crossover") == 3 and origins.count("random") == 2
    for number, parents in closed:  # the best num_select seen so far, best first
        seen = [c for c in evolution.history if evolution.history[c]["round"] <= number]
        assert parents == sorted(seen, key=lambda c: (-score(c), evolution.history[c]["order"]))[:3]


def test_candidates_are_legal_and_never_repeat():
    evolution = make_evolution(max_epochs=4, flops_limit=300e6, m_prob=0.05)
    scored, _ = run(evolution)
    assert len(scored) == len(set(scored)) == 4 * 8
    assert max(paper_flops(c) for c in scored) <= 300e6


def test_parents_are_the_best_seen_in_all_rounds():
    """Round 1 scores high, later rounds low: the parents of round 3 must still be round 1's best (NNI's
    example wrongly took the current round's)."""
    evolution = make_evolution(max_epochs=3, m_prob=0.05)
    first_round = set()

    def accuracy(candidate):
        if evolution.history[candidate]["round"] == 1:
            first_round.add(candidate)
            return 0.5 + score(candidate) / 10
        return score(candidate) / 10

    run(evolution, accuracy)
    elite = sorted(first_round, key=lambda c: -accuracy(c))[:3]
    assert evolution.parents() == elite
    for child in evolution.members(3):
        origin = evolution.history[child]["origin"]
        if origin == "crossover":  # every gene from one of two elite parents
            assert any(all(g in (a, b) for g, a, b in zip(child, p, q)) for p in elite for q in elite)
        elif origin == "mutation":  # a few genes away from an elite parent
            assert min(sum(g != a for g, a in zip(child, p)) for p in elite) <= 8


def test_failed_candidates_have_no_accuracy_and_are_never_parents():
    first = make_evolution().open_candidates()
    evolution = make_evolution()
    run(evolution, fail=set(first[:3]))
    assert [evolution.history[c]["status"] for c in first[:3]] == ["failed"] * 3
    assert all(evolution.history[c]["accuracy"] is not None for c in evolution.parents())


def test_a_round_where_every_candidate_failed_stops_the_search(caplog):
    evolution = make_evolution()
    with caplog.at_level(logging.ERROR, logger="spos.evolution"):
        scored, _ = run(evolution, fail=set(evolution.open_candidates()))
    assert evolution.finished and evolution.round == 1 and len(scored) == 8
    assert "all 8 trials of round 1 failed" in evolution.error and "all 8 trials" in caplog.text


def test_the_same_seed_gives_the_same_search():
    runs = []
    for seed in (7, 7, 8):
        evolution = make_evolution(seed=seed)
        run(evolution, seed=seed * 13)  # results arrive in a different order each run
        runs.append(list(evolution.history))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_a_state_continues_the_same_search():
    """Stopped mid-round 2 and rebuilt from its state() (through JSON, as search_state.json holds it): the
    open candidates are the ones left, and the rest of the search is the one never stopped."""
    reference = make_evolution(max_epochs=4)
    run(reference)
    stopped = make_evolution(max_epochs=4)
    run(stopped, stop_after=11)
    resumed = Evolution(**{**SMALL, "max_epochs": 4})
    resumed.set_search_space(search_space())
    assert resumed.restore(json.loads(json.dumps(stopped.state())), "state.json") == 5
    assert resumed.open_candidates() == stopped.open_candidates()
    run(resumed)
    assert list(resumed.history) == list(reference.history)
    assert [resumed.history[c]["accuracy"] for c in resumed.history] == \
        [reference.history[c]["accuracy"] for c in reference.history]
    other = Evolution(**{**SMALL, "max_epochs": 4, "seed": 1})
    other.set_search_space(search_space())
    with pytest.raises(ValueError, match="state.json: that search has other settings \\(seed 42 there, 1 now\\)"):
        other.restore(stopped.state(), "state.json")


class CountedDraws(Evolution):
    """An Evolution that counts its random draws."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.draws = 0

    def random_candidate(self):
        self.draws += 1
        return super().random_candidate()


def test_an_impossible_limit_is_reported_instead_of_searched(caplog):
    evolution = CountedDraws(**SMALL, flops_limit=1)
    evolution.set_search_space(search_space())
    with caplog.at_level(logging.ERROR, logger="spos.evolution"):
        evolution.start()
    assert evolution.draws == 0  # not one draw: the limit is below the cheapest candidate
    assert evolution.finished and evolution.open_candidates() == []
    assert "flops_limit 1 is below the smallest candidate" in caplog.text


def test_a_limit_few_candidates_meet_gives_up_after_bounded_draws(caplog):
    limit = make_evolution().min_flops() + 2e6  # legal, but almost no random candidate is under it
    evolution = CountedDraws(**SMALL, flops_limit=limit, max_attempts=300)
    evolution.set_search_space(search_space())
    with caplog.at_level(logging.WARNING, logger="spos.evolution"):
        evolution.start()
        run(evolution)
    assert evolution.finished
    assert 0 < evolution.draws <= 300 * SMALL["max_epochs"]  # max_attempts random draws a round at most
    assert "found only" in caplog.text or "no legal candidate" in caplog.text
    assert all(r["flops"] <= limit for r in evolution.history.values())


def test_a_narrowed_search_space_is_respected():
    space = search_space()
    space["LayerChoice1"]["_value"] = ["3"]
    space["LayerChoice20"]["_value"] = ["0", "2"]
    scored, _ = run(make_evolution(space))
    assert all(c[0] == 3 and c[19] in (0, 2) for c in scored)


def test_bad_arguments_and_search_spaces_are_refused():
    with pytest.raises(ValueError, match="num_select"):
        Evolution(num_population=5, num_select=6, num_mutation=1, num_crossover=1)
    with pytest.raises(ValueError, match="num_mutation"):
        Evolution(num_population=10, num_mutation=6, num_crossover=6, num_select=2)
    with pytest.raises(ValueError, match="m_prob"):
        Evolution(m_prob=2)
    with pytest.raises(ValueError, match="flops_limit"):
        Evolution(flops_limit="lots")
    with pytest.raises(ValueError, match="max_epochs must be a positive integer"):
        Evolution(max_epochs=0)
    assert Evolution(flops_limit="330e6").settings.flops_limit == 330e6  # YAML reads 330e6 as text
    with pytest.raises(ValueError, match="'flops_limt' is not a setting of the evolution"):
        Evolution(flops_limt=300e6)
    evolution = Evolution()
    with pytest.raises(ValueError, match="LayerChoice1..LayerChoice20"):
        evolution.set_search_space({"LayerChoice1": {"_type": "layer_choice", "_value": ["0"]}})
    space = search_space()
    space["LayerChoice4"]["_value"] = ["0", "7"]
    with pytest.raises(ValueError, match="LayerChoice4"):
        evolution.set_search_space(space)


def test_the_evolution_imports_no_nni():
    done = subprocess.run([sys.executable, "-c", "import sys, spos.evolution; print('nni' in sys.modules)"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_min_flops_of_a_block_and_channel_space_tries_each_layers_pairs():
    evolution = make_evolution(search_space(channel_search=True))
    # the cheapest candidate: each layer's cheapest (block, scale) pair, the others held
    cheapest = [0] * 40
    for layer in range(20):
        cheapest[layer], cheapest[20 + layer] = min(
            ((b, s) for b in range(4) for s in range(8)),
            key=lambda pair: paper_flops(tuple(cheapest[:layer]) + (pair[0],) + tuple(cheapest[layer + 1:20 + layer])
                                         + (pair[1],) + tuple(cheapest[21 + layer:])))
    assert evolution.min_flops() == paper_flops(tuple(cheapest))
    rng = random.Random(0)
    assert all(paper_flops(tuple(rng.randrange(4) for _ in range(20)) + tuple(rng.randrange(8) for _ in range(20)))
               >= evolution.min_flops() for _ in range(300))
    space = search_space(channel_search=True)
    for layer in range(1, 21):  # only Xception at 1.6x allowed: the layers' pairs, not genes, add up
        space[f"LayerChoice{layer}"]["_value"] = ["3"]
        space[f"ChannelChoice{layer}"]["_value"] = ["1.6"]
    narrowed = make_evolution(space, flops_limit=1e12)
    assert narrowed.min_flops() == paper_flops((3,) * 20 + (7,) * 20)
    assert all(c == (3,) * 20 + (7,) * 20 for c in narrowed.open_candidates())


def latency_table_file(tmp_path, channel_search=False):
    from test_latency import synthetic_table

    path = tmp_path / "latency.json"
    path.write_text(json.dumps(synthetic_table(channel_search)))
    return str(path)


def test_under_a_latency_limit_every_candidate_is_predicted_under_it(tmp_path):
    """A latency limit alone (no FLOPs limit) or with one: every candidate generated is under each, its predicted
    latency kept in its record; the search still finds candidates of every round."""
    from spos import latency

    table_path = latency_table_file(tmp_path)
    table = latency.load_table(table_path)
    fastest, slowest = latency.predict(table, (0,) * 20), latency.predict(table, (3,) * 20)
    limit = fastest + 0.3 * (slowest - fastest)
    for flops_limit in (None, 330e6):
        evolution = make_evolution(flops_limit=flops_limit, latency_limit=limit, latency_table=table_path)
        scored, _ = run(evolution)
        assert evolution.finished and evolution.error is None and len(scored) == 24
        assert all(r["latency_ms"] == pytest.approx(latency.predict(table, c)) and r["latency_ms"] <= limit
                   for c, r in evolution.history.items())
        if flops_limit:
            assert all(r["flops"] <= flops_limit for r in evolution.history.values())
    assert "latency <= " in evolution.describe() and table_path in evolution.describe()


def test_a_latency_limit_nothing_meets_or_a_table_without_the_spaces_widths_is_refused(tmp_path, caplog):
    table_path = latency_table_file(tmp_path)
    with caplog.at_level(logging.ERROR, logger="spos.evolution"):
        evolution = make_evolution(latency_limit=1.0, latency_table=table_path)
    assert evolution.finished and "latency_limit 1 ms is below the fastest candidate of the search space" in \
        caplog.text
    with pytest.raises(ValueError, match="measured without --channel-search, and the search space has channel "
                                         "choices"):
        make_evolution(search_space(channel_search=True), latency_limit=100.0, latency_table=table_path)
    with pytest.raises(ValueError, match="latency_limit and latency_table go together"):
        Evolution(latency_limit=10.0)
