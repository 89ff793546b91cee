"""The evolution search in one process, without nnictl (``python tester.py --evolution``): the same
``tuner.EvolutionWithFlops`` with the ``tuner.classArgs`` of ``--search-config``, each round's candidates scored
side by side by ``--search-workers`` processes on data decoded once and kept in memory; the tuner writes the
same exports and table as in the nnictl search. ``--resume`` continues a search that stopped (Ctrl-C, a crash)
from its search_state.json: the candidates already scored are not scored again.
"""
import argparse
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import tempfile
import time

import torch

from architecture import parse_architecture
from errors import UserError
from hardware import compute_dtype
from logs import logger, save_args, setup_logging
from scoring import (evaluate_candidate, input_size_of, load_scoring_data, load_supernet, log_scoring_data,
                     resolve_checkpoint)
from search_space import search_space


def search_in_process(args, device):
    """Run the whole search (see the module docstring); ``args`` are tester.py's."""
    import yaml

    try:
        with open(args.search_config) as f:
            tuner_args = dict(yaml.safe_load(f)["tuner"]["classArgs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise UserError(f"{args.search_config}: cannot read tuner.classArgs from it ({e})") from None
    tuner_args.update(output_dir=args.output_dir, resume=args.resume)
    if args.search_workers < 0:
        raise UserError(f"--search-workers must be 0 (automatic) or more, got {args.search_workers}")
    workers = args.search_workers or (1 if device.type == "cuda" else os.cpu_count() or 1)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    if not os.path.isfile(args.checkpoint):
        raise UserError(f"{args.checkpoint}: checkpoint not found (train the supernet first, or pass --checkpoint)")
    args.input_size = input_size_of(args.checkpoint, args.input_size)
    pool = None
    with tempfile.TemporaryDirectory(prefix="spos_scoring_") as scratch_cache:
        try:
            if workers > 1:
                if not args.cache_dir:
                    args.cache_dir = scratch_cache  # the workers load the tensors this process decodes
                # started first: their seconds of start-up overlap this process's (the tuner, the data)
                pool = _start_pool(args, device, workers)
            tuner = _make_tuner(tuner_args, args.search_config)
            try:  # before the data: a search that cannot resume says so at once
                tuner.update_search_space(search_space())
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
            from nni import NoMoreTrialError
            try:
                count, elapsed = _run_evolution(tuner, pool, NoMoreTrialError)
            except concurrent.futures.process.BrokenProcessPool:
                raise UserError(f"a scoring worker process died (killed by the system: out of memory? `dmesg` "
                                f"says); the candidates scored so far are in {tuner.checkpoint_dir}; continue with "
                                f"--resume and fewer --search-workers") from None
            except KeyboardInterrupt:
                logger.warning("interrupted: the candidates scored so far are in %s; continue the search with the "
                               "same command and --resume", tuner.checkpoint_dir)
                raise
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    logger.info("in-process search: %d candidates in %.1f s (%.0f candidates per hour); exports in %s",
                count, elapsed, count / elapsed * 3600, tuner.checkpoint_dir)
    return {"candidates": count, "seconds": elapsed, "output_dir": tuner.checkpoint_dir}


def _make_tuner(tuner_args, search_config):
    from tuner import EvolutionWithFlops

    try:
        return EvolutionWithFlops(**tuner_args)
    except (TypeError, ValueError) as e:
        raise UserError(f"{search_config}: tuner.classArgs: {e}") from None


def _start_pool(args, device, workers):
    threads = max(1, torch.get_num_threads() // workers)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start_scorer, initargs=(args, device, threads))
    for _ in range(workers):  # start them now, not at the first candidate
        pool.submit(os.getpid)
    logger.info("scoring with %d worker processes of %d thread(s) each", workers, threads)
    return pool


def _run_evolution(tuner, pool, no_more_trials):
    """Hand each round's candidates to the scorer (all at once to a pool), feed the results back in the
    order of the candidates (so a search gives the same table whatever the number of workers). Returns how
    many candidates this run scored, and its seconds."""
    started = time.perf_counter()
    first_id = parameter_id = tuner.next_parameter_id
    if tuner.finished:
        logger.info("the search in %s is already finished: nothing to score", tuner.checkpoint_dir)
    while not tuner.finished:
        requests = []
        while True:
            try:
                requests.append((parameter_id, tuner.generate_parameters(parameter_id)))
            except no_more_trials:
                break
            parameter_id += 1
        if not requests:
            raise RuntimeError("the tuner has no candidate to hand out and is not finished")
        candidates = [parse_architecture(parameters, f"parameters of {request_id}")
                      for request_id, parameters in requests]
        results = pool.map(_score, candidates) if pool is not None else map(_score, candidates)
        for (request_id, parameters), candidate, (accuracy, before) in zip(requests, candidates, results):
            logger.info("candidate %d: %s  accuracy %.4f (before BN recalibration %.4f)", request_id,
                        " ".join(map(str, candidate)), accuracy, before)
            tuner.receive_trial_result(request_id, parameters, {"default": accuracy, "before_recalibration": before},
                                       trial_job_id="in-process")
    return parameter_id - first_id, time.perf_counter() - started


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
