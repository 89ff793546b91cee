"""reproduction/stats.py: tau, rho and top-k against scipy on fixed data; the seed-to-seed tau, percentiles and
differences with their bootstrap intervals."""
import math
import random

import pytest
from scipy import stats

from reproduction import stats as ranking

PAIRS = [
    ([0.91, 0.95, 0.93, 0.97, 0.90, 0.96], [0.93, 0.96, 0.92, 0.98, 0.94, 0.95]),
    ([1, 2, 2, 3, 4, 4, 5], [2, 1, 3, 3, 5, 4, 4]),  # ties in both
    ([0.5, 0.5, 0.7, 0.2], [0.1, 0.3, 0.3, 0.9]),
    ([random.Random(s).random() for s in range(30)], [random.Random(s + 99).random() for s in range(30)]),
]


@pytest.mark.parametrize("x, y", PAIRS)
def test_tau_and_rho_equal_scipys(x, y):
    assert ranking.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert ranking.spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert ranking.ranks(x) == pytest.approx(list(stats.rankdata(x)))


def test_constant_values_have_no_tau_and_identical_orders_have_one():
    assert math.isnan(ranking.kendall_tau([1, 1, 1], [1, 2, 3]))
    assert ranking.kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert ranking.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0


def test_top_k_overlap():
    assert ranking.top_k_overlap([1, 2, 3, 4], [4, 3, 2, 1], 2) == 0.0
    assert ranking.top_k_overlap([1, 2, 3, 4], [0, 5, 6, 7], 3) == 1.0
    assert ranking.top_k_overlap([4, 3, 2, 1], [4, 1, 3, 2], 2) == 0.5


def test_bootstrap_interval_holds_the_statistic_and_narrows_with_more_data():
    rng = random.Random(0)
    x = [rng.random() for _ in range(200)]
    y = [a + rng.gauss(0, 0.3) for a in x]
    low, high = ranking.bootstrap_interval(ranking.kendall_tau, x, y, resamples=300)
    assert low < ranking.kendall_tau(x, y) < high
    small_low, small_high = ranking.bootstrap_interval(ranking.kendall_tau, x[:20], y[:20], resamples=300)
    assert small_high - small_low > high - low


def test_seed_to_seed_tau_is_the_mean_over_pairs_of_seeds():
    consistent = [[0.1, 0.11, 0.12], [0.2, 0.21, 0.22], [0.3, 0.31, 0.32]]  # architecture x seed
    assert ranking.seed_to_seed_tau(consistent) == 1.0
    third_reversed = [[0.1, 0.11, 0.32], [0.2, 0.21, 0.22], [0.3, 0.31, 0.12]]
    assert ranking.seed_to_seed_tau(third_reversed) == pytest.approx((1 - 1 - 1) / 3)
    assert math.isnan(ranking.seed_to_seed_tau([[0.1], [0.2], [0.3]]))  # one seed: no pair
    rng = random.Random(1)
    noisy = [[a + rng.gauss(0, 0.02) for _ in range(2)] for a in (rng.random() * 0.1 for _ in range(30))]
    low, high = ranking.seed_to_seed_interval(noisy, resamples=300)
    assert low < ranking.seed_to_seed_tau(noisy) < high


def test_percentile_counts_ties_half_and_its_interval_holds_seed_and_draw_noise():
    assert ranking.percentile(5, [1, 2, 3, 4]) == 100
    assert ranking.percentile(2, [1, 2, 3]) == 50
    assert ranking.percentile(0, [1, 2]) == 0
    others = [[0.80, 0.81], [0.82, 0.83], [0.84, 0.85]]
    assert ranking.percentile_interval([0.90, 0.91], others, resamples=200) == (100, 100)  # above every run
    overlapping = [[0.80, 0.86], [0.82, 0.88], [0.84, 0.90], [0.79, 0.81]]
    low, high = ranking.percentile_interval([0.83, 0.85], overlapping, resamples=500)
    assert low < ranking.percentile(0.84, [ranking.mean(r) for r in overlapping]) < high


def test_difference_interval_is_over_the_seeds_and_undefined_for_single_runs():
    low, high = ranking.difference_interval([0.90, 0.92], [0.80, 0.82], resamples=500)
    assert 0.08 - 1e-12 <= low < high <= 0.12 + 1e-12 and (low, high) != (0.10, 0.10)
    assert all(math.isnan(v) for v in ranking.difference_interval([0.9], [0.8]))


def test_mean_difference_interval_holds_the_draw_of_architectures_and_their_seeds():
    others = [[0.80, 0.82], [0.84, 0.86], [0.88, 0.90]]
    assert ranking.mean_difference_interval([0.95, 0.95], [[0.85, 0.85]] * 3, resamples=100) == \
        pytest.approx((0.10, 0.10))  # no noise anywhere: no width
    low, high = ranking.mean_difference_interval([0.94, 0.96], others, resamples=1000)
    assert 0.95 - 0.90 - 1e-12 <= low < 0.95 - 0.85 < high <= 0.96 - 0.80 + 1e-12  # within the extreme draws
    seeds_only = ranking.mean_difference_interval([0.94, 0.96], [[0.84, 0.86]] * 3, resamples=1000)
    assert high - low > seeds_only[1] - seeds_only[0]  # the spread between architectures widens it
    for interval in (ranking.mean_difference_interval, ranking.percentile_interval):
        assert all(math.isnan(v) for v in interval([0.9], [[0.8]]))  # one run of each: nothing to resample
