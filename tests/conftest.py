"""Shared fixtures: the repository on sys.path and the real digits dataset, written once per test run."""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see supernet.py

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "data"))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """data/digits as `make data` writes it (train/, val/, preprocessing.json), in a temporary folder."""
    from make_digits import write_digits

    root = str(tmp_path_factory.mktemp("data") / "digits")
    write_digits(root)
    return root
