"""Step 2 of SPOS under nnictl: the evolution search (spos/evolution.py) as an NNI tuner (``tuner:
{codeDirectory: ., className: tuner.EvolutionWithFlops}``); each trial (tester.py) scores one candidate. The
class arguments are the evolution's (Megvii's defaults; a relative ``latency_table`` is taken from the code
directory, this file's folder) and this adapter's own: ``output_dir`` (default
``checkpoints/`` under the experiment's log folder), ``result_timeout``, ``resumed_trial_timeout``. The search
writes its files there (spos/search_state.py: candidates.csv, search_state.json, RRR_KKK.json,
architecture_final.json); after ``max_epochs`` rounds the tuner raises ``nni.NoMoreTrialError``.

NNI 3.0 delivers a trial's end (``trial_end``) and its final result (``receive_trial_result``) on two
threads, in either order, the result often seconds after the end (nni/runtime/msg_dispatcher_base.py). So
every callback takes one lock; a trial that ended successfully keeps its round open until its result comes,
for at most ``result_timeout`` seconds (a timer thread counts it as failed then, so no callback ever waits);
a failed trial is done at once. A round closes when every one of its candidates has an outcome. A trial's
end may name the parameter meant for it while it ran a sibling's (NNI 3.0 hands parameters out in the order
trials ask): a result for a candidate an end counted out is taken whenever it comes, after the search's end too
(candidates.csv, search_state.json and, when it is the best, architecture_final.json are written again).

Resume: ``nnictl resume ID`` restarts the tuner (NNI calls ``load_checkpoint``), which reloads
search_state.json (every candidate with its outcome, the rounds, the random state). NNI re-runs the trials
that were running when it stopped and sends their results through ``import_data``; the tuner hands out again
only the open round's other candidates without an outcome. (NNI also replays its finished trials through
``import_data``: the tuner only checks those against its own, see NNIReplay.) With the same seed and
results a resumed search evaluates the same candidates as one never stopped. A new search in a folder that
holds an earlier one moves that folder aside first.
"""
import logging
import math
import os
import threading
import time
from collections import Counter, deque

import nni
from nni.tuner import Tuner

from spos.architecture import architecture_keys, format_choices, parse_architecture
from spos.evolution import Evolution
from spos.search_space import search_space_values
from spos.search_state import (BEST_FILE, EXPORT_DIR, OUTCOMES, STATE_FILE, export_best, export_round,
                               prepare_search_dir, save_search)
from utils import UserError

logger = logging.getLogger("spos.tuner")


class EvolutionWithFlops(Tuner):
    """SPOS evolution under a FLOPs limit, driven by NNI (see the module docstring). ``result_timeout``:
    seconds a round waits for the result of a trial that ended successfully before counting it as failed.
    ``resumed_trial_timeout``: seconds after a resume within which a trial NNI re-runs must send its result
    (NNI reports no end for those trials). The other arguments are spos.evolution.Evolution's."""

    def __init__(self, output_dir=None, result_timeout=60, resumed_trial_timeout=3600, **evolution_settings):
        super().__init__()
        table = evolution_settings.get("latency_table")
        if table and not os.path.isabs(table):  # NNI starts the tuner in the experiment's log folder
            evolution_settings["latency_table"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), table)
        self.evolution = Evolution(**evolution_settings)
        self.result_timeout = _positive_seconds("result_timeout", result_timeout)
        self.resumed_trial_timeout = _positive_seconds("resumed_trial_timeout", resumed_trial_timeout)
        base = output_dir or os.environ.get("NNI_LOG_DIRECTORY") or os.getcwd()
        self.checkpoint_dir = os.path.join(base, EXPORT_DIR)
        self.results_after_end = {"count": 0, "longest_wait_s": 0.0}
        self.resumes = []  # what each resume found (kept in search_state.json)
        self._lock = threading.RLock()  # NNI calls from two threads, the timers from their own
        self._queue = deque()  # this round's candidates not yet handed to NNI
        self._running = {}  # parameter id -> candidate handed out in this run, neither result nor end yet
        self._awaiting = {}  # parameter id -> (candidate, when its trial ended, timer): ended, result to come
        self._pending_ids = deque()  # parameter ids NNI asked for while this round had nothing left to hand out
        self._send_trial = None  # NNI's st_callback(parameter_id, parameters)
        self._resumed_by_nni = False
        self._looked_for_trials_nni_resumes = False
        self._replay = NNIReplay(self.evolution, self.resumed_trial_timeout, self._resumed_trial_timed_out)

    # NNI's interface: each callback takes the lock and returns at once

    def load_checkpoint(self):
        """NNI calls this when `nnictl resume` restarts the tuner, before anything else: continue the search."""
        with self._lock:
            self._resumed_by_nni = True

    def update_search_space(self, search_space):
        with self._lock:
            if self.evolution.choices is not None:
                self.evolution.set_search_space(search_space)
                logger.warning("search space updated: it applies to the candidates generated from now on")
                return
            self.evolution.set_search_space(search_space)
            state = prepare_search_dir(self.checkpoint_dir, self._resumed_by_nni, " (an experiment whose tuner did "
                                       "not write it cannot be continued: create a new one)")
            logger.info("%s; results in %s", self.evolution.describe(), self.checkpoint_dir)
            if state is not None:
                self._restore(state)
            else:
                self.evolution.start()
            self._queue.extend(self.evolution.open_candidates())
            self._advance()

    def generate_parameters(self, parameter_id, **kwargs):
        with self._lock:
            if not self._queue:
                raise nni.NoMoreTrialError("the search is over" if self.evolution.finished else
                                           "waiting for this round's results before the next round")
            parameters = self._hand_out(parameter_id)
            self._save()
            return parameters

    def generate_multiple_parameters(self, parameter_id_list, **kwargs):
        """Hand out what this round still has; ids asked for beyond it are kept and served through NNI's
        ``st_callback`` when the next round starts (NNI meanwhile shows TUNER_NO_MORE_TRIAL)."""
        with self._lock:
            if kwargs.get("st_callback") is not None:
                self._send_trial = kwargs["st_callback"]
                if self._resumed_by_nni and not self._looked_for_trials_nni_resumes:
                    self._looked_for_trials_nni_resumes = True
                    self._replay.take_rerun_trials(self._send_trial, self._queue)
            parameters = []
            for parameter_id in parameter_id_list:
                if self._queue:
                    parameters.append(self._hand_out(parameter_id))
                elif not self.evolution.finished and self._send_trial is not None:
                    self._pending_ids.append(parameter_id)
            self._save()
            return parameters

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        with self._lock:
            accuracy, before = parse_result(value)
            trial_job_id = kwargs.get("trial_job_id") or ""
            delay = None
            if parameter_id in self._running:
                candidate = self._running.pop(parameter_id)
            elif parameter_id in self._awaiting:
                candidate, ended, timer = self._awaiting.pop(parameter_id)
                timer.cancel()
                delay = time.monotonic() - ended
                self.results_after_end["count"] += 1
                self.results_after_end["longest_wait_s"] = max(self.results_after_end["longest_wait_s"], delay)
                logger.info("the result of parameter %d came %.1f s after its trial ended", parameter_id, delay)
            else:
                self._unexpected_result(parameter_id, parameters, accuracy, before, trial_job_id)
                return
            if accuracy is None:
                logger.warning("trial %s (parameter %d) reported %r, not an accuracy: counted as failed",
                               trial_job_id, parameter_id, value)
            self._outcome(candidate, accuracy, before, trial_job_id, delay)

    def trial_end(self, parameter_id, success, **kwargs):
        with self._lock:
            if parameter_id not in self._running:  # its result came first: its outcome is already final
                return
            candidate = self._running.pop(parameter_id)
            if success:
                timer = start_timer(self.result_timeout, self._result_timed_out, parameter_id)
                self._awaiting[parameter_id] = (candidate, time.monotonic(), timer)
                self.evolution.history[candidate]["status"] = "awaiting result"
                logger.info("the trial of parameter %d ended before its result reached the tuner: its round waits "
                            "up to %g s for it", parameter_id, self.result_timeout)
                self._save()
            else:
                logger.warning("the trial of parameter %d (%s) failed or was cancelled: counted as done with no "
                               "accuracy", parameter_id, format_choices(candidate))
                self._outcome(candidate, status="failed")

    def import_data(self, data):
        """Results NNI replays on `nnictl resume` (see NNIReplay)."""
        with self._lock:
            self._replay.take_replayed(data)
            self._advance()

    # candidates, outcomes and rounds

    @staticmethod
    def to_parameters(candidate):
        values = search_space_values(len(candidate))
        return {key: {"_value": values[key][gene], "_idx": gene}
                for key, gene in zip(architecture_keys(len(candidate)), candidate)}

    def _hand_out(self, parameter_id):
        candidate = self._queue.popleft()
        self._running[parameter_id] = candidate
        self.evolution.history[candidate].update(status="running", parameter_id=parameter_id)
        return self.to_parameters(candidate)

    def _outcome(self, candidate, accuracy=None, before=None, trial_job_id="", result_delay_s=None, status=None):
        """Record a candidate's final outcome (succeeded with an accuracy, else ``status`` or "bad result")."""
        status = status or ("succeeded" if accuracy is not None else "bad result")
        self.evolution.record(candidate, status, accuracy, before, trial_job_id=trial_job_id,
                              result_delay_s=result_delay_s)
        self._advance()

    def _advance(self):
        """Close the round if it is complete and start the next (its candidates queued); serve the ids NNI asked
        for while nothing was left to hand out; save."""
        closed = self.evolution.advance()
        if closed is not None:
            export_round(self.checkpoint_dir, *closed)
            self._queue.extend(self.evolution.open_candidates())
        if self.evolution.finished:
            self._queue.clear()
            self._pending_ids.clear()
        while self._pending_ids and self._queue:
            parameter_id = self._pending_ids.popleft()
            self._send_trial(parameter_id, self._hand_out(parameter_id))
        self._save()

    def _save(self):
        if self.evolution.choices is not None:  # no search space yet, so no search and no output folder
            save_search(self.checkpoint_dir, {**self.evolution.state(), "experiment_id": _nni_experiment_id(),
                                              "results_after_trial_end": self.results_after_end,
                                              "resumes": self.resumes})

    # the timers (start_timer): a late or missing result never holds an NNI thread

    def _result_timed_out(self, parameter_id):
        with self._lock:
            entry = self._awaiting.pop(parameter_id, None)
            if entry is None:  # the result came meanwhile
                return
            logger.warning("the trial of parameter %d (%s) ended successfully but its result did not reach the tuner "
                           "within %g s: counted as failed (raise result_timeout if results come this late)",
                           parameter_id, format_choices(entry[0]), self.result_timeout)
            self._outcome(entry[0], status="no result")

    def _resumed_trial_timed_out(self, candidate):
        with self._lock:
            if self._replay.rerunning.pop(candidate, None) is None:
                return
            logger.warning("the trial NNI re-ran for %s (parameter %s) sent no result within %g s of the resume: "
                           "counted as failed", format_choices(candidate),
                           self.evolution.history[candidate]["parameter_id"], self.resumed_trial_timeout)
            self._outcome(candidate, status="no result")

    def _unexpected_result(self, parameter_id, parameters, accuracy, before, trial_job_id):
        try:
            candidate = parse_architecture(parameters, f"parameters of {parameter_id}")
        except UserError:
            candidate = None
        record = self.evolution.history.get(candidate)
        status = record["status"] if record else None
        evolution = self.evolution
        if status in ("failed", "no result") and accuracy is not None:
            # NNI 3.0 hands the queued parameters to trials in the order they ask (training_service/v3/compat.js),
            # so two trials started together may swap them, while a trial's end still names the parameter meant
            # for it: an end (or the result_timeout it started) can count out a candidate whose trial runs on.
            # Its result names what it ran, so it counts whenever it comes, after the search's end too.
            if evolution.finished:
                where = "the search finished"
            elif record["round"] < evolution.round:
                where = f"its round {record['round']} closed without it, later rounds see it"
            else:
                where = "its round is still open"
            logger.warning("the result of parameter %d (%s) came after an end counted it %s: taken (%s; NNI may "
                           "report the end of a sibling trial as its own, or raise result_timeout)", parameter_id,
                           format_choices(candidate), status, where)
            self._outcome(candidate, accuracy, before, trial_job_id)
            if evolution.finished and evolution.ranking[0] == candidate:
                export_best(self.checkpoint_dir, candidate)
                logger.warning("it is the best candidate of the search: %s rewritten", BEST_FILE)
        elif status in OUTCOMES:
            logger.info("a second result for parameter %s (%s) ignored: its outcome is final", parameter_id,
                        format_choices(candidate))
        else:
            logger.warning("ignoring a result for parameter %s, which this search did not hand out", parameter_id)

    # resume

    def _restore(self, state):
        """Continue the search of ``state`` (search_state.json) in the same NNI experiment."""
        state_path = os.path.join(self.checkpoint_dir, STATE_FILE)
        experiment = _nni_experiment_id()
        if experiment and state.get("experiment_id") and state["experiment_id"] != experiment:
            raise ValueError(f"{state_path}: that search belongs to NNI experiment {state['experiment_id']}, not "
                             f"{experiment}: give each experiment its own output_dir")
        evolution = self.evolution
        open_in_round = evolution.restore(state, state_path)
        self.results_after_end = state.get("results_after_trial_end") or self.results_after_end
        self.resumes = state.get("resumes") or []
        self._replay.entry = {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds_done": evolution.rounds_done,
                              "candidates_done": sum(r["status"] in OUTCOMES for r in evolution.history.values()),
                              "open_in_round": open_in_round, "replayed": {"records": 0}, "trials_nni_resumes": 0}
        self.resumes.append(self._replay.entry)
        logger.info("resumed the search of %s: %d of %d rounds done%s; round %d has %d candidates without an outcome",
                    state_path, evolution.rounds_done, evolution.settings.max_epochs, ", finished" if evolution.finished
                    else "", evolution.round, open_in_round)


class NNIReplay:
    """What `nnictl resume` hands a restarted tuner, and how the tuner takes it. NNI re-runs the trials that
    were running when the experiment stopped, with their parameter ids; their results come through
    ``import_data`` and their ends are never reported: those candidates are not handed out again, and each
    gets ``timeout`` seconds for its result. NNI also replays every finished trial through ``import_data``,
    paired with the parameters its database recorded for the trial, which for some trials are another
    trial's (its local training service hands parameters out in its own order): those are only checked
    against the search's own records. ``entry`` (this resume's in search_state.json's "resumes") counts both."""

    def __init__(self, evolution, timeout, on_timeout):
        self.evolution, self.timeout, self._on_timeout = evolution, timeout, on_timeout
        self.entry = None
        self.rerunning = {}  # candidate -> its timer

    def take_rerun_trials(self, st_callback, queue):
        """Take the candidates of the trials NNI re-runs out of ``queue``. NNI's dispatcher (the owner of
        ``st_callback``) keeps their parameters in ``recovered_trial_params`` (nni/recoverable.py) by its
        first request for trials."""
        recovered = getattr(getattr(st_callback, "__self__", None), "recovered_trial_params", None) or {}
        taken = 0
        for parameter_id, parameters in recovered.items():
            try:
                candidate = parse_architecture(parameters, f"parameters of the trial NNI resumes ({parameter_id})")
            except UserError as e:
                logger.warning("%s", e)
                continue
            record = self.evolution.history.get(candidate)
            if record is None or record["status"] != "queued":
                logger.info("NNI re-runs parameter %s (%s), which has an outcome here or is not this round's: its "
                            "result will only be checked", parameter_id, format_choices(candidate))
                continue
            queue.remove(candidate)
            record.update(status="resumed by NNI", parameter_id=parameter_id)
            self.rerunning[candidate] = start_timer(self.timeout, self._on_timeout, candidate)
            taken += 1
        if self.entry is not None:
            self.entry["trials_nni_resumes"] = taken
        logger.info("nnictl resume: NNI re-runs %d trials of this round that were running when it stopped; %d "
                    "candidates of the round are left to hand out", taken, len(queue))

    def take_replayed(self, data):
        """``[{"parameter": ..., "value": ...}, ...]``: a re-run trial's result becomes its candidate's outcome;
        a finished trial's is checked against the candidate's record; anything else is evaluated (again)."""
        counts = Counter()
        for entry in data:
            try:
                candidate = parse_architecture(entry["parameter"], "a result NNI replayed")
            except (UserError, KeyError, TypeError):
                counts["unreadable"] += 1
                continue
            accuracy, before = parse_result(entry.get("value"))
            record = self.evolution.history.get(candidate)
            if candidate in self.rerunning:
                self.rerunning.pop(candidate).cancel()
                self.evolution.record(candidate, "succeeded" if accuracy is not None else "bad result", accuracy,
                                      before, trial_job_id=entry.get("trialJobId") or "")
                counts["from trials NNI re-ran"] += 1
            elif record is not None and record["status"] in OUTCOMES:
                agrees = record["accuracy"] is not None and accuracy is not None and math.isclose(
                    record["accuracy"], accuracy, rel_tol=1e-6, abs_tol=1e-9)
                counts["agree" if agrees else "disagree"] += 1
            else:
                counts["ignored"] += 1
        logger.info("import_data: %d results NNI replayed: %d agree with %s, %d disagree (NNI pairs some results "
                    "with another trial's parameters), %d from trials NNI re-ran, %d ignored (no outcome here, "
                    "and NNI's pairing is not trusted: evaluated again), %d unreadable", len(data),
                    counts["agree"], STATE_FILE, counts["disagree"], counts["from trials NNI re-ran"],
                    counts["ignored"], counts["unreadable"])
        if self.entry is not None:
            replayed = self.entry["replayed"]
            replayed["records"] += len(data)
            for key, count in counts.items():
                replayed[key] = replayed.get(key, 0) + count


def start_timer(seconds, function, *args):
    """``function(*args)`` on a thread of its own after ``seconds``, unless the returned timer is cancelled first."""
    timer = threading.Timer(seconds, function, args)
    timer.daemon = True
    timer.start()
    return timer


def parse_result(value):
    """(accuracy, accuracy before recalibration) from tester.py's final result: a number or
    ``{"default": ..., "before_recalibration": ...}``; (None, None) when it holds no finite number."""
    before = None
    if isinstance(value, dict):
        before = value.get("before_recalibration")
        value = value.get("default")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, None
    if isinstance(before, bool) or not isinstance(before, (int, float)) or not math.isfinite(before):
        before = None
    return float(value), before


def _nni_experiment_id():
    """The NNI experiment running this tuner (its log folder is <experiments>/<id>/log), or None."""
    log_dir = os.environ.get("NNI_LOG_DIRECTORY")
    return os.path.basename(os.path.dirname(os.path.normpath(log_dir))) if log_dir else None


def _positive_seconds(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)
