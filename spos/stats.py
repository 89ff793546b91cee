"""Statistics in plain Python (tested against scipy's where scipy has them): Kendall tau, Spearman rho, top-k
overlap; for the reproduction (reproduction/), the seed-to-seed tau of stand-alone runs, the reliability of their
means and the tau a perfect predictor attains against them, an architecture's percentile among others, and intervals
that carry the seed noise (a parametric bootstrap); Kendall tau for the latency table's check too."""
import math
import random


def ranks(values):
    """Average ranks (1-based; ties share the mean of their positions), as scipy.stats.rankdata."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            result[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return result


def kendall_tau(x, y):
    """Kendall's tau-b (ties in either variable accounted for, as scipy.stats.kendalltau's default); nan when
    either variable is constant."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau of {len(x)} and {len(y)} values")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else math.nan


def spearman_rho(x, y):
    """Spearman's rho: Pearson's correlation of the average ranks; nan when either variable is constant."""
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    covariance = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    spread = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return covariance / spread if spread else math.nan


def top_k_overlap(x, y, k):
    """The share of the k best by ``x`` that are among the k best by ``y`` (ties broken by position)."""
    best_x = set(sorted(range(len(x)), key=lambda i: (-x[i], i))[:k])
    best_y = set(sorted(range(len(y)), key=lambda i: (-y[i], i))[:k])
    return len(best_x & best_y) / k


def bootstrap_interval(statistic, x, y, resamples=2000, level=0.95, seed=0):
    """Percentile interval of ``statistic(x, y)`` over resamplings of the pairs (with replacement); resamples
    where it is undefined (all values tied) are left out."""
    pairs = list(zip(x, y))
    return bootstrap(lambda rng: statistic(*zip(*resample(rng, pairs))), resamples, level, seed)


def bootstrap(draw, resamples=2000, level=0.95, seed=0):
    """Percentile interval of ``draw(rng)``, one value of the statistic on data resampled with ``rng`` per call;
    nan values (the statistic undefined on that resample) are left out."""
    rng = random.Random(seed)
    values = sorted(v for v in (draw(rng) for _ in range(resamples)) if not math.isnan(v))
    if not values:
        return math.nan, math.nan
    low = values[int((1 - level) / 2 * (len(values) - 1))]
    high = values[int((1 + level) / 2 * (len(values) - 1))]
    return low, high


def resample(rng, items):
    """As many of ``items`` as there are, drawn with replacement."""
    return [items[rng.randrange(len(items))] for _ in items]


def mean(values):
    return sum(values) / len(values)


def seed_to_seed_tau(accuracies):
    """The mean over pairs of seeds (i < j) of Kendall tau between seed i's and seed j's accuracies of the
    architectures (``accuracies[a][s]``: architecture a, seed s): how well one run's ranking predicts another's,
    the ceiling for any predictor of one run. nan with fewer than two seeds."""
    seeds = min(len(a) for a in accuracies)
    taus = [kendall_tau([a[i] for a in accuracies], [a[j] for a in accuracies])
            for i in range(seeds) for j in range(i + 1, seeds)]
    taus = [t for t in taus if not math.isnan(t)]
    return mean(taus) if taus else math.nan


def seed_to_seed_interval(accuracies, **kwargs):
    """Bootstrap interval of ``seed_to_seed_tau`` over the architectures."""
    return bootstrap(lambda rng: seed_to_seed_tau(resample(rng, accuracies)), **kwargs)


def percentile(value, others):
    """The share (%) of ``others`` below ``value``, ties counting half: 100 when it beats them all."""
    below = sum(o < value for o in others) + 0.5 * sum(o == value for o in others)
    return 100 * below / len(others)


# Reliability of stand-alone accuracies (SPEC section 16). A run's accuracy is its architecture's mean plus seed
# noise; the single-run reliability r1 is the share of the variance between runs that is the architectures'. Under
# normality Kendall's tau and Pearson's r relate as tau = (2 / pi) asin(r), so two single runs of the same
# architectures have tau = (2 / pi) asin(r1), the mean of S seeds has reliability rS = S r1 / (1 + (S - 1) r1)
# (Spearman-Brown), and a perfect predictor (the architectures' true means) reaches tau = (2 / pi) asin(sqrt(rS))
# against the S-seed means: the attainable tau, the ceiling any predictor of those means is measured against.

def reliability_from_tau(tau_ss):
    """r1 from the seed-to-seed tau (two single runs): sin(pi tau / 2)."""
    return math.sin(math.pi * tau_ss / 2) if not math.isnan(tau_ss) else math.nan


def icc1(accuracies):
    """r1 from the variance components instead (one-way random-effects ANOVA, ICC(1)): ``accuracies[a][s]``,
    architecture a, seed s (at least 2 seeds each; unequal counts take the usual mean group size k0)."""
    groups = [a for a in accuracies if len(a) >= 2]
    if len(groups) < 2:
        return math.nan
    n, total = sum(len(g) for g in groups), sum(sum(g) for g in groups)
    grand = total / n
    between = sum(len(g) * (mean(g) - grand) ** 2 for g in groups) / (len(groups) - 1)
    within = sum((v - mean(g)) ** 2 for g in groups for v in g) / (n - len(groups))
    k0 = (n - sum(len(g) ** 2 for g in groups) / n) / (len(groups) - 1)
    denominator = between + (k0 - 1) * within
    return (between - within) / denominator if denominator else math.nan


def mean_reliability(r1, seeds):
    """Spearman-Brown: the reliability of the mean of ``seeds`` runs, from one run's."""
    return seeds * r1 / (1 + (seeds - 1) * r1) if not math.isnan(r1) else math.nan


def attainable_tau(r1, seeds):
    """The tau a perfect predictor reaches against the means of ``seeds`` runs (0 when the runs hold no
    architecture signal at all, r1 <= 0)."""
    if math.isnan(r1):
        return math.nan
    return 2 / math.pi * math.asin(math.sqrt(max(0.0, min(1.0, mean_reliability(r1, seeds)))))


def simulated_attainable_tau(architectures, seeds, r1, draws=1500, seed=0):
    """The same by simulation: true means N(0, 1), seed noise of variance (1 - r1) / r1, the mean over ``draws`` of
    tau between the true means and the ``seeds``-run means."""
    rng = random.Random(seed)
    noise = math.sqrt((1 - r1) / r1)
    taus = []
    for _ in range(draws):
        truth = [rng.gauss(0, 1) for _ in range(architectures)]
        taus.append(kendall_tau(truth, [t + mean([rng.gauss(0, noise) for _ in range(seeds)]) for t in truth]))
    return mean(taus)


# Intervals that carry the seed noise: a parametric bootstrap. With two or three seeds the bootstrap of a mean over
# its own seeds has too few distinct values (two seeds: (n - 1) / n of the variance, from three values), so each
# architecture's mean is redrawn as its observed mean plus normal noise of the pooled within-architecture variance
# divided by its number of seeds; the architectures themselves are resampled where a set of them is drawn.

def pooled_seed_variance(accuracies):
    """The variance of one run around its architecture's mean, pooled over the architectures with 2 or more seeds
    (the ANOVA's mean square within); nan when none has 2."""
    groups = [a for a in accuracies if len(a) >= 2]
    degrees = sum(len(g) - 1 for g in groups)
    return sum((v - mean(g)) ** 2 for g in groups for v in g) / degrees if degrees else math.nan


def redrawn_mean(rng, runs, seed_variance):
    """An architecture's stand-alone mean, redrawn with the seed noise of a mean of ``len(runs)`` runs."""
    return mean(runs) + rng.gauss(0, math.sqrt(seed_variance / len(runs)))


def percentile_interval(runs, others_runs, seed_variance, **kwargs):
    """Interval of ``percentile(mean(runs), [mean(r) for r in others_runs])``: the others (the architectures) are
    resampled and every mean is redrawn with its seed noise."""
    if math.isnan(seed_variance):
        return math.nan, math.nan

    def draw(rng):
        return percentile(redrawn_mean(rng, runs, seed_variance),
                          [redrawn_mean(rng, r, seed_variance) for r in resample(rng, others_runs)])
    return bootstrap(draw, **kwargs)


def mean_difference_interval(runs, others_runs, seed_variance, **kwargs):
    """Interval of ``mean(runs)`` minus the mean of the others' means, resampled and redrawn as
    ``percentile_interval``."""
    if math.isnan(seed_variance):
        return math.nan, math.nan

    def draw(rng):
        return redrawn_mean(rng, runs, seed_variance) - mean(
            [redrawn_mean(rng, r, seed_variance) for r in resample(rng, others_runs)])
    return bootstrap(draw, **kwargs)


def difference_interval(runs, other_runs, seed_variance, **kwargs):
    """Interval of ``mean(runs) - mean(other_runs)``, two architectures' means each redrawn with its seed noise."""
    if math.isnan(seed_variance):
        return math.nan, math.nan
    return bootstrap(lambda rng: redrawn_mean(rng, runs, seed_variance) - redrawn_mean(rng, other_runs, seed_variance),
                     **kwargs)


def tau_interval(scores, accuracies, seed_variance, **kwargs):
    """Interval of Kendall tau between ``scores`` (the supernet's, one each) and the stand-alone means of
    ``accuracies``: the architectures resampled (pairs kept), each mean redrawn with its seed noise."""
    pairs = list(zip(scores, accuracies))

    def draw(rng):
        drawn = resample(rng, pairs)
        noisy = [redrawn_mean(rng, runs, seed_variance) if not math.isnan(seed_variance) else mean(runs)
                 for _, runs in drawn]
        return kendall_tau([score for score, _ in drawn], noisy)
    return bootstrap(draw, **kwargs)


def means_tau_interval(first_runs, second_runs, first_variance, second_variance, **kwargs):
    """Interval of Kendall tau between two sets of stand-alone means of the same architectures (``first_runs[a]``
    and ``second_runs[a]``: architecture a's runs under two set-ups, e.g. two budgets): the architectures
    resampled, both means redrawn with their set-up's seed noise once per architecture drawn, so that one drawn
    twice stays one architecture (a tie both ways, which tau leaves out) rather than a coin-flip pair."""
    def draw(rng):
        drawn = resample(rng, range(len(first_runs)))
        first = {a: redrawn_mean(rng, first_runs[a], first_variance) for a in sorted(set(drawn))}
        second = {a: redrawn_mean(rng, second_runs[a], second_variance) for a in sorted(set(drawn))}
        return kendall_tau([first[a] for a in drawn], [second[a] for a in drawn])
    return bootstrap(draw, **kwargs)
