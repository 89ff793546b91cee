"""How a candidate path of the trained supernet is scored, the same way by an nnictl trial (tester.py), the
in-process search (spos/search.py) and the benchmarks: load the supernet, evaluate the path on val, recalibrate its
batch norm (reset every BN's running statistics, then training batches in train mode without gradients,
averaged cumulatively), evaluate again. Each candidate is scored on a copy of its path
(``network.path_network``) with BN folded into the convs, so the supernet is never modified.
"""
import json
import os
import random
import time

import torch
from torch import nn

from dataloader import dataset_fingerprint
from network import (REFERENCE_INPUT_SIZE, ShuffleNetV2OneShot, fold_batch_norms, load_state_dict_checked, paper_flops,
                     path_network, random_architecture, read_checkpoint)
from spos.checkpoint import checkpoint_options, find_checkpoint
from spos.hardware import autocast, prepare_model
from spos.loops import evaluate
from spos.scoring_data import cycle_batches
from utils import UserError, logger


def resolve_scoring_arguments(args):
    """Check the scoring flags (options.add_scoring_arguments) of a command; --checkpoint becomes the weights file
    it means, and --input-size, unless given, the one that supernet was trained at."""
    if args.train_iters < 0 or args.train_batch_size < 1 or args.test_batch_size < 1:
        raise UserError("--train-iters must be >= 0 and the batch sizes positive, got "
                        f"{args.train_iters}, {args.train_batch_size}, {args.test_batch_size}")
    args.checkpoint = find_checkpoint(args.checkpoint)
    args.input_size = input_size_of(args.checkpoint, args.input_size)
    return args


def scoring_identity(args):
    """What a score of these scoring flags (resolved) depends on: the supernet's weights file (where, how large,
    when written), the data (dataset_fingerprint) and every setting that changes a score. A search resumes, and a
    kept score is reused, only for the same."""
    stat = os.stat(args.checkpoint)
    identity = {"checkpoint": os.path.abspath(args.checkpoint), "checkpoint_bytes": stat.st_size,
                "checkpoint_mtime_ns": stat.st_mtime_ns, "data": os.path.abspath(args.imagenet_dir),
                "dataset": dataset_fingerprint(args.imagenet_dir),
                "settings": {key: getattr(args, key) for key in SCORING_SETTINGS}}
    return json.loads(json.dumps(identity))  # as a JSON file keeps it, to compare with one read back


# the flags that change a candidate's score (beside the supernet and the data)
SCORING_SETTINGS = ("input_size", "spos_preprocessing", "train_batch_size", "train_iters", "test_batch_size", "seed",
                    "holdout_per_class", "precision")


def input_size_of(checkpoint, requested=None):
    """The input size to score at: ``requested`` (--input-size) when given, else the one the checkpoint's
    network was trained at (supernet.py records it), else the paper's 224."""
    if requested is not None:
        return requested
    return checkpoint_options(checkpoint).get("input_size", REFERENCE_INPUT_SIZE)


def random_legal_paths(count, flops_limit, seed, channel_search=False, min_flops=0):
    """``count`` distinct uniformly random paths (blocks and, with ``channel_search``, scales) with at most
    ``flops_limit`` FLOPs (in the paper's units, as the search's limit) and at least ``min_flops``, the same ones
    for the same seed."""
    rng, paths = random.Random(seed), []
    for _ in range(1000 * count):
        path = random_architecture(rng, channel_search)
        if path not in paths and min_flops <= paper_flops(path) <= flops_limit:
            paths.append(path)
            if len(paths) == count:
                return paths
    band = f"between {min_flops / 1e6:.0f}M and" if min_flops else "under"
    raise UserError(f"found only {len(paths)} of {count} random paths {band} {flops_limit / 1e6:.0f}M FLOPs")


def load_supernet(checkpoint, input_size, n_classes, device=torch.device("cpu"), channels_last=True):
    """The supernet for ``n_classes`` with the checkpoint's weights (read without unpickling objects), built with
    the network options the checkpoint records (Megvii's when it records none)."""
    state_dict, options = read_checkpoint(checkpoint)
    options = {**(options or {}), "input_size": input_size, "n_classes": n_classes}
    model = ShuffleNetV2OneShot(**{"affine": False, **options})
    load_state_dict_checked(model, state_dict, checkpoint)
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
