"""Checkpoint files: where a run's are (``epoch_N.pth.tar`` in its folder) and which one a user's ``--checkpoint``
means, the weights and the training state each epoch writes, what ``--resume`` continues from, and the random
state and seeds. (What a weights file holds, official or this project's, is read by network.read_checkpoint.)

After each epoch a run writes its training state first and the epoch's weights second, each atomically
(spos/files.py), so a kill at any moment leaves a state to continue from: the previous epoch's (the epoch in flight
is trained again) or this epoch's, from which a resume writes the weights again if the kill came before them.
"""
import glob
import os
import random
import re

import torch

from network import read_checkpoint
from spos.files import remove_interrupted_writes, save_tensors
from utils import UserError, logger

STATE_FILE = "training_state.pth.tar"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth\.tar$")


def find_checkpoint(path):
    """The weights file a user's ``--checkpoint`` means: the file itself, or for a folder (supernet.py's output) its
    epoch_N.pth.tar with the largest N; one clear error when there is none."""
    if os.path.isdir(path):
        epochs = [(int(m.group(1)), name) for name in os.listdir(path) if (m := _EPOCH_FILE.match(name))]
        if not epochs:
            raise UserError(f"{path}: no epoch_N.pth.tar inside (train the supernet first: python supernet.py)")
        path = os.path.join(path, max(epochs)[1])
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found (train the supernet first, or pass --checkpoint)")
    return path


def checkpoint_options(path):
    """The network options supernet.py records in a weights file ({} for Megvii's, which records none)."""
    return read_checkpoint(path)[1] or {}


def load_training_state(path):
    """A resumable state written by ``atomic_save``, read without unpickling objects."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no resumable state to continue from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files raise many kinds
        raise UserError(f"{path}: not a readable training state ({str(e).strip().splitlines()[0]}); move it "
                        f"away to start the run over") from None
    required = ("state_dict", "optimizer", "scheduler", "epoch", "rng")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UserError(f"{path}: not a training state of this project (needs {', '.join(required)})")
    return state


def get_rng_state(**generators):
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state.update({name: g.getstate() for name, g in generators.items()})
    return state


def set_rng_state(state, **generators):
    random.setstate(_as_random_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.setstate(_as_random_state(state[name]))


def _as_random_state(state):
    version, internal, gauss = state
    return version, tuple(internal), gauss


def set_seed(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def describe_dataset(loader):
    """What a training state records of its training data, to refuse resuming on other data."""
    return (f"{loader.num_classes} classes ({loader.classes[0]}..{loader.classes[-1]}), "
            f"{len(loader.files)} train images")


def weights_path(output_dir, epoch):
    return os.path.join(output_dir, f"epoch_{epoch}.pth.tar")


def save_training_state(path, epoch, model, optimizer, scheduler, extra=None, **generators):
    """All ``--resume`` needs after ``epoch`` (1-based) epochs, the first of an epoch's two writes. ``extra``
    (plain data) goes into the state; ``generators`` are random.Random objects to restore too."""
    save_tensors({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": get_rng_state(**generators),
                 **(extra or {})}, path)


def save_weights(output_dir, epoch, state_dict, network=None):
    """The weights after ``epoch`` epochs as ``epoch_{epoch}.pth.tar`` (``{'state_dict', 'epoch'}``, what
    network.load_weights reads, and ``network``: the options the net was built with, which tester.py builds
    it with again), the second of an epoch's two writes."""
    weights = {"state_dict": state_dict, "epoch": epoch}
    if network is not None:
        weights["network"] = network
    save_tensors(weights, weights_path(output_dir, epoch))


def resume_training(output_dir, state_file, epochs, model, optimizer, scheduler, expect=None, repair=True,
                    **generators):
    """Continue the run in ``output_dir`` from its ``state_file``: load the model, optimizer, scheduler and
    random generators from it and return the state (``state['epoch']`` of ``epochs`` are done), or None when
    nothing was saved yet (the first launch of a command relaunched with --resume until it finishes).
    ``expect``: values the state must hold for this run (the architecture, the data), each refused with its
    name when it differs. ``repair`` (one process of a run): remove the temporary files of a write a kill
    interrupted and write the last epoch's weights again if the kill came before them (a state after no
    epoch, written by supernet.py's warm start, has no weights file)."""
    path = os.path.join(output_dir, state_file)
    if not os.path.exists(path):
        saved = glob.glob(os.path.join(glob.escape(output_dir), "epoch_*.pth.tar"))
        if saved:  # not written by this project's order of writes: starting over would overwrite them
            raise UserError(f"{path}: not found, yet {output_dir} holds {len(saved)} epoch_N.pth.tar file(s); "
                            f"resume needs the state, so start over in another --output-dir or remove them")
        logger.info("%s: nothing saved yet, starting from the beginning", path)
        if repair:
            remove_interrupted_writes(output_dir)
        return None
    state = load_training_state(path)
    for key, value in (expect or {}).items():
        if key in state and state[key] != value:
            raise UserError(f"{path}: was written for {key} {state[key]}, not {value}; resume with the "
                            f"arguments of the run that wrote it")
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise UserError(f"{path}: the saved network does not fit this run ({detail[:200]}); "
                        f"resume with the arguments of the run that wrote it") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], **generators)
    logger.info("resuming from %s: %d of %d epochs done", path, state["epoch"], epochs)
    if repair:
        remove_interrupted_writes(output_dir)
        if state["epoch"] > 0 and not os.path.exists(weights_path(output_dir, state["epoch"])):
            logger.warning("%s is missing (the run was stopped before writing it): writing it again from %s",
                           weights_path(output_dir, state["epoch"]), path)
            save_weights(output_dir, state["epoch"], state["state_dict"], state.get("network"))
    if state["epoch"] >= epochs:
        logger.info("nothing left to train")
    return state

