"""The files the evolution search keeps next to its exports, and how to read them without importing nni or
torch (demo.py, plot_search.py and the tests read them; tuner.py writes them).

  candidates.csv       one row per candidate whose outcome is final (scored or failed), in the order the
                       candidates were generated; rewritten atomically whenever an outcome becomes final
  search_state.json    where the search stands: rounds started and done, candidates generated, scored and
                       failed, each round's counts, the best so far, finished or not (and why it stopped if it
                       stopped early); plus what a resume needs: every candidate with its outcome and the
                       random state. Rewritten atomically after every change.

The search is over when search_state.json says ``"finished": true``; NNI's status cannot tell (it shows
TUNER_NO_MORE_TRIAL between rounds too).
"""
import csv
import json
import os
import tempfile

from errors import UserError

EXPORT_DIR = "checkpoints"
TABLE_FILE = "candidates.csv"
STATE_FILE = "search_state.json"
BEST_FILE = "architecture_final.json"
TABLE_COLUMNS = ("round", "parameter_id", "origin", "choices", "flops", "accuracy_before_recalibration",
                 "accuracy", "status", "trial_job_id")
STATE_FORMAT = 1
# where a search's files are, relative to what a user may point at: the folder itself, NNI's experiment
# folder (~/nni-experiments/<id>) or its log/ folder
_PLACES = ("", EXPORT_DIR, os.path.join("log", EXPORT_DIR))


def write_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file in the same folder, so that a reader (or a crash)
    never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


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
    try:
        with open(path) as f:
            state = json.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the search state ({e.strerror or e})") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
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
