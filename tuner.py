"""Step 2 of SPOS: the evolution search as an NNI tuner (``tuner: {codeDirectory: ., className:
tuner.EvolutionWithFlops}``); each trial (tester.py) scores one candidate.

Megvii's evolution: round 1 is ``num_population`` random candidates; every later round is ``num_mutation``
mutants (each gene resampled with probability ``m_prob``) and ``num_crossover`` crosses (each gene from one
of two parents) of parents drawn from the best ``num_select`` candidates seen so far in all rounds, refilled
with random candidates up to ``num_population``. A candidate is legal when it was never generated before and
its FLOPs (224x224 input, 1,000 classes, as the paper's limit) are at most ``flops_limit``. After
``max_epochs`` rounds the tuner raises ``nni.NoMoreTrialError``.

Outputs, in ``checkpoints/`` under the experiment's log folder (``~/nni-experiments/<id>/log``; the
``output_dir`` class argument overrides it):
  RRR_KKK.json               after round RRR, the K-th best candidate seen so far (the parents of the next
                             round), in the format of architecture_final.json (scratch.py --fixed-arc takes it)
  architecture_final.json    the best candidate seen so far
  candidates.csv             one row per candidate once its outcome is final: round, parameter id, origin,
                             choices, FLOPs, accuracy before and after BN recalibration, status, trial
  search_state.json          where the search stands (finished or not) and what a resume needs
                             (search_state.py describes both files)

NNI 3.0 delivers a trial's end (``trial_end``) and its final result (``receive_trial_result``) on two
threads, in either order, the result often seconds after the end (nni/runtime/msg_dispatcher_base.py). So
every callback takes one lock; a trial that ended successfully keeps its round open until its result comes,
for at most ``result_timeout`` seconds (a timer thread counts it as failed then, so no callback ever waits);
a failed trial is done at once. A round closes when every one of its candidates has an outcome.

Resume: ``nnictl resume ID`` restarts the tuner (NNI calls ``load_checkpoint``), as ``resume=True`` does for
``tester.py --evolution --resume``. The tuner reloads search_state.json (every candidate with its outcome,
the rounds, the random state). NNI re-runs the trials that were running when it stopped and sends their
results through ``import_data``; the tuner hands out again only the open round's other candidates without
an outcome. (NNI also replays its finished trials through ``import_data``: the tuner only checks those
against its own, see ``import_data``.) With the same seed and results a resumed search evaluates the same
candidates as one never stopped. A new search (not a resume) in a folder that holds an earlier one moves
that folder aside first.
"""
import csv
import io
import json
import logging
import math
import os
import random
import threading
import time
from collections import Counter, deque

import nni
from nni.tuner import Tuner

from architecture import architecture_keys, parse_architecture, write_architecture
from errors import UserError
from network import NUM_CHOICES, NUM_LAYERS, PAPER_INPUT_SIZE, paper_flops
from search_state import (BEST_FILE, EXPORT_DIR, STATE_FILE, STATE_FORMAT, TABLE_COLUMNS, TABLE_FILE, read_state,
                          write_atomically)

logger = logging.getLogger("spos.tuner")

# a candidate's status: waiting for its outcome, or its outcome (final: it gets its row in candidates.csv)
WAITING = ("queued", "running", "awaiting result", "resumed by NNI")
OUTCOMES = ("succeeded", "failed", "bad result", "no result")


def format_choices(candidate):
    return " ".join(map(str, candidate))


class EvolutionWithFlops(Tuner):
    """SPOS evolution under a FLOPs limit (see the module docstring). ``seed`` fixes the whole search:
    the same seed and the same results give the same candidates. ``max_attempts``: random draws allowed per
    round before giving up on filling it (default 100 per candidate), so a limit almost nothing meets ends
    the search with a message instead of spinning. ``result_timeout``: seconds a round waits for the result
    of a trial that ended successfully before counting it as failed. ``resumed_trial_timeout``: seconds after
    a resume within which a trial NNI re-runs must send its result (NNI reports no end for those trials).
    ``resume``: continue the search in ``output_dir`` instead of starting a new one."""

    def __init__(self, max_epochs=20, num_population=50, num_select=10, num_mutation=25, num_crossover=25,
                 m_prob=0.1, flops_limit=330e6, seed=42, output_dir=None, max_attempts=None, result_timeout=60,
                 resumed_trial_timeout=3600, resume=False):
        super().__init__()
        self.max_epochs = _positive_int("max_epochs", max_epochs)
        self.num_population = _positive_int("num_population", num_population)
        self.num_select = _positive_int("num_select", num_select)
        self.num_mutation = _positive_int("num_mutation", num_mutation, allow_zero=True)
        self.num_crossover = _positive_int("num_crossover", num_crossover, allow_zero=True)
        if self.num_select > self.num_population:
            raise ValueError(f"num_select ({num_select}) must not exceed num_population ({num_population})")
        if self.num_mutation + self.num_crossover > self.num_population:
            raise ValueError(f"num_mutation + num_crossover ({num_mutation} + {num_crossover}) must not exceed "
                             f"num_population ({num_population})")
        try:
            self.m_prob = float(m_prob)
            self.flops_limit = float(flops_limit)
        except (TypeError, ValueError):
            raise ValueError(f"m_prob and flops_limit must be numbers, got {m_prob!r} and {flops_limit!r}") from None
        if not 0.0 <= self.m_prob <= 1.0:
            raise ValueError(f"m_prob must be in [0, 1], got {m_prob}")
        if not self.flops_limit > 0:
            raise ValueError(f"flops_limit must be positive, got {flops_limit}")
        self.result_timeout = _positive_seconds("result_timeout", result_timeout)
        self.resumed_trial_timeout = _positive_seconds("resumed_trial_timeout", resumed_trial_timeout)
        self.seed = seed
        self.max_attempts = (100 * self.num_population if max_attempts is None
                             else _positive_int("max_attempts", max_attempts))
        self.output_dir = output_dir
        self.resume = bool(resume)
        self.rng = random.Random(seed)
        # what defines the search: a resume must find the same in search_state.json
        self.settings = {"max_epochs": self.max_epochs, "num_population": self.num_population,
                         "num_select": self.num_select, "num_mutation": self.num_mutation,
                         "num_crossover": self.num_crossover, "m_prob": self.m_prob, "flops_limit": self.flops_limit,
                         "seed": self.seed, "max_attempts": self.max_attempts}

        self.keys = architecture_keys(NUM_LAYERS)
        self.choices = None  # allowed block indices per layer, from the search space
        self.round = 0  # rounds started
        self.rounds_done = 0
        self.finished = False
        self.error = None  # why the search stopped early, if it did
        self.history = {}  # candidate -> record, every candidate ever generated, in order (no duplicates, ever)
        self.ranking = []  # candidates with an accuracy, best first (ties: the earlier generated first)
        self.results_after_end = {"count": 0, "longest_wait_s": 0.0}
        self.resumes = []  # what each resume found (kept in search_state.json)
        self._lock = threading.RLock()  # NNI calls from two threads, the timers from their own
        self._flops = {}
        self._queue = deque()  # this round's candidates not yet handed to NNI
        self._running = {}  # parameter id -> candidate handed out in this run, neither result nor end yet
        self._awaiting = {}  # parameter id -> (candidate, when its trial ended, timer): ended, result to come
        self._resumed = {}  # candidate -> timer: trials NNI re-runs after a resume (their results: import_data)
        self._pending_ids = deque()  # parameter ids NNI asked for while this round had nothing left to hand out
        self._send_trial = None  # NNI's st_callback(parameter_id, parameters)
        self._resumed_by_nni = False
        self._looked_for_trials_nni_resumes = False
        self._this_resume = None  # the entry of self.resumes for this run, when it resumed
        self._checkpoint_dir = None
        self._clock = time.monotonic

    # NNI's interface: each callback takes the lock and returns at once

    def load_checkpoint(self):
        """NNI calls this when `nnictl resume` restarts the tuner, before anything else: continue the search."""
        with self._lock:
            self.resume = True
            self._resumed_by_nni = True

    def update_search_space(self, search_space):
        with self._lock:
            choices = self.parse_search_space(search_space)
            if self.choices is not None:
                self.choices = choices
                logger.warning("search space updated: it applies to the candidates generated from now on")
                return
            self.choices = choices
            state = self._prepare_output()
            logger.info("SPOS evolution: %d rounds of %d candidates (%d mutation, %d crossover, the rest random; "
                        "parents from the best %d so far), m_prob %g, FLOPs <= %.1fM at %dx%d, seed %s; results in %s",
                        self.max_epochs, self.num_population, self.num_mutation, self.num_crossover,
                        self.num_select, self.m_prob, self.flops_limit / 1e6, PAPER_INPUT_SIZE, PAPER_INPUT_SIZE,
                        self.seed, self.checkpoint_dir)
            if state is not None:
                self._restore(state)
            else:
                smallest = self.min_flops()
                if smallest > self.flops_limit:
                    self._finish(f"flops_limit {self.flops_limit:.4g} is below the smallest candidate of the search "
                                 f"space ({smallest / 1e6:.1f}M FLOPs at {PAPER_INPUT_SIZE}x{PAPER_INPUT_SIZE}): no "
                                 f"candidate is legal, nothing to search; raise flops_limit", error=True)
                else:
                    self._start_round()
            self._advance()
            self._save()

    def generate_parameters(self, parameter_id, **kwargs):
        with self._lock:
            if not self._queue:
                raise nni.NoMoreTrialError("the search is over" if self.finished else
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
                    self._take_trials_nni_resumes(self._send_trial)
            parameters = []
            for parameter_id in parameter_id_list:
                if self._queue:
                    parameters.append(self._hand_out(parameter_id))
                elif not self.finished and self._send_trial is not None:
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
                delay = self._clock() - ended
                self.results_after_end["count"] += 1
                self.results_after_end["longest_wait_s"] = max(self.results_after_end["longest_wait_s"], delay)
                logger.info("the result of parameter %d came %.1f s after its trial ended", parameter_id, delay)
            else:
                self._unexpected_result(parameter_id, parameters)
                return
            if accuracy is None:
                logger.warning("trial %s (parameter %d) reported %r, not an accuracy: counted as failed",
                               trial_job_id, parameter_id, value)
                self._record_outcome(candidate, "bad result", None, None, trial_job_id)
            else:
                self._record_outcome(candidate, "succeeded", accuracy, before, trial_job_id, delay)
            self._advance()
            self._save()

    def trial_end(self, parameter_id, success, **kwargs):
        with self._lock:
            if parameter_id not in self._running:  # its result came first: its outcome is already final
                return
            candidate = self._running.pop(parameter_id)
            if success:
                timer = self._start_timer(self.result_timeout, self._result_timed_out, parameter_id)
                self._awaiting[parameter_id] = (candidate, self._clock(), timer)
                self.history[candidate]["status"] = "awaiting result"
                logger.info("the trial of parameter %d ended before its result reached the tuner: its round waits "
                            "up to %g s for it", parameter_id, self.result_timeout)
            else:
                logger.warning("the trial of parameter %d (%s) failed or was cancelled: counted as done with no "
                               "accuracy", parameter_id, format_choices(candidate))
                self._record_outcome(candidate, "failed", None, None, "")
                self._advance()
            self._save()

    def import_data(self, data):
        """Results NNI replays as ``[{"parameter": ..., "value": ...}, ...]``. On `nnictl resume` it replays its
        finished trials first, all at once: the tuner has those in search_state.json already, and only checks
        them, because NNI pairs them with the parameters its database recorded for the trial, which for some
        trials are another trial's (its local training service hands parameters out in its own order). Then,
        one by one, the results of the trials NNI re-runs, paired through their own parameter id: each becomes
        its candidate's outcome."""
        with self._lock:
            counts = Counter()
            for entry in data:
                try:
                    candidate = parse_architecture(entry["parameter"], "a result NNI replayed")
                except (UserError, KeyError, TypeError):
                    counts["unreadable"] += 1
                    continue
                accuracy, before = parse_result(entry.get("value"))
                record = self.history.get(candidate)
                if candidate in self._resumed:
                    self._resumed.pop(candidate).cancel()
                    self._record_outcome(candidate, "succeeded" if accuracy is not None else "bad result", accuracy,
                                         before, entry.get("trialJobId") or "")
                    counts["from trials NNI re-ran"] += 1
                elif record is not None and record["status"] in OUTCOMES:
                    agrees = record["accuracy"] is not None and accuracy is not None and math.isclose(
                        record["accuracy"], accuracy, rel_tol=1e-6, abs_tol=1e-9)
                    counts["agree" if agrees else "disagree"] += 1
                else:  # NNI's pairing cannot be trusted for it: it is evaluated (again)
                    counts["ignored"] += 1
            logger.info("import_data: %d results NNI replayed: %d agree with %s, %d disagree (NNI pairs some results "
                        "with another trial's parameters), %d from trials NNI re-ran, %d ignored (no outcome here, "
                        "and NNI's pairing is not trusted: evaluated again), %d unreadable", len(data),
                        counts["agree"], STATE_FILE, counts["disagree"], counts["from trials NNI re-ran"],
                        counts["ignored"], counts["unreadable"])
            if self._this_resume is not None:
                replayed = self._this_resume["replayed"]
                replayed["records"] += len(data)
                for key, count in counts.items():
                    replayed[key] = replayed.get(key, 0) + count
            self._advance()
            self._save()

    # the evolution, testable without NNI

    def parse_search_space(self, search_space):
        """Allowed block indices of each layer from ss_gen's space (a layer's "_value" may be narrowed)."""
        if not isinstance(search_space, dict) or sorted(search_space) != sorted(self.keys):
            found = sorted(search_space)[:3] if isinstance(search_space, dict) else type(search_space).__name__
            raise ValueError(f"the search space must have exactly the keys LayerChoice1..LayerChoice{NUM_LAYERS} "
                             f"(write it with: nnictl ss_gen -t \"python tester.py\"), got {found}")
        choices = []
        for key in self.keys:
            spec = search_space[key]
            values = spec.get("_value") if isinstance(spec, dict) else None
            if (not isinstance(spec, dict) or spec.get("_type") != "layer_choice" or not isinstance(values, list)
                    or not values or any(str(v) not in {str(c) for c in range(NUM_CHOICES)} for v in values)):
                raise ValueError(f"search space {key}: expected {{\"_type\": \"layer_choice\", \"_value\": [block "
                                 f"indices \"0\"..\"{NUM_CHOICES - 1}\"]}}, got {spec!r}")
            choices.append(tuple(sorted({int(v) for v in values})))
        return choices

    def flops(self, candidate):
        if candidate not in self._flops:
            self._flops[candidate] = paper_flops(candidate)
        return self._flops[candidate]

    def min_flops(self):
        """FLOPs of the cheapest candidate the search space allows (layers add up independently)."""
        base = tuple(c[0] for c in self.choices)
        total = self.flops(base)
        for i, allowed in enumerate(self.choices):
            costs = [self.flops(base[:i] + (c,) + base[i + 1:]) for c in allowed]
            total += min(costs) - costs[0]
        return total

    def is_legal(self, candidate):
        return candidate not in self.history and self.flops(candidate) <= self.flops_limit

    def random_candidate(self):
        return tuple(self.rng.choice(allowed) for allowed in self.choices)

    def mutate(self, parent):
        return tuple(self.rng.choice(allowed) if self.rng.random() < self.m_prob else gene
                     for gene, allowed in zip(parent, self.choices))

    def crossover(self, first, second):
        return tuple(a if self.rng.random() < 0.5 else b for a, b in zip(first, second))

    def parents(self):
        return self.ranking[:self.num_select]

    def next_population(self):
        """The next round's candidates (each recorded in ``history``): mutation and crossover of the parents (10 tries
        per wanted candidate, as Megvii), then random ones up to ``num_population`` (``max_attempts`` tries)."""
        population = []

        def fill(count, attempts, make, origin):
            found = 0
            for _ in range(attempts):
                if found >= count:
                    break
                candidate = make()
                if self.is_legal(candidate):
                    self.history[candidate] = {"round": self.round, "origin": origin, "flops": self.flops(candidate),
                                               "order": len(self.history), "status": "queued", "accuracy": None,
                                               "accuracy_before_recalibration": None, "parameter_id": None,
                                               "trial_job_id": "", "result_delay_s": None}
                    population.append(candidate)
                    found += 1
            return found

        parents = self.parents()
        if parents:
            fill(self.num_mutation, 10 * self.num_mutation, lambda: self.mutate(self.rng.choice(parents)), "mutation")
            fill(self.num_crossover, 10 * self.num_crossover,
                 lambda: self.crossover(self.rng.choice(parents), self.rng.choice(parents)), "crossover")
        elif self.round > 1:
            logger.warning("round %d: no candidate has an accuracy yet, so no parents: all random", self.round)
        wanted = self.num_population - len(population)
        found = fill(wanted, self.max_attempts, self.random_candidate, "random")
        if found < wanted:
            logger.warning("round %d: found only %d of %d random candidates in %d draws: flops_limit %.4g leaves "
                           "few legal candidates", self.round, found, wanted, self.max_attempts, self.flops_limit)
        return population

    @staticmethod
    def to_parameters(candidate):
        return {key: {"_value": str(choice), "_idx": choice} for key, choice in zip(architecture_keys(), candidate)}

    @property
    def next_parameter_id(self):
        """One more than the largest parameter id this search handed out (for drivers that number them)."""
        return 1 + max((r["parameter_id"] for r in self.history.values() if r["parameter_id"] is not None),
                       default=-1)

    # output folder, state and resume

    @property
    def checkpoint_dir(self):
        if self._checkpoint_dir is None:
            base = self.output_dir or os.environ.get("NNI_LOG_DIRECTORY") or os.getcwd()
            self._checkpoint_dir = os.path.join(base, EXPORT_DIR)
        return self._checkpoint_dir

    @property
    def state_path(self):
        return os.path.join(self.checkpoint_dir, STATE_FILE)

    def _prepare_output(self):
        """The state to resume from, or None for a new search. A new search in a folder holding an earlier one
        (e.g. the same output_dir) moves that folder aside."""
        if self.resume:
            if os.path.exists(self.state_path):
                return read_state(self.state_path)
            raise ValueError(f"{self.checkpoint_dir}: no {STATE_FILE} there, so no search to resume"
                             + (" (an experiment whose tuner did not write it cannot be continued: create a new one)"
                                if self._resumed_by_nni else ""))
        if any(os.path.exists(os.path.join(self.checkpoint_dir, name)) for name in (STATE_FILE, TABLE_FILE)):
            moved = f"{self.checkpoint_dir}-{time.strftime('%Y%m%d-%H%M%S')}"
            suffix = 1
            while os.path.exists(moved):
                suffix += 1
                moved = f"{self.checkpoint_dir}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
            os.rename(self.checkpoint_dir, moved)
            logger.warning("moved the results of an earlier search to %s", moved)
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        return None

    def _restore(self, state):
        """Continue the search of ``state`` (search_state.json): same settings, search space and experiment."""
        settings, saved = json.loads(json.dumps(self.settings)), state.get("settings") or {}
        changed = [f"{key} {saved.get(key)!r} there, {value!r} now" for key, value in settings.items()
                   if saved.get(key) != value]
        if changed:
            raise ValueError(f"{self.state_path}: that search has other settings ({'; '.join(changed)}): resume it "
                             f"with its own, or start a new search in another folder")
        if state.get("search_space") != [list(c) for c in self.choices]:
            raise ValueError(f"{self.state_path}: that search has another search space than the one NNI gave")
        experiment = _nni_experiment_id()
        if experiment and state.get("experiment_id") and state["experiment_id"] != experiment:
            raise ValueError(f"{self.state_path}: that search belongs to NNI experiment {state['experiment_id']}, not "
                             f"{experiment}: give each experiment its own output_dir")
        try:
            for order, entry in enumerate(state["history"]):
                candidate = tuple(entry["choices"])
                self.history[candidate] = {**{k: v for k, v in entry.items() if k != "choices"}, "order": order}
                self._flops[candidate] = entry["flops"]
            self.round, self.rounds_done = state["round"], state["rounds_done"]
            self.finished, self.error = state["finished"], state["error"]
            self.results_after_end = state["results_after_trial_end"]
            self.resumes = state["resumes"]
            version, internal, gauss = state["random_state"]
            self.rng.setstate((version, tuple(internal), gauss))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.state_path}: not a complete search state ({type(e).__name__}: {e})") from None
        self.ranking = [c for c, r in self.history.items() if r["accuracy"] is not None]
        self.ranking.sort(key=self._rank_key)
        unfinished = [c for c in self._members(self.round) if self.history[c]["status"] in WAITING]
        for candidate in unfinished:  # handed out before the stop or not: they all wait for an outcome
            self.history[candidate].update(status="queued", parameter_id=None)
        if not self.finished:
            self._queue.extend(unfinished)
        self._this_resume = {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds_done": self.rounds_done,
                             "candidates_done": sum(r["status"] in OUTCOMES for r in self.history.values()),
                             "open_in_round": len(unfinished), "replayed": {"records": 0},
                             "trials_nni_resumes": 0}
        self.resumes.append(self._this_resume)
        logger.info("resumed the search of %s: %d of %d rounds done%s; round %d has %d candidates without an outcome",
                    self.state_path, self.rounds_done, self.max_epochs, ", finished" if self.finished else "",
                    self.round, len(unfinished))

    def _take_trials_nni_resumes(self, st_callback):
        """After `nnictl resume`, NNI re-runs the trials that were running when the experiment stopped, with
        their parameter ids; their results come through import_data and their ends are never reported. NNI's
        dispatcher (the owner of ``st_callback``) keeps their parameters in ``recovered_trial_params``
        (nni/recoverable.py); it has them by the first request for trials. Those candidates are not handed out
        again; each gets ``resumed_trial_timeout`` seconds for its result."""
        self._looked_for_trials_nni_resumes = True
        recovered = getattr(getattr(st_callback, "__self__", None), "recovered_trial_params", None) or {}
        taken = 0
        for parameter_id, parameters in recovered.items():
            try:
                candidate = parse_architecture(parameters, f"parameters of the trial NNI resumes ({parameter_id})")
            except UserError as e:
                logger.warning("%s", e)
                continue
            record = self.history.get(candidate)
            if record is None or record["status"] != "queued":
                logger.info("NNI re-runs parameter %s (%s), which has an outcome here or is not this round's: its "
                            "result will only be checked", parameter_id, format_choices(candidate))
                continue
            self._queue.remove(candidate)
            record.update(status="resumed by NNI", parameter_id=parameter_id)
            self._resumed[candidate] = self._start_timer(self.resumed_trial_timeout, self._resumed_trial_timed_out,
                                                         candidate)
            taken += 1
        if self._this_resume is not None:
            self._this_resume["trials_nni_resumes"] = taken
        logger.info("nnictl resume: NNI re-runs %d trials of this round that were running when it stopped; %d "
                    "candidates of the round are left to hand out", taken, len(self._queue))

    def _state(self):
        rounds = []
        for number in range(1, self.round + 1):
            members = [self.history[c] for c in self._members(number)]
            rounds.append({"round": number, "candidates": len(members),
                           "scored": sum(r["accuracy"] is not None for r in members),
                           "failed": sum(r["status"] in OUTCOMES and r["accuracy"] is None for r in members),
                           "closed": number <= self.rounds_done})
        best = None
        if self.ranking:
            record = self.history[self.ranking[0]]
            best = {"choices": list(self.ranking[0]), "accuracy": record["accuracy"], "flops": record["flops"],
                    "round": record["round"]}
        version, internal, gauss = self.rng.getstate()
        return {"format": STATE_FORMAT, "experiment_id": _nni_experiment_id(), "settings": self.settings,
                "search_space": [list(c) for c in self.choices], "finished": self.finished, "error": self.error,
                "round": self.round, "rounds_done": self.rounds_done, "candidates": len(self.history),
                "candidates_done": sum(r["status"] in OUTCOMES for r in self.history.values()),
                "candidates_scored": len(self.ranking),
                "candidates_failed": sum(r["status"] in OUTCOMES and r["accuracy"] is None
                                         for r in self.history.values()),
                "rounds": rounds, "best": best, "results_after_trial_end": self.results_after_end,
                "resumes": self.resumes, "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                "random_state": [version, list(internal), gauss],
                "history": [{"choices": list(c), **{k: v for k, v in r.items() if k != "order"}}
                            for c, r in self.history.items()]}

    def _save(self):
        """candidates.csv (the final outcomes, in the order generated) and search_state.json, atomically."""
        if self.choices is None:  # no search space yet, so no search and no output folder
            return
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(TABLE_COLUMNS)
        for candidate, record in self.history.items():
            if record["status"] in OUTCOMES:
                writer.writerow([record["round"], record["parameter_id"], record["origin"],
                                 format_choices(candidate), record["flops"],
                                 _number(record["accuracy_before_recalibration"]), _number(record["accuracy"]),
                                 record["status"], record["trial_job_id"]])
        write_atomically(os.path.join(self.checkpoint_dir, TABLE_FILE), table.getvalue())
        write_atomically(self.state_path, json.dumps(self._state(), indent=1) + "\n")

    # rounds

    def _members(self, number):
        return [c for c, r in self.history.items() if r["round"] == number]

    def _hand_out(self, parameter_id):
        candidate = self._queue.popleft()
        self._running[parameter_id] = candidate
        self.history[candidate].update(status="running", parameter_id=parameter_id)
        return self.to_parameters(candidate)

    def _start_timer(self, seconds, function, *args):
        timer = threading.Timer(seconds, function, args)
        timer.daemon = True
        timer.start()
        return timer

    def _result_timed_out(self, parameter_id):
        with self._lock:
            entry = self._awaiting.pop(parameter_id, None)
            if entry is None:  # the result came meanwhile
                return
            candidate = entry[0]
            logger.warning("the trial of parameter %d (%s) ended successfully but its result did not reach the tuner "
                           "within %g s: counted as failed (raise result_timeout if results come this late)",
                           parameter_id, format_choices(candidate), self.result_timeout)
            self._record_outcome(candidate, "no result", None, None, "")
            self._advance()
            self._save()

    def _resumed_trial_timed_out(self, candidate):
        with self._lock:
            if self._resumed.pop(candidate, None) is None:
                return
            logger.warning("the trial NNI re-ran for %s (parameter %s) sent no result within %g s of the resume: "
                           "counted as failed", format_choices(candidate), self.history[candidate]["parameter_id"],
                           self.resumed_trial_timeout)
            self._record_outcome(candidate, "no result", None, None, "")
            self._advance()
            self._save()

    def _unexpected_result(self, parameter_id, parameters):
        try:
            candidate = parse_architecture(parameters, f"parameters of {parameter_id}")
        except UserError:
            candidate = None
        status = self.history[candidate]["status"] if candidate in self.history else None
        if status == "no result":
            logger.warning("the result of parameter %s (%s) came after result_timeout (%g s): ignored, the candidate "
                           "stays counted as failed; raise result_timeout", parameter_id, format_choices(candidate),
                           self.result_timeout)
        elif status in OUTCOMES:
            logger.info("a second result for parameter %s (%s) ignored: its outcome is final", parameter_id,
                        format_choices(candidate))
        else:
            logger.warning("ignoring a result for parameter %s, which this search did not hand out", parameter_id)

    def _record_outcome(self, candidate, status, accuracy, before, trial_job_id, result_delay_s=None):
        self.history[candidate].update(status=status, accuracy=accuracy, accuracy_before_recalibration=before,
                                       trial_job_id=trial_job_id, result_delay_s=result_delay_s)
        if accuracy is not None:
            self.ranking.append(candidate)
            self.ranking.sort(key=self._rank_key)

    def _rank_key(self, candidate):
        return -self.history[candidate]["accuracy"], self.history[candidate]["order"]

    def _advance(self):
        """Close every round whose candidates all have an outcome and start the next; then serve the ids NNI
        asked for while nothing was left to hand out."""
        while not self.finished and self.round and all(self.history[c]["status"] in OUTCOMES
                                                       for c in self._members(self.round)):
            self._close_round()
            if not self.finished:
                self._start_round()
        while self._pending_ids and self._queue:
            parameter_id = self._pending_ids.popleft()
            self._send_trial(parameter_id, self._hand_out(parameter_id))

    def _start_round(self):
        self.round += 1
        population = self.next_population()
        if not population:
            self._finish(f"round {self.round}: no legal candidate left to evaluate (flops_limit {self.flops_limit:.4g}"
                         f", {len(self.history)} candidates seen)", error=True)
            return
        self._queue.extend(population)
        origins = [self.history[c]["origin"] for c in population]
        logger.info("round %d/%d: %d candidates (%d mutation, %d crossover, %d random)", self.round, self.max_epochs,
                    len(population), origins.count("mutation"), origins.count("crossover"), origins.count("random"))

    def _close_round(self):
        members = self._members(self.round)
        scored = [self.history[c]["accuracy"] for c in members if self.history[c]["accuracy"] is not None]
        self.rounds_done = self.round
        if not scored:
            self._finish(f"all {len(members)} trials of round {self.round} failed: see the trials' logs (trials/<id>/ "
                         f"next to this log folder); stopping the search", error=True)
            return
        parents = self.parents()
        for rank, candidate in enumerate(parents):
            write_architecture(os.path.join(self.checkpoint_dir, f"{self.round:03d}_{rank:03d}.json"), candidate)
        write_architecture(os.path.join(self.checkpoint_dir, BEST_FILE), parents[0])
        best = self.history[parents[0]]
        logger.info("round %d/%d done: %d of %d candidates scored, best %.4f, mean %.4f | best so far %.4f (%.1fM "
                    "FLOPs, round %d): %s | exported the best %d to %s", self.round, self.max_epochs, len(scored),
                    len(members), max(scored), sum(scored) / len(scored), best["accuracy"], best["flops"] / 1e6,
                    best["round"], format_choices(parents[0]), len(parents), self.checkpoint_dir)
        if self.round >= self.max_epochs:
            self._finish(f"search finished after {self.round} rounds, {len(self.history)} candidates: best accuracy "
                         f"{best['accuracy']:.4f} at {best['flops'] / 1e6:.1f}M FLOPs, "
                         f"{os.path.join(self.checkpoint_dir, BEST_FILE)}")

    def _finish(self, message, error=False):
        self.finished = True
        self.error = message if error else None
        self._queue.clear()
        self._pending_ids.clear()
        (logger.error if error else logger.info)("%s", message)


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


def _number(value):
    return "" if value is None else f"{value:.6f}"


def _positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a{' non-negative' if allow_zero else ' positive'} integer, got {value!r}")
    return value


def _positive_seconds(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)
