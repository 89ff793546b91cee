"""Step 2 of SPOS: the trial NNI launches, scoring one candidate path of the trained supernet.

Flow (NNI's SPOS tester, in spos/scoring.py): build the supernet for the dataset's classes, load the checkpoint,
evaluate the candidate on val (reported as an intermediate result), recalibrate batch norm on
``--train-iters`` training batches, evaluate again, report the accuracy as the final result.

  nnictl ss_gen -t "python tester.py"          writes nni_auto_gen_search_space.json and exits (needs no data or
                                               GPU; with channel choices when its --checkpoint was trained with
                                               --channel-search)
  nnictl create --config config_search.yml     one trial per candidate from tuner.EvolutionWithFlops
  python tester.py --fixed-arc FILE            one architecture, without NNI: prints its accuracy

Under NNI the final result is ``{"default": accuracy after recalibration, "before_recalibration": ...}``,
both fractions in [0, 1], so the tuner sees both; the two intermediate results are the same numbers. The same
evolution in one process without nnictl is ``python -m spos.search``; how well a supernet learned, scored on random
paths as trials score them, ``python -m spos.random_paths``.
"""
import os
import sys
import time

_MODULE_STARTED = time.time()

from spos.options import OFFICIAL_CHECKPOINT  # noqa: E402
from spos.search_space import write_search_space  # noqa: E402
from utils import UserError, run_main  # noqa: E402

SEARCH_SPACE_ENV = "NNI_GEN_SEARCH_SPACE"
# this script's flags of old, now commands of their own
MOVED = {"--evolution": "python -m spos.search", "--random-paths": "python -m spos.random_paths"}


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
        from spos.checkpoint import checkpoint_options, find_checkpoint

        channel_search = bool(checkpoint_options(find_checkpoint(checkpoint)).get("channel_search"))
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
from spos.options import add_scoring_arguments, parse_args_with_recipe  # noqa: E402
from spos.scoring import evaluate_candidate, load_supernet, resolve_scoring_arguments  # noqa: E402
from spos.scoring_data import load_scoring_data, log_scoring_data  # noqa: E402
from utils import logger, setup_logging  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = add_scoring_arguments(parser)
    group.add_argument("--fixed-arc", metavar="FILE", default=None,
                       help="evaluate this architecture (architecture_final.json format) without NNI and print "
                            "the result")
    given = sys.argv[1:] if argv is None else argv
    for flag, command in MOVED.items():
        if flag in given:
            raise UserError(f"{flag} is a command of its own now: {command} (its --help lists its flags)")
    return parse_args_with_recipe(parser, argv, "tester.py")


def candidate_from_parameters(parameters):
    """20 choices from what NNI hands a trial: the tuner's ``{"LayerChoice1": {"_value": "2", "_idx": 2}}``
    or plain values (``"2"``, ``2``, one-hot lists, a list of 20 ints)."""
    if not parameters:
        raise UserError("NNI gave this trial no candidate: run it through `nnictl create --config "
                        "config_search.yml`, or evaluate one architecture with --fixed-arc FILE")
    return parse_architecture(parameters, "candidate from the tuner")


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
    resolve_scoring_arguments(args)
    set_seed(args.seed)
    device = get_device(args.device)
    # An undertrained supernet's statistics make denormal floats, which slow CPU kernels tenfold or more.
    torch.set_flush_denormal(True)

    started = time.perf_counter()
    train, val, classes, source = load_scoring_data(args, device, keep=False)
    seconds["data"] = time.perf_counter() - started
    log_scoring_data(train, val, classes, source, args.train_iters, seconds["data"],
                     args.holdout_per_class)

    started = time.perf_counter()
    model = load_supernet(args.checkpoint, args.input_size, len(classes), device, args.channels_last)
    seconds["checkpoint_load"] = time.perf_counter() - started
    logger.info("loaded %s (%.1f s)", args.checkpoint, seconds["checkpoint_load"])

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
        print(json.dumps({"architecture": list(architecture), "checkpoint": args.checkpoint, "flops": flops,
                          "input_size": args.input_size, **result,
                          "seconds": {k: round(v, 3) for k, v in seconds.items()}}))
    return result


if __name__ == "__main__":
    run_main(main)
