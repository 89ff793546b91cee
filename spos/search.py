"""The evolution search in one process, without nnictl (``python tester.py --evolution``): the evolution
the NNI tuner drives (spos/evolution.py) with the ``tuner.classArgs`` of ``--search-config``, each round's
candidates scored side by side by ``--search-workers`` processes on data decoded once and kept in memory; it
writes the same files as the nnictl search (spos/search_state.py). ``--resume`` continues a search that stopped
(Ctrl-C, a crash) from its search_state.json: the candidates already scored are not scored again.
"""
import argparse
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import tempfile
import time

import torch

from spos.architecture import format_choices
from spos.evolution import Evolution
from spos.hardware import compute_dtype
from spos.scoring import (evaluate_candidate, input_size_of, load_scoring_data, load_supernet, log_scoring_data,
                          network_options_of, resolve_checkpoint)
from spos.search_space import search_space
from spos.search_state import EXPORT_DIR, STATE_FILE, export_round, prepare_search_dir, save_search
from utils import UserError, logger, save_args, setup_logging

# the NNI tuner's class arguments that are not the evolution's (tuner.EvolutionWithFlops)
NNI_TUNER_ONLY = ("output_dir", "result_timeout", "resumed_trial_timeout")


def search_in_process(args, device):
    """Run the whole search (see the module docstring); ``args`` are tester.py's."""
    import yaml

    try:
        with open(args.search_config) as f:
            tuner_args = dict(yaml.safe_load(f)["tuner"]["classArgs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise UserError(f"{args.search_config}: cannot read tuner.classArgs from it ({e})") from None
    if args.search_workers < 0:
        raise UserError(f"--search-workers must be 0 (automatic) or more, got {args.search_workers}")
    workers = args.search_workers or (1 if device.type == "cuda" else os.cpu_count() or 1)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    if not os.path.isfile(args.checkpoint):
        raise UserError(f"{args.checkpoint}: checkpoint not found (train the supernet first, or pass --checkpoint)")
    args.input_size = input_size_of(args.checkpoint, args.input_size)
    checkpoint_dir = os.path.join(args.output_dir, EXPORT_DIR)
    pool = None
    with tempfile.TemporaryDirectory(prefix="spos_scoring_") as scratch_cache:
        try:
            if workers > 1:
                if not args.cache_dir:
                    args.cache_dir = scratch_cache  # the workers load the tensors this process decodes
                # started first: their seconds of start-up overlap this process's (the search, the data)
                pool = _start_pool(args, device, workers)
            evolution = _make_evolution(tuner_args, args.search_config)
            try:  # before the data: a search that cannot resume says so at once
                channel_search = bool(network_options_of(args.checkpoint).get("channel_search"))
                resumes = _start_or_resume(evolution, checkpoint_dir, args.resume, channel_search)
            except (UserError, ValueError) as e:
                raise UserError(f"--resume: {e}" if args.resume else str(e)) from None
            save_args(argparse.Namespace(**vars(args), tuner=tuner_args, resolved_search_workers=workers),
                      args.output_dir)
            loading = time.perf_counter()
            train, val, classes, source = load_scoring_data(args, device, keep=True)
            log_scoring_data(train, val, classes, source, args.train_iters, time.perf_counter() - loading)
            # loaded here also when workers score: a checkpoint that does not fit is reported once, clearly
            model = load_supernet(args.checkpoint, args.input_size, len(classes), device, args.channels_last)
            if pool is None:
                _scorer.update(model=model, train=train, val=val, train_iters=args.train_iters,
                               autocast_dtype=compute_dtype(args.precision, device))
            else:
                del model, train, val
            try:
                count, elapsed = _run_evolution(evolution, checkpoint_dir, resumes, pool)
            except concurrent.futures.process.BrokenProcessPool:
                raise UserError(f"a scoring worker process died (killed by the system: out of memory? `dmesg` "
                                f"says); the candidates scored so far are in {checkpoint_dir}; continue with "
                                f"--resume and fewer --search-workers") from None
            except KeyboardInterrupt:
                logger.warning("interrupted: the candidates scored so far are in %s; continue the search with the "
                               "same command and --resume", checkpoint_dir)
                raise
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    logger.info("in-process search: %d candidates in %.1f s (%.0f candidates per hour); exports in %s",
                count, elapsed, count / elapsed * 3600, checkpoint_dir)
    return {"candidates": count, "seconds": elapsed, "output_dir": checkpoint_dir}


def _make_evolution(tuner_args, search_config):
    """The evolution of the config's tuner.classArgs (the NNI tuner's own arguments do not apply here)."""
    evolution_args = {k: v for k, v in tuner_args.items() if k not in NNI_TUNER_ONLY}
    try:
        return Evolution(**evolution_args)
    except (TypeError, ValueError) as e:
        raise UserError(f"{search_config}: tuner.classArgs: {e}") from None


def _start_or_resume(evolution, checkpoint_dir, resume, channel_search):
    """Start the search in ``checkpoint_dir``, or continue the one there (``resume``), over blocks (and scales:
    ``channel_search``, the supernet's). Returns the list of resumes search_state.json keeps."""
    evolution.set_search_space(search_space(channel_search))
    state = prepare_search_dir(checkpoint_dir, resume)
    logger.info("%s; results in %s", evolution.describe(), checkpoint_dir)
    if state is None:
        evolution.start()
        return []
    open_in_round = evolution.restore(state, os.path.join(checkpoint_dir, STATE_FILE))
    logger.info("resumed the search of %s: %d of %d rounds done; round %d has %d candidates without an outcome",
                checkpoint_dir, evolution.rounds_done, evolution.max_epochs, evolution.round, open_in_round)
    return [*state.get("resumes", []), {"at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "rounds_done": evolution.rounds_done, "open_in_round": open_in_round}]


def _start_pool(args, device, workers):
    threads = max(1, torch.get_num_threads() // workers)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start_scorer, initargs=(args, device, threads))
    for _ in range(workers):  # start them now, not at the first candidate
        pool.submit(os.getpid)
    logger.info("scoring with %d worker processes of %d thread(s) each", workers, threads)
    return pool


def _run_evolution(evolution, checkpoint_dir, resumes, pool):
    """Score each round's open candidates (all at once on a pool) and record the results in the order of the
    candidates, so that a search gives the same table whatever the number of workers; the files are saved
    after every result. Returns how many candidates this run scored, and its seconds."""
    started, count = time.perf_counter(), 0
    parameter_id = 1 + max((r["parameter_id"] for r in evolution.history.values() if r["parameter_id"] is not None),
                           default=-1)
    if evolution.finished:
        logger.info("the search in %s is already finished: nothing to score", checkpoint_dir)
    while True:
        closed = evolution.advance()
        if closed is not None:
            export_round(checkpoint_dir, *closed)
        save_search(checkpoint_dir, {**evolution.state(), "experiment_id": None, "resumes": resumes})
        candidates = evolution.open_candidates()
        if not candidates:
            break
        results = pool.map(_score, candidates) if pool is not None else map(_score, candidates)
        for candidate, (accuracy, before) in zip(candidates, results):
            logger.info("candidate %d: %s  accuracy %.4f (before BN recalibration %.4f)", parameter_id,
                        format_choices(candidate), accuracy, before)
            evolution.record(candidate, "succeeded", accuracy, before, parameter_id=parameter_id,
                             trial_job_id="in-process")
            save_search(checkpoint_dir, {**evolution.state(), "experiment_id": None, "resumes": resumes})
            parameter_id, count = parameter_id + 1, count + 1
    return count, time.perf_counter() - started


_scorer = {}


def _start_scorer(args, device, threads):
    """Set up a worker process to score candidates. The supernet and the data (from the cache the search
    process writes) are loaded at the first candidate, when that cache is sure to be there."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # see main
    setup_logging(quiet=True)
    _scorer.update(args=args, device=device)


def _score(architecture):
    if "model" not in _scorer:
        args, device = _scorer["args"], _scorer["device"]
        train, val, classes, _ = load_scoring_data(args, device, keep=True)
        _scorer.update(model=load_supernet(args.checkpoint, args.input_size, len(classes), device,
                                           args.channels_last),
                       train=train, val=val, train_iters=args.train_iters,
                       autocast_dtype=compute_dtype(args.precision, device))
    result = evaluate_candidate(_scorer["model"], architecture, _scorer["train"], _scorer["val"],
                                _scorer["train_iters"], autocast_dtype=_scorer["autocast_dtype"])
    return result["accuracy"], result["accuracy_before_recalibration"]
