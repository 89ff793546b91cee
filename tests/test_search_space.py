"""spos/search_space.py: the search space `nnictl ss_gen` writes, without importing torch."""
import json
import subprocess
import time

from conftest import REPO, venv_env

import network
from spos import search_space

# one thread per process, as the CPU search config runs its trials
TRIAL_ENV = venv_env(OMP_NUM_THREADS="1")


def test_structure_constants_match_the_network():
    assert (search_space.NUM_LAYERS, search_space.NUM_CHOICES) == (network.NUM_LAYERS, network.NUM_CHOICES)


def test_nnictl_ss_gen_writes_the_nni1_search_space(tmp_path):
    target = tmp_path / "nni_auto_gen_search_space.json"
    started = time.monotonic()
    done = subprocess.run(["nnictl", "ss_gen", "-t", "python tester.py", "-f", str(target)], cwd=REPO,
                          env=TRIAL_ENV, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    text = target.read_text()
    space = json.loads(text)
    keys = [f"LayerChoice{i}" for i in range(1, 21)]
    assert list(space) == sorted(keys)  # NNI 1.x wrote the keys sorted
    assert all(space[k] == {"_type": "layer_choice", "_value": ["0", "1", "2", "3"]} for k in keys)
    assert elapsed < 30  # no torch, data or checkpoint involved
