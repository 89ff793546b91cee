"""The statistics of the reproduction (rank.py, reproduce.py), in plain Python (tested against scipy's where scipy
has them): Kendall tau, Spearman rho, top-k overlap, the seed-to-seed tau of stand-alone runs, an architecture's
percentile among others, with bootstrap intervals (over the architectures, and over each one's seeds)."""
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


def percentile_interval(runs, others_runs, **kwargs):
    """Bootstrap interval of ``percentile(mean(runs), [mean(r) for r in others_runs])``, resampling the others
    (the architectures) and, within each architecture, its seeds: both the draw of architectures and the seed
    noise of every stand-alone mean are in it."""
    if nothing_to_resample(runs, others_runs):
        return math.nan, math.nan

    def draw(rng):
        return percentile(mean(resample(rng, runs)), [mean(resample(rng, r)) for r in resample(rng, others_runs)])
    return bootstrap(draw, **kwargs)


def difference_interval(runs, other_runs, **kwargs):
    """Bootstrap interval of ``mean(runs) - mean(other_runs)`` over the seeds of each (nan with one seed each:
    a single run says nothing about its own noise)."""
    if len(runs) < 2 and len(other_runs) < 2:
        return math.nan, math.nan
    return bootstrap(lambda rng: mean(resample(rng, runs)) - mean(resample(rng, other_runs)), **kwargs)


def mean_difference_interval(runs, others_runs, **kwargs):
    """Bootstrap interval of ``mean(runs)`` minus the mean of the others' means, resampling the others (the
    architectures) and the seeds within each, as ``percentile_interval`` does."""
    if nothing_to_resample(runs, others_runs):
        return math.nan, math.nan

    def draw(rng):
        return mean(resample(rng, runs)) - mean([mean(resample(rng, r)) for r in resample(rng, others_runs)])
    return bootstrap(draw, **kwargs)


def nothing_to_resample(runs, others_runs):
    """One other architecture and one seed everywhere: an interval would have no width and say nothing."""
    return len(others_runs) < 2 and all(len(r) < 2 for r in (runs, *others_runs))
