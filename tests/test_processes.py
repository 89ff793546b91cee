"""spos/processes.py: a child dies with its parent whether its parent dies after it asked or before."""
import subprocess
import sys
import time

import psutil
import pytest
from conftest import REPO

# the child waits for the file "go", asks to die with its parent, then says it lives on
CHILD = """
import os, sys, time
from spos.processes import die_with_parent
folder, parent_pid = sys.argv[1], int(sys.argv[2])
while not os.path.exists(os.path.join(folder, "go")):
    time.sleep(0.01)
die_with_parent(parent_pid)
open(os.path.join(folder, "armed"), "w").close()
time.sleep(60)
"""
# the parent starts the child, prints its pid, and waits for the file "end" to exit
PARENT = """
import os, subprocess, sys, time
folder = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", sys.argv[2], folder, str(os.getpid())])
print(child.pid, flush=True)
while not os.path.exists(os.path.join(folder, "end")):
    time.sleep(0.01)
"""


@pytest.mark.parametrize("parent_dies", ["after the child asked", "before the child asked"])
def test_a_child_does_not_outlive_its_parent(parent_dies, tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), CHILD], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        if parent_dies == "after the child asked":
            (tmp_path / "go").touch()
            deadline = time.monotonic() + 60
            while not (tmp_path / "armed").exists():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            (tmp_path / "end").touch()
            assert parent.wait(timeout=10) == 0
        else:
            (tmp_path / "end").touch()
            assert parent.wait(timeout=10) == 0
            (tmp_path / "go").touch()
        child.wait(timeout=30)  # raises psutil.TimeoutExpired while it lives on
        # asking too late, it killed itself before saying it lives on
        assert (tmp_path / "armed").exists() == (parent_dies == "after the child asked")
    finally:
        if child.is_running():
            child.kill()
