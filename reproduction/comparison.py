"""The comparison's statistics and figure (SPEC section 16), from a table of the architectures compared: each row a
dict with "name", "role", "flops", "score" and "score_before" (the supernet's, after and before BN recalibration;
None where the supernet has no such path) and "runs" (the stand-alone top-1 of each seed, on the test data).

The front page holds what a reviewer accepts: the answer against the random architectures of its FLOPs band and
against each one-choice network at its FLOPs, with intervals that carry the seed noise (a parametric bootstrap
with the pooled seed variance); the supernet's Kendall tau over the random ones only (the answer, its next best
and the one-choice networks were chosen or set apart, not drawn), beside the tau a perfect predictor attains against
these noisy means, and without BN recalibration."""
import math

from reproduction.architectures import ONE_CHOICE_NAMES, RANDOM
from spos.stats import (attainable_tau, bootstrap, difference_interval, icc1, kendall_tau, mean,
                        mean_difference_interval, percentile, percentile_interval, pooled_seed_variance,
                        reliability_from_tau, resample, seed_to_seed_interval, seed_to_seed_tau, tau_interval)


def statistics(table):
    """(rows of (statistic, value, 95 % interval) as text, {name: value} of the headline numbers)."""
    randoms = [row for row in table if row["role"] == RANDOM]
    answer = table[0]
    accuracies = [row["runs"] for row in table]
    seeds = min(len(runs) for runs in accuracies)
    variance = pooled_seed_variance(accuracies)
    random_means = [mean(row["runs"]) for row in randoms]
    rows, values = [], {}

    def add(key, label, value, form, bounds, scale=1):
        values[key] = value
        rows.append([label, number(value, form, scale), interval(bounds, form, scale)])

    add("percentile", f"answer's percentile among the {len(randoms)} random architectures of its band",
        percentile(mean(answer["runs"]), random_means), "{:.0f} %",
        percentile_interval(answer["runs"], [row["runs"] for row in randoms], variance))
    add("above_random", "answer - the random architectures' mean (points)",
        mean(answer["runs"]) - mean(random_means), "{:+.2f}",
        mean_difference_interval(answer["runs"], [row["runs"] for row in randoms], variance), 100)
    for row in table:
        if row["role"] in ONE_CHOICE_NAMES:
            add(f"above {row['role']}", f"answer - {row['role']} at {row['flops'] / 1e6:.1f}M FLOPs (points)",
                mean(answer["runs"]) - mean(row["runs"]), "{:+.2f}",
                difference_interval(answer["runs"], row["runs"], variance), 100)
    random_runs = [row["runs"] for row in randoms]
    seed_to_seed = seed_to_seed_tau(random_runs)
    r1 = reliability_from_tau(seed_to_seed)
    attainable = attainable_tau(r1, seeds)
    for key, score, label in (("tau", "score", "after BN recalibration"),
                              ("tau_before", "score_before", "before BN recalibration")):
        scored = [row for row in randoms if row[score] is not None]
        add(key, f"Kendall tau, supernet ({label}) vs stand-alone means, the {len(scored)} random ones",
            kendall_tau([row[score] for row in scored], [mean(row["runs"]) for row in scored]), "{:.3f}",
            tau_interval([row[score] for row in scored], [row["runs"] for row in scored], variance))
    add("attainable", f"attainable tau against {seeds}-seed means (a perfect predictor; the random ones)",
        attainable, "{:.3f}", bootstrap(lambda rng: attainable_tau(reliability_from_tau(
            seed_to_seed_tau(resample(rng, random_runs))), seeds)))
    values["tau_fraction"] = values["tau"] / attainable if attainable else math.nan
    rows.append(["supernet tau / attainable tau", number(values["tau_fraction"], "{:.2f}"), ""])
    add("seed_to_seed", "seed-to-seed tau (two single runs; the random ones)", seed_to_seed, "{:.3f}",
        seed_to_seed_interval(random_runs))
    values["r1_tau"], values["r1_icc"] = r1, icc1(random_runs)
    rows.append(["single-run reliability r1: from the seed-to-seed tau, from ICC(1)",
                 f"{number(r1, '{:.2f}')}, {number(values['r1_icc'], '{:.2f}')}", ""])
    values["seed_sd"] = math.sqrt(variance) if not math.isnan(variance) else math.nan
    rows.append(["seed standard deviation of one run (pooled, points)", number(values["seed_sd"], "{:.2f}", 100), ""])
    scored = [row for row in table if row["score"] is not None]
    add("tau_all", f"Kendall tau over all {len(scored)} with a supernet score (the searched ones included: "
        f"selected, not drawn)", kendall_tau([row["score"] for row in scored], [mean(row["runs"]) for row in scored]),
        "{:.3f}", tau_interval([row["score"] for row in scored], [row["runs"] for row in scored], variance))
    return rows, values


def number(value, form, scale=1):
    """``value`` in ``form``, or n/a where the statistic is undefined (one seed, one architecture, all tied)."""
    return "n/a" if value is None or math.isnan(value) else form.format(scale * value)


def interval(bounds, form, scale=1):
    low, high = bounds
    return "n/a" if math.isnan(low) else f"[{form.format(scale * low)}, {form.format(scale * high)}]"


def std(values):
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


PLOT_STYLES = {"search's answer": ("*", "tab:red", 200), "search's next best": ("D", "tab:orange", 60),
               "one-choice, matched FLOPs": ("s", "tab:blue", 60), RANDOM: ("o", "tab:gray", 40)}


def role_group(role):
    return ("one-choice, matched FLOPs" if role in ONE_CHOICE_NAMES else "search's next best"
            if role.startswith("search's #") else role)


def plot(path, table, band, title):
    """Stand-alone accuracy (mean over seeds, bars: std) against FLOPs and against the supernet's score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_flops, by_score) = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    for label, (marker, colour, size) in PLOT_STYLES.items():
        members = [row for row in table if role_group(row["role"]) == label]
        for axis, x in ((by_flops, "flops"), (by_score, "score")):
            shown = [row for row in members if row[x] is not None]
            if not shown:
                continue
            xs = [row[x] / 1e6 if x == "flops" else 100 * row[x] for row in shown]
            ys = [100 * mean(row["runs"]) for row in shown]
            axis.errorbar(xs, ys, yerr=[100 * std(row["runs"]) for row in shown], fmt="none", ecolor=colour,
                          elinewidth=1, capsize=2, alpha=0.6)
            axis.scatter(xs, ys, marker=marker, c=colour, s=size, label=label, zorder=3)
    for row in table:
        if row["role"] in ONE_CHOICE_NAMES:
            by_flops.annotate(row["role"][4:], (row["flops"] / 1e6, 100 * mean(row["runs"])), fontsize=7,
                              xytext=(4, 4), textcoords="offset points")
    by_flops.axvspan(band[0] / 1e6, band[1] / 1e6, color="tab:gray", alpha=0.12, label="the random ones' band")
    by_flops.set_xlabel("FLOPs (M, 224x224, 1000 classes)")
    by_score.set_xlabel("supernet score on the held-out images, BN recalibrated (%)")
    for axis in (by_flops, by_score):
        axis.set_ylabel("stand-alone top-1 on the test data (%; mean, bars: std)")
        axis.grid(alpha=0.3)
    by_flops.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
