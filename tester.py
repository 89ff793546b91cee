"""Step 2 of SPOS: score one candidate path of the trained supernet (one NNI trial = one candidate).

Flow (NNI's SPOS tester): build the supernet for the dataset's classes, load the checkpoint, evaluate the
candidate on val (reported as an intermediate result), recalibrate batch norm (reset every BN's running
statistics, then ``--train-iters`` training batches in train mode without gradients, averaged
cumulatively), evaluate again, report the accuracy as the final result.

Four ways to run it:
  nnictl ss_gen -t "python tester.py"          writes nni_auto_gen_search_space.json and exits
                                               (needs no checkpoint, data or GPU)
  nnictl create --config config_search.yml     one trial per candidate from tuner.EvolutionWithFlops
  python tester.py --fixed-arc FILE            one architecture, standalone: prints its accuracy
  python tester.py --evolution                 the same evolution search in this one process, on data
                                               decoded once (the tuner's settings from --search-config)

Under NNI the final result is ``{"default": accuracy after recalibration, "before_recalibration": ...}``,
both fractions in [0, 1], so the tuner sees both; the two intermediate results are the same numbers.
The functions here (``load_supernet``, ``recalibrate_bn``, ``evaluate_candidate``) are the ones an
in-process search reuses.
"""
import json
import os
import sys
import time

_MODULE_STARTED = time.time()

SEARCH_SPACE_ENV = "NNI_GEN_SEARCH_SPACE"
# network.NUM_LAYERS and network.NUM_CHOICES (tests check they agree), repeated here so that ss_gen answers
# without importing torch.
NUM_LAYERS = 20
NUM_CHOICES = 4


def search_space():
    """The NNI 1.x search space of the supernet: LayerChoice1..20, each choosing a block "0".."3"."""
    return {f"LayerChoice{i + 1}": {"_type": "layer_choice", "_value": [str(c) for c in range(NUM_CHOICES)]}
            for i in range(NUM_LAYERS)}


def write_search_space(path):
    try:
        with open(path, "w") as f:
            json.dump(search_space(), f, indent=2, sort_keys=True)
            f.write("\n")
    except OSError as e:
        print(f"error: {path}: cannot write the search space ({e.strerror or e})", file=sys.stderr)
        return 2
    print(f"wrote the search space ({NUM_LAYERS} layer choices of {NUM_CHOICES} blocks) to {path}")
    return 0


# `nnictl ss_gen` runs the trial command with NNI_GEN_SEARCH_SPACE set: answer before the heavy imports.
if __name__ == "__main__" and os.environ.get(SEARCH_SPACE_ENV):
    sys.exit(write_search_space(os.environ[SEARCH_SPACE_ENV]))

# Before torch loads OpenMP: spinning OpenMP threads starve DALI's and other trials' (see supernet.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import concurrent.futures.process  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dataloader import cycle_batches, scoring_batches, scoring_loaders  # noqa: E402
from network import ShuffleNetV2OneShot, fold_batch_norms, load_weights, path_network  # noqa: E402
from utils import (UserError, add_data_arguments, add_performance_arguments, autocast, compute_dtype,  # noqa: E402
                   evaluate, get_device, load_architecture, logger, parse_architecture, prepare_model, run_main,
                   save_args, set_seed, setup_logging)

OFFICIAL_CHECKPOINT = "./data/checkpoint-150000.pth.tar"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth\.tar$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = add_data_arguments(parser, workers=6)
    group.add_argument("--train-batch-size", type=int, default=128, help="batch for BN recalibration")
    group.add_argument("--test-batch-size", type=int, default=512)
    group.add_argument("--cache-dir", default=None,
                       help="keep the decoded recalibration and val tensors in a file here, which later trials "
                            "load instead of decoding the same images (ImageNet: tens of GB; digits: 20 MB)")
    group = parser.add_argument_group("evaluation")
    group.add_argument("--checkpoint", default=OFFICIAL_CHECKPOINT,
                       help="supernet weights (official or supernet.py's); a folder means its newest epoch_N.pth.tar")
    group.add_argument("--train-iters", type=int, default=200,
                       help="training batches for BN recalibration; 0 keeps the checkpoint's statistics")
    group.add_argument("--fixed-arc", metavar="FILE", default=None,
                       help="evaluate this architecture (architecture_final.json format) without NNI and print "
                            "the result")
    group = parser.add_argument_group("in-process search")
    group.add_argument("--evolution", action="store_true",
                       help="run the whole evolution search in this process (no nnictl): the tuner's settings "
                            "from --search-config, each candidate scored on data decoded once")
    group.add_argument("--search-config", default="config_search.yml",
                       help="the NNI config whose tuner.classArgs the in-process search uses")
    group.add_argument("--output-dir", default="./search_output",
                       help="the in-process search writes its exports to <output-dir>/checkpoints")
    group.add_argument("--search-workers", type=int, default=0,
                       help="processes scoring candidates side by side; 0: one per CPU core without a GPU "
                            "(small CPU batches do not use many threads well), one on a GPU")
    add_performance_arguments(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--log-frequency", type=int, default=10)
    group.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def resolve_checkpoint(path):
    """``path`` itself, or for a folder (supernet.py's output) its epoch_N.pth.tar with the largest N."""
    if not os.path.isdir(path):
        return path
    epochs = [(int(m.group(1)), name) for name in os.listdir(path) if (m := _EPOCH_FILE.match(name))]
    if not epochs:
        raise UserError(f"{path}: no epoch_N.pth.tar inside (train the supernet first: python supernet.py)")
    return os.path.join(path, max(epochs)[1])


def load_supernet(checkpoint, input_size, n_classes, device=torch.device("cpu"), channels_last=True):
    """The supernet for ``n_classes`` with the checkpoint's weights (read without unpickling objects)."""
    model = ShuffleNetV2OneShot(input_size=input_size, n_classes=n_classes, affine=False)
    load_weights(model, checkpoint)
    return prepare_model(model, torch.device(device), channels_last).eval()


def reset_bn_stats(model):
    """Every BN to running mean 0, variance 1, no batches seen, and momentum None: the statistics become a
    cumulative average over the batches that follow."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None


@torch.inference_mode()
def recalibrate_bn(model, loader, num_batches, log_frequency=0, autocast_dtype=None):
    """Reset ``model``'s BN statistics (a path network), then run ``num_batches`` training batches through it
    in train mode without gradients. Leaves it in eval mode."""
    reset_bn_stats(model)
    model.train()
    for m in model.modules():  # dropout comes after the last BN and changes no statistic: skip its masks
        if isinstance(m, nn.Dropout):
            m.eval()
    started = time.perf_counter()
    for step, (images, _) in enumerate(cycle_batches(loader, num_batches)):
        with autocast(images.device, autocast_dtype):
            model(images)
        if log_frequency and ((step + 1) % log_frequency == 0 or step + 1 == num_batches):
            logger.info("BN recalibration [%d/%d]  %.1f batches/s", step + 1, num_batches,
                        (step + 1) / (time.perf_counter() - started))
    model.eval()


def evaluate_candidate(model, architecture, train_loader, val_loader, train_iters, log_frequency=0,
                       on_before_recalibration=None, autocast_dtype=None):
    """Top-1 of ``architecture`` on ``val_loader`` before and after BN recalibration with ``train_iters``
    batches of ``train_loader`` (0: no recalibration). Works on a copy of the path (``network.path_network``),
    so the supernet is left as it was; evaluation runs with BN folded into the convs. ``on_before_recalibration
    (accuracy)`` is called as soon as the first number is known."""
    criterion = nn.CrossEntropyLoss()
    seconds = {}
    started = time.perf_counter()
    before = evaluate(fold_batch_norms(path_network(model, architecture)), val_loader, criterion,
                      autocast_dtype=autocast_dtype)
    seconds["evaluation_before"] = time.perf_counter() - started
    logger.info("before BN recalibration: top1 %.4f top5 %.4f loss %.4f (%d images, %.1f s)", before["top1"],
                before["top5"], before["loss"], before["images"], seconds["evaluation_before"])
    if on_before_recalibration is not None:
        on_before_recalibration(before["top1"])
    if train_iters > 0:
        started = time.perf_counter()
        path = path_network(model, architecture)
        recalibrate_bn(path, train_loader, train_iters, log_frequency, autocast_dtype)
        seconds["recalibration"] = time.perf_counter() - started
        started = time.perf_counter()
        after = evaluate(fold_batch_norms(path), val_loader, criterion, autocast_dtype=autocast_dtype)
        seconds["evaluation_after"] = time.perf_counter() - started
        logger.info("after BN recalibration (%d batches, %.1f s): top1 %.4f top5 %.4f loss %.4f (%.1f s)",
                    train_iters, seconds["recalibration"], after["top1"], after["top5"], after["loss"],
                    seconds["evaluation_after"])
    else:
        after = before
        seconds["recalibration"] = seconds["evaluation_after"] = 0.0
    return {"accuracy_before_recalibration": before["top1"], "accuracy": after["top1"], "top5": after["top5"],
            "loss": after["loss"], "images": after["images"], "seconds": seconds}


def candidate_from_parameters(parameters):
    """20 choices from what NNI hands a trial: the tuner's ``{"LayerChoice1": {"_value": "2", "_idx": 2}}``
    or plain values (``"2"``, ``2``, one-hot lists, a list of 20 ints)."""
    if not parameters:
        raise UserError("NNI gave this trial no candidate: run it through `nnictl create --config "
                        "config_search.yml`, or evaluate one architecture with --fixed-arc FILE")
    return parse_architecture(parameters, "candidate from the tuner")


def load_scoring_data(args, device, keep):
    """The recalibration batches and the val set as ``(train, val, classes, source)``: decoded once and kept
    (``keep``, or with ``--cache-dir``: from or into the cache file), else loaders that decode as they go, so
    a trial needs memory for one batch, not for the whole val set."""
    if keep or args.cache_dir:
        return scoring_batches(args.imagenet_dir, train_batch_size=args.train_batch_size,
                               train_iters=args.train_iters, test_batch_size=args.test_batch_size,
                               input_size=args.input_size, spos_preprocessing=args.spos_preprocessing,
                               workers=args.workers, backend=args.loader, device=device, seed=args.seed,
                               cache_dir=args.cache_dir)
    train_loader, val_loader = scoring_loaders(args.imagenet_dir, train_batch_size=args.train_batch_size,
                                               test_batch_size=args.test_batch_size, input_size=args.input_size,
                                               spos_preprocessing=args.spos_preprocessing, workers=args.workers,
                                               backend=args.loader, device=device, seed=args.seed)
    return train_loader, val_loader, train_loader.classes, f"{train_loader.backend} loader, decoded as used"


def _log_scoring_data(train, val, classes, source, train_iters, seconds):
    val_images = val.num_images if hasattr(val, "num_images") else sum(len(labels) for _, labels in val.batches)
    logger.info("data: %d recalibration batches, %d val images, %d classes (%s, %.1f s)", train_iters, val_images,
                len(classes), source, seconds)


def search_in_process(args, device):
    """``EvolutionWithFlops`` driven here, without nnictl: each round's candidates are scored by
    ``--search-workers`` processes (or this one) on data decoded once and kept in memory, and the tuner
    writes the same exports and table as in the nnictl search."""
    import yaml

    try:
        with open(args.search_config) as f:
            tuner_args = dict(yaml.safe_load(f)["tuner"]["classArgs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise UserError(f"{args.search_config}: cannot read tuner.classArgs from it ({e})") from None
    tuner_args["output_dir"] = args.output_dir
    if args.search_workers < 0:
        raise UserError(f"--search-workers must be 0 (automatic) or more, got {args.search_workers}")
    workers = args.search_workers or (1 if device.type == "cuda" else os.cpu_count() or 1)
    args.checkpoint = resolve_checkpoint(args.checkpoint)
    if not os.path.isfile(args.checkpoint):
        raise UserError(f"{args.checkpoint}: checkpoint not found (train the supernet first, or pass --checkpoint)")
    pool = None
    with tempfile.TemporaryDirectory(prefix="spos_scoring_") as scratch_cache:
        try:
            if workers > 1:
                if not args.cache_dir:
                    args.cache_dir = scratch_cache  # the workers load the tensors this process decodes
                # started first: their seconds of start-up overlap this process's (the tuner, the data)
                pool = _start_pool(args, device, workers)
            tuner = _make_tuner(tuner_args, args.search_config)
            save_args(argparse.Namespace(**vars(args), tuner=tuner_args, resolved_search_workers=workers),
                      args.output_dir)
            loading = time.perf_counter()
            train, val, classes, source = load_scoring_data(args, device, keep=True)
            _log_scoring_data(train, val, classes, source, args.train_iters, time.perf_counter() - loading)
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
                                f"says); the rounds scored so far are in {tuner.checkpoint_dir}; run again with "
                                f"fewer --search-workers") from None
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
    order of the candidates (so a search gives the same table whatever the number of workers)."""
    started = time.perf_counter()
    tuner.update_search_space(search_space())
    parameter_id = 0
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
        candidates = [candidate_from_parameters(parameters) for _, parameters in requests]
        results = pool.map(_score, candidates) if pool is not None else map(_score, candidates)
        for (request_id, parameters), candidate, (accuracy, before) in zip(requests, candidates, results):
            logger.info("candidate %d: %s  accuracy %.4f (before BN recalibration %.4f)", request_id,
                        " ".join(map(str, candidate)), accuracy, before)
            tuner.receive_trial_result(request_id, parameters, {"default": accuracy, "before_recalibration": before},
                                       trial_job_id="in-process")
    return parameter_id, time.perf_counter() - started


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


def _process_started():
    try:
        import psutil
        return psutil.Process().create_time()
    except Exception:  # psutil comes with nni; without it, count from this module's first line
        return _MODULE_STARTED


def main(argv=None):
    process_started = _process_started()
    args = parse_args(argv)
    setup_logging()
    if args.train_iters < 0 or args.train_batch_size < 1 or args.test_batch_size < 1:
        raise UserError("--train-iters must be >= 0 and the batch sizes positive, got "
                        f"{args.train_iters}, {args.train_batch_size}, {args.test_batch_size}")

    if args.evolution:
        if args.fixed_arc:
            raise UserError("--evolution searches and --fixed-arc scores one architecture: give one of them")
        device = get_device(args.device)
        torch.set_flush_denormal(True)  # see below
        set_seed(args.seed)
        return search_in_process(args, device)
    nni = None
    if args.fixed_arc:
        architecture = load_architecture(args.fixed_arc)
        source = args.fixed_arc
    else:
        import nni
        architecture = candidate_from_parameters(nni.get_next_parameter())
        source = f"NNI trial {nni.get_trial_id()}"
    # start-up: the interpreter, the imports (torch, DALI, nni) and fetching the candidate
    seconds = {"start_up": time.time() - process_started}
    logger.info("candidate (%s): %s", source, " ".join(map(str, architecture)))
    checkpoint = resolve_checkpoint(args.checkpoint)
    if not os.path.isfile(checkpoint):
        raise UserError(f"{checkpoint}: checkpoint not found (train the supernet first, or pass --checkpoint)")
    set_seed(args.seed)
    device = get_device(args.device)
    # An undertrained supernet's statistics make denormal floats, which slow CPU kernels tenfold or more.
    torch.set_flush_denormal(True)

    started = time.perf_counter()
    train, val, classes, source = load_scoring_data(args, device, keep=False)
    seconds["data"] = time.perf_counter() - started
    _log_scoring_data(train, val, classes, source, args.train_iters, seconds["data"])

    started = time.perf_counter()
    model = load_supernet(checkpoint, args.input_size, len(classes), device, args.channels_last)
    seconds["checkpoint_load"] = time.perf_counter() - started
    logger.info("loaded %s (%.1f s)", checkpoint, seconds["checkpoint_load"])

    report_before = nni.report_intermediate_result if nni is not None else None
    result = evaluate_candidate(model, architecture, train, val, args.train_iters,
                                args.log_frequency, report_before, compute_dtype(args.precision, device))
    seconds.update(result.pop("seconds"))
    seconds["total"] = time.time() - process_started
    logger.info("timing (s): start-up %.1f, data %.1f, checkpoint load %.1f, evaluation before %.1f, "
                "BN recalibration %.1f, evaluation after %.1f, total %.1f", seconds["start_up"], seconds["data"],
                seconds["checkpoint_load"], seconds["evaluation_before"], seconds["recalibration"],
                seconds["evaluation_after"], seconds["total"])
    if nni is not None:
        nni.report_intermediate_result(result["accuracy"])
        nni.report_final_result({"default": result["accuracy"],
                                 "before_recalibration": result["accuracy_before_recalibration"]})
    else:
        flops = model.get_candidate_flops(architecture)
        logger.info("candidate FLOPs %.2fM at %dx%d, %d classes", flops / 1e6, args.input_size, args.input_size,
                    len(classes))
        print(json.dumps({"architecture": list(architecture), "checkpoint": checkpoint, "flops": flops,
                          "input_size": args.input_size, **result,
                          "seconds": {k: round(v, 3) for k, v in seconds.items()}}))
    return result


if __name__ == "__main__":
    run_main(main)
