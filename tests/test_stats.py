"""spos/stats.py: tau, rho and top-k against scipy on fixed data; the seed-to-seed tau, percentiles and
differences with their bootstrap intervals."""
import math
import random

import pytest
from scipy import stats

from spos import stats as ranking

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


def test_percentile_counts_ties_half():
    assert ranking.percentile(5, [1, 2, 3, 4]) == 100
    assert ranking.percentile(2, [1, 2, 3]) == 50
    assert ranking.percentile(0, [1, 2]) == 0


@pytest.mark.parametrize("tau_ss, simulated", [(0.417, 0.676), (0.332, 0.610), (0.592, 0.784)])
def test_the_attainable_tau_is_what_a_perfect_predictor_reaches_in_simulation(tau_ss, simulated):
    """SPEC section 16's check: 27 architectures, 2 seeds; the formula within 0.05 of the simulation, which this
    one reproduces, and above the seed-to-seed tau itself (a mean of 2 seeds is less noisy than one run)."""
    r1 = ranking.reliability_from_tau(tau_ss)
    formula = ranking.attainable_tau(r1, seeds=2)
    ours = ranking.simulated_attainable_tau(27, 2, r1, draws=1500, seed=1)
    assert abs(formula - ours) < 0.05 and abs(ours - simulated) < 0.02, (formula, ours)
    assert formula > tau_ss
    assert ranking.attainable_tau(r1, seeds=1) == pytest.approx(2 / math.pi * math.asin(math.sqrt(r1)))
    assert ranking.attainable_tau(-0.2, seeds=2) == 0.0  # no architecture signal: nothing to attain


def simulated_runs(rng, architectures, seeds, r1, spread=0.02):
    """True means N(0.8, spread^2) and runs with the seed noise that makes the single-run reliability r1."""
    noise = spread * math.sqrt((1 - r1) / r1)
    truth = [rng.gauss(0.8, spread) for _ in range(architectures)]
    return truth, [[t + rng.gauss(0, noise) for _ in range(seeds)] for t in truth], noise


def test_the_reliability_from_variance_components_agrees_with_the_seed_to_seed_tau():
    truth, runs, noise = simulated_runs(random.Random(2), 400, 3, r1=0.5)
    assert ranking.icc1(runs) == pytest.approx(0.5, abs=0.06)
    assert ranking.reliability_from_tau(ranking.seed_to_seed_tau(runs)) == pytest.approx(0.5, abs=0.06)
    assert ranking.pooled_seed_variance(runs) == pytest.approx(noise ** 2, rel=0.1)
    assert ranking.mean_reliability(0.5, 3) == pytest.approx(0.75)


def coverage(interval_of, trials, rng):
    """The share of ``trials`` simulated data sets whose interval holds the truth: ``interval_of(rng)`` returns
    (truth, (low, high))."""
    held = 0
    for _ in range(trials):
        truth, (low, high) = interval_of(rng)
        held += low <= truth <= high
    return held / trials


def test_intervals_hold_the_truth_about_95_percent_of_the_time_with_two_seeds():
    """Known truth, 2 seeds, the seed variance pooled over 20 random architectures as reproduce.py pools it: each
    interval holds the true value in about 95 % of simulated data sets (a bootstrap over two seeds' own values
    would hold it far less often)."""
    def answer_against_random(rng):
        truth, runs, _ = simulated_runs(rng, 20, 2, r1=0.4)
        answer_truth = 0.82
        answer = [answer_truth + rng.gauss(0, 0.02 * math.sqrt(1.5)) for _ in range(2)]
        variance = ranking.pooled_seed_variance(runs + [answer])
        return answer_truth - 0.8, ranking.mean_difference_interval(answer, runs, variance, resamples=300,
                                                                    seed=rng.randrange(10 ** 6))

    def two_architectures(rng):
        noise = 0.02 * math.sqrt(1.5)
        _, runs, _ = simulated_runs(rng, 20, 2, r1=0.4)
        a, b = [0.83 + rng.gauss(0, noise) for _ in range(2)], [0.81 + rng.gauss(0, noise) for _ in range(2)]
        return 0.02, ranking.difference_interval(a, b, ranking.pooled_seed_variance(runs + [a, b]), resamples=300,
                                                 seed=rng.randrange(10 ** 6))

    rng = random.Random(3)
    assert 0.88 <= coverage(answer_against_random, 200, rng) <= 0.995
    assert 0.88 <= coverage(two_architectures, 200, rng) <= 0.995


def test_the_tau_interval_carries_the_seed_noise_of_the_means():
    """Scores correlated 0.8 with the true means; the tau against 2-seed means is lower (the means are noisy): the
    interval holds that population value about 95 % of the time, and is wider than one that ignores the noise."""
    r1, rho = 0.5, 0.8
    target = 2 / math.pi * math.asin(rho * math.sqrt(ranking.mean_reliability(r1, 2)))

    def tau_of(rng):
        truth, runs, _ = simulated_runs(rng, 25, 2, r1, spread=1.0)
        scores = [rho * t + math.sqrt(1 - rho ** 2) * rng.gauss(0, 1) for t in truth]
        return target, ranking.tau_interval(scores, runs, ranking.pooled_seed_variance(runs), resamples=300,
                                            seed=rng.randrange(10 ** 6))

    assert 0.85 <= coverage(tau_of, 150, random.Random(4)) <= 0.995
    truth, runs, _ = simulated_runs(random.Random(5), 25, 2, r1, spread=1.0)
    scores = [t + random.Random(6).gauss(0, 0.5) for t in truth]
    with_noise = ranking.tau_interval(scores, runs, ranking.pooled_seed_variance(runs), resamples=500)
    without = ranking.tau_interval(scores, runs, 0.0, resamples=500)
    assert with_noise[1] - with_noise[0] > without[1] - without[0]


def test_percentile_interval_holds_the_answers_place_among_the_population():
    def place(rng):
        truth, runs, _ = simulated_runs(rng, 20, 2, r1=0.4)
        answer = [0.81 + rng.gauss(0, 0.02 * math.sqrt(1.5)) for _ in range(2)]
        population = 100 * 0.5 * (1 + math.erf((0.81 - 0.8) / (0.02 * math.sqrt(2))))
        return population, ranking.percentile_interval(answer, runs, ranking.pooled_seed_variance(runs + [answer]),
                                                       resamples=300, seed=rng.randrange(10 ** 6))

    assert 0.85 <= coverage(place, 150, random.Random(7)) <= 1.0
    assert all(math.isnan(v) for v in ranking.percentile_interval([0.9], [[0.8], [0.7]], math.nan))


def test_the_interval_of_tau_between_two_budgets_holds_the_population_value():
    """Two budgets that rank the same true means, with single-run reliabilities 0.5 and 0.8 and 2 seeds each: the
    tau between the two sets of means is (2 / pi) asin(sqrt(rA rB)) in the population, and the interval holds it."""
    ra, rb = ranking.mean_reliability(0.5, 2), ranking.mean_reliability(0.8, 2)
    target = 2 / math.pi * math.asin(math.sqrt(ra * rb))

    def tau_of(rng):
        truth, first, _ = simulated_runs(rng, 10, 2, r1=0.5)
        second = [[t + rng.gauss(0, 0.02 * math.sqrt((1 - 0.8) / 0.8)) for _ in range(2)] for t in truth]
        return target, ranking.means_tau_interval(first, second, ranking.pooled_seed_variance(first),
                                                  ranking.pooled_seed_variance(second), resamples=300,
                                                  seed=rng.randrange(10 ** 6))

    assert coverage(tau_of, 100, random.Random(8)) >= 0.9


def test_an_architecture_drawn_twice_keeps_one_mean_per_budget():
    """Budgets that agree perfectly, with almost no seed noise: every resample ranks alike, so the interval is
    [1, 1]. Were the two copies of an architecture redrawn apart, they would make a coin-flip pair and pull the
    interval below the observed tau of 1."""
    truth, first, _ = simulated_runs(random.Random(9), 10, 2, r1=0.999)
    second = [[t + 0.5 for t in runs] for runs in first]
    variance = ranking.pooled_seed_variance(first)
    assert ranking.kendall_tau(list(map(ranking.mean, first)), list(map(ranking.mean, second))) == 1.0
    assert ranking.means_tau_interval(first, second, variance, variance, resamples=300) == (1.0, 1.0)
