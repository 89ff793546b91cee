"""Shared fixtures: the repository on sys.path, the real digits dataset (written once per test run), a fresh
interpreter to run code in."""
import os
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see supernet.py

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "data"))


@pytest.fixture(scope="session")
def fresh_python():
    """Run ``code`` in a new interpreter in the repository (for what one process loads, which the test
    session itself cannot show) and return its printed words."""
    def run(code):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()
    return run


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """data/digits as `make data` writes it (train/, val/, preprocessing.json), in a temporary folder."""
    from make_digits import write_digits

    root = str(tmp_path_factory.mktemp("data") / "digits")
    write_digits(root)
    return root
