"""Megvii's evolution search (Search/search.py of megvii-model/SinglePathOneShot) under a FLOPs limit and, with a
latency table of the user's machine (spos/latency.py), a latency limit, with no NNI: the candidates, their legality,
mutation, crossover, selection and the random state. The NNI tuner
(tuner.py) and the in-process search (spos/search.py) drive it the same way: take ``open_candidates()``,
score them in any order, ``record`` each outcome, ``advance()``.

Round 1 is ``num_population`` random candidates; every later round is ``num_mutation`` mutants (each gene
resampled with probability ``m_prob``) and ``num_crossover`` crosses (each gene from one of two parents) of
parents drawn from the best ``num_select`` candidates seen so far in all rounds, refilled with random
candidates up to ``num_population``. A candidate is legal when it was never generated before, its FLOPs (224x224
input, 1,000 classes, as the paper's limit) are at most ``flops_limit`` and its latency, as ``latency_table``
predicts it, at most ``latency_limit`` (each when given). A round closes when every
one of its candidates has an outcome; the search finishes after ``max_epochs`` rounds.
"""
import itertools
import json
import logging
import random
from dataclasses import asdict, dataclass, field, fields

from network import NUM_LAYERS, PAPER_INPUT_SIZE, paper_flops
from spos.architecture import format_choices
from spos.latency import least_latency, load_table, predict
from spos.search_space import parse_search_space
from spos.search_state import OUTCOMES, genes_as_fields, genes_of

logger = logging.getLogger("spos.evolution")


@dataclass(frozen=True)
class EvolutionSettings:
    """What defines a search, with Megvii's defaults: the one declaration the NNI tuner's class arguments, the
    in-process search's flags and search_state.json's "settings" all come from. A ValueError names a bad one."""
    max_epochs: int = field(default=20, metadata={"help": "rounds"})
    num_population: int = field(default=50, metadata={"help": "candidates a round"})
    num_select: int = field(default=10, metadata={"help": "parents: the best this many seen so far, in all rounds"})
    num_mutation: int = field(default=25, metadata={"help": "mutants a round (each gene drawn again with m_prob)"})
    num_crossover: int = field(default=25, metadata={"help": "crosses of two parents a round"})
    m_prob: float = field(default=0.1, metadata={"help": "probability that a mutant's gene is drawn again"})
    flops_limit: float = field(default=330e6, metadata={"help": "most FLOPs a candidate may have, at 224x224 and "
                                                                "1,000 classes whatever the data (the paper's units); "
                                                                "null in a config: no FLOPs limit"})
    latency_limit: float = field(default=None, metadata={"help": "most latency (ms) a candidate may have, as "
                                                                 "--latency-table predicts it on its machine and "
                                                                 "settings (default: no latency limit)"})
    latency_table: str = field(default=None, metadata={"help": "the latency table (python -m spos.latency build) "
                                                               "that predicts each candidate's latency"})
    seed: int = field(default=42, metadata={"help": "fixes the whole search: the same seed and results give the "
                                                    "same candidates"})
    max_attempts: int = field(default=None, metadata={"help": "random draws a round may take before it gives up on "
                                                             "filling itself (default: 100 per candidate)"})

    def __post_init__(self):
        _positive_int("max_epochs", self.max_epochs)
        _positive_int("num_population", self.num_population)
        _positive_int("num_select", self.num_select)
        _positive_int("num_mutation", self.num_mutation, allow_zero=True)
        _positive_int("num_crossover", self.num_crossover, allow_zero=True)
        if self.num_select > self.num_population:
            raise ValueError(f"num_select ({self.num_select}) must not exceed num_population ({self.num_population})")
        if self.num_mutation + self.num_crossover > self.num_population:
            raise ValueError(f"num_mutation + num_crossover ({self.num_mutation} + {self.num_crossover}) must not "
                             f"exceed num_population ({self.num_population})")
        try:  # YAML reads 330e6 as text
            object.__setattr__(self, "m_prob", float(self.m_prob))
            for name in ("flops_limit", "latency_limit"):
                if getattr(self, name) is not None:
                    object.__setattr__(self, name, float(getattr(self, name)))
        except (TypeError, ValueError):
            raise ValueError(f"m_prob, flops_limit and latency_limit must be numbers, got {self.m_prob!r}, "
                             f"{self.flops_limit!r} and {self.latency_limit!r}") from None
        if not 0.0 <= self.m_prob <= 1.0:
            raise ValueError(f"m_prob must be in [0, 1], got {self.m_prob}")
        for name in ("flops_limit", "latency_limit"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if (self.latency_limit is None) != (self.latency_table is None):
            raise ValueError("latency_limit and latency_table go together: the table predicts what the limit bounds")
        if self.max_attempts is None:
            object.__setattr__(self, "max_attempts", 100 * self.num_population)
        _positive_int("max_attempts", self.max_attempts)

    @classmethod
    def of(cls, settings):
        """From a dict (a config's classArgs): a ValueError names a key that is not a setting."""
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a setting of the evolution (one of "
                             f"{', '.join(f.name for f in fields(cls))})")
        return cls(**settings)


class Evolution:
    """The search's candidates (``history``: every one ever generated, in order, with its record), the ones
    with an accuracy best first (``ranking``), and the rounds, under ``settings`` (EvolutionSettings' keyword
    arguments). ``max_attempts`` bounds the random draws of a round, so a limit almost nothing meets ends the
    search with a message instead of spinning."""

    def __init__(self, **settings):
        self.settings = EvolutionSettings.of(settings)
        self.rng = random.Random(self.settings.seed)
        self.choices = None  # allowed block indices per layer, from the search space
        self.round = 0  # rounds started
        self.rounds_done = 0
        self.finished = False
        self.error = None  # why the search stopped early, if it did
        self.history = {}  # candidate -> record, in the order generated (no duplicates, ever)
        self.ranking = []  # candidates with an accuracy, best first (ties: the earlier generated first)
        self._flops = {}
        self.latency = None if self.settings.latency_table is None else load_table(self.settings.latency_table)

    def set_search_space(self, search_space):
        """The blocks each layer may take, from ss_gen's space (spos/search_space.py; a ValueError if it is not, or
        if the latency table has no widths and the space does)."""
        self.choices = parse_search_space(search_space)
        if self.latency is not None and len(self.choices) > NUM_LAYERS and not self.latency["settings"][
                "channel_search"]:
            raise ValueError(f"{self.settings.latency_table}: measured without --channel-search, and the search "
                             f"space has channel choices: build a table with --channel-search")

    def describe(self):
        s = self.settings
        limits = [f"FLOPs <= {s.flops_limit / 1e6:.1f}M at {PAPER_INPUT_SIZE}x{PAPER_INPUT_SIZE}"
                  if s.flops_limit is not None else "no FLOPs limit"]
        if s.latency_limit is not None:
            table = self.latency["settings"]
            limits.append(f"latency <= {s.latency_limit:g} ms as {s.latency_table} predicts it ({table['backend']}, "
                          f"{table['input_size']}x{table['input_size']}, batch {table['batch_size']}, "
                          f"{table['threads']} thread(s))")
        return (f"SPOS evolution: {s.max_epochs} rounds of {s.num_population} candidates ({s.num_mutation} mutation, "
                f"{s.num_crossover} crossover, the rest random; parents from the best {s.num_select} so far), m_prob "
                f"{s.m_prob:g}, {', '.join(limits)}, seed {s.seed}")

    # the rounds

    def start(self):
        """Round 1, or the end of the search when no candidate can meet a limit."""
        if self.settings.flops_limit is not None and self.min_flops() > self.settings.flops_limit:
            self._finish(f"flops_limit {self.settings.flops_limit:.4g} is below the smallest candidate of the search "
                         f"space ({self.min_flops() / 1e6:.1f}M FLOPs at {PAPER_INPUT_SIZE}x{PAPER_INPUT_SIZE}): no "
                         f"candidate is legal, nothing to search; raise flops_limit", error=True)
        elif self.latency is not None and least_latency(self.latency, self.choices) > self.settings.latency_limit:
            self._finish(f"latency_limit {self.settings.latency_limit:g} ms is below the fastest candidate of the "
                         f"search space ({least_latency(self.latency, self.choices):.3f} ms as "
                         f"{self.settings.latency_table} predicts it): no candidate is legal, nothing to search; raise "
                         f"latency_limit", error=True)
        else:
            self._start_round()

    def members(self, number):
        return [c for c, r in self.history.items() if r["round"] == number]

    def open_candidates(self):
        """This round's candidates that have no outcome yet, in the order generated."""
        return [] if self.finished else [c for c in self.members(self.round)
                                         if self.history[c]["status"] not in OUTCOMES]

    def record(self, candidate, status, accuracy=None, before=None, **details):
        """The outcome of ``candidate`` (one of OUTCOMES; an accuracy only when it succeeded); ``details``
        (trial ids, delays) are kept in its record."""
        self.history[candidate].update(status=status, accuracy=accuracy, accuracy_before_recalibration=before,
                                       **details)
        if accuracy is not None:
            self.ranking.append(candidate)
            self.ranking.sort(key=self._rank_key)

    def advance(self):
        """Close the current round when all its candidates have an outcome, and start the next. Returns the
        closed round's number and its parents (the best ``num_select`` so far, best first), or None."""
        if self.finished or not self.round or self.open_candidates():
            return None
        number, members = self.round, self.members(self.round)
        scored = [self.history[c]["accuracy"] for c in members if self.history[c]["accuracy"] is not None]
        self.rounds_done = number
        if not scored:
            self._finish(f"all {len(members)} trials of round {number} failed: see the trials' logs (trials/<id>/ "
                         f"next to this log folder); stopping the search", error=True)
            return None
        parents = self.parents()
        best = self.history[parents[0]]
        logger.info("round %d/%d done: %d of %d candidates scored, best %.4f, mean %.4f | best so far %.4f (%.1fM "
                    "FLOPs, round %d): %s", number, self.settings.max_epochs, len(scored), len(members), max(scored),
                    sum(scored) / len(scored), best["accuracy"], best["flops"] / 1e6, best["round"],
                    format_choices(parents[0]))
        if number >= self.settings.max_epochs:
            self._finish(f"search finished after {number} rounds, {len(self.history)} candidates: best accuracy "
                         f"{best['accuracy']:.4f} at {best['flops'] / 1e6:.1f}M FLOPs")
        else:
            self._start_round()
        return number, parents

    def _start_round(self):
        self.round += 1
        population = self.next_population()
        if not population:
            self._finish(f"round {self.round}: no legal candidate left to evaluate ({self.limits()}, "
                         f"{len(self.history)} candidates seen)", error=True)
            return
        origins = [self.history[c]["origin"] for c in population]
        logger.info("round %d/%d: %d candidates (%d mutation, %d crossover, %d random)", self.round,
                    self.settings.max_epochs, len(population), origins.count("mutation"), origins.count("crossover"),
                    origins.count("random"))

    def _finish(self, message, error=False):
        self.finished = True
        self.error = message if error else None
        (logger.error if error else logger.info)("%s", message)

    # Megvii's operators

    def flops(self, candidate):
        if candidate not in self._flops:
            self._flops[candidate] = paper_flops(candidate)
        return self._flops[candidate]

    def min_flops(self):
        """FLOPs of the cheapest candidate the search space allows (layers add up independently; a layer's block
        and scale do not, so each layer's pairs are tried together)."""
        base = tuple(c[0] for c in self.choices)
        total = self.flops(base)
        for layer in range(NUM_LAYERS):
            genes = (layer,) if len(base) == NUM_LAYERS else (layer, NUM_LAYERS + layer)
            costs = []
            for values in itertools.product(*(self.choices[g] for g in genes)):
                candidate = list(base)
                for gene, value in zip(genes, values):
                    candidate[gene] = value
                costs.append(self.flops(tuple(candidate)))
            total += min(costs) - self.flops(base)
        return total

    def limits(self):
        """The limits a candidate must meet, as text: "flops_limit 3.3e+08, latency_limit 12 ms"."""
        s, limits = self.settings, []
        if s.flops_limit is not None:
            limits.append(f"flops_limit {s.flops_limit:.4g}")
        if s.latency_limit is not None:
            limits.append(f"latency_limit {s.latency_limit:g} ms")
        return ", ".join(limits) or "no limit"

    def predicted_latency(self, candidate):
        """The latency table's prediction for ``candidate`` (ms), or None without a table."""
        return None if self.latency is None else predict(self.latency, candidate)

    def is_legal(self, candidate):
        s = self.settings
        return (candidate not in self.history and (s.flops_limit is None or self.flops(candidate) <= s.flops_limit)
                and (s.latency_limit is None or self.predicted_latency(candidate) <= s.latency_limit))

    def random_candidate(self):
        return tuple(self.rng.choice(allowed) for allowed in self.choices)

    def mutate(self, parent):
        return tuple(self.rng.choice(allowed) if self.rng.random() < self.settings.m_prob else gene
                     for gene, allowed in zip(parent, self.choices))

    def crossover(self, first, second):
        return tuple(a if self.rng.random() < 0.5 else b for a, b in zip(first, second))

    def parents(self):
        return self.ranking[:self.settings.num_select]

    def next_population(self):
        """This round's candidates (each recorded in ``history``): mutation and crossover of the parents (10
        tries per wanted candidate, as Megvii), then random ones up to ``num_population`` (``max_attempts``)."""
        population = []

        def fill(count, attempts, make, origin):
            found = 0
            for _ in range(attempts):
                if found >= count:
                    break
                candidate = make()
                if self.is_legal(candidate):
                    self.history[candidate] = {"round": self.round, "origin": origin, "flops": self.flops(candidate),
                                               "latency_ms": self.predicted_latency(candidate),
                                               "order": len(self.history), "status": "queued", "accuracy": None,
                                               "accuracy_before_recalibration": None, "parameter_id": None,
                                               "trial_job_id": "", "result_delay_s": None}
                    population.append(candidate)
                    found += 1
            return found

        parents = self.parents()
        if parents:
            fill(self.settings.num_mutation, 10 * self.settings.num_mutation,
                 lambda: self.mutate(self.rng.choice(parents)), "mutation")
            fill(self.settings.num_crossover, 10 * self.settings.num_crossover,
                 lambda: self.crossover(self.rng.choice(parents), self.rng.choice(parents)), "crossover")
        elif self.round > 1:
            logger.warning("round %d: no candidate has an accuracy yet, so no parents: all random", self.round)
        wanted = self.settings.num_population - len(population)
        found = fill(wanted, self.settings.max_attempts, self.random_candidate, "random")
        if found < wanted:
            logger.warning("round %d: found only %d of %d random candidates in %d draws: %s leave few legal "
                           "candidates", self.round, found, wanted, self.settings.max_attempts, self.limits())
        return population

    def _rank_key(self, candidate):
        return -self.history[candidate]["accuracy"], self.history[candidate]["order"]

    # what a resume needs

    def state(self):
        """The search as plain data: settings, search space, rounds, every candidate with its record (in the
        order generated), the random state (search_state.json adds its summaries)."""
        version, internal, gauss = self.rng.getstate()
        return {"settings": asdict(self.settings), "search_space": [list(c) for c in self.choices],
                "finished": self.finished, "error": self.error, "round": self.round, "rounds_done": self.rounds_done,
                "random_state": [version, list(internal), gauss],
                "history": [{**genes_as_fields(c), **{k: v for k, v in r.items() if k != "order"}}
                            for c, r in self.history.items()]}

    def restore(self, state, source):
        """Continue the search of ``state`` (what ``state()`` gave; ``source`` names its file in errors): the
        same settings and search space are required. The current round's candidates without an outcome are
        queued again; returns how many."""
        settings, saved = json.loads(json.dumps(asdict(self.settings))), state.get("settings") or {}
        changed = [f"{key} {saved.get(key)!r} there, {value!r} now" for key, value in settings.items()
                   if saved.get(key) != value]
        if changed:
            raise ValueError(f"{source}: that search has other settings ({'; '.join(changed)}): resume it "
                             f"with its own, or start a new search in another folder")
        if state.get("search_space") != [list(c) for c in self.choices]:
            raise ValueError(f"{source}: that search has another search space than the one NNI gave")
        try:
            for order, entry in enumerate(state["history"]):
                candidate = genes_of(entry)
                self.history[candidate] = {**{k: v for k, v in entry.items() if k not in ("choices", "scales")},
                                           "order": order}
                self._flops[candidate] = entry["flops"]
            self.round, self.rounds_done = state["round"], state["rounds_done"]
            self.finished, self.error = state["finished"], state["error"]
            version, internal, gauss = state["random_state"]
            self.rng.setstate((version, tuple(internal), gauss))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: not a complete search state ({type(e).__name__}: {e})") from None
        self.ranking = sorted((c for c, r in self.history.items() if r["accuracy"] is not None), key=self._rank_key)
        unfinished = [c for c in self.members(self.round) if self.history[c]["status"] not in OUTCOMES]
        for candidate in unfinished:  # handed out before the stop or not: they all wait for an outcome
            self.history[candidate].update(status="queued", parameter_id=None)
        return len(unfinished)


def _positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a{' non-negative' if allow_zero else ' positive'} integer, got {value!r}")
    return value
