"""The evolution search in one process, without nnictl: the evolution the NNI tuner drives (spos/evolution.py),
each round's candidates scored side by side by ``--search-workers`` processes on data decoded once and kept in
memory; it writes the same files as the nnictl search (spos/search_state.py) into <output-dir>/checkpoints.
``--resume`` continues a search that stopped (Ctrl-C, a crash) from its search_state.json: the candidates already
scored are not scored again.

    python -m spos.search --checkpoint checkpoints                                   # Megvii's settings
    python -m spos.search --checkpoint checkpoints --search-config config_search_cpu.yml --flops-limit 300e6

The evolution's settings: each flag given, else the --search-config's tuner.classArgs (an NNI config, so that
both searches run alike), else Megvii's default; the log and args.json say which came from where. The scoring
flags are tester.py's, with the dataset's "tester.py" recipe. --seed, when given, seeds both the evolution and the
data (recalibration batches), as it says; without it the evolution takes the config's seed and the data the
trials' default, so that the search scores as the nnictl search's trials do.
"""
import argparse
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import tempfile
import time
from dataclasses import asdict, fields

import torch

from dataloader import HOLDOUT_LIST, ImageFolderLoader
from spos.architecture import format_choices
from spos.checkpoint import checkpoint_options, set_seed
from spos.evolution import Evolution, EvolutionSettings
from spos.files import write_text
from spos.hardware import compute_dtype, get_device
from spos.options import DEFAULT_SEED, add_scoring_arguments, parse_args_with_recipe
from spos.processes import die_with_parent
from spos.scoring import evaluate_candidate, load_supernet, resolve_scoring_arguments, scoring_identity
from spos.scoring_data import load_scoring_data, log_scoring_data
from spos.search_space import search_space
from spos.search_state import EXPORT_DIR, STATE_FILE, export_round, prepare_search_dir, save_search
from utils import UserError, logger, run_main, save_args, setup_logging

# the NNI tuner's class arguments that are not the evolution's (tuner.EvolutionWithFlops; a test checks)
NNI_TUNER_ONLY = ("output_dir", "result_timeout", "resumed_trial_timeout")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spos.search", description=__doc__.splitlines()[0])
    add_scoring_arguments(parser)
    parser.set_defaults(seed=None)  # given or not: see resolve_settings
    group = parser.add_argument_group("evolution (each flag given wins over --search-config's tuner.classArgs)")
    group.add_argument("--search-config", default=None, metavar="YAML",
                       help="an NNI config whose tuner.classArgs give the settings no flag gives (default: none, "
                            "Megvii's settings)")
    for setting in fields(EvolutionSettings):
        if setting.name != "seed":  # --seed, of the scoring flags
            group.add_argument(f"--{setting.name.replace('_', '-')}", default=None, help=setting.metadata["help"],
                               type=setting.type)
    group = parser.add_argument_group("search run")
    group.add_argument("--output-dir", default="./search_output",
                       help="the search's files go to <output-dir>/checkpoints")
    group.add_argument("--resume", action="store_true",
                       help="continue the search in --output-dir where it stopped (its search_state.json)")
    group.add_argument("--search-workers", type=int, default=0,
                       help="processes scoring candidates side by side; 0: one per CPU core without a GPU "
                            "(small CPU batches do not use many threads well), one on a GPU")
    return parse_args_with_recipe(parser, argv, "tester.py")


def resolve_settings(args):
    """The evolution's settings: each flag given, else --search-config's tuner.classArgs, else the default; the
    data's seed (``args.seed``) is --seed, else the trials' default. Returns (EvolutionSettings, {setting: where it
    came from})."""
    from_config = {}
    if args.search_config:
        import yaml

        try:
            with open(args.search_config) as f:
                from_config = dict(yaml.safe_load(f)["tuner"]["classArgs"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{args.search_config}: cannot read tuner.classArgs from it ({e})") from None
        from_config = {k: v for k, v in from_config.items() if k not in NNI_TUNER_ONLY}
    given = {f.name: getattr(args, f.name) for f in fields(EvolutionSettings) if getattr(args, f.name) is not None}
    try:
        settings = EvolutionSettings.of({**from_config, **given})
    except ValueError as e:
        source = f"{args.search_config}: tuner.classArgs" if set(from_config) - set(given) else "the flags"
        raise UserError(f"{source}: {e}") from None
    if args.seed is None:
        args.seed = DEFAULT_SEED
    sources = {f.name: "flag" if f.name in given else args.search_config if f.name in from_config else "default"
               for f in fields(EvolutionSettings)}
    return settings, sources


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    if args.search_workers < 0:
        raise UserError(f"--search-workers must be 0 (automatic) or more, got {args.search_workers}")
    settings, sources = resolve_settings(args)
    resolve_scoring_arguments(args)
    device = get_device(args.device)
    torch.set_flush_denormal(True)  # see tester.py
    set_seed(args.seed)
    logger.info("evolution settings: %s", ", ".join(f"{name} {value} ({sources[name]})"
                                                     for name, value in asdict(settings).items()))
    return search_in_process(args, settings, device)


def search_in_process(args, settings, device):
    """Run the whole search (see the module docstring)."""
    workers = args.search_workers or (1 if device.type == "cuda" else os.cpu_count() or 1)
    checkpoint_dir = os.path.join(args.output_dir, EXPORT_DIR)
    pool = None
    with tempfile.TemporaryDirectory(prefix="spos_scoring_") as scratch_cache:
        cache_dir = args.cache_dir or (scratch_cache if workers > 1 else None)
        try:
            if workers > 1:  # started first: their seconds of start-up overlap this process's (the search, the data)
                pool = _start_pool(args, cache_dir, device, workers)
            evolution = Evolution(**asdict(settings))
            identity = scoring_identity(args)
            try:  # before the data: a search that cannot resume says so at once
                channel_search = bool(checkpoint_options(args.checkpoint).get("channel_search"))
                resumes = _start_or_resume(evolution, checkpoint_dir, args.resume, channel_search, identity)
            except (UserError, ValueError) as e:
                raise UserError(f"--resume: {e}" if args.resume else str(e)) from None
            save_args(argparse.Namespace(**vars(args), evolution=asdict(settings), resolved_search_workers=workers),
                      args.output_dir)
            if args.holdout_per_class:  # the images the candidates are scored on
                held_out = ImageFolderLoader(args.imagenet_dir, "train", train=False, batch_size=1, backend="torch",
                                             holdout_per_class=args.holdout_per_class)
                write_text(os.path.join(args.output_dir, HOLDOUT_LIST), held_out.held_out_list())
            loading = time.perf_counter()
            train, val, classes, source = load_scoring_data(args, device, keep=True, cache_dir=cache_dir)
            log_scoring_data(train, val, classes, source, args.train_iters, time.perf_counter() - loading,
                             args.holdout_per_class)
            # loaded here also when workers score: a checkpoint that does not fit is reported once, clearly
            model = load_supernet(args.checkpoint, args.input_size, len(classes), device, args.channels_last)
            if pool is None:
                _scorer.update(model=model, train=train, val=val, train_iters=args.train_iters,
                               autocast_dtype=compute_dtype(args.precision, device))
            else:
                del model, train, val
            try:
                kept = {"resumes": resumes, "scored_with": identity}
                count, elapsed = _run_evolution(evolution, checkpoint_dir, kept, pool)
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


def _start_or_resume(evolution, checkpoint_dir, resume, channel_search, identity):
    """Start the search in ``checkpoint_dir``, or continue the one there (``resume``), over blocks (and scales:
    ``channel_search``, the supernet's), only if it scored with the same supernet, data and settings
    (``identity``, scoring.scoring_identity). Returns the list of resumes search_state.json keeps."""
    evolution.set_search_space(search_space(channel_search))
    state = prepare_search_dir(checkpoint_dir, resume)
    logger.info("%s; results in %s", evolution.describe(), checkpoint_dir)
    if state is None:
        evolution.start()
        return []
    state_path = os.path.join(checkpoint_dir, STATE_FILE)
    scored_with = state.get("scored_with") or {}
    changed = [key for key in identity if scored_with.get(key) != identity[key]]
    if changed:
        details = "; ".join(f"{key} {scored_with.get(key)!r:.120} there, {identity[key]!r:.120} now" for key in changed)
        raise UserError(f"{state_path}: that search scored its candidates with another {', '.join(changed)} "
                        f"({details}): its scores would not compare with new ones; start it anew in another "
                        f"--output-dir (or without --resume, which moves it aside)")
    open_in_round = evolution.restore(state, state_path)
    logger.info("resumed the search of %s: %d of %d rounds done; round %d has %d candidates without an outcome",
                checkpoint_dir, evolution.rounds_done, evolution.settings.max_epochs, evolution.round, open_in_round)
    return [*state.get("resumes", []), {"at": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "rounds_done": evolution.rounds_done, "open_in_round": open_in_round}]


def _start_pool(args, cache_dir, device, workers):
    """``workers`` processes that load the supernet and the data this process decodes into ``cache_dir``."""
    threads = max(1, torch.get_num_threads() // workers)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start_scorer,
                                                  initargs=(args, cache_dir, device, threads, os.getpid()))
    for _ in range(workers):  # start them now, not at the first candidate
        pool.submit(os.getpid)
    logger.info("scoring with %d worker processes of %d thread(s) each", workers, threads)
    return pool


def _run_evolution(evolution, checkpoint_dir, kept, pool):
    """Score each round's open candidates (all at once on a pool) and record the results in the order of the
    candidates, so that a search gives the same table whatever the number of workers; the files are saved
    after every result, with ``kept`` (the resumes, what the candidates were scored with) in search_state.json.
    Returns how many candidates this run scored, and its seconds."""
    started, count = time.perf_counter(), 0
    parameter_id = 1 + max((r["parameter_id"] for r in evolution.history.values() if r["parameter_id"] is not None),
                           default=-1)
    if evolution.finished:
        logger.info("the search in %s is already finished: nothing to score", checkpoint_dir)
    while True:
        closed = evolution.advance()
        if closed is not None:
            export_round(checkpoint_dir, *closed)
        save_search(checkpoint_dir, {**evolution.state(), "experiment_id": None, **kept})
        candidates = evolution.open_candidates()
        if not candidates:
            break
        results = pool.map(_score, candidates) if pool is not None else map(_score, candidates)
        for candidate, (accuracy, before) in zip(candidates, results):
            logger.info("candidate %d: %s  accuracy %.4f (before BN recalibration %.4f)", parameter_id,
                        format_choices(candidate), accuracy, before)
            evolution.record(candidate, "succeeded", accuracy, before, parameter_id=parameter_id,
                             trial_job_id="in-process")
            save_search(checkpoint_dir, {**evolution.state(), "experiment_id": None, **kept})
            parameter_id, count = parameter_id + 1, count + 1
    return count, time.perf_counter() - started


_scorer = {}


def _start_scorer(args, cache_dir, device, threads, search_pid):
    """Set up a worker process to score candidates. The supernet and the data (from the cache the search
    process writes) are loaded at the first candidate, when that cache is sure to be there."""
    die_with_parent(search_pid)  # a search killed (while its workers start too) takes its workers with it
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # see tester.py
    setup_logging(quiet=True)
    _scorer.update(args=args, cache_dir=cache_dir, device=device)


def _score(architecture):
    if "model" not in _scorer:
        args, device = _scorer["args"], _scorer["device"]
        train, val, classes, _ = load_scoring_data(args, device, keep=True, cache_dir=_scorer["cache_dir"])
        _scorer.update(model=load_supernet(args.checkpoint, args.input_size, len(classes), device,
                                           args.channels_last),
                       train=train, val=val, train_iters=args.train_iters,
                       autocast_dtype=compute_dtype(args.precision, device))
    result = evaluate_candidate(_scorer["model"], architecture, _scorer["train"], _scorer["val"],
                                _scorer["train_iters"], autocast_dtype=_scorer["autocast_dtype"])
    return result["accuracy"], result["accuracy_before_recalibration"]


if __name__ == "__main__":
    run_main(main)
