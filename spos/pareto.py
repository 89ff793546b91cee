"""The accuracy-cost front of a finished search: the candidates no other beats on both accuracy and FLOPs (and on
both accuracy and predicted latency, when the search had a latency table), each written as an architecture file
that scratch.py --fixed-arc takes, cheapest first; plot_search.py draws them.

    python -m spos.pareto ~/nni-experiments/<experiment id>     # or the in-process search's --output-dir

Writes <the search's checkpoints/>/pareto/flops_KK.json (and latency_KK.json) and pareto.csv beside them.
"""
import argparse
import csv
import io
import os

from spos.architecture import write_architecture
from spos.files import write_text
from spos.search_state import TABLE_FILE, find_search_dir, read_table
from utils import run_main

COSTS = {"flops": "FLOPs", "latency_ms": "predicted latency (ms)"}


def front(rows, cost):
    """The rows on the front of accuracy against ``cost`` (a column): none other is at least as accurate and
    cheaper, or more accurate and as cheap. Cheapest first."""
    scored = sorted((row for row in rows if row["accuracy"] is not None and row.get(cost) is not None),
                    key=lambda row: (row[cost], -row["accuracy"]))
    kept, best = [], None
    for row in scored:
        if best is None or row["accuracy"] > best:
            kept.append(row)
            best = row["accuracy"]
    return kept


def genes(row):
    return tuple(map(int, row["choices"].split() + (row.get("scales") or "").split()))


def fronts(table):
    """{cost: its front} for each cost the table has."""
    return {cost: front(table, cost) for cost in COSTS if any(row.get(cost) is not None for row in table)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spos.pareto", description=__doc__.splitlines()[0])
    parser.add_argument("search", help="the search: NNI's experiment folder, its log/ or checkpoints/ folder, or the "
                                       "in-process search's output folder")
    args = parser.parse_args(argv)
    search_dir = find_search_dir(args.search)
    table = read_table(os.path.join(search_dir, TABLE_FILE))
    output = os.path.join(search_dir, "pareto")
    listing = io.StringIO()
    writer = csv.writer(listing)
    writer.writerow(["front", "file", "choices", "scales", "flops", "latency_ms", "accuracy", "round"])
    for cost, rows in fronts(table).items():
        name = "latency" if cost == "latency_ms" else cost
        for rank, row in enumerate(rows):
            path = os.path.join(output, f"{name}_{rank:02d}.json")
            write_architecture(path, genes(row))
            writer.writerow([name, os.path.basename(path), row["choices"], row.get("scales", ""), row["flops"],
                             "" if row["latency_ms"] is None else row["latency_ms"], row["accuracy"], row["round"]])
        print(f"{len(rows)} candidate{'s' * (len(rows) != 1)} on the front of accuracy against {COSTS[cost]}: "
              f"{output}/{name}_*.json")
    write_text(os.path.join(output, "pareto.csv"), listing.getvalue())
    return output


if __name__ == "__main__":
    run_main(main)
