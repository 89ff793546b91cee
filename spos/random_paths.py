"""How well a supernet learned, as the search will see it: N random paths under the FLOPs limit (the same N for the
same --seed), each scored as a trial scores a candidate (BN recalibrated), on data decoded once; prints their mean,
worst and best accuracy and, last, one JSON line with every path and its score.

    python -m spos.random_paths 20 --checkpoint checkpoints --imagenet-dir data/digits

The scoring flags are tester.py's, with the dataset's "tester.py" recipe.
"""
import argparse
import json
import time

import torch

from spos.architecture import format_choices
from spos.checkpoint import set_seed
from spos.hardware import compute_dtype, get_device
from spos.options import add_scoring_arguments, parse_args_with_recipe
from spos.scoring import evaluate_candidate, load_supernet, random_legal_paths, resolve_scoring_arguments
from spos.scoring_data import load_scoring_data, log_scoring_data
from utils import UserError, logger, run_main, setup_logging


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spos.random_paths", description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=int, metavar="N", help="how many random paths to score")
    group = add_scoring_arguments(parser)
    group.add_argument("--flops-limit", type=float, default=330e6,
                       help="FLOPs at 224x224 and 1,000 classes, as the search's limit")
    return parse_args_with_recipe(parser, argv, "tester.py")


def main(argv=None):
    args = parse_args(argv)
    setup_logging()
    if args.paths < 1:
        raise UserError(f"the number of random paths must be positive, got {args.paths}")
    resolve_scoring_arguments(args)
    set_seed(args.seed)
    device = get_device(args.device)
    torch.set_flush_denormal(True)  # see tester.py
    started = time.perf_counter()
    train, val, classes, source = load_scoring_data(args, device, keep=True)
    log_scoring_data(train, val, classes, source, args.train_iters, time.perf_counter() - started,
                     args.holdout_per_class)
    model = load_supernet(args.checkpoint, args.input_size, len(classes), device, args.channels_last)
    paths = random_legal_paths(args.paths, args.flops_limit, args.seed, model.channel_search)
    accuracies = []
    for number, path in enumerate(paths, 1):
        result = evaluate_candidate(model, path, train, val, args.train_iters,
                                    autocast_dtype=compute_dtype(args.precision, device))
        accuracies.append(result["accuracy"])
        logger.info("random path %d/%d: %s  accuracy %.4f (before BN recalibration %.4f)", number, len(paths),
                    format_choices(path), result["accuracy"], result["accuracy_before_recalibration"])
    summary = {"checkpoint": args.checkpoint, "paths": len(paths), "flops_limit": args.flops_limit,
               "mean": sum(accuracies) / len(accuracies), "worst": min(accuracies), "best": max(accuracies),
               "accuracies": accuracies, "architectures": [list(path) for path in paths]}
    logger.info("%d random paths under %.0fM FLOPs: mean accuracy %.4f, worst %.4f, best %.4f", len(paths),
                args.flops_limit / 1e6, summary["mean"], summary["worst"], summary["best"])
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_main(main)
