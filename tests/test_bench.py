"""bench/: the GPU check (run on this CPU with tiny settings), its shell wrapper, and the data-loading
benchmark on generated JPEGs."""
import os
import re
import subprocess
import sys

from PIL import Image

from conftest import REPO

GPU_CHECK = os.path.join(REPO, "bench", "gpu_check.py")
GPU_CHECK_SH = os.path.join(REPO, "bench", "gpu_check.sh")
BENCH_DATA = os.path.join(REPO, "bench", "bench_data.py")
TINY_GPU_CHECK = ["--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-size", "4", "--input-size", "64"]
TINY_DATA = ["--images", "16", "--classes", "2", "--batch-size", "4", "--batches", "2", "--workers", "1"]
TRAINING_CONFIGS = ["fp32 contiguous", "fp32 channels-last", "bf16 contiguous", "bf16 channels-last"]
SCORING_CONFIGS = ["fp32 contiguous", "bf16 channels-last"]


def run(*command, cwd=REPO, env=None, timeout=120):
    return subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def table_rows(text):
    """The cells of each body row of the Markdown table in ``text``."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ")]
    return rows[1:]  # without the header


def ratio_agrees(printed, numerator, denominator, denominator_rounding=0.5):
    """Whether a printed ratio ``1.23x`` is numerator / denominator, both read from the table: the script
    divides the unrounded rates and prints rates as whole numbers."""
    ratio = float(printed.rstrip("x"))
    low = (numerator - 0.5) / (denominator + denominator_rounding)
    high = (numerator + 0.5) / (denominator - denominator_rounding)
    return low - 0.005 <= ratio <= high + 0.005


def test_gpu_check_on_cpu_writes_every_row(tmp_path):
    output = tmp_path / "result.md"
    result = run(sys.executable, GPU_CHECK, *TINY_GPU_CHECK, "--output", str(output))
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert text in result.stdout  # what is written is what was printed
    rows = table_rows(text)
    assert [(what, config) for what, config, _, _ in rows] == (
        [("supernet training", c) for c in TRAINING_CONFIGS]
        + [("scoring: BN recalibration (train mode, no grad)", c) for c in SCORING_CONFIGS]
        + [("scoring: evaluation (BN folded)", c) for c in SCORING_CONFIGS])
    for what, config, rate, ratio in rows:
        assert float(rate.replace(",", "")) > 0 and float(ratio.rstrip("x")) > 0
        if config == "fp32 contiguous":
            assert ratio == "1.00x"
    import torch
    assert f"device: CPU ({os.cpu_count()} cores); torch {torch.__version__}" in text
    assert "64x64, 1,000 classes, batch 4" in text
    goal = [line for line in text.splitlines() if line.startswith("goal:")]
    assert len(goal) == 1 and goal[0].startswith("goal: >= 10,000 img/s supernet training on one H100: not met")


def test_gpu_check_without_cuda_is_one_clear_error():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even where there is one
    result = run(sys.executable, GPU_CHECK, "--steps", "1", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert result.stderr.startswith("error: --device cuda: no CUDA GPU is available here")
    assert "--device cpu" in result.stderr


STUB_PYTHON = r"""#!/bin/sh
# a stand-in for python: logs its arguments, writes its --output, exits with $STUB_EXIT_<script>
echo "$@" >> "$STUB_LOG"
script=$(basename "$1" .py)
while [ $# -gt 0 ]; do
    if [ "$1" = "--output" ]; then echo "table of $script" > "$2"; fi
    shift
done
eval "exit \${STUB_EXIT_$script:-0}"
"""


def test_gpu_check_sh_runs_the_user_paths_then_the_throughput_table_into_one_file(tmp_path):
    """The GPU slot's one script, its two parts stubbed (acceptance.py's paths and gpu_check.py's table are tested
    below and above): the order, the options each part gets, the result file beside the caller, the exit status."""
    assert run("bash", "-n", GPU_CHECK_SH).returncode == 0
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub), "STUB_LOG": str(tmp_path / "calls.log")}
    usage = run("bash", GPU_CHECK_SH, "--dry-run", env=env)
    assert usage.returncode == 2 and "usage:" in usage.stderr

    result = run("bash", GPU_CHECK_SH, "--dry-run", "result.md", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    acceptance_call, throughput_call = (tmp_path / "calls.log").read_text().splitlines()
    assert acceptance_call.startswith(os.path.join(REPO, "bench", "acceptance.py") + " --dry-run --output ")
    assert throughput_call.startswith(os.path.join(REPO, "bench", "gpu_check.py") + " --output ")
    assert throughput_call.endswith("--device cpu --steps 2 --warmup 0 --batch-size 4 --input-size 64")  # tiny
    assert (tmp_path / "result.md").read_text() == "table of acceptance\n\ntable of gpu_check\n"

    (tmp_path / "calls.log").unlink()
    result = run("bash", GPU_CHECK_SH, "result.md", "--batch-size", "128", cwd=tmp_path, env=env)
    assert result.returncode == 0 and "--dry-run" not in (tmp_path / "calls.log").read_text()
    assert (tmp_path / "calls.log").read_text().splitlines()[1].endswith(" --batch-size 128")  # options passed on

    failed = run("bash", GPU_CHECK_SH, "result.md", cwd=tmp_path, env={**env, "STUB_EXIT_acceptance": "1"})
    assert failed.returncode == 1 and "user paths exit 1, throughput exit 0" in failed.stderr
    assert "table of gpu_check" in (tmp_path / "result.md").read_text()  # the table still runs after a failed path


def test_acceptance_dry_run_checks_every_user_path_with_commands_each_script_takes(tmp_path, monkeypatch, capsys):
    """bench/acceptance.py --dry-run with its commands stubbed (each path runs for real in its own tests): every
    command it would run is one its script's own parser takes, and each check reads the output it expects."""
    import json

    import scratch
    import supernet
    import tester
    from spos import search

    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import acceptance
    finally:
        sys.path.remove(os.path.join(REPO, "bench"))
    parsers = {"supernet.py": supernet.parse_args, "scratch.py": scratch.parse_args, "tester.py": tester.parse_args,
               "spos.search": search.parse_args}
    commands = []

    def stub(command, log_path, timeout, env=None, expect=0):
        commands.append(command)
        words = [os.path.basename(w) if w.endswith(".py") else w for w in command]
        if "nnictl" in os.path.basename(words[0]):
            if words[1] == "create":
                import shlex

                import yaml
                with open(command[command.index("--config") + 1]) as f:
                    trial = shlex.split(yaml.safe_load(f)["trialCommand"])
                tester.parse_args(trial[trial.index("tester.py") + 1:])  # what each trial will run
                state = os.path.join(os.path.dirname(log_path), "nni-experiments", "abc", "log", "checkpoints")
                os.makedirs(state)
                with open(os.path.join(state, "search_state.json"), "w") as f:
                    json.dump({"format": 1, "finished": True, "candidates_scored": 4, "error": None}, f)
                return "Experiment ID: abc"
            return ""
        script = next(w for w in words if w in parsers or w == "kill_point.py")
        flags = words[words.index(script) + 1:]
        if script == "kill_point.py":
            script, flags = flags[1], flags[2:]
        parsers[script](flags)  # argparse exits on a flag the script does not take
        if "torch.distributed.run" in words:
            return "2 process(es) on cpu\nthe 2 processes hold the same weights\n"
        return {"supernet.py": "1 of 2 epochs done\nEpoch [2/2] done in 1.0 s: (50 img/s)\n",
                "tester.py": json.dumps({"accuracy": 0.5, "accuracy_before_recalibration": 0.4}),
                "spos.search": "in-process search: 4 candidates", "scratch.py": ""}[script]

    monkeypatch.setattr(acceptance, "run", stub)
    assert acceptance.main(["--dry-run", "--work-dir", str(tmp_path), "--output", str(tmp_path / "a.md")]) == 0
    lines = [line.split(None, 1) for line in capsys.readouterr().out.splitlines()
             if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert [(verdict, what.split("  ")[0].strip()) for verdict, what in lines] == [
        ("SKIP", "DALI GPU decoding"), ("PASS", "supernet.py"), ("PASS", "torchrun"), ("PASS", "tester.py trial"),
        ("PASS", "in-process search"), ("PASS", "scratch.py"), ("PASS", "nnictl search")]
    assert "User paths (CPU, --dry-run; 32x32, batch 16): 6 passed, 0 failed" in (tmp_path / "a.md").read_text()
    killed = next(c for c in commands if "kill_point.py" in " ".join(c))
    assert killed[killed.index(os.path.join("tests", "kill_point.py")) + 1] == "between-writes"


def test_a_failed_check_is_a_fail_line_and_exit_status_1(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import acceptance
    finally:
        sys.path.remove(os.path.join(REPO, "bench"))

    def broken(self):
        raise acceptance.CheckFailed("exit 1 (expected 0): RuntimeError: CUDA error")

    monkeypatch.setattr(acceptance.Acceptance, "broken", broken, raising=False)
    monkeypatch.setattr(acceptance, "CHECKS", (("tester.py trial", "broken", False),))
    assert acceptance.main(["--dry-run", "--work-dir", str(tmp_path), "--output", str(tmp_path / "a.md")]) == 1
    assert "FAIL  tester.py trial" in capsys.readouterr().out
    assert "0 passed, 1 failed" in (tmp_path / "a.md").read_text()


def test_bench_data_times_both_loaders_on_photo_sized_jpegs(tmp_path):
    data_dir, output = tmp_path / "data", tmp_path / "data_loading.md"
    result = run(sys.executable, BENCH_DATA, *TINY_DATA, "--train-images-per-s", "10", "--data-dir", str(data_dir),
                 "--output", str(output))
    assert result.returncode == 0, result.stderr
    text = output.read_text()
    assert text in result.stdout
    assert "Training consumes 10.0 images/s (given (--train-images-per-s))" in text
    rows = table_rows(text)
    assert [(loader, split) for loader, split, *_ in rows] == [
        ("DALI (CPU decoding)", "train"), ("torchvision", "train"), ("DALI (CPU decoding)", "val"),
        ("torchvision", "val")]
    rates = {(loader, split): float(rate.replace(",", "")) for loader, split, rate, *_ in rows}
    for loader, split, rate, versus_torch, versus_training in rows:
        rate = float(rate.replace(",", ""))
        assert rate > 0
        assert ratio_agrees(versus_torch, rate, rates["torchvision", split])
        assert ratio_agrees(versus_training, rate, 10, denominator_rounding=0)
    # the images kept in --data-dir: ImageNet-sized JPEGs, about as large as ImageNet's files
    for split in ("train", "val"):
        files = [os.path.join(d, f) for d, _, names in os.walk(data_dir / split) for f in names]
        assert len(files) == 16 and len(os.listdir(data_dir / split)) == 2
        for path in files:
            with Image.open(path) as image:
                assert image.format == "JPEG" and max(image.size) == 500 and 280 <= min(image.size) <= 500
        assert sum(os.path.getsize(f) for f in files) / len(files) > 50_000


def test_bench_data_measures_training_and_times_torchvision_without_dali(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import bench_data
    finally:
        sys.path.remove(os.path.join(REPO, "bench"))
    monkeypatch.setattr(bench_data, "dali_available", lambda: False)
    rates = bench_data.main([*TINY_DATA, "--input-size", "64", "--train-steps", "1", "--data-dir", str(tmp_path)])
    text = capsys.readouterr().out
    assert set(rates) == {("torch", "train"), ("torch", "val")}
    assert "(measured: supernet, 64x64, batch 4, 1,000 classes, fp32 channels-last" in text
    assert [row[:2] for row in table_rows(text)] == [["torchvision", "train"], ["torchvision", "val"]]
    assert "- DALI: not installed" in text


def test_bench_data_refuses_too_few_images():
    result = run(sys.executable, BENCH_DATA, "--images", "8", "--batch-size", "4", "--batches", "2",
                 "--workers", "1")
    assert result.returncode == 2 and "--images 8 is fewer than the 12" in result.stderr


def test_bench_model_compares_with_the_plain_yardstick(tmp_path):
    output = tmp_path / "model.md"
    done = run(sys.executable, os.path.join(REPO, "bench", "bench_model.py"), "--input-size", "64", "--batch-size",
               "4", "--train-steps", "2", "--candidates", "1", "--recalibration-batches", "2", "--val-batches", "1",
               "--profile", "--output", str(output), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rates, profile = output.read_text().split("### where one candidate's fp32 scoring spends its time")
    shares = [float(row[1].rstrip(" %")) for row in table_rows(profile) if row[1] != "share of the time"]
    assert len(shares) == 8 and 0 < sum(shares) <= 100.01 and shares == sorted(shares, reverse=True)
    conv_rate = float(re.search(r"convolutions: [0-9.]+ GFLOP in [0-9.]+ s = ([0-9.]+) GFLOP/s", profile).group(1))
    matmul_rate = float(re.search(r"matrix multiply: ([0-9.]+) GFLOP/s", profile).group(1))
    assert conv_rate > 0 and matmul_rate > 0
    rows = [row for row in table_rows(rates) if row[1] != "images/s"]  # two tables, two headers
    names = [row[0] for row in rows]
    assert len(rows) == 6 and names.count("plain eager fp32 (yardstick)") == 2  # training and scoring
    assert all(float(row[1]) > 0 for row in rows)
    assert all(row[2] == "1.00x" for row in rows if row[0].startswith("plain"))


def test_bench_train_step_runs_each_setting_in_its_own_environment(small_digits, tmp_path):
    output = tmp_path / "step.md"
    done = run(sys.executable, os.path.join(REPO, "bench", "bench_train_step.py"), "--imagenet-dir", str(small_digits),
               "--steps", "2", "--warmup", "1", "--synthetic", "--output", str(output), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text()
    assert "2 steps after 1, synthetic in-memory batches" in text and "0 busy processes beside it" in text
    rows = {row[0]: row for row in table_rows(text) if row[0] != "run"}
    assert set(rows) == {"yardstick", "project", "project, passive", "project, all cores",
                         "project, all cores, passive", "project, channel search"}
    # a plain script computes on torch's default threads; supernet.py leaves one core to its loader
    cores = len(os.sched_getaffinity(0))
    assert int(rows["yardstick"][1]) >= 1 and rows["project"][1] == str(max(1, cores - 1))
    assert rows["project, passive"][1] == rows["project"][1]
    assert rows["project, all cores"][1] == rows["project, all cores, passive"][1] == str(cores)
    assert rows["yardstick"][4] == "1.00x" and all(float(row[2]) > 0 for row in rows.values())


def test_plain_yardstick_is_the_same_network():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import torch

    import network
    from plain_shufflenet import PlainSupernet

    torch.manual_seed(0)
    model = network.ShuffleNetV2OneShot(input_size=64, n_classes=1000).eval()
    plain = PlainSupernet().eval()
    plain.load_state_dict(model.state_dict())  # the official module names, strictly
    x = torch.randn(2, 3, 64, 64)
    for architecture in ((0,) * 20, (3,) * 20, (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)):
        torch.testing.assert_close(plain(x, architecture), model(x, architecture))


def test_bench_search_reads_the_trials_timing_lines(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import bench_search

    for trial, total in (("a", 6.0), ("b", 8.0)):
        log = tmp_path / "environments" / "local-env" / "trials" / trial / "trial.stderr"
        log.parent.mkdir(parents=True)
        log.write_text(f"[...] INFO (spos) timing (s): start-up 3.0, data 0.4, checkpoint load 0.3, evaluation "
                       f"before 1.5, BN recalibration 0.7, evaluation after 0.1, total {total}\n")
    means, count = bench_search.trial_breakdown(str(tmp_path))
    assert count == 2 and means["total"] == 7.0 and means["BN recalibration"] == 0.7
    config = {"trialCommand": "OMP_NUM_THREADS=1 python tester.py --imagenet-dir data/digits --checkpoint "
                              "checkpoints --train-iters 20"}
    command = bench_search.in_process_command(config, "/ckpt", "search.yml", "/out")
    assert command[1:] == ["-m", "spos.search", "--search-config", "search.yml", "--output-dir", "/out",
                           "--imagenet-dir", "data/digits", "--checkpoint", "/ckpt", "--train-iters", "20"]
    from spos import search

    search.parse_args(command[3:])  # flags the search takes


def test_bench_model_without_the_requested_gpu_is_one_clear_line():
    done = run(sys.executable, os.path.join(REPO, "bench", "bench_model.py"), "--device", "cuda:7", timeout=120)
    assert done.returncode == 2 and "--device cuda:7" in done.stderr and "Traceback" not in done.stderr


def test_ddp_gradient_copy_costs_the_same_into_ddps_views():
    done = run(sys.executable, os.path.join(REPO, "bench", "bench_ddp_grad_copy.py"), "--paths", "1", "--repeats", "3",
               timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {(row[0], row[1]): row for row in table_rows(done.stdout)}
    assert set(rows) == {(size, search) for size in ("32x32", "224x224") for search in ("block", "block + channel")}
    assert all(row[3] == "yes" for row in rows.values())  # the strides differ on size-1 dimensions only
    assert rows["32x32", "block"][2] != "0 of " + rows["32x32", "block"][2].split(" of ")[1]  # the warning's cause
    assert all(float(row[6].rstrip("x")) > 0 for row in rows.values())


def test_every_benchmark_imports_what_it_uses():
    """A benchmark no test runs end to end still loads: its imports name what the project has."""
    import importlib.util

    benches = sorted(name for name in os.listdir(os.path.join(REPO, "bench")) if name.endswith(".py"))
    assert {"bench_precision.py", "learning_curve.py", "bench_search.py"} <= set(benches)
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        for name in benches:
            spec = importlib.util.spec_from_file_location(f"bench_{name[:-3]}", os.path.join(REPO, "bench", name))
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
    finally:
        sys.path.remove(os.path.join(REPO, "bench"))
