"""Logging for the steps (one "spos" logger, to stderr and a run's log file) and the resolved arguments a run
writes next to its outputs."""
import json
import logging
import os

logger = logging.getLogger("spos")


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
