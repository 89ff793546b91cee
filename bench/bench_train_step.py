"""The small-input supernet train step, this project's against the plain eager yardstick (bench/plain_shufflenet.py),
each in a process of its own with the environment its script gets, on the same batches from the same loader; and
the project's step under the other OpenMP settings it could have chosen, on an idle machine or beside --load busy
processes.

    python bench/bench_train_step.py                     # digits, 32x32, batch 64: about 1.5 minutes on 2 cores
    python bench/bench_train_step.py --load 2            # the same beside 2 processes that keep a core busy each

  yardstick         a plain script: no OpenMP settings, torch's default threads, NCHW, fp32, torch.optim.SGD
                    over all parameters, BN and ReLU as layers
  project           what supernet.py runs: one compute thread fewer than the cores on a CPU
                    (hardware.set_cpu_threads), OpenMP's default wait policy (idle threads spin a while before
                    they sleep), channels-last, the small-map convolutions of blocks.py, foreach SGD over the
                    path's weights, loops.train_one_epoch
  project, passive                 the same with OMP_WAIT_POLICY=PASSIVE (idle threads sleep at once)
  project, all cores               the same with a compute thread per core (OMP_NUM_THREADS)
  project, all cores, passive      both
  project, channel search          supernet.py --channel-search: blocks of 1.6x the middle channels, each step's
                                   path a block and a width per layer (the first channels of each block)
Every run draws the same FLOPs-binned paths and reads the same digits batches (the project's DALI loader, as
supernet.py reads them); the time counted is each step's, from its batch to the optimizer's update, after 10
warm-up steps. Synthetic in-memory batches (--synthetic) leave the loader out.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402


from spos.report import emit, markdown_table  # noqa: E402
from utils import UserError, run_main  # noqa: E402

IMPLEMENTATIONS = ("yardstick", "project", "project_channels")
# row name: (implementation, environment it runs in; None: with no OpenMP variables at all, a plain script's)
SETTINGS = {
    "yardstick": ("yardstick", None),
    "project": ("project", None),  # supernet.py sets no OpenMP variable
    "project, passive": ("project", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "project, all cores": ("project", {"OMP_NUM_THREADS": "{cores}"}),
    "project, all cores, passive": ("project", {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "{cores}"}),
    "project, channel search": ("project_channels", None),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet-dir", default=os.path.join(ROOT, "data", "digits"))
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed ones")
    parser.add_argument("--synthetic", action="store_true", help="random in-memory batches instead of the loader")
    parser.add_argument("--load", type=int, default=0, help="busy processes running beside every measurement")
    parser.add_argument("--output", default=None, help="also write the table here (Markdown)")
    parser.add_argument("--run", choices=IMPLEMENTATIONS, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args):
    """In the child process: milliseconds of each timed step of one implementation."""
    import random
    import time

    import torch
    from torch import nn

    from network import FlopsBinnedSampler, ShuffleNetV2OneShot

    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    supernet = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=10,
                                   channel_search=args.run == "project_channels")
    sampler = FlopsBinnedSampler(supernet, random.Random(0))
    paths = [sampler() for _ in range(args.warmup + args.steps)]
    if args.synthetic:
        batches = [(torch.randn(args.batch_size, 3, args.input_size, args.input_size),
                    torch.randint(0, 10, (args.batch_size,))) for _ in range(4)]
        source = (batches[i % 4] for i in range(args.warmup + args.steps))
    else:
        from dataloader import ImageFolderLoader

        loader = ImageFolderLoader(args.imagenet_dir, "train", train=True, batch_size=args.batch_size,
                                   input_size=args.input_size, workers=1)

        def forever():
            while True:
                yield from loader
        source = forever()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    if args.run == "yardstick":
        from plain_shufflenet import PlainSupernet, plain_train_step

        model = PlainSupernet(10)
        model.load_state_dict(supernet.state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)

        def step(images, labels, path):
            plain_train_step(model, optimizer, criterion, images, labels, path)
    else:
        from spos.hardware import prepare_model, set_cpu_threads
        from spos.loops import train_one_epoch
        from spos.optim import make_lr_scheduler, make_optimizer

        set_cpu_threads(torch.device("cpu"))
        model = prepare_model(supernet, torch.device("cpu"), True)
        optimizer = make_optimizer(model, 0.01, 0.9, 4e-5)
        scheduler = make_lr_scheduler(optimizer, 10 ** 6)

        def step(images, labels, path):
            train_one_epoch(model, [(images, labels)], criterion, optimizer, scheduler, 0, 1, 10 ** 9, lambda: path)
    seconds = []
    for i, path in enumerate(paths):
        started = time.perf_counter()
        images, labels = next(source)
        step(images, labels, path)
        if i >= args.warmup:
            seconds.append(time.perf_counter() - started)
    return {"ms": [1000 * s for s in seconds], "threads": torch.get_num_threads()}


def run_setting(args, argv, implementation, extra, cores):
    """One implementation in a child process whose OpenMP variables are only ``extra``'s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
    env.update({k: v.format(cores=cores) for k, v in (extra or {}).items()})
    command = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
               "--run", implementation]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise UserError(f"the {implementation} run failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.run:
        print(json.dumps(measure(args)))
        return
    if not args.synthetic and not os.path.isdir(os.path.join(args.imagenet_dir, "train")):
        raise UserError(f"{args.imagenet_dir}: no train/ folder (python data/make_digits.py writes the digits)")
    if args.load < 0 or args.warmup < 0 or args.steps < 1:
        raise UserError(f"--load and --warmup must be 0 or more and --steps positive, got {args.load}, "
                        f"{args.warmup} and {args.steps}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        results = {name: run_setting(args, argv, implementation, extra, cores)
                   for name, (implementation, extra) in SETTINGS.items()}
    finally:
        for process in busy:
            process.kill()
            process.wait()
    yardstick = statistics.median(results["yardstick"]["ms"])
    rows = []
    for name, result in results.items():
        median = statistics.median(result["ms"])
        rows.append([name, str(result["threads"]), f"{median:.1f}", f"{min(result['ms']):.1f}",
                     f"{yardstick / median:.2f}x"])
    data = "synthetic in-memory batches" if args.synthetic else f"{args.imagenet_dir} through the project's loader"
    emit(f"supernet train step, {args.input_size}x{args.input_size}, batch {args.batch_size}, {args.steps} steps "
         f"after {args.warmup}, "
         f"{data}, {cores} cores, {args.load} busy processes beside it\n\n"
         + markdown_table(["run", "compute threads", "median ms a step", "fastest", "ratio"], rows),
         args.output)


if __name__ == "__main__":
    run_main(main)
