"""plot_search.py on a search the real tuner wrote: it finds the table from the experiment's folders, says how
far the search got from search_state.json (never from the table's rows), and writes a PNG."""
import os

import pytest
from conftest import assert_drawn_png
from test_tuner import FakeNNI, make_tuner

import plot_search
from spos.search_state import EXPORT_DIR, STATE_FILE, read_table
from utils import UserError

FOUR_ROUNDS_OF_TEN = dict(max_epochs=4, num_population=10, num_select=3, num_mutation=4, num_crossover=4)


def test_the_plot_says_how_far_the_search_got(tmp_path):
    tuner = make_tuner(tmp_path / "log", **FOUR_ROUNDS_OF_TEN)  # as under ~/nni-experiments/<id>/log
    nni_ = FakeNNI(tuner)
    nni_.run(concurrency=2, until=lambda n: tuner.evolution.rounds_done == 2)
    table_path = plot_search.find_table(str(tmp_path))
    assert table_path == os.path.join(tmp_path, "log", EXPORT_DIR, "candidates.csv")
    table, state = read_table(table_path), plot_search.find_state(table_path)
    best = max(table, key=lambda row: row["accuracy"] or 0)
    assert "candidates in 2 rounds (running: round 3 of 4)" in plot_search.title(table, state, best)

    while nni_.running:  # the rest of the search
        nni_.finish_one()
        nni_.request(1)
    assert tuner.evolution.finished
    output = plot_search.main([str(tmp_path / "log"), "-o", str(tmp_path / "search.png")])
    # three panels (the trials reported accuracies before recalibration), the best marked by a red star
    assert_drawn_png(output, (3 * 572, 484), colours=[(255, 0, 0)])
    table, state = read_table(table_path), plot_search.find_state(table_path)
    best = max(table, key=lambda row: row["accuracy"])
    assert plot_search.title(table, state, best).startswith("SPOS evolution: 40 candidates in 4 rounds; best ")

    os.remove(os.path.join(tmp_path, "log", EXPORT_DIR, STATE_FILE))  # a table copied elsewhere: no claim
    assert "40 candidates in the table, rounds 1-4" in plot_search.title(table, plot_search.find_state(table_path),
                                                                          best)


def test_the_plot_refuses_what_is_not_a_search(tmp_path):
    with pytest.raises(UserError, match="no search inside"):
        plot_search.find_table(str(tmp_path))
    with pytest.raises(UserError, match="no such file or folder"):
        plot_search.find_table(str(tmp_path / "missing"))
