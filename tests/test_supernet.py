"""supernet.py (step 1) on the real digits: checkpoints, learning, kill and --resume, update rules, bad input."""
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

import supernet
from conftest import REPO
from dataloader import ImageFolderLoader
from loops import train_one_epoch
from network import ShuffleNetV2OneShot, load_weights
from optim import make_lr_scheduler, make_optimizer

NO_TABLE = "/nonexistent/op_flops_dict.pkl"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """OpenMP threads spin while they wait: on 2 shared cores two threads ran 10x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_digits(digits_dir, tmp_path_factory):
    """The first 40 train and 10 val scans of each digit (6 steps of 64 an epoch), for quick runs."""
    root = tmp_path_factory.mktemp("small") / "digits"
    for split, keep in (("train", 40), ("val", 10)):
        for name in sorted(os.listdir(os.path.join(digits_dir, split))):
            os.makedirs(root / split / name)
            for file in sorted(os.listdir(os.path.join(digits_dir, split, name)))[:keep]:
                shutil.copy(os.path.join(digits_dir, split, name, file), root / split / name / file)
    shutil.copy(os.path.join(digits_dir, "preprocessing.json"), root)
    return root


def run_args(data, output_dir, epochs, *extra):
    return ["--imagenet-dir", str(data), "--input-size", "32", "--batch-size", "64", "--epochs", str(epochs),
            "--workers", "1", "--output-dir", str(output_dir), "--log-frequency", "1", *extra]


def run_script(*args, timeout=240):
    return subprocess.run([sys.executable, os.path.join(REPO, "supernet.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_one_epoch_writes_weights_state_and_arguments(small_digits, tmp_path):
    history = supernet.main(run_args(small_digits, tmp_path, 1))
    assert [h["epoch"] for h in history] == [1]
    assert history[0]["val"]["images"] == 100  # every val image, once
    assert sorted(f for f in os.listdir(tmp_path) if not f.startswith(".")) == [
        "args.json", "epoch_1.pth.tar", "supernet.log", "training_state.pth.tar"]
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE)
    load_weights(model, str(tmp_path / "epoch_1.pth.tar"))  # what tester.py and scratch.py load
    state = torch.load(tmp_path / "training_state.pth.tar", weights_only=True)
    assert state["epoch"] == 1 and state["scheduler"]["last_epoch"] == 6
    assert "momentum_buffer" in next(iter(state["optimizer"]["state"].values()))
    assert torch.equal(state["state_dict"]["classifier.0.weight"], model.classifier[0].weight)


def test_the_training_machinery_learns_digits(digits_dir):
    """The supernet's own loader, optimizer, scaled LR, schedule and loop, on one fixed path (a random path
    a step learns far more slowly on 1,500 digits): epoch 2's train loss is well below epoch 1's and below
    ln(10), the loss of guessing (measured: 2.36, then 1.74)."""
    torch.manual_seed(0)
    loader = ImageFolderLoader(digits_dir, "train", train=True, batch_size=32, input_size=32, workers=1)
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE)
    optimizer = make_optimizer(model, 0.5 * 32 / 1024, 0.9, 4e-5)
    scheduler = make_lr_scheduler(optimizer, 2 * len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    path = (0,) * 20
    losses = [train_one_epoch(model, loader, criterion, optimizer, scheduler, epoch, 2, 10, lambda: path)["loss"]
              for epoch in range(2)]
    assert losses[1] < losses[0] - 0.3 and losses[1] < math.log(10) - 0.4, losses


def test_unsampled_blocks_are_not_touched_by_momentum_or_weight_decay():
    torch.manual_seed(0)
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE)
    optimizer = make_optimizer(model, 0.1, 0.9, 0.1)  # a large weight decay, so that any drift shows
    scheduler = make_lr_scheduler(optimizer, 100)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    batch = [(torch.randn(8, 3, 32, 32), torch.arange(8) % 10)]
    path_a, path_b = (0,) * 10 + (1,) * 10, (1,) * 10 + (0,) * 10

    def snapshot():
        return {k: v.clone() for k, v in model.state_dict().items()}

    initial = snapshot()
    train_one_epoch(model, batch, criterion, optimizer, scheduler, 0, 1, 1, lambda: path_a)
    after_a = snapshot()
    train_one_epoch(model, batch, criterion, optimizer, scheduler, 0, 1, 1, lambda: path_b)
    after_b = snapshot()

    def block_keys(layer, choice):
        return [k for k in initial if k.startswith(f"features.{layer}.{choice}.")]

    for layer in range(20):
        a, b = path_a[layer], path_b[layer]
        for key in block_keys(layer, a):  # sampled in step 1 only: has momentum, yet frozen in step 2
            assert torch.equal(after_b[key], after_a[key]), key
        assert any(not torch.equal(after_a[k], initial[k]) for k in block_keys(layer, a))
        assert any(not torch.equal(after_b[k], after_a[k]) for k in block_keys(layer, b))
        for choice in (2, 3):  # never sampled: bit-identical to the initial weights, no optimizer state
            for key in block_keys(layer, choice):
                assert torch.equal(after_b[key], initial[key]), key
            for param in model.features[layer][choice].parameters():
                assert param not in optimizer.state
    momentum = optimizer.state[model.features[0][path_a[0]].branch_main[0].weight]["momentum_buffer"]
    assert momentum.abs().sum() > 0


def test_weight_decay_on_conv_and_linear_weights_only_and_linear_lr_decay():
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE, affine=True,
                                architecture=(0,) * 20)
    optimizer = make_optimizer(model, 0.5, 0.9, 4e-5)
    decayed, not_decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 4e-5 and not_decayed["weight_decay"] == 0
    kinds = {id(m.weight): nn.Conv2d if isinstance(m, nn.Conv2d) else type(m)  # PointwiseConv2d is a Conv2d
             for m in model.modules() if hasattr(m, "weight")}
    assert {kinds[id(p)] for p in decayed["params"]} == {nn.Conv2d, nn.Linear}
    assert {kinds.get(id(p), "bias") for p in not_decayed["params"]} == {nn.BatchNorm2d, "bias"}
    scheduler = make_lr_scheduler(optimizer, 10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5 * (1 - i / 10) for i in range(10)])
    assert optimizer.param_groups[0]["lr"] == 0


def test_sigkill_during_epoch_2_then_resume_finishes(small_digits, tmp_path):
    command = [sys.executable, os.path.join(REPO, "supernet.py"), *run_args(small_digits, tmp_path, 3)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = False
    try:
        for line in process.stderr:
            if "Epoch [2/3] Step [2/6]" in line:
                os.kill(process.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        process.kill()
        process.wait(timeout=60)
        process.stderr.close()
    assert killed and process.returncode == -signal.SIGKILL
    assert os.path.exists(tmp_path / "epoch_1.pth.tar") and not os.path.exists(tmp_path / "epoch_2.pth.tar")
    assert torch.load(tmp_path / "training_state.pth.tar", weights_only=True)["epoch"] == 1

    resumed = run_script(*run_args(small_digits, tmp_path, 3), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {tmp_path / 'training_state.pth.tar'}: 1 of 3 epochs done" in resumed.stderr
    assert "Epoch [1/3]" not in resumed.stderr and "Epoch [3/3] done" in resumed.stderr
    state = torch.load(tmp_path / "training_state.pth.tar", weights_only=True)
    assert state["epoch"] == 3 and state["scheduler"]["last_epoch"] == 3 * 6  # the LR schedule went on
    for epoch in (1, 2, 3):
        load_weights(ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE),
                     str(tmp_path / f"epoch_{epoch}.pth.tar"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # no torn temporary files


def error_lines(result):
    return [line for line in result.stderr.splitlines() if "ERROR" in line or line.startswith("error:")]


def test_missing_dataset_exits_2_naming_it(tmp_path):
    result = run_script(*run_args(tmp_path / "no_such_data", tmp_path / "out", 1))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert f"{tmp_path / 'no_such_data' / 'train'}: dataset folder not found" in line


def test_truncated_load_checkpoint_exits_2_naming_it(small_digits, tmp_path):
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE)
    checkpoint = tmp_path / "checkpoint-150000.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, checkpoint)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:len(data) // 3])
    result = run_script(*run_args(small_digits, tmp_path / "out", 1), "--load-checkpoint", str(checkpoint))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert f"{checkpoint}: not a readable PyTorch checkpoint" in line


def test_resume_without_a_state_and_with_another_dataset_are_user_errors(small_digits, tmp_path):
    result = run_script(*run_args(small_digits, tmp_path, 1), "--resume")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert f"{tmp_path / 'training_state.pth.tar'}: no resumable state" in line

    # a state of a 1000-class supernet does not fit a 10-class dataset
    model = ShuffleNetV2OneShot(input_size=32, op_flops_path=NO_TABLE)
    optimizer = make_optimizer(model, 0.1, 0.9, 4e-5)
    scheduler = make_lr_scheduler(optimizer, 10)
    torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": 1, "rng": {}}, tmp_path / "training_state.pth.tar")
    result = run_script(*run_args(small_digits, tmp_path, 2), "--resume")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert "training_state.pth.tar: the saved network does not fit this run (size mismatch" in line
