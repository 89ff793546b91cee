"""Atomic file writes, for every file a run leaves behind (checkpoints and training states, the search's table and
state, architecture files, the scoring cache): the contents go to a temporary file in the same folder, are flushed
to the disk and renamed over the file's name, and the folder is synced, so a reader or a crash sees the old file or
the new one, never half of one, and successive writes reach the disk in the order they were made. A kill leaves at
most a temporary file, named ``.tmp-<random>-<name>``, which ``remove_interrupted_writes`` clears."""
import contextlib
import fcntl
import glob
import json
import logging
import os
import tempfile

from utils import UserError

logger = logging.getLogger("spos")

TEMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"


def write_atomically(path, write, binary=False):
    """Create or replace ``path`` with what ``write(file)`` writes into an open file (bytes when ``binary``)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{os.path.basename(path)}", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def write_text(path, text):
    write_atomically(path, lambda f: f.write(text))


def save_tensors(obj, path):
    """``torch.save(obj, path)``, atomically."""
    import torch  # here: the search's files are written without torch

    write_atomically(path, lambda f: torch.save(obj, f), binary=True)


def remove_interrupted_writes(folder):
    """Remove the temporary files that writes into ``folder`` left when a kill interrupted them (a training state's
    can be gigabytes); returns their paths."""
    leftovers = sorted(glob.glob(os.path.join(glob.escape(folder), f"{TEMP_PREFIX}*")))
    for leftover in leftovers:
        os.unlink(leftover)
        logger.info("removed %s, left by an interrupted write", leftover)
    return leftovers


@contextlib.contextmanager
def sole_writer(folder, what):
    """Hold ``folder``'s lock (an flock of <folder>/.lock) while ``what`` writes into it: one started there meanwhile
    is refused in one line. The kernel releases the lock when its holder dies, so a run started after a kill goes
    on where the killed one stopped."""
    os.makedirs(folder, exist_ok=True)
    lock = open(os.path.join(folder, LOCK_FILE), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(f"{folder}: another {what} is writing there (it holds {LOCK_FILE}); wait for it to end, or "
                        f"give another folder") from None
    try:
        yield
    finally:
        lock.close()


def read_json(path, what):
    """The JSON in ``path``; a file that cannot be read or is not JSON is one UserError naming it and ``what`` it
    should be (e.g. "the search state")."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if not text.strip():
        raise UserError(f"{path}: {what} is empty")
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
