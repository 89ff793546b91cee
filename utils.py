"""Small helpers every script uses, as NNI's example had: top-k accuracy and running averages, logging
(one "spos" logger, to stderr and a run's log file, and the resolved arguments a run writes next to its
outputs), and how an entry script ends (one clear line and exit status 2 for bad input, 130 on Ctrl-C)."""
import json
import logging
import os
import sys

logger = logging.getLogger("spos")


class UserError(Exception):
    """Bad input from the user: reported as one line naming the file or value, exit status 2."""


def run_main(main):
    """Run a step's ``main``: a UserError ends in one clear line and exit status 2, Ctrl-C in status 130."""
    try:
        main()
    except UserError as e:
        if logger.handlers:
            logger.error("%s", e)
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def setup_logging(log_file=None, quiet=False):
    """Log to stderr (and to ``log_file``); ``quiet`` processes (ranks > 0) only log warnings."""
    level = logging.WARNING if quiet else logging.INFO
    handlers = [logging.StreamHandler()]
    if log_file and not quiet:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    formatter = logging.Formatter("[%(asctime)s] %(levelname)s (%(name)s) %(message)s", "%Y-%m-%d %H:%M:%S")
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def save_args(args, output_dir):
    """Write the resolved arguments next to a run's outputs."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=2, sort_keys=True, default=str)


class AverageMeter:
    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def correct_counts(output, target, topk=(1, 5)):
    """How many of the batch have their label among the top-k predictions: a float tensor on output's device."""
    import torch  # here, not on top: the scripts that only read files (ss_gen, the plot) never load torch

    maxk = min(max(topk), output.shape[1])
    correct = output.topk(maxk, 1).indices.eq(target.view(-1, 1))
    return torch.stack([correct[:, :min(k, maxk)].any(1).sum() for k in topk]).float()


def accuracy(output, target, topk=(1, 5)):
    """Fractions of the batch whose label is among the top-k predictions."""
    return (correct_counts(output, target, topk) / target.shape[0]).tolist()
