"""Checkpoints and random state: atomic writes, the state `--resume` continues from, seeds."""
import os
import random
import tempfile

import torch

from errors import UserError


def atomic_save(obj, path):
    """torch.save through a temporary file and a rename, so a crash never leaves a torn checkpoint."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".pth.tar", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def load_training_state(path):
    """A resumable state written by ``atomic_save``, read without unpickling objects."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no resumable state to continue from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files raise many kinds
        raise UserError(f"{path}: not a readable training state ({str(e).strip().splitlines()[0]})") from None
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


def save_epoch(output_dir, state_file, epoch, model, optimizer, scheduler, extra=None, **generators):
    """After ``epoch`` (1-based) epochs: the weights as ``epoch_{epoch}.pth.tar`` (``{'state_dict', 'epoch'}``,
    what network.load_weights reads) and all ``--resume`` needs as ``state_file``, both written atomically.
    ``extra`` (plain data) goes into the state; ``generators`` are random.Random objects to restore too."""
    atomic_save({"state_dict": model.state_dict(), "epoch": epoch},
                os.path.join(output_dir, f"epoch_{epoch}.pth.tar"))
    atomic_save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": get_rng_state(**generators),
                 **(extra or {})}, os.path.join(output_dir, state_file))


def resume_training(path, model, optimizer, scheduler, expect=None, **generators):
    """Load a state written by ``save_epoch`` into the model, optimizer, scheduler and random generators;
    returns the state (``state['epoch']`` epochs are done). ``expect``: values the state's ``extra`` must
    hold for this run (e.g. the architecture), each refused with its name when it differs."""
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
    return state
