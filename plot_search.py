"""Draw a finished (or running) SPOS evolution search as a PNG, from the tuner's candidates.csv and
search_state.json (which says how many rounds are done and whether the search finished).

  python plot_search.py ~/nni-experiments/<experiment id>          # or its log/ or log/checkpoints/ folder
  python plot_search.py path/to/candidates.csv -o search.png

Panels: accuracy against FLOPs of every scored candidate coloured by round (the best marked), with the
accuracy-FLOPs front (spos/pareto.py); the same against the predicted latency when the search had a latency limit;
the best and mean accuracy of each round and the best so far; when the trials reported it, accuracy before against
after BN recalibration. Writes search.png next to candidates.csv unless -o says otherwise.
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import BoundaryNorm  # noqa: E402

from spos.architecture import CHANNEL_SCALES  # noqa: E402
from spos.pareto import front  # noqa: E402
from spos.search_state import STATE_FILE, TABLE_FILE, find_search_dir, read_state, read_table, summarize  # noqa: E402
from utils import UserError, run_main  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search", help="candidates.csv, or the experiment folder (~/nni-experiments/<id>), its log/ "
                                       "or its log/checkpoints/ folder")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default: search.png next to the table)")
    return parser.parse_args(argv)


def find_table(path):
    if os.path.isfile(path):
        return path
    table = os.path.join(find_search_dir(path), TABLE_FILE)
    if not os.path.isfile(table):
        raise UserError(f"{path}: no {TABLE_FILE} next to its {STATE_FILE} (the search scored nothing yet)")
    return table


def find_state(table_path):
    """The search_state.json next to a table, or None (a table copied elsewhere)."""
    path = os.path.join(os.path.dirname(os.path.abspath(table_path)), STATE_FILE)
    return read_state(path) if os.path.isfile(path) else None


def widths(row):
    """``", mean width 1.15x"`` for a candidate of a block + channel search (the mean of its scales), else ``""``."""
    scales = [CHANNEL_SCALES[int(s)] for s in (row.get("scales") or "").split()]
    return f", mean width {sum(scales) / len(scales):.2f}x" if scales else ""


def title(table, state, best):
    """How far the search got, from the tuner's state when there is one (a table alone cannot tell)."""
    if state is None:
        rounds = sorted({row["round"] for row in table})
        where = f"{len(table)} candidates in the table, rounds {rounds[0]}-{rounds[-1]}"
    else:
        where = f"{state['candidates_done']} candidates in {state['rounds_done']} rounds"
        if not state["finished"]:
            where += f" (running: round {state['round']} of {state['settings']['max_epochs']})"
        elif state["error"]:
            where += " (stopped early)"
    return f"SPOS evolution: {where}; best {best['accuracy']:.4f} at {best['flops'] / 1e6:.1f}M FLOPs"


def plot(table, output, title_source, state=None):
    scored = [row for row in table if row["accuracy"] is not None]
    if not scored:
        raise UserError(f"{title_source}: no candidate has an accuracy yet")
    failed = len(table) - len(scored)
    rounds = sorted({row["round"] for row in scored})
    with_before = [row for row in scored if row["before"] is not None]
    best = max(scored, key=lambda row: row["accuracy"])
    summary = summarize(table)

    with_latency = any(row["latency_ms"] is not None for row in scored)
    columns = 2 + with_latency + bool(with_before)
    fig, axes = plt.subplots(1, columns, figsize=(5.2 * columns, 4.4), constrained_layout=True)
    cmap = plt.get_cmap("viridis", len(rounds))
    norm = BoundaryNorm([r - 0.5 for r in rounds] + [rounds[-1] + 0.5], cmap.N) if len(rounds) > 1 else None

    cost_axes = [(axes[0], "flops", 1e6, "FLOPs (M multiply-adds at 224x224, 1000 classes)")]
    if with_latency:
        cost_axes.append((axes[1], "latency_ms", 1, "predicted latency (ms, the latency table's machine)"))
    for ax, cost, unit, label in cost_axes:
        points = ax.scatter([row[cost] / unit for row in scored], [row["accuracy"] for row in scored],
                            c=[row["round"] for row in scored], cmap=cmap, norm=norm, s=22, alpha=0.85,
                            edgecolors="none")
        on_front = front(scored, cost)
        ax.step([row[cost] / unit for row in on_front], [row["accuracy"] for row in on_front], where="post",
                color="tab:orange", lw=1.2, label=f"front ({len(on_front)}: python -m spos.pareto)")
        ax.scatter([best[cost] / unit], [best["accuracy"]], marker="*", s=220, facecolors="none", edgecolors="red",
                   linewidths=1.5, label=f"best {best['accuracy']:.4f} (round {best['round']}{widths(best)})")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (after BN recalibration)")
        ax.set_title("every candidate" + (f" ({failed} failed, not shown)" if failed else ""))
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    colorbar = fig.colorbar(points, ax=cost_axes[-1][0], ticks=rounds if len(rounds) <= 20 else None)
    colorbar.set_label("round")

    ax = axes[len(cost_axes)]
    xs = [s[0] for s in summary]
    ax.plot(xs, [s[1] for s in summary], "o-", label="best of the round")
    ax.plot(xs, [s[2] for s in summary], "s--", label="mean of the round", alpha=0.8)
    ax.step(xs, [s[3] for s in summary], where="post", color="red", label="best so far")
    ax.set_xlabel("round")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("accuracy per round")
    ax.set_xticks(xs if len(xs) <= 20 else ax.get_xticks())
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    if with_before:
        ax = axes[len(cost_axes) + 1]
        values = [row["before"] for row in with_before] + [row["accuracy"] for row in with_before]
        low, high = min(values), max(values)
        margin = 0.02 * (high - low or 1)
        ax.plot([low - margin, high + margin], [low - margin, high + margin], color="gray", lw=0.8, ls=":")
        ax.scatter([row["before"] for row in with_before], [row["accuracy"] for row in with_before],
                   c=[row["round"] for row in with_before], cmap=cmap, norm=norm, s=18, alpha=0.85,
                   edgecolors="none")
        ax.set_xlabel("accuracy before BN recalibration")
        ax.set_ylabel("accuracy after BN recalibration")
        ax.set_title("effect of BN recalibration")
        ax.grid(alpha=0.3)

    fig.suptitle(title(table, state, best), fontsize=11)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main(argv=None):
    args = parse_args(argv)
    table_path = find_table(args.search)
    table = read_table(table_path)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(table_path)), "search.png")
    plot(table, output, table_path, find_state(table_path))
    print(f"wrote {output} ({len(table)} candidates from {table_path})")
    return output


if __name__ == "__main__":
    run_main(main)
