"""spos/pareto.py: the accuracy-cost front of a search, on fixed data and on a search the tuner wrote."""
import csv
import os

import pytest

from spos import pareto
from spos.architecture import load_architecture


def row(choice, flops, latency, accuracy):
    return {"choices": " ".join([str(choice)] * 20), "scales": "", "flops": flops, "latency_ms": latency,
            "accuracy": accuracy, "round": 1}


TABLE = [row(0, 300e6, 12.0, 0.80), row(1, 310e6, 11.0, 0.85), row(2, 320e6, 15.0, 0.84),
         row(3, 330e6, 13.0, 0.90), row(0, 305e6, 16.0, 0.80), row(1, 300e6, 14.0, None)]


def test_the_front_keeps_what_nothing_beats_on_both_cheapest_first():
    assert [r["flops"] for r in pareto.front(TABLE, "flops")] == [300e6, 310e6, 330e6]
    assert [r["latency_ms"] for r in pareto.front(TABLE, "latency_ms")] == [11.0, 13.0]
    assert pareto.front([], "flops") == []
    tied = [row(0, 300e6, 10.0, 0.8), row(1, 300e6, 10.0, 0.9)]  # the same cost: the more accurate only
    assert [r["accuracy"] for r in pareto.front(tied, "flops")] == [0.9]


def test_a_searchs_fronts_are_written_as_architecture_files(tmp_path, capsys):
    from test_evolution import latency_table_file
    from test_tuner import drive, make_tuner

    from spos import latency

    table_path = latency_table_file(tmp_path)
    tuner = make_tuner(tmp_path / "log", max_epochs=2, latency_limit=200.0, latency_table=table_path)
    drive(tuner)
    output = pareto.main([str(tmp_path / "log")])
    with open(os.path.join(output, "pareto.csv")) as f:
        rows = list(csv.DictReader(f))
    for kind, cost in (("flops", "flops"), ("latency", "latency_ms")):
        members = [r for r in rows if r["front"] == kind]
        assert members and [float(r[cost]) for r in members] == sorted(float(r[cost]) for r in members)
        assert [float(r["accuracy"]) for r in members] == sorted(float(r["accuracy"]) for r in members)
        for member in members:
            genes = load_architecture(os.path.join(output, member["file"]))  # what scratch.py --fixed-arc takes
            assert " ".join(map(str, genes)) == member["choices"]
        best = max(tuner.evolution.history.values(), key=lambda r: r["accuracy"] or 0)
        assert float(members[-1]["accuracy"]) == pytest.approx(best["accuracy"], abs=1e-6)  # it ends at the best
    assert latency.load_table(table_path)
    assert "candidates on the front of accuracy against predicted latency (ms)" in capsys.readouterr().out
