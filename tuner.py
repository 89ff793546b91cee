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
  candidates.csv             one row per candidate when its trial ends: round, parameter id, origin,
                             choices, FLOPs, accuracy before and after BN recalibration, status
A trial that fails (or ends without a result) counts as done with no accuracy, so a round never stalls.
"""
import csv
import functools
import logging
import math
import os
import random
import time
from collections import deque

import nni
from nni.tuner import Tuner

from architecture import architecture_keys, parse_architecture, write_architecture
from network import NUM_CHOICES, NUM_LAYERS, ShuffleNetV2OneShot

logger = logging.getLogger("spos.tuner")

EXPORT_DIR = "checkpoints"
TABLE_FILE = "candidates.csv"
BEST_FILE = "architecture_final.json"
TABLE_COLUMNS = ("round", "parameter_id", "origin", "choices", "flops", "accuracy_before_recalibration",
                 "accuracy", "status", "trial_job_id")
FLOPS_INPUT_SIZE = 224
FLOPS_CLASSES = 1000
OP_FLOPS_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "op_flops_dict.pkl")


@functools.lru_cache(maxsize=None)
def reference_flops_model(op_flops_path=OP_FLOPS_TABLE):
    """The supernet at the paper's 224x224 and 1,000 classes, built once per process: only for FLOPs."""
    return ShuffleNetV2OneShot(input_size=FLOPS_INPUT_SIZE, n_classes=FLOPS_CLASSES, op_flops_path=op_flops_path)


def format_choices(candidate):
    return " ".join(map(str, candidate))


class EvolutionWithFlops(Tuner):
    """SPOS evolution under a FLOPs limit (see the module docstring). ``seed`` fixes the whole search:
    the same seed and the same results give the same candidates. ``max_attempts``: random draws allowed per
    round before giving up on filling it (default 100 per candidate), so a limit almost nothing meets ends
    the search with a message instead of spinning."""

    def __init__(self, max_epochs=20, num_population=50, num_select=10, num_mutation=25, num_crossover=25,
                 m_prob=0.1, flops_limit=330e6, seed=42, output_dir=None, max_attempts=None):
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
        self.seed = seed
        self.max_attempts = (100 * self.num_population if max_attempts is None
                             else _positive_int("max_attempts", max_attempts))
        self.output_dir = output_dir
        self.rng = random.Random(seed)

        self.keys = architecture_keys(NUM_LAYERS)
        self.choices = None  # allowed block indices per layer, from the search space
        self.round = 0  # rounds started
        self.finished = False
        self.history = {}  # candidate -> record, every candidate ever generated (no duplicates, ever)
        self.ranking = []  # candidates with an accuracy, best first (ties: the earlier generated first)
        self._flops = {}
        self._queue = deque()  # this round's candidates not yet handed to NNI
        self._running = {}  # parameter id -> candidate handed out, no result yet
        self._round_open = 0  # this round's candidates not yet done
        self._pending_ids = deque()  # parameter ids NNI asked for while this round was still running
        self._send_trial = None  # NNI's st_callback(parameter_id, parameters)
        self._checkpoint_dir = None

    # NNI's interface

    def update_search_space(self, search_space):
        choices = self.parse_search_space(search_space)
        if self.choices is not None:
            self.choices = choices
            logger.warning("search space updated: it applies to the candidates generated from now on")
            return
        self.choices = choices
        self._prepare_output()
        logger.info("SPOS evolution: %d rounds of %d candidates (%d mutation, %d crossover, the rest random; parents "
                    "from the best %d so far), m_prob %g, FLOPs <= %.1fM at %dx%d, seed %s; results in %s",
                    self.max_epochs, self.num_population, self.num_mutation, self.num_crossover, self.num_select,
                    self.m_prob, self.flops_limit / 1e6, FLOPS_INPUT_SIZE, FLOPS_INPUT_SIZE, self.seed,
                    self.checkpoint_dir)
        smallest = self.min_flops()
        if smallest > self.flops_limit:
            self._finish(f"flops_limit {self.flops_limit:.4g} is below the smallest candidate of the search space "
                         f"({smallest / 1e6:.1f}M FLOPs at {FLOPS_INPUT_SIZE}x{FLOPS_INPUT_SIZE}): no candidate is "
                         f"legal, nothing to search; raise flops_limit", error=True)
            return
        self._start_round()

    def generate_parameters(self, parameter_id, **kwargs):
        if not self._queue:
            raise nni.NoMoreTrialError("the search is over" if self.finished else
                                       "waiting for this round's results before the next round")
        candidate = self._queue.popleft()
        self._running[parameter_id] = candidate
        self.history[candidate]["parameter_id"] = parameter_id
        return self.to_parameters(candidate)

    def generate_multiple_parameters(self, parameter_id_list, **kwargs):
        """Hand out what this round still has; ids asked for beyond it are kept and served through NNI's
        ``st_callback`` when the next round starts (NNI meanwhile shows TUNER_NO_MORE_TRIAL)."""
        if kwargs.get("st_callback") is not None:
            self._send_trial = kwargs["st_callback"]
        result = []
        for parameter_id in parameter_id_list:
            if self._queue:
                result.append(self.generate_parameters(parameter_id))
            elif not self.finished and self._send_trial is not None:
                self._pending_ids.append(parameter_id)
        return result

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        accuracy, before = parse_result(value)
        trial_job_id = kwargs.get("trial_job_id") or ""
        if parameter_id not in self._running:
            self._late_result(parameter_id, parameters, accuracy, before, trial_job_id)
            return
        if accuracy is None:
            logger.warning("trial %s (parameter %d) reported %r, not an accuracy: counted as failed", trial_job_id,
                           parameter_id, value)
            self._done(parameter_id, None, None, "bad result", trial_job_id)
        else:
            self._done(parameter_id, accuracy, before, "succeeded", trial_job_id)

    def trial_end(self, parameter_id, success, **kwargs):
        if parameter_id in self._running:  # no final result came: the trial failed or never reported
            status = "no result" if success else "failed"
            logger.warning("trial of parameter %d ended (%s) without a result: counted as done with no accuracy",
                           parameter_id, "succeeded" if success else "failed or cancelled")
            self._done(parameter_id, None, None, status, "")

    def import_data(self, data):
        logger.warning("import_data is not supported by this tuner: %d records ignored", len(data))

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
            self._flops[candidate] = reference_flops_model().get_candidate_flops(candidate)
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
        """The next round's candidates as (candidate, origin): mutation and crossover of the parents (10 tries
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
                                               "accuracy": None, "accuracy_before_recalibration": None,
                                               "status": "queued", "parameter_id": None,
                                               "order": len(self.history)}
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

    # rounds

    @property
    def checkpoint_dir(self):
        if self._checkpoint_dir is None:
            base = self.output_dir or os.environ.get("NNI_LOG_DIRECTORY") or os.getcwd()
            self._checkpoint_dir = os.path.join(base, EXPORT_DIR)
        return self._checkpoint_dir

    def _prepare_output(self):
        """A folder of an earlier search (e.g. the same output_dir, or `nnictl resume`) is moved aside."""
        table = os.path.join(self.checkpoint_dir, TABLE_FILE)
        if os.path.exists(table):
            moved = f"{self.checkpoint_dir}-{time.strftime('%Y%m%d-%H%M%S')}"
            suffix = 1
            while os.path.exists(moved):
                suffix += 1
                moved = f"{self.checkpoint_dir}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
            os.rename(self.checkpoint_dir, moved)
            logger.warning("moved the results of an earlier search to %s", moved)
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        with open(table, "w", newline="") as f:
            csv.writer(f).writerow(TABLE_COLUMNS)

    def _start_round(self):
        self.round += 1
        population = self.next_population()
        if not population:
            self._finish(f"round {self.round}: no legal candidate left to evaluate (flops_limit {self.flops_limit:.4g}"
                         f", {len(self.history)} candidates seen)", error=True)
            return
        self._queue.extend(population)
        self._round_open = len(population)
        origins = [self.history[c]["origin"] for c in population]
        logger.info("round %d/%d: %d candidates (%d mutation, %d crossover, %d random)", self.round, self.max_epochs,
                    len(population), origins.count("mutation"), origins.count("crossover"), origins.count("random"))
        while self._pending_ids and self._queue:
            parameter_id = self._pending_ids.popleft()
            self._send_trial(parameter_id, self.generate_parameters(parameter_id))

    def _done(self, parameter_id, accuracy, before, status, trial_job_id):
        candidate = self._running.pop(parameter_id)
        record = self.history[candidate]
        record.update(accuracy=accuracy, accuracy_before_recalibration=before, status=status)
        if accuracy is not None:
            self._rank(candidate)
        self._write_row(candidate, record, trial_job_id)
        self._round_open -= 1
        if self._round_open == 0 and not self._queue:
            self._end_round()

    def _late_result(self, parameter_id, parameters, accuracy, before, trial_job_id):
        try:
            candidate = parse_architecture(parameters, f"parameters of {parameter_id}")
        except Exception:
            candidate = None
        record = self.history.get(candidate)
        if record is None or accuracy is None or record["accuracy"] is not None:
            logger.warning("ignoring a result for parameter %s, which this search did not hand out", parameter_id)
            return
        logger.warning("late result for parameter %d (%s): recorded for the coming rounds", parameter_id,
                       format_choices(candidate))
        record.update(accuracy=accuracy, accuracy_before_recalibration=before, status="succeeded (late)")
        self._rank(candidate)
        self._write_row(candidate, record, trial_job_id)

    def _rank(self, candidate):
        self.ranking.append(candidate)
        self.ranking.sort(key=lambda c: (-self.history[c]["accuracy"], self.history[c]["order"]))

    def _write_row(self, candidate, record, trial_job_id):
        with open(os.path.join(self.checkpoint_dir, TABLE_FILE), "a", newline="") as f:
            csv.writer(f).writerow([record["round"], record["parameter_id"], record["origin"], format_choices(candidate),
                                    record["flops"], _number(record["accuracy_before_recalibration"]),
                                    _number(record["accuracy"]), record["status"], trial_job_id])

    def _end_round(self):
        members = [c for c, r in self.history.items() if r["round"] == self.round]
        scored = [self.history[c]["accuracy"] for c in members if self.history[c]["accuracy"] is not None]
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
        else:
            self._start_round()

    def _finish(self, message, error=False):
        self.finished = True
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


def _number(value):
    return "" if value is None else f"{value:.6f}"


def _positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a{' non-negative' if allow_zero else ' positive'} integer, got {value!r}")
    return value
