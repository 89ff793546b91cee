"""torchrun with 2 gloo processes on CPU: supernet.py and scratch.py on digits, killed and resumed, run from
another folder, and the DDP invariants."""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import torch
from conftest import KILL_POINT, REPO

from spos.checkpoint import load_training_state

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

RANK_SCRIPT = textwrap.dedent("""
    import json, os, random, sys
    import torch
    sys.path.insert(0, {repo!r})
    from spos import distributed
    from dataloader import ImageFolderLoader
    from network import FlopsBinnedSampler, ShuffleNetV2OneShot
    from spos.hardware import get_device
    from spos.optim import make_optimizer

    context = distributed.init(get_device("cpu"))
    torch.manual_seed(0)
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10)
    # each rank draws from a differently seeded generator: only the broadcast can make the paths agree
    sample = distributed.shared_draw(FlopsBinnedSampler(model, random.Random(context.rank)), context)
    ddp = distributed.wrap(model, context, supernet=True)
    optimizer = make_optimizer(model, 0.1, 0.9, 4e-5)
    loader = ImageFolderLoader({data!r}, "train", train=True, batch_size=16, input_size=32, workers=1,
                               backend="torch", shard_id=context.rank, num_shards=context.world_size)
    paths, labels_seen = [], []
    for step, (images, labels) in enumerate(loader):
        if step == 3:
            break
        path = sample()
        paths.append(path)
        labels_seen.append(labels.tolist())
        loss = torch.nn.functional.cross_entropy(ddp(images, path), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), os.path.join({out!r}, f"rank{{context.rank}}.pt"))
    with open(os.path.join({out!r}, f"rank{{context.rank}}.json"), "w") as f:
        json.dump({{"paths": paths, "labels": labels_seen}}, f)
    distributed.shutdown(context)
""")


def run_torchrun(args, tmp_path, timeout=300, kill_point=None):
    """torchrun ``args`` from ``tmp_path``; with ``kill_point``, each process runs through tests/kill_point.py and
    rank 0 (which alone writes files) is SIGKILLed there: torchrun stops the other rank and fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if kill_point:
        args = [KILL_POINT, kill_point, *args]
    result = subprocess.run(TORCHRUN + args, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert (result.returncode != 0) == bool(kill_point), result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def killed_torchrun(args, tmp_path, at_line, timeout=300):
    """torchrun ``args`` from ``tmp_path``, SIGKILLed once rank 0 logs ``at_line``; returns its output and
    the processes it had started that outlived it by 10 s (each then SIGKILLed too)."""
    import psutil

    env = dict(os.environ, OMP_NUM_THREADS="1")
    output = tmp_path / "killed.txt"
    with open(output, "w") as out:
        process = subprocess.Popen(TORCHRUN + args, cwd=str(tmp_path), env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    started = []
    try:
        while at_line not in output.read_text():
            assert process.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(0.01)
        started = psutil.Process(process.pid).children(recursive=True)
    finally:
        process.kill()  # torchrun alone: its workers run in sessions of their own
        process.wait()
    _, outlived = psutil.wait_procs(started, timeout=10)
    for orphan in outlived:
        orphan.kill()
    return output.read_text(), outlived


def test_ranks_share_paths_and_weights(digits_dir, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.format(repo=REPO, data=digits_dir, out=str(tmp_path)))
    run_torchrun([str(script)], tmp_path)
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert ranks[0]["paths"] == ranks[1]["paths"]
    assert ranks[0]["labels"] != ranks[1]["labels"]  # each process read its own shard
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    # parameters agree exactly; BN running statistics are each process's own until DDP's next broadcast
    for name in (n for n in weights[0] if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))):
        assert torch.equal(weights[0][name], weights[1][name]), name
    # blocks off every sampled path kept their initial weights on both ranks
    torch.manual_seed(0)
    from network import ShuffleNetV2OneShot
    initial = ShuffleNetV2OneShot(input_size=32, n_classes=10).state_dict()
    used = {(layer, choice) for path in ranks[0]["paths"] for layer, choice in enumerate(path)}
    for layer in range(20):
        for choice in range(4):
            if (layer, choice) not in used:
                key = f"features.{layer}.{choice}.branch_main.0.weight"
                assert torch.equal(weights[0][key], initial[key]), key


def test_supernet_under_torchrun_warm_starts_and_resumes_from_kills_to_the_weights_of_a_run_never_killed(
        small_digits, digits_dir, tmp_path):
    """The digits' recipe (its warm start shortened) under DDP: the warm start, then path sampling with both ranks
    on the same weights. Killed right after the warm start's state, relaunched (no second warm start), killed
    between epoch 1's two writes, relaunched (rank 0 alone writes the missing weights again): the run ends on the
    weights of the run never killed, each epoch logged once, every val image counted once across the shards."""
    data = tmp_path / "digits"
    shutil.copytree(small_digits, data)
    shutil.copy(os.path.join(digits_dir, "recipe.json"), data)

    def command(out):
        return [os.path.join(REPO, "supernet.py"), "--imagenet-dir", str(data), "--epochs", "2", "--warm-start-steps",
                "20", "--warm-start-fit-steps", "10", "--loader", "torch", "--output-dir", str(tmp_path / out),
                "--resume"]

    log = run_torchrun(command("whole"), tmp_path)
    assert f"defaults from {data / 'recipe.json'}" in log and "2 process(es)" in log
    assert "warm start done" in log and "before training: the 2 processes hold the same weights" in log
    assert log.count("Epoch [1/2] done") == 1 and log.count("Epoch [2/2] done") == 1
    assert "after epoch 2: the 2 processes hold the same weights" in log and "(100 images)" in log
    assert "Warning" not in log  # DDP's about gradient strides included (spos/distributed.wrap says why)

    out = tmp_path / "killed"
    log = run_torchrun(command("killed"), tmp_path, kill_point="after:training_state.pth.tar")
    assert "nothing saved yet, starting from the beginning" in log
    assert "warm start done" in log and "Epoch [1/2]" not in log
    log = run_torchrun(command("killed"), tmp_path, kill_point="between-writes")
    assert "0 of 2 epochs done" in log and "warm start" not in log
    assert load_training_state(out / "training_state.pth.tar")["epoch"] == 1 and not (out / "epoch_1.pth.tar").exists()
    log = run_torchrun(command("killed"), tmp_path)
    assert "1 of 2 epochs done" in log and log.count("epoch_1.pth.tar is missing") == 1  # rank 0 alone writes it
    assert "Epoch [1/2]" not in log and log.count("Epoch [2/2] done") == 1  # rank 0 alone logs
    assert "after epoch 2: the 2 processes hold the same weights" in log
    assert sorted(p for p in os.listdir(out) if p.endswith(".pth.tar")) == [
        "epoch_1.pth.tar", "epoch_2.pth.tar", "training_state.pth.tar"]
    whole, resumed = (torch.load(tmp_path / run / "epoch_2.pth.tar", weights_only=True)["state_dict"]
                      for run in ("whole", "killed"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_scratch_under_torchrun_from_another_folder_resumes_after_all_processes_are_killed(small_digits, tmp_path):
    """No --fixed-arc and no architecture_final.json in the working folder: the project's own is used."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, runs = tmp_path / "scratch", tmp_path / "runs"
    command = [os.path.join(REPO, "scratch.py"), "--imagenet-dir", str(small_digits), "--input-size", "32",
               "--batch-size", "64", "--epochs", "2", "--workers", "1", "--log-frequency", "1", "--output-dir",
               str(out), "--tb-dir", str(runs), "--resume"]
    log, outlived = killed_torchrun(command, tmp_path, at_line="Epoch [2/2] Step [2/6]")
    assert not outlived  # the workers died with torchrun, not training on into the relaunched run's files
    assert f"architecture {os.path.join(REPO, 'architecture_final.json')}: 2 1 0 1 2 0 2 0 2 0 2 3" in log
    assert "2 process(es)" in log and log.count("Epoch [1/2] done") == 1
    assert load_training_state(out / "training_state.pth.tar")["epoch"] == 1  # epoch 2 was not finished by orphans

    log = run_torchrun(command, tmp_path)
    assert "1 of 2 epochs done" in log and log.count("Epoch [2/2] done") == 1 and "Epoch [1/2]" not in log
    assert os.path.exists(out / "epoch_2.pth.tar")
    assert len(os.listdir(runs)) == 2  # one TensorBoard event file a launch: rank 0's
    events = EventAccumulator(str(runs))
    events.Reload()
    # the killed launch's steps of epoch 2 hidden by the resumed one's purge_step: each step once
    assert [e.step for e in events.Scalars("loss/train")] == list(range(2 * 6))
    assert [e.step for e in events.Scalars("acc1/test")] == [0, 1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_supernet_on_two_torchrun_agents_resumes_after_one_agent_is_killed(small_digits, tmp_path):
    """Two machines as torchrun sees them: two agents (--nnodes 2, one process each) meeting through c10d
    rendezvous on 127.0.0.1. One agent is SIGKILLed mid-epoch; the other's process fails on the next
    collective and that agent exits too; both relaunched with the same command continue from the last epoch
    saved, each epoch logged once, both ranks on the same weights."""
    out, port = tmp_path / "supernet", free_port()
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "spos-test",
             os.path.join(REPO, "supernet.py"), "--imagenet-dir", str(small_digits), "--input-size", "32",
             "--batch-size", "64", "--epochs", "3", "--workers", "1", "--log-frequency", "1", "--loader", "torch",
             "--output-dir", str(out), "--resume"]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def launch(name):
        log = open(tmp_path / f"{name}.txt", "w")
        return subprocess.Popen(agent, cwd=str(tmp_path), env=env, stdout=log, stderr=subprocess.STDOUT), log

    def output(*names):
        return "".join((tmp_path / f"{name}.txt").read_text() for name in names)

    agents = [launch("a1"), launch("b1")]
    try:
        deadline = time.monotonic() + 300
        while "Epoch [2/3] Step [2/6]" not in output("a1", "b1"):  # rank 0 logs, on whichever agent it is
            assert time.monotonic() < deadline and all(p.poll() is None for p, _ in agents), output("a1", "b1")
            time.sleep(0.05)
        agents[1][0].kill()  # one machine lost; its worker dies with it
        assert agents[0][0].wait(timeout=240) != 0  # the other fails on its next collective, and gives up
    finally:
        for process, log in agents:
            if process.poll() is None:
                process.kill()
            process.wait()
            log.close()
    first = output("a1", "b1")
    assert first.count("Epoch [1/3] done") == 1 and "Epoch [2/3] done" not in first
    assert load_training_state(out / "training_state.pth.tar")["epoch"] == 1

    agents = [launch("a2"), launch("b2")]
    for process, log in agents:
        assert process.wait(timeout=300) == 0, output("a2", "b2")[-4000:]
        log.close()
    second = output("a2", "b2")
    assert "resuming from" in second and "1 of 3 epochs done" in second
    assert "Epoch [1/3]" not in second and second.count("Epoch [2/3] done") == second.count("Epoch [3/3] done") == 1
    assert "after epoch 3: the 2 processes hold the same weights" in second
    assert sorted(p for p in os.listdir(out) if p.startswith("epoch_")) == [
        "epoch_1.pth.tar", "epoch_2.pth.tar", "epoch_3.pth.tar"]
