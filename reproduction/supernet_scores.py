"""The supernet's score of each architecture compared, as a trial scores a candidate (spos/scoring.py: BN
recalibrated, with the trial settings of the dataset's "tester.py" recipe or the flags given), kept as each is known
so that a rerun scores only what it lacks."""
import argparse
import json
import os
import shlex
import sys

import torch

from network import NUM_LAYERS
from spos.architecture import format_choices
from spos.checkpoint import checkpoint_options
from spos.files import write_text
from spos.hardware import compute_dtype, get_device
from spos.options import add_scoring_arguments, parse_args_with_recipe
from spos.scoring import evaluate_candidate, load_supernet, resolve_scoring_arguments, scoring_identity
from spos.scoring_data import load_scoring_data


def scoring_arguments(argv):
    """tester.py's scoring flags (and the data's recipe for them), resolved as a trial resolves them."""
    parser = argparse.ArgumentParser(prog="supernet scores")
    add_scoring_arguments(parser)
    return resolve_scoring_arguments(parse_args_with_recipe(parser, argv, "tester.py"))


def supernet_scores(args, architectures, cache_path):
    """Each architecture's accuracy with the supernet's weights, scored as a trial does, after and before BN
    recalibration: [(after, before), ...], None for an architecture that is no path of this supernet (a block
    supernet has no other widths than 1.0). ``args``: imagenet_dir, checkpoint, holdout_per_class and tester_args
    (more scoring flags). Each score is kept in ``cache_path`` as soon as it is known, with what it was scored with
    (scoring.scoring_identity), so a rerun (after a kill too) scores only the architectures it lacks."""
    trial_args = scoring_arguments(["--imagenet-dir", args.imagenet_dir, "--checkpoint", args.checkpoint,
                                    "--holdout-per-class", str(args.holdout_per_class),
                                    *shlex.split(args.tester_args)])
    device = get_device(trial_args.device)
    autocast_dtype = compute_dtype(trial_args.precision, device)
    key = scoring_identity(trial_args)
    known = {}
    if os.path.exists(cache_path):
        try:
            with open(cache_path) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                known = {name: tuple(pair) for name, pair in cached["accuracies"].items()}
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
            print(f"{cache_path}: unreadable ({e}); scoring again", file=sys.stderr, flush=True)
    channel_search = bool(checkpoint_options(trial_args.checkpoint).get("channel_search"))
    scorable = [a for a in architectures if channel_search or len(a) == NUM_LAYERS]
    missing = [a for a in scorable if format_choices(a) not in known]
    if missing:
        print(f"supernet scores: {len(scorable) - len(missing)} of {len(scorable)} known, {len(missing)} to score",
              file=sys.stderr, flush=True)
        torch.set_flush_denormal(True)
        train, val, classes, _ = load_scoring_data(trial_args, device, keep=True)
        model = load_supernet(trial_args.checkpoint, trial_args.input_size, len(classes), device,
                              trial_args.channels_last)
        for number, architecture in enumerate(missing, 1):
            torch.manual_seed(trial_args.seed)
            result = evaluate_candidate(model, architecture, train, val, trial_args.train_iters,
                                        autocast_dtype=autocast_dtype)
            known[format_choices(architecture)] = (result["accuracy"], result["accuracy_before_recalibration"])
            write_text(cache_path, json.dumps({"key": key, "accuracies": known}, indent=1))
            print(f"supernet score {number}/{len(missing)}: {result['accuracy']:.4f} (before BN recalibration "
                  f"{result['accuracy_before_recalibration']:.4f})", file=sys.stderr, flush=True)
    return [known.get(format_choices(a)) for a in architectures], trial_args.checkpoint
