"""spos/search_space.py: the search space `nnictl ss_gen` writes, without importing torch."""
import json
import subprocess
import sys
import time

import pytest

from conftest import REPO, venv_env

import network
from spos import search_space

# one thread per process, as the CPU search config runs its trials
TRIAL_ENV = venv_env(OMP_NUM_THREADS="1")


def test_structure_constants_match_the_network():
    assert (search_space.NUM_LAYERS, search_space.NUM_CHOICES) == (network.NUM_LAYERS, network.NUM_CHOICES)
    assert search_space.CHANNEL_SCALES == network.CHANNEL_SCALES


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


def test_channel_search_space_has_block_and_channel_choices():
    space = search_space.search_space(channel_search=True)
    assert len(space) == 40
    assert space["ChannelChoice7"] == {"_type": "layer_choice",
                                       "_value": ["0.2", "0.4", "0.6", "0.8", "1.0", "1.2", "1.4", "1.6"]}
    assert [float(v) for v in space["ChannelChoice1"]["_value"]] == list(network.CHANNEL_SCALES)
    choices = search_space.parse_search_space(space)
    assert choices == [(0, 1, 2, 3)] * 20 + [tuple(range(8))] * 20
    space["ChannelChoice3"]["_value"] = ["1.0", "0.4"]
    assert search_space.parse_search_space(space)[22] == (1, 4)
    space["ChannelChoice3"]["_value"] = ["1.7"]
    with pytest.raises(ValueError, match="ChannelChoice3"):
        search_space.parse_search_space(space)
    del space["ChannelChoice3"]
    with pytest.raises(ValueError, match="exactly the keys"):
        search_space.parse_search_space(space)


def test_ss_gen_writes_channel_choices_for_a_channel_search_supernet(tmp_path):
    from spos.checkpoint import save_weights

    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10, channel_search=True)
    save_weights(str(tmp_path / "supernet"), 1, model.state_dict(), model.options())
    for checkpoint, keys in ((tmp_path / "supernet", 40), (tmp_path / "not_trained_yet", 20)):
        target = tmp_path / f"space_{keys}.json"
        done = subprocess.run(["nnictl", "ss_gen", "-t", f"python tester.py --checkpoint {checkpoint}", "-f",
                               str(target)], cwd=REPO, env=TRIAL_ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        space = json.loads(target.read_text())
        assert len(space) == keys and list(space) == sorted(space)
        assert ("ChannelChoice20" in space) == (keys == 40)


def test_ss_gen_with_an_unreadable_checkpoint_says_so_in_one_line(tmp_path):
    broken = tmp_path / "epoch_1.pth.tar"
    broken.write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, "tester.py", "--checkpoint", str(broken)], cwd=REPO,
                          env={**TRIAL_ENV, "NNI_GEN_SEARCH_SPACE": str(tmp_path / "space.json")},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(broken) in done.stderr
    assert not (tmp_path / "space.json").exists()
