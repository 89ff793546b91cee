"""A run killed at any moment continues with the same command and --resume (issue 14). supernet.py and
scratch.py on digits are SIGKILLed (tests/kill_point.py) inside and between an epoch's two checkpoint writes,
inside the rewrite of a weights file a kill lost, during validation, and before an optimizer step drawn from a
fixed seed, relaunched with the same command after each kill until they finish. Every kill must leave a state to
continue from, the log must tell each epoch once and in order, and the run must end with the weights (and
scratch.py's TensorBoard scalars) of an uninterrupted run.

The runs use the torchvision loader: DALI's reader restarts its sequence of shuffles when a run is resumed, so
only the torchvision loader continues a killed run bit for bit.
"""
import os
import random
import re
import subprocess
import sys

import pytest
import torch
from conftest import KILL_POINT, REPO

from spos.checkpoint import load_training_state

EPOCHS, STEPS = 3, 6  # small_digits: 400 train images in batches of 64
STEP_KILLS = 2
# which steps are killed; another seed, to explore other kills: SPOS_TEST_KILL_SEED=N
SEED = int(os.environ.get("SPOS_TEST_KILL_SEED", 0))


def command(script, data, root):
    command = [sys.executable, os.path.join(REPO, f"{script}.py"), "--imagenet-dir", str(data), "--input-size", "32",
               "--batch-size", "64", "--epochs", str(EPOCHS), "--workers", "1", "--log-frequency", "1",
               "--loader", "torch", "--output-dir", str(root / "out")]
    return command + (["--tb-dir", str(root / "runs")] if script == "scratch" else [])


def step_line(epoch, step):
    return f"Epoch [{epoch}/{EPOCHS}] Step [{step}/{STEPS}]"


def launch(command, output, kill_point=None, timeout=240):
    """Run ``command`` (its output into the file ``output``) until it ends, by itself or SIGKILLed at
    ``kill_point`` (tests/kill_point.py). Returns its exit status and output."""
    if kill_point:
        command = [command[0], KILL_POINT, kill_point, *command[1:]]
    with open(output, "w") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    return done.returncode, output.read_text()


def saved_epochs(out_dir):
    """What a kill left in ``out_dir``, checked to be resumable: the epochs its state holds (0 without one), the
    epoch_N weights files and the temporary files of interrupted writes."""
    names = set(os.listdir(out_dir)) if os.path.isdir(out_dir) else set()
    state_path = os.path.join(out_dir, "training_state.pth.tar")
    done = load_training_state(state_path)["epoch"] if "training_state.pth.tar" in names else 0
    weights = sorted(int(m[1]) for m in (re.fullmatch(r"epoch_(\d+)\.pth\.tar", n) for n in names) if m)
    # the state is written first: no weights without it, and only its own epoch's may be missing
    assert set(range(1, done)) <= set(weights) <= set(range(1, done + 1)), (done, weights)
    return done, weights, sorted(n for n in names if n.startswith(".tmp-"))


def epoch_story(log):
    """For each launch that got as far as its --resume: (epochs done when it began, epochs it logged done)."""
    launches = []
    for line in log.splitlines():
        if "nothing saved yet, starting from the beginning" in line:
            launches.append((0, []))
        elif match := re.search(r"resuming from .*: (\d+) of \d+ epochs done", line):
            launches.append((int(match[1]), []))
        elif match := re.search(r"Epoch \[(\d+)/\d+\] done", line):
            launches[-1][1].append(int(match[1]))
    return launches


def load_weights_file(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def scalars(tb_dir):
    """{tag: [(step, value), ...]} as TensorBoard shows them (what purge_step hid left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("script", ["supernet", "scratch"])
def test_killed_at_any_moment_resumes_to_the_uninterrupted_result(script, small_digits, tmp_path, request):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # the uninterrupted run, beside the killed one (mostly start-ups, which leave a core free)
    with open(tmp_path / "reference.txt", "w") as out:
        uninterrupted = subprocess.Popen(command(script, small_digits, reference), cwd=REPO, stdout=out,
                                         stderr=subprocess.STDOUT)
    # stopped only if a failure came first: it has ended by then otherwise
    request.addfinalizer(lambda: (uninterrupted.kill(), uninterrupted.wait()))

    out_dir = killed / "out"
    resume = command(script, small_digits, killed) + ["--resume"]
    rng = random.Random(f"{SEED} {script}")
    story = []  # (how the launch ended, what it left), for the failure message

    def relaunch(how, **kill):
        status, output = launch(resume, tmp_path / f"launch_{len(story)}.txt", **kill)
        story.append((how, status, saved_epochs(out_dir)))
        return status, output

    # inside the first write of all, epoch 1's training state: nothing saved yet but a temporary file
    status, output = relaunch("inside epoch 1's state write", kill_point="before-rename:training_state.pth.tar")
    assert status == -9 and "nothing saved yet, starting from the beginning" in output, output[-3000:]
    done, weights, temporary = saved_epochs(out_dir)
    assert (done, weights) == (0, []) and len(temporary) == 1, story

    # between epoch 1's two writes: its state saved, its weights not
    status, output = relaunch("between epoch 1's writes", kill_point="between-writes")
    assert status == -9 and f"removed {out_dir / temporary[0]}, left by an interrupted write" in output
    assert saved_epochs(out_dir) == (1, [], []), story

    # inside the rewrite of epoch 1's weights, the first write of the next launch
    status, output = relaunch("inside the rewrite of epoch_1.pth.tar", kill_point="before-rename:epoch_1.pth.tar")
    assert status == -9 and f"{out_dir / 'epoch_1.pth.tar'} is missing" in output, output[-3000:]
    done, weights, temporary = saved_epochs(out_dir)
    assert (done, weights) == (1, []) and len(temporary) == 1, story

    # during epoch 2's validation (this launch's first): after its last step, before its state
    status, output = relaunch("during epoch 2's validation", kill_point="validation:1")
    assert status == -9 and f"{out_dir / 'training_state.pth.tar'}: 1 of {EPOCHS} epochs done" in output
    assert f"removed {out_dir / temporary[0]}, left by an interrupted write" in output
    assert step_line(2, STEPS) in output
    assert saved_epochs(out_dir) == (1, [1], []), story

    # before an optimizer step of the work left, drawn from the seed
    for _ in range(STEP_KILLS):
        done = saved_epochs(out_dir)[0]
        step = rng.randrange(1, (EPOCHS - done) * STEPS + 1)  # of this launch, which starts at epoch done + 1
        status, _ = relaunch(f"before step {step} of the launch", kill_point=f"step:{step}")
        assert status == -9, f"seed {SEED}: {story}"

    status, output = relaunch("not killed")
    print(f"seed {SEED}, {script}.py: what each launch left (epochs in the state, epoch_N files, temporary files)")
    for how, status, left in story:
        print(f"  {how}: exit {status}, {left}")
    assert status == 0, f"seed {SEED}: {story}\n{output[-3000:]}"
    assert saved_epochs(out_dir) == (EPOCHS, list(range(1, EPOCHS + 1)), []), story

    # each epoch trained to its end and logged once, in order: a launch continues where the last one's state
    # left off, one epoch past its last "done" line when the kill came between its state and that line
    launches = epoch_story((out_dir / f"{script}.log").read_text())
    assert launches[0][0] == 0, launches
    for start, done in launches:
        assert done == list(range(start + 1, start + 1 + len(done))), launches
    for (start, done), (next_start, _) in zip(launches, launches[1:]):
        assert start + len(done) <= next_start <= start + len(done) + 1, launches
    assert launches[-1][0] + len(launches[-1][1]) == EPOCHS, launches

    assert uninterrupted.wait(timeout=240) == 0, (tmp_path / "reference.txt").read_text()[-3000:]
    state = load_training_state(out_dir / "training_state.pth.tar")
    assert state["scheduler"]["last_epoch"] == EPOCHS * STEPS  # the learning rate schedule went on, not over
    for epoch in range(1, EPOCHS + 1):
        expected = load_weights_file(reference / "out" / f"epoch_{epoch}.pth.tar")
        weights = load_weights_file(out_dir / f"epoch_{epoch}.pth.tar")
        assert all(torch.equal(weights[k], expected[k]) for k in expected), f"seed {SEED}: epoch {epoch}, {story}"
    if script == "scratch":  # each step's and epoch's scalars once, as the uninterrupted run logged them
        logged, expected = scalars(killed / "runs"), scalars(reference / "runs")
        assert [step for step, _ in expected["loss/train"]] == list(range(EPOCHS * STEPS))
        assert [step for step, _ in expected["acc1/test"]] == list(range(EPOCHS))
        assert logged == expected, f"seed {SEED}: {story}"
