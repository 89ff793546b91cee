"""The files of an evolution search, written and read without importing nni or torch (the NNI tuner and the
in-process search write them; demo.py, plot_search.py and the tests read them). In ``checkpoints/`` under
the experiment's log folder, or the in-process search's ``--output-dir``:

  candidates.csv       one row per candidate whose outcome is final (scored or failed), in the order the
                       candidates were generated; rewritten atomically whenever an outcome becomes final
  RRR_KKK.json         after round RRR, the K-th best candidate seen so far (the parents of the next round),
                       in the format of architecture_final.json (scratch.py --fixed-arc takes it)
  architecture_final.json   the best candidate seen so far
  search_state.json    where the search stands: rounds started and done, candidates generated, scored and
                       failed, each round's counts, the best so far, finished or not (and why it stopped if it
                       stopped early); plus what a resume needs: every candidate with its outcome and the
                       random state. Rewritten atomically after every change.

The search is over when search_state.json says ``"finished": true``; NNI's status cannot tell (it shows
TUNER_NO_MORE_TRIAL between rounds too).
"""
import csv
import io
import json
import logging
import os
import time

from spos.architecture import NUM_LAYERS, write_architecture
from spos.files import read_json, write_text
from utils import UserError

logger = logging.getLogger("spos.search_state")

EXPORT_DIR = "checkpoints"
TABLE_FILE = "candidates.csv"
STATE_FILE = "search_state.json"
BEST_FILE = "architecture_final.json"
# choices: the 20 blocks; scales: the 20 scale indices of a block + channel search (empty in block search)
# latency_ms: the latency table's prediction, when the search has a latency limit (empty otherwise)
TABLE_COLUMNS = ("round", "parameter_id", "origin", "choices", "scales", "flops", "latency_ms",
                 "accuracy_before_recalibration", "accuracy", "status", "trial_job_id")
STATE_FORMAT = 1
# a candidate's final outcome: it gets its row in candidates.csv (until then its status says what it waits for)
OUTCOMES = ("succeeded", "failed", "bad result", "no result")
# where a search's files are, relative to what a user may point at: the folder itself, NNI's experiment
# folder (~/nni-experiments/<id>) or its log/ folder
_PLACES = ("", EXPORT_DIR, os.path.join("log", EXPORT_DIR))


def prepare_search_dir(checkpoint_dir, resume, why_no_state=""):
    """The state to resume from (``resume``), or None for a new search. A new search in a folder holding an
    earlier one moves that folder aside (``checkpoints-<time>``); a resume without a state is refused
    (ValueError, with ``why_no_state`` appended)."""
    state_path = os.path.join(checkpoint_dir, STATE_FILE)
    if resume:
        if os.path.exists(state_path):
            return read_state(state_path)
        raise ValueError(f"{checkpoint_dir}: no {STATE_FILE} there, so no search to resume{why_no_state}")
    if any(os.path.exists(os.path.join(checkpoint_dir, name)) for name in (STATE_FILE, TABLE_FILE)):
        moved = f"{checkpoint_dir}-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while os.path.exists(moved):
            suffix += 1
            moved = f"{checkpoint_dir}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
        os.rename(checkpoint_dir, moved)
        logger.warning("moved the results of an earlier search to %s", moved)
    os.makedirs(checkpoint_dir, exist_ok=True)
    return None


def save_search(checkpoint_dir, state):
    """candidates.csv (the final outcomes of ``state["history"]``, in the order generated) and
    search_state.json (``state``, with its format and the time), each atomically."""
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(TABLE_COLUMNS)
    for record in state["history"]:
        if record["status"] in OUTCOMES:
            writer.writerow([record["round"], record["parameter_id"], record["origin"],
                             " ".join(map(str, record["choices"])), " ".join(map(str, record.get("scales", ()))),
                             record["flops"], _number(record.get("latency_ms")),
                             _number(record["accuracy_before_recalibration"]), _number(record["accuracy"]),
                             record["status"], record["trial_job_id"]])
    write_text(os.path.join(checkpoint_dir, TABLE_FILE), table.getvalue())
    state = {"format": STATE_FORMAT, **state, **summarize_state(state), "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_text(os.path.join(checkpoint_dir, STATE_FILE), json.dumps(state, indent=1) + "\n")


def summarize_state(state):
    """What a reader wants at a glance, from a search's history: counts, each round's, the best so far."""
    history = state["history"]
    done = [r for r in history if r["status"] in OUTCOMES]
    scored = [r for r in history if r["accuracy"] is not None]
    rounds = []
    for number in range(1, state["round"] + 1):
        members = [r for r in history if r["round"] == number]
        rounds.append({"round": number, "candidates": len(members),
                       "scored": sum(r["accuracy"] is not None for r in members),
                       "failed": sum(r["status"] in OUTCOMES and r["accuracy"] is None for r in members),
                       "closed": number <= state["rounds_done"]})
    best = None
    if scored:  # the first generated among the most accurate, as the search ranks them
        top = max(scored, key=lambda r: r["accuracy"])
        best = {key: top[key] for key in ("choices", "scales", "accuracy", "flops", "latency_ms", "round")
                if key in top}
    return {"candidates": len(history), "candidates_done": len(done), "candidates_scored": len(scored),
            "candidates_failed": len(done) - len(scored), "rounds": rounds, "best": best}


def genes_as_fields(candidate):
    """A candidate as search_state.json keeps it: ``choices`` (the blocks), and ``scales`` with channel search."""
    fields = {"choices": list(candidate[:NUM_LAYERS])}
    if len(candidate) > NUM_LAYERS:
        fields["scales"] = list(candidate[NUM_LAYERS:])
    return fields


def genes_of(record):
    """The candidate of a record of search_state.json (its blocks, then its scales with channel search)."""
    return tuple(record["choices"]) + tuple(record.get("scales") or ())


def export_round(checkpoint_dir, number, parents):
    """After round ``number``: its parents (best first) as RRR_KKK.json, the best as architecture_final.json."""
    for rank, candidate in enumerate(parents):
        write_architecture(os.path.join(checkpoint_dir, f"{number:03d}_{rank:03d}.json"), candidate)
    export_best(checkpoint_dir, parents[0])
    logger.info("exported the best %d after round %d to %s", len(parents), number, checkpoint_dir)


def export_best(checkpoint_dir, candidate):
    """The best candidate so far as architecture_final.json."""
    write_architecture(os.path.join(checkpoint_dir, BEST_FILE), candidate)


def _number(value):
    return "" if value is None else f"{value:.6f}"


def find_search_dir(path):
    """The folder holding a search's candidates.csv and search_state.json, from that folder, a file in it,
    NNI's experiment folder or its log/ folder."""
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such file or folder")
    for place in _PLACES:
        folder = os.path.join(path, place)
        if any(os.path.isfile(os.path.join(folder, name)) for name in (STATE_FILE, TABLE_FILE)):
            return folder
    looked = ", ".join(os.path.join(place, STATE_FILE) for place in _PLACES)
    raise UserError(f"{path}: no search inside (looked for {looked})")


def read_state(path):
    """search_state.json as a dict; a missing, unreadable or foreign file is a UserError naming it."""
    state = read_json(path, "the search state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path}: not a search state of format {STATE_FORMAT} (found {found!r})")
    return state


def progress(state):
    """One line on where a search stands, e.g. "round 2/4: 13 of 40 candidates scored, 0 failed"."""
    settings = state["settings"]
    line = (f"round {state['round']}/{settings['max_epochs']}: {state['candidates_scored']} of "
            f"{settings['max_epochs'] * settings['num_population']} candidates scored, "
            f"{state['candidates_failed']} failed")
    if state["finished"]:
        line += f"; search stopped: {state['error']}" if state["error"] else "; search finished"
    return line


def read_table(path):
    """Rows of candidates.csv with round, flops and accuracies as numbers (None when empty)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"round", "flops", "accuracy"} - set(reader.fieldnames or ())
            if missing:
                raise UserError(f"{path}: not a search table (no column {sorted(missing)[0]!r})")
            rows = list(reader)
    except OSError as e:
        raise UserError(f"{path}: cannot read the search table ({e.strerror or e})") from None
    table = []
    for line, row in enumerate(rows, start=2):
        try:
            table.append({**row, "round": int(row["round"]), "flops": float(row["flops"]),
                          "latency_ms": _optional_float(row.get("latency_ms")),
                          "accuracy": _optional_float(row["accuracy"]),
                          "before": _optional_float(row.get("accuracy_before_recalibration"))})
        except (TypeError, ValueError):
            raise UserError(f"{path}: line {line} does not hold numbers where expected: {row}") from None
    return table


def _optional_float(text):
    return float(text) if text not in (None, "") else None


def summarize(table):
    """Per round: (round, best accuracy, mean accuracy, best so far), over the scored candidates."""
    summary, best_so_far = [], None
    for r in sorted({row["round"] for row in table}):
        scores = [row["accuracy"] for row in table if row["round"] == r and row["accuracy"] is not None]
        if scores:
            best_so_far = max(scores) if best_so_far is None else max(best_so_far, max(scores))
            summary.append((r, max(scores), sum(scores) / len(scores), best_so_far))
    return summary
