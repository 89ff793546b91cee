"""Child processes that end with the process that started them. A run is killed at any moment (SIGKILL, a lost
machine): the processes it started must not train on into the files a relaunched run writes, so each asks the
kernel to SIGKILL it when its parent dies (Linux's PR_SET_PDEATHSIG; nothing elsewhere)."""
import ctypes
import functools
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid=None):
    """Have the kernel SIGKILL this process when its parent dies (call it first thing in the child). The kernel
    only watches a parent still alive: given the pid of the process that started this one, a child that asks too
    late (its parent killed while it started) kills itself at once instead of running on, orphaned."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def start_child(command, **popen_arguments):
    """``subprocess.Popen(command)`` of a child that dies with this process."""
    return subprocess.Popen(command, preexec_fn=functools.partial(die_with_parent, os.getpid()), **popen_arguments)


def run_child(command, **run_arguments):
    """``subprocess.run(command)`` of a child that dies with this process."""
    return subprocess.run(command, preexec_fn=functools.partial(die_with_parent, os.getpid()), **run_arguments)
