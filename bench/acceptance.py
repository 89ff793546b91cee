"""The user paths on one GPU machine, each run briefly as a user runs it, one PASS/FAIL line per check
(bench/gpu_check.sh runs this first, then the throughput table): DALI's GPU decoding (train and val),
supernet.py (bf16 autocast, channels-last) killed between its checkpoint writes and resumed, torchrun with a
process per GPU (NCCL), tester.py as a trial, the in-process search, scratch.py, and an nnictl search with
``trialGpuNumber: 1``. The data: generated ImageNet-layout JPEGs, the network at 224x224.

``--dry-run`` runs the same checks on the CPU at tiny sizes (32x32, a few images), the GPU-only ones (DALI's
GPU decoding) reported as skipped, torchrun with 2 gloo processes (the test suite runs it with the commands
stubbed, each checked against its script's flags: the paths themselves are tested elsewhere). Exit status 1 when
a check fails.

    python bench/acceptance.py --output acceptance.md            # on a GPU machine: about 3 minutes
    python bench/acceptance.py --dry-run --output acceptance.md  # anywhere
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from spos.nni_experiment import free_port  # noqa: E402
from spos.report import emit, markdown_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 4


class CheckFailed(Exception):
    pass


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes, GPU-only checks skipped")
    parser.add_argument("--output", default=None, help="also write the table to this Markdown file")
    parser.add_argument("--work-dir", default=None, help="where the data and runs go (default: a temporary folder)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds a check may take")
    return parser.parse_args(argv)


def write_images(root, train_per_class, val_per_class, size, seed=0):
    """Random-texture JPEGs in ImageNet layout, a colour per class so that the classes differ."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in range(CLASSES):
            folder = os.path.join(root, split, f"n{label:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 96, (size, size, 3)) + np.array([40 * label, 160 - 40 * label, 80])
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.JPEG"))


def run(command, log_path, timeout, env=None, expect=0):
    """Run a step as a user does; its output goes to ``log_path`` and comes back as text."""
    with open(log_path, "w") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, **(env or {})})
    with open(log_path) as f:
        text = f.read()
    if done.returncode != expect:
        lines = [line for line in text.splitlines() if line.strip()]
        raise CheckFailed(f"exit {done.returncode} (expected {expect}): {lines[-1] if lines else 'no output'} "
                          f"(log: {log_path})")
    return text


def images_per_s(log, pattern=r"Epoch \[\d+/\d+\] done .*?\((\d+) img/s\)"):
    found = re.findall(pattern, log)
    return float(found[-1]) if found else None


class Acceptance:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.gpu = not args.dry_run
        self.data = os.path.join(work, "data")
        self.size, self.batch = (224, 64) if self.gpu else (32, 16)
        self.common = ["--imagenet-dir", self.data, "--input-size", str(self.size), "--workers", "2",
                       "--device", "cuda" if self.gpu else "cpu"]
        self.supernet = os.path.join(work, "supernet")
        self.python = sys.executable

    def log(self, name):
        return os.path.join(self.work, f"{name}.log")

    def dali_gpu(self):
        import torch

        from dataloader import ImageFolderLoader
        rates = []
        for split in ("train", "val"):
            loader = ImageFolderLoader(self.data, split, train=split == "train", batch_size=self.batch,
                                       input_size=self.size, workers=4, backend="dali", device="cuda")
            started, seen = time.perf_counter(), 0
            for images, labels in loader:
                if images.device.type != "cuda" or images.shape[1:] != (3, self.size, self.size):
                    raise CheckFailed(f"{split}: a batch of {tuple(images.shape)} on {images.device}")
                seen += len(labels)
            torch.cuda.synchronize()
            rates.append(seen / (time.perf_counter() - started))
        return f"mixed decoding, train {rates[0]:.0f} / val {rates[1]:.0f} img/s (first epoch)", min(rates)

    def supernet_killed_and_resumed(self):
        command = ["supernet.py", *self.common, "--batch-size", str(self.batch), "--epochs", "2", "--log-frequency",
                   "1", "--output-dir", self.supernet, "--resume"]
        run([self.python, os.path.join("tests", "kill_point.py"), "between-writes", *command],
            self.log("supernet_killed"), self.args.timeout, expect=-9)
        log = run([self.python, *command], self.log("supernet_resumed"), self.args.timeout)
        if "1 of 2 epochs done" not in log or "Epoch [2/2] done" not in log:
            raise CheckFailed(f"the relaunch did not continue at epoch 2 (log: {self.log('supernet_resumed')})")
        precision = "bf16 autocast" if self.gpu else "fp32"
        return f"{precision}, channels-last; killed between its checkpoint writes, resumed", images_per_s(log)

    def torchrun(self):
        import torch

        processes = torch.cuda.device_count() if self.gpu else 2
        log = run([self.python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "supernet.py", *self.common, "--batch-size", str(self.batch * processes), "--epochs", "1",
                   "--output-dir", os.path.join(self.work, "torchrun")], self.log("torchrun"), self.args.timeout)
        if f"{processes} process(es)" not in log or f"the {processes} processes hold the same weights" not in log:
            raise CheckFailed(f"not {processes} processes on the same weights (log: {self.log('torchrun')})")
        return f"{processes} processes ({'NCCL' if self.gpu else 'gloo'})", images_per_s(log)

    def trial(self):
        log = run([self.python, "tester.py", *self.common, "--checkpoint", self.supernet, "--fixed-arc",
                   "architecture_final.json", "--train-iters", "2", "--train-batch-size", str(self.batch),
                   "--test-batch-size", str(self.batch)], self.log("tester"), self.args.timeout)
        result = json.loads(log.strip().splitlines()[-1])
        return (f"path copy, BN recalibration, folding: accuracy {result['accuracy']:.3f} (before recalibration "
                f"{result['accuracy_before_recalibration']:.3f})", None)

    def search_config(self, **service):
        import yaml

        config = yaml.safe_load(open(os.path.join(ROOT, "config_search_cpu.yml")))
        config["tuner"]["codeDirectory"] = ROOT
        config["tuner"]["classArgs"].update(max_epochs=1, num_population=4, num_select=2, num_mutation=1,
                                            num_crossover=1)
        config.update(service)
        path = os.path.join(self.work, f"search_{len(service)}.yml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return path

    def in_process_search(self):
        log = run([self.python, "-m", "spos.search", "--search-config", self.search_config(), *self.common,
                   "--checkpoint", self.supernet, "--train-iters", "2", "--train-batch-size", str(self.batch),
                   "--test-batch-size", str(self.batch), "--output-dir", os.path.join(self.work, "search")],
                  self.log("search"), self.args.timeout)
        if "in-process search: 4 candidates" not in log:
            raise CheckFailed(f"not 4 candidates scored (log: {self.log('search')})")
        return "1 round of 4 candidates", None

    def scratch(self):
        log = run([self.python, "scratch.py", *self.common, "--fixed-arc", "architecture_final.json",
                   "--batch-size", str(self.batch), "--epochs", "1", "--output-dir", os.path.join(self.work, "scratch"),
                   "--tb-dir", os.path.join(self.work, "runs")], self.log("scratch"), self.args.timeout)
        return "architecture_final.json, 1 epoch", images_per_s(log)

    def nnictl_search(self):
        from spos.search_state import read_state
        space = os.path.join(self.work, "search_space.json")
        run([self.python, "tester.py"], self.log("ss_gen"), 60, {"NNI_GEN_SEARCH_SPACE": space})
        flags = " ".join([*self.common, "--checkpoint", self.supernet, "--train-iters", "2", "--train-batch-size",
                          str(self.batch), "--test-batch-size", str(self.batch)])
        experiments = os.path.join(self.work, "nni-experiments")
        config = self.search_config(searchSpaceFile=space, trialCommand=f"{self.python} tester.py {flags}",
                                    trialCodeDirectory=ROOT, trialGpuNumber=1 if self.gpu else 0,
                                    trialConcurrency=1 if self.gpu else 2, experimentWorkingDirectory=experiments)
        nnictl = os.path.join(os.path.dirname(self.python), "nnictl")
        created = run([nnictl, "create", "--config", config, "--port", str(free_port())], self.log("nnictl"), 120)
        found = re.search(r"Experiment ID:\s*(\w+)", re.sub(r"\x1b\[[0-9;]*m", "", created))  # nnictl colours it
        if not found:
            raise CheckFailed(f"no experiment id in nnictl's output (log: {self.log('nnictl')})")
        state_path = os.path.join(experiments, found.group(1), "log", "checkpoints", "search_state.json")
        try:
            deadline = time.monotonic() + self.args.timeout
            while not (os.path.exists(state_path) and read_state(state_path)["finished"]):
                if time.monotonic() > deadline:
                    raise CheckFailed(f"the search did not finish in {self.args.timeout} s ({state_path})")
                time.sleep(1)
        finally:
            run([nnictl, "stop", found.group(1)], self.log("nnictl_stop"), 120)
        state = read_state(state_path)
        if state["candidates_scored"] != 4 or state["error"]:
            raise CheckFailed(f"{state['candidates_scored']} of 4 candidates scored, error {state['error']!r}")
        return f"trialGpuNumber {1 if self.gpu else 0}: 4 of 4 candidates scored", None


CHECKS = (("DALI GPU decoding", "dali_gpu", True), ("supernet.py", "supernet_killed_and_resumed", False),
          ("torchrun", "torchrun", False), ("tester.py trial", "trial", False),
          ("in-process search", "in_process_search", False), ("scratch.py", "scratch", False),
          ("nnictl search", "nnictl_search", False))


def main(argv=None):
    args = parse_args(argv)
    if not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            print("error: no CUDA GPU here; --dry-run runs the checks on the CPU", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="spos_acceptance_") as scratch_dir:
        work = os.path.abspath(args.work_dir or scratch_dir)
        os.makedirs(work, exist_ok=True)
        acceptance = Acceptance(args, work)
        sizes = (64, 16, 256) if acceptance.gpu else (24, 8, 40)
        write_images(acceptance.data, *sizes)
        rows, failed = [], 0
        for name, method, gpu_only in CHECKS:
            started = time.perf_counter()
            if gpu_only and not acceptance.gpu:
                verdict, detail, rate = "SKIP", "GPU only (--dry-run)", None
            else:
                try:
                    detail, rate = getattr(acceptance, method)()
                    verdict = "PASS"
                except (CheckFailed, subprocess.TimeoutExpired, OSError, ValueError, RuntimeError) as e:
                    verdict, detail, rate = "FAIL", f"{type(e).__name__}: {e}", None
                    failed += 1
            seconds = time.perf_counter() - started
            rows.append([verdict, name, f"{seconds:.1f} s", f"{rate:,.0f}" if rate else "-", detail])
            print(f"{verdict}  {name:<20} {seconds:6.1f} s  {rows[-1][3]:>7} img/s  {detail}", flush=True)
    device = "CPU, --dry-run" if args.dry_run else __import__("torch").cuda.get_device_name()
    text = (f"User paths ({device}; {acceptance.size}x{acceptance.size}, batch {acceptance.batch}): "
            f"{len(rows) - failed - sum(r[0] == 'SKIP' for r in rows)} passed, {failed} failed\n\n"
            + markdown_table(["", "check", "time", "images/s", "what"], rows))
    emit(text, args.output)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
