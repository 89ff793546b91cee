"""reproduction/comparison.py: the comparison's statistics from a table whose truth is known, and its figure."""
import math
import random

import pytest
from conftest import assert_drawn_png

from reproduction.architectures import RANDOM
from reproduction.comparison import plot, statistics
from spos.stats import kendall_tau, mean


def table(seed=0, noise=0.01):
    """An answer 3 points above 12 random architectures whose supernet scores follow their true means, a
    one-choice network 1 point below the answer; 3 seeds each."""
    rng = random.Random(seed)

    def row(name, role, truth, score):
        return {"name": name, "role": role, "flops": 320e6, "score": score, "score_before": None if score is None
                else score - 0.2 + rng.gauss(0, 0.05), "runs": [truth + rng.gauss(0, noise) for _ in range(3)]}

    truths = [0.80 + 0.004 * i for i in range(12)]
    return ([row("answer", "search's answer", 0.87, 0.9), row("one_choice1", "all Shuffle 5x5", 0.86, None)]
            + [row(f"random{i:02d}", RANDOM, truth, truth + rng.gauss(0, 0.003)) for i, truth in enumerate(truths)])


def test_the_statistics_say_what_the_table_holds():
    rows, values = statistics(table())
    labels = [label for label, _, _ in rows]
    assert labels[:3] == ["answer's percentile among the 12 random architectures of its band",
                          "answer - the random architectures' mean (points)",
                          "answer - all Shuffle 5x5 at 320.0M FLOPs (points)"]
    assert values["percentile"] == 100 and values["above_random"] == pytest.approx(0.87 - 0.822, abs=0.01)
    assert values["above all Shuffle 5x5"] == pytest.approx(0.01, abs=0.015)
    # the supernet's tau is over the random ones only: the answer and the one-choice network are not drawn
    randoms = table()[2:]
    assert values["tau"] == kendall_tau([r["score"] for r in randoms], [mean(r["runs"]) for r in randoms])
    assert values["tau"] > values["tau_before"]  # recalibration's scores follow the truth, the raw ones barely
    assert 0 < values["tau"] <= 1 and 0 < values["attainable"] <= 1 and 0 < values["tau_fraction"]
    assert values["seed_sd"] == pytest.approx(0.01, rel=0.35)
    assert values["r1_tau"] == pytest.approx(values["r1_icc"], abs=0.25)  # two estimates of one reliability
    assert "Kendall tau over all 13 with a supernet score" in labels[-1]  # the one-choice network has none
    interval = dict((label, bounds) for label, _, bounds in rows)[labels[1]]
    low, high = (float(v) for v in interval.strip("[]").split(", "))
    assert low < 100 * values["above_random"] < high


def test_with_one_seed_the_noise_statistics_are_not_given():
    one_seed = [{**row, "runs": row["runs"][:1]} for row in table()]
    rows, values = statistics(one_seed)
    assert math.isnan(values["seed_to_seed"]) and dict((r[0], r[2]) for r in rows)[rows[0][0]] == "n/a"


def test_the_figure_shows_every_group(tmp_path):
    plot(tmp_path / "comparison.png", table(), (313e6, 330e6), "test")
    assert_drawn_png(tmp_path / "comparison.png", (1210, 506), colours=[(214, 39, 40), (31, 119, 180)])
