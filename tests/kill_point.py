"""Run a script as ``python SCRIPT ARGS...`` runs it, and SIGKILL the process at a named point of its work, where a
kill timed from outside rarely lands: for the tests of killed runs (test_resume.py, test_distributed.py) and the GPU
acceptance check (bench/acceptance.py). The points watch the project's own calls; the script is not changed.

    python tests/kill_point.py POINT SCRIPT [ARGS...]

  start:NAME       as the atomic write (spos/files.py) of a file named NAME (a glob) begins
  before-rename:NAME   inside that write: its temporary file complete, before the rename
  after:NAME       just after that write completes
  step:N           before the N-th optimizer step of this launch (warm-start steps count)
  validation:N     as the N-th validation of this launch begins

``between-writes`` is ``start:epoch_*.pth.tar``: an epoch's training state written, its weights not begun.
Under torchrun each process runs this wrapper; only rank 0 writes files.
"""
import fnmatch
import os
import runpy
import signal
import sys

ALIASES = {"between-writes": "start:epoch_*.pth.tar"}


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point):
    """Patch the call ``point`` names so that it kills this process."""
    kind, _, target = ALIASES.get(point, point).partition(":")
    from spos import files

    if kind == "before-rename":
        replace = os.replace

        def replace_or_die(src, dst):
            if os.path.basename(src).startswith(files.TEMP_PREFIX) and fnmatch.fnmatch(os.path.basename(dst), target):
                die()
            replace(src, dst)

        os.replace = replace_or_die
    elif kind in ("start", "after"):
        write = files.write_atomically

        def write_or_die(path, *args, **kwargs):
            named = fnmatch.fnmatch(os.path.basename(path), target)
            if named and kind == "start":
                die()
            write(path, *args, **kwargs)
            if named:
                die()

        files.write_atomically = write_or_die
    elif kind == "step":
        import torch

        steps = 0
        for optimizer in (torch.optim.SGD, torch.optim.Adam):
            def counted_step(self, *args, step=optimizer.step, **kwargs):
                nonlocal steps
                steps += 1
                if steps == int(target):
                    die()
                return step(self, *args, **kwargs)

            optimizer.step = counted_step
    elif kind == "validation":
        from spos import loops

        validations, evaluate = 0, loops.evaluate

        def evaluate_or_die(*args, **kwargs):
            nonlocal validations
            validations += 1
            if validations == int(target):
                die()
            return evaluate(*args, **kwargs)

        loops.evaluate = evaluate_or_die
    else:
        sys.exit(f"kill_point.py: unknown point {point!r} (see its docstring)")


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: python tests/kill_point.py POINT SCRIPT [ARGS...]")
    point, script = sys.argv[1], sys.argv[2]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` has it
    arm(point)
    sys.argv = sys.argv[2:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
