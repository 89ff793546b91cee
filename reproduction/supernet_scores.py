"""The supernet's score of each architecture compared, as a trial scores a candidate (spos/scoring.py: BN
recalibrated, with the trial settings of the dataset's "tester.py" recipe or the flags given), kept as each is known
so that a rerun scores only what it lacks."""
import argparse
import json
import os
import shlex
import sys

import torch

from spos.architecture import format_choices
from spos.files import write_text
from spos.hardware import compute_dtype, get_device
from spos.options import add_scoring_arguments, parse_args_with_recipe
from spos.scoring import evaluate_candidate, load_supernet, resolve_scoring_arguments
from spos.scoring_data import load_scoring_data


def scoring_arguments(argv):
    """tester.py's scoring flags (and the data's recipe for them), resolved as a trial resolves them."""
    parser = argparse.ArgumentParser(prog="supernet scores")
    add_scoring_arguments(parser)
    return resolve_scoring_arguments(parse_args_with_recipe(parser, argv, "tester.py"))


def supernet_scores(args, architectures, cache_path):
    """Each architecture's accuracy with the supernet's weights, scored as a trial does; each score is kept in
    ``cache_path`` as soon as it is known, with the checkpoint and settings it belongs to, so a rerun (after a
    kill too) scores only the architectures it lacks."""
    trial_args = scoring_arguments(["--imagenet-dir", args.imagenet_dir, "--checkpoint", args.checkpoint,
                                    *shlex.split(args.tester_args)])
    checkpoint = trial_args.checkpoint
    device = get_device(trial_args.device)
    autocast_dtype = compute_dtype(trial_args.precision, device)
    key = {"checkpoint": os.path.abspath(checkpoint), "mtime_ns": os.stat(checkpoint).st_mtime_ns,
           "data": os.path.abspath(trial_args.imagenet_dir), "compute_dtype": str(autocast_dtype),
           "settings": {k: getattr(trial_args, k) for k in ("input_size", "spos_preprocessing", "train_batch_size",
                                                            "train_iters", "test_batch_size", "seed")}}
    known = {}
    if os.path.exists(cache_path):
        try:
            with open(cache_path) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                known = dict(cached["accuracies"])
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
            print(f"{cache_path}: unreadable ({e}); scoring again", file=sys.stderr, flush=True)
    missing = [a for a in architectures if format_choices(a) not in known]
    if missing:
        print(f"supernet scores: {len(architectures) - len(missing)} of {len(architectures)} known, "
              f"{len(missing)} to score", file=sys.stderr, flush=True)
        torch.set_flush_denormal(True)
        train, val, classes, _ = load_scoring_data(trial_args, device, keep=True)
        model = load_supernet(checkpoint, trial_args.input_size, len(classes), device, trial_args.channels_last)
        for number, architecture in enumerate(missing, 1):
            torch.manual_seed(trial_args.seed)
            result = evaluate_candidate(model, architecture, train, val, trial_args.train_iters,
                                        autocast_dtype=autocast_dtype)
            known[format_choices(architecture)] = result["accuracy"]
            write_text(cache_path, json.dumps({"key": key, "accuracies": known}, indent=1))
            print(f"supernet score {number}/{len(missing)}: {result['accuracy']:.4f}", file=sys.stderr, flush=True)
    return [known[format_choices(a)] for a in architectures], checkpoint
