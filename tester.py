"""Step 2 of SPOS: the trial NNI launches, scoring one candidate path of the trained supernet.

Flow (NNI's SPOS tester, in spos/scoring.py): build the supernet for the dataset's classes, load the checkpoint,
evaluate the candidate on val (reported as an intermediate result), recalibrate batch norm on
``--train-iters`` training batches, evaluate again, report the accuracy as the final result.

Five ways to run it:
  nnictl ss_gen -t "python tester.py"          writes nni_auto_gen_search_space.json and exits
                                               (needs no data or GPU; with channel choices when its
                                               --checkpoint was trained with --channel-search)
  nnictl create --config config_search.yml     one trial per candidate from tuner.EvolutionWithFlops
  python tester.py --fixed-arc FILE            one architecture, standalone: prints its accuracy
  python tester.py --random-paths 20           how well the supernet learned: the mean accuracy of 20 random
                                               paths under the FLOPs limit, each scored as a trial scores it
  python tester.py --evolution                 the same evolution search in this one process, on data
                                               decoded once (spos/search.py; the tuner's settings from --search-config)

Under NNI the final result is ``{"default": accuracy after recalibration, "before_recalibration": ...}``,
both fractions in [0, 1], so the tuner sees both; the two intermediate results are the same numbers.
"""
import os
import sys
import time

_MODULE_STARTED = time.time()

from spos.options import OFFICIAL_CHECKPOINT  # noqa: E402
from spos.search_space import write_search_space  # noqa: E402
from utils import run_main  # noqa: E402

SEARCH_SPACE_ENV = "NNI_GEN_SEARCH_SPACE"


def generate_search_space(path, argv):
    """`nnictl ss_gen`: the space of the supernet the trial command's --checkpoint names, with channel choices
    when its network options say it was trained with channel search; block choices only for a supernet recording
    none (Megvii's) or not trained yet."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoint", default=OFFICIAL_CHECKPOINT)
    checkpoint = parser.parse_known_args(argv)[0].checkpoint
    channel_search = False
    if os.path.exists(checkpoint):  # reading it takes torch: only then
        from spos.scoring import network_options_of, resolve_checkpoint

        channel_search = bool(network_options_of(resolve_checkpoint(checkpoint)).get("channel_search"))
    return write_search_space(path, channel_search)


# `nnictl ss_gen` runs the trial command with NNI_GEN_SEARCH_SPACE set: answer before the heavy imports.
if __name__ == "__main__" and os.environ.get(SEARCH_SPACE_ENV):
    # a checkpoint that cannot be read ends in one line, as in every other step
    run_main(lambda: sys.exit(generate_search_space(os.environ[SEARCH_SPACE_ENV], sys.argv[1:])))

# Before torch loads OpenMP: trials share the cores by design (several at a time, each with its loader), and
# spinning OpenMP threads starve the others' (README, Performance).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402

from spos.architecture import format_choices, load_architecture, parse_architecture  # noqa: E402
from spos.checkpoint import set_seed  # noqa: E402
from spos.hardware import compute_dtype, get_device  # noqa: E402
from spos.options import (add_data_arguments, add_performance_arguments, parse_args_with_recipe,  # noqa: E402
                          project_file)
from spos.scoring import (evaluate_candidate, input_size_of, load_scoring_data, load_supernet,  # noqa: E402
                          log_scoring_data, random_legal_paths, resolve_checkpoint)
from utils import UserError, logger, setup_logging  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = add_data_arguments(parser, workers=6)
    parser.set_defaults(input_size=None)  # the checkpoint's: see scoring.input_size_of
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
    group.add_argument("--random-paths", type=int, default=0, metavar="N",
                       help="score N random paths under --flops-limit without NNI and print their mean, worst and "
                            "best accuracy (the supernet's quality, as the search sees it)")
    group.add_argument("--flops-limit", type=float, default=330e6,
                       help="for --random-paths: FLOPs at 224x224 and 1,000 classes, as the search's limit")
    group = parser.add_argument_group("in-process search")
    group.add_argument("--evolution", action="store_true",
                       help="run the whole evolution search in this process (no nnictl): the tuner's settings "
                            "from --search-config, each candidate scored on data decoded once")
    group.add_argument("--search-config", default=None,
                       help="the NNI config whose tuner.classArgs the in-process search uses (default: "
                            "config_search.yml of the working folder, else the project's own)")
    group.add_argument("--output-dir", default="./search_output",
                       help="the in-process search writes its exports to <output-dir>/checkpoints")
    group.add_argument("--resume", action="store_true",
                       help="continue the in-process search in --output-dir where it stopped (its search_state.json)")
    group.add_argument("--search-workers", type=int, default=0,
                       help="processes scoring candidates side by side; 0: one per CPU core without a GPU "
                            "(small CPU batches do not use many threads well), one on a GPU")
    add_performance_arguments(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--log-frequency", type=int, default=10)
    group.add_argument("--seed", type=int, default=42)
    args = parse_args_with_recipe(parser, argv, "tester.py")
    if args.search_config is None:
        args.search_config = project_file("config_search.yml")
    return args


def candidate_from_parameters(parameters):
    """20 choices from what NNI hands a trial: the tuner's ``{"LayerChoice1": {"_value": "2", "_idx": 2}}``
    or plain values (``"2"``, ``2``, one-hot lists, a list of 20 ints)."""
    if not parameters:
        raise UserError("NNI gave this trial no candidate: run it through `nnictl create --config "
                        "config_search.yml`, or evaluate one architecture with --fixed-arc FILE")
    return parse_architecture(parameters, "candidate from the tuner")


def find_checkpoint(args):
    """The checkpoint file ``--checkpoint`` means; sets ``args.input_size`` to the one it was trained at unless
    --input-size was given."""
    checkpoint = resolve_checkpoint(args.checkpoint)
    if not os.path.isfile(checkpoint):
        raise UserError(f"{checkpoint}: checkpoint not found (train the supernet first, or pass --checkpoint)")
    args.input_size = input_size_of(checkpoint, args.input_size)
    return checkpoint


def score_random_paths(args):
    """--random-paths: N random paths under the FLOPs limit (the same N for the same --seed), each scored as a
    trial scores a candidate, on data decoded once; prints one JSON line."""
    checkpoint = find_checkpoint(args)
    set_seed(args.seed)
    device = get_device(args.device)
    torch.set_flush_denormal(True)  # see main
    started = time.perf_counter()
    train, val, classes, source = load_scoring_data(args, device, keep=True)
    log_scoring_data(train, val, classes, source, args.train_iters, time.perf_counter() - started)
    model = load_supernet(checkpoint, args.input_size, len(classes), device, args.channels_last)
    paths = random_legal_paths(args.random_paths, args.flops_limit, args.seed, model.channel_search)
    accuracies = []
    for number, path in enumerate(paths, 1):
        result = evaluate_candidate(model, path, train, val, args.train_iters,
                                    autocast_dtype=compute_dtype(args.precision, device))
        accuracies.append(result["accuracy"])
        logger.info("random path %d/%d: %s  accuracy %.4f (before BN recalibration %.4f)", number, len(paths),
                    format_choices(path), result["accuracy"], result["accuracy_before_recalibration"])
    summary = {"checkpoint": checkpoint, "paths": len(paths), "flops_limit": args.flops_limit,
               "mean": sum(accuracies) / len(accuracies), "worst": min(accuracies), "best": max(accuracies),
               "accuracies": accuracies, "architectures": [list(path) for path in paths]}
    logger.info("%d random paths under %.0fM FLOPs: mean accuracy %.4f, worst %.4f, best %.4f", len(paths),
                args.flops_limit / 1e6, summary["mean"], summary["worst"], summary["best"])
    print(json.dumps(summary))
    return summary


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

    if args.resume and not args.evolution:
        raise UserError("--resume continues an in-process search: give it with --evolution (an nnictl search "
                        "resumes with `nnictl resume ID`)")
    if sum(map(bool, (args.evolution, args.fixed_arc, args.random_paths))) > 1:
        raise UserError("--evolution searches, --fixed-arc scores one architecture and --random-paths scores "
                        "random ones: give one of them")
    if args.random_paths < 0:
        raise UserError(f"--random-paths must be positive, got {args.random_paths}")
    if args.random_paths:
        return score_random_paths(args)
    if args.evolution:
        device = get_device(args.device)
        torch.set_flush_denormal(True)  # see below
        set_seed(args.seed)
        from spos.search import search_in_process

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
    logger.info("candidate (%s): %s", source, format_choices(architecture))
    checkpoint = find_checkpoint(args)
    set_seed(args.seed)
    device = get_device(args.device)
    # An undertrained supernet's statistics make denormal floats, which slow CPU kernels tenfold or more.
    torch.set_flush_denormal(True)

    started = time.perf_counter()
    train, val, classes, source = load_scoring_data(args, device, keep=False)
    seconds["data"] = time.perf_counter() - started
    log_scoring_data(train, val, classes, source, args.train_iters, seconds["data"])

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
