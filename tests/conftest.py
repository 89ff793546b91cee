"""Shared fixtures: the repository on sys.path, the real digits dataset (written once per test run) and a small
subset of it, a fresh interpreter to run code in, a digits supernet checkpoint, the environment of a user who
activated the venv, and the demo run once a session (its trained supernet and finished nnictl search)."""
import logging
import os
import shutil
import subprocess
import sys

# before torch: the tests run processes side by side on the cores, one compute thread each, sleeping when idle
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "data"))

# The two processes take whole modules in collection order (pytest.ini: --dist loadfile --no-loadscope-reorder), so
# the long end-to-end modules go first, longest first, and the many short ones fill in around them: left to xdist's
# default order (most tests first), test_reproduce.py, 6 tests and about 7 minutes, started last and ran alone.
SLOWEST_MODULES = ("test_reproduce.py", "test_demo.py", "test_search_e2e.py", "test_distributed.py",
                   "test_resume.py", "test_budget.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return SLOWEST_MODULES.index(name) if name in SLOWEST_MODULES else len(SLOWEST_MODULES)
    items.sort(key=rank)  # stable: the other modules and every module's tests keep their order


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


@pytest.fixture(scope="session")
def small_digits(digits_dir, tmp_path_factory):
    """The first 40 train and 10 val scans of each digit (6 steps of 64 an epoch), for quick runs."""
    import shutil

    root = tmp_path_factory.mktemp("small") / "digits"
    for split, keep in (("train", 40), ("val", 10)):
        for name in sorted(os.listdir(os.path.join(digits_dir, split))):
            os.makedirs(root / split / name)
            for file in sorted(os.listdir(os.path.join(digits_dir, split, name)))[:keep]:
                shutil.copy(os.path.join(digits_dir, split, name, file), root / split / name / file)
    shutil.copy(os.path.join(digits_dir, "preprocessing.json"), root)
    return root


DEMO_TIMEOUT_S = 900


def demo_command(output_dir, port, *extra):
    """`make demo`'s command, reduced: a warm start of 100 steps and 1 epoch of supernet, 4 random paths scored, a
    real nnictl search of 2 rounds of 4 candidates, 3 epochs from scratch."""
    return [sys.executable, "demo.py", "--supernet-paths", "4", "--scratch-epochs", "3", "--search-rounds", "2",
            "--search-population", "4", "--port", str(port), "--output-dir", str(output_dir), *extra]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The reduced demo (``demo_command``), run once a session: the tests that use it are all in test_demo.py, which
    one process runs (pytest.ini: --dist loadfile). Returns (its output folder, the web UI's port, the completed
    process)."""
    from spos.nni_experiment import free_port

    output_dir, port = tmp_path_factory.mktemp("demo") / "out", free_port()
    command = demo_command(output_dir, port, "--supernet-epochs", "1", "--supernet-warm-start-steps", "100")
    done = subprocess.run(command, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return output_dir, port, done


@pytest.fixture
def spos_warnings(caplog, monkeypatch):
    """Warnings of the 'spos' logger, each once (setup_logging may have stopped it propagating)."""
    log = logging.getLogger("spos")
    monkeypatch.setattr(log, "propagate", False)
    log.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="spos")
    yield caplog
    log.removeHandler(caplog.handler)


@pytest.fixture
def digits_copy(digits_dir, tmp_path):
    """A private copy of the digits dataset that a test may damage."""
    root = tmp_path / "digits"
    shutil.copytree(digits_dir, root)
    return root


KILL_POINT = os.path.join(REPO, "tests", "kill_point.py")


def killed_at(point, script):
    """The command line that runs ``script`` (a path) and SIGKILLs it at ``point`` (tests/kill_point.py)."""
    return [sys.executable, KILL_POINT, point, script]


def assert_drawn_png(path, size, colours=()):
    """``path`` decodes as a PNG of ``size`` (width, height) pixels holding a drawing (neither blank nor filled),
    with a pixel close to each RGB colour of ``colours`` (a marker, a line of a known colour)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size, (image.format, image.size)
        pixels = np.asarray(image.convert("RGB"), dtype=np.int32).reshape(-1, 3)
    inked = float((pixels.min(axis=1) < 200).mean())
    assert 0.01 < inked < 0.6, f"{path}: {inked:.1%} of the pixels are not near white"
    for colour in colours:
        assert (np.abs(pixels - colour).sum(axis=1) < 60).any(), f"{path}: no pixel near {colour}"


def venv_env(**extra):
    """The environment of a user who activated the venv: its bin/ first on PATH (nnictl, python)."""
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **extra}


@pytest.fixture
def one_thread():
    """Tiny batches on a shared 2-core machine: one thread, denormals flushed (as tester.main does)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushed = torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(threads)
    if flushed:
        torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """An untrained digits supernet (32x32, 10 classes) saved as supernet.py saves its epochs."""
    import torch

    import network

    torch.manual_seed(0)
    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10)
    path = tmp_path_factory.mktemp("supernet") / "epoch_1.pth.tar"
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, path)
    return str(path)


def digits_args(digits_dir, checkpoint, *extra):
    """tester.py's flags for a quick score on digits."""
    return ["--imagenet-dir", digits_dir, "--input-size", "32", "--checkpoint", checkpoint, "--train-iters", "3",
            "--train-batch-size", "32", "--test-batch-size", "100", "--workers", "1", "--device", "cpu", *extra]
