"""Kendall tau, Spearman rho and top-k overlap: the statistics of bench_ranking.py, in plain Python (tested
against scipy's), with bootstrap intervals over the architectures."""
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
    rng = random.Random(seed)
    n, values = len(x), []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        value = statistic([x[i] for i in picks], [y[i] for i in picks])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    values.sort()
    low = values[int((1 - level) / 2 * (len(values) - 1))]
    high = values[int((1 + level) / 2 * (len(values) - 1))]
    return low, high
