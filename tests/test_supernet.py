"""supernet.py (step 1) on the real digits: checkpoints, learning, update rules, bad input and refused resumes
(tests/test_resume.py kills and resumes it)."""
import math
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO, killed_at
from torch import nn

import supernet
from dataloader import ImageFolderLoader
from network import ShuffleNetV2OneShot, load_weights
from spos.loops import train_one_epoch
from spos.optim import make_lr_scheduler, make_optimizer
from utils import UserError

NO_TABLE = "/nonexistent/op_flops_dict.pkl"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """OpenMP threads spin while they wait: on 2 shared cores two threads ran 10x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_args(data, output_dir, epochs, *extra):
    return ["--imagenet-dir", str(data), "--input-size", "32", "--batch-size", "64", "--epochs", str(epochs),
            "--workers", "1", "--output-dir", str(output_dir), "--log-frequency", "1", *extra]


def run_script(*args, timeout=240):
    return subprocess.run([sys.executable, os.path.join(REPO, "supernet.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def one_epoch_run(small_digits, tmp_path_factory):
    """supernet.py for 1 epoch on the small digits: its output folder (tests that change it copy it) and history."""
    output_dir = tmp_path_factory.mktemp("one_epoch")
    return output_dir, supernet.main(run_args(small_digits, output_dir, 1))


def test_one_epoch_writes_weights_state_and_arguments(one_epoch_run):
    output_dir, history = one_epoch_run
    assert [h["epoch"] for h in history] == [1]
    assert history[0]["val"]["images"] == 100  # every val image, once
    assert sorted(f for f in os.listdir(output_dir) if not f.startswith(".")) == [
        "args.json", "epoch_1.pth.tar", "supernet.log", "training_state.pth.tar"]
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE)
    load_weights(model, str(output_dir / "epoch_1.pth.tar"))  # what tester.py and scratch.py load
    state = torch.load(output_dir / "training_state.pth.tar", weights_only=True)
    assert state["epoch"] == 1 and state["scheduler"]["last_epoch"] == 6
    assert "momentum_buffer" in next(iter(state["optimizer"]["state"].values()))
    assert torch.equal(state["state_dict"]["classifier.0.weight"], model.classifier[0].weight)


def test_the_warm_start_runs_once_and_the_weights_carry_the_network_options(small_digits, tmp_path):
    """--warm-start-steps: the template path, the fit, a state after no epoch (killed right after it, the run
    resumes without warming up again), then path sampling; the weights record the options tester.py rebuilds
    the supernet with."""
    from spos.scoring import input_size_of

    output_dir = tmp_path / "run"
    args = run_args(small_digits, output_dir, 1, "--warm-start-steps", "12", "--warm-start-fit-steps", "3")
    # killed as the first state, the warm start's, is written
    killed = subprocess.run([*killed_at("after:training_state.pth.tar", os.path.join(REPO, "supernet.py")), *args],
                            cwd=REPO, capture_output=True, text=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "warm start: template path [12/12]" in killed.stderr and "fitting 20 Xception branches" in killed.stderr
    assert torch.load(output_dir / "training_state.pth.tar", weights_only=True)["epoch"] == 0
    assert not os.path.exists(output_dir / "epoch_0.pth.tar")
    resumed = run_script(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "0 of 1 epochs done" in resumed.stderr and "warm start" not in resumed.stderr
    weights = torch.load(output_dir / "epoch_1.pth.tar", weights_only=True)
    assert weights["network"] == {"input_size": 32, "first_conv_channels": 16, "last_conv_channels": 1024,
                                  "n_classes": 10, "affine": False, "channel_search": False,
                                  "small_input": False}
    assert input_size_of(str(output_dir / "epoch_1.pth.tar")) == 32
    assert input_size_of(str(output_dir / "epoch_1.pth.tar"), requested=64) == 64


def test_with_a_holdout_it_trains_on_the_rest_and_validates_on_the_held_out_images(small_digits, tmp_path):
    """--holdout-per-class 4: 360 of small_digits' 400 train images trained on (5 steps of 64), the 40 held out
    validated on, their list beside the weights; a resume with another holdout is refused."""
    history = supernet.main(run_args(small_digits, tmp_path, 1, "--holdout-per-class", "4"))
    assert history[0]["val"]["images"] == 40 and history[0]["train"]["images_per_s"] > 0
    held = (tmp_path / "holdout.txt").read_text().splitlines()
    assert len(held) == 40 and all(line.startswith("train/") for line in held)
    state = torch.load(tmp_path / "training_state.pth.tar", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 5 and "360 train images" in state["dataset"]
    log = (tmp_path / "supernet.log").read_text()
    assert "360 train / 40 holdout images" in log and "held-out on random paths" in log
    with pytest.raises(UserError, match="was written for dataset 10 classes .* 360 train images, not .* 400"):
        supernet.main(run_args(small_digits, tmp_path, 2, "--resume"))


def test_warm_start_and_load_checkpoint_are_refused_together(small_digits, tmp_path):
    done = run_script(*run_args(small_digits, tmp_path, 1, "--warm-start-steps", "5", "--load-checkpoint"))
    assert done.returncode == 2 and "give one of them" in done.stderr and "Traceback" not in done.stderr


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
    # PointwiseConv2d is a Conv2d, SliceableBatchNorm2d a BatchNorm2d
    kinds = {id(m.weight): next(kind for kind in (nn.Conv2d, nn.BatchNorm2d, type(m)) if isinstance(m, kind))
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


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


def remove_state(path):
    path.unlink()


REFUSED_RESUMES = {  # what is done to the run or its command, what the one line must say
    "truncated state": (truncate, [], "training_state.pth.tar: not a readable training state"),
    "foreign state": (lambda path: torch.save({"model": {}}, path), [],
                      "training_state.pth.tar: not a training state of this project"),
    "weights without a state": (remove_state, [], "training_state.pth.tar: not found, yet"),
    "another dataset": (None, ["--imagenet-dir", "FULL_DIGITS"],
                        "training_state.pth.tar: was written for dataset 10 classes (0..9), 400 train images, "
                        "not 10 classes (0..9), 1497 train images"),
    "another batch size": (None, ["--batch-size", "32"],
                           "training_state.pth.tar: was written for --batch-size 64, not 32"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_RESUMES))
def test_resume_refuses_a_state_it_cannot_continue_and_leaves_the_run_as_it_was(
        case, one_epoch_run, small_digits, digits_dir, tmp_path):
    change, extra, message = REFUSED_RESUMES[case]
    output_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run[0], output_dir)
    if change:
        change(output_dir / "training_state.pth.tar")
    before = {name: (output_dir / name).read_bytes() for name in os.listdir(output_dir) if name != "supernet.log"}
    extra = [digits_dir if arg == "FULL_DIGITS" else arg for arg in extra]
    with pytest.raises(UserError) as refused:
        supernet.main(run_args(small_digits, output_dir, 2, "--resume", *extra))
    assert message in str(refused.value) and str(output_dir) in str(refused.value)
    after = {name: (output_dir / name).read_bytes() for name in os.listdir(output_dir) if name != "supernet.log"}
    assert after == before  # no work lost: not even args.json was rewritten


def test_resume_of_a_1000_class_state_on_10_classes_exits_2_naming_it(small_digits, tmp_path):
    model = ShuffleNetV2OneShot(input_size=32, op_flops_path=NO_TABLE)
    optimizer = make_optimizer(model, 0.1, 0.9, 4e-5)
    scheduler = make_lr_scheduler(optimizer, 10)
    torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": 1, "rng": {}}, tmp_path / "training_state.pth.tar")
    result = run_script(*run_args(small_digits, tmp_path, 2), "--resume")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert "training_state.pth.tar: the saved network does not fit this run (size mismatch" in line


def test_an_official_checkpoint_is_refused_with_small_input_in_one_line(small_digits, tmp_path):
    """Megvii's files (no network options) were trained with the stride-2 first conv; the shapes of a stride-1 net
    are the same, so only the recorded options can tell: refused before any training, nothing written."""
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE)
    checkpoint = tmp_path / "checkpoint-150000.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, checkpoint)
    result = run_script(*run_args(small_digits, tmp_path / "out", 1), "--small-input", "--load-checkpoint",
                        str(checkpoint), "--spos-preprocessing")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result)
    assert (f"{checkpoint}: trained with a stride-2 first conv (an official checkpoint (no network options)), but "
            "this network has a stride-1 one (with --small-input): refused") in line
    assert not os.path.exists(tmp_path / "out" / "epoch_1.pth.tar")


def test_a_small_input_supernet_trains_records_the_option_and_loads_only_as_one(small_digits, tmp_path):
    history = supernet.main(run_args(small_digits, tmp_path, 1, "--small-input"))
    assert [h["epoch"] for h in history] == [1] and math.isfinite(history[0]["train"]["loss"])
    weights = str(tmp_path / "epoch_1.pth.tar")
    assert torch.load(weights, weights_only=True)["network"]["small_input"] is True
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE, small_input=True)
    load_weights(model, weights)
    with pytest.raises(UserError, match="trained with a stride-1 first conv .its network options., but this "
                                        "network has a stride-2 one .without --small-input.: refused"):
        load_weights(ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE), weights)
