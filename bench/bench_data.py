"""Data-loading throughput: the DALI pipeline against the torchvision fallback, side by side on the same
ImageNet-sized JPEGs, and against the images/s supernet training consumes.

Writes (or reads, with ``--data-dir`` holding a ``train/`` folder already) an ImageNet-layout folder of
generated JPEGs, times ``dataloader.ImageFolderLoader`` with each backend on the train split (random resized
crop, colour jitter, flip) and the val split (resize, centre crop), and prints a Markdown table. Training's
rate is ``--train-images-per-s`` or, without it, measured with a few supernet steps as supernet.py runs them.

    python bench/bench_data.py                                   # 256 images a split, in a temporary folder
    python bench/bench_data.py --train-images-per-s 10000        # against the GPU goal instead
    python bench/bench_data.py --data-dir data/bench --images 2048 --output data_loading.md
"""
import os
import sys

# Before torch loads OpenMP: spinning OpenMP threads starve DALI's threads and the DataLoader's workers
# (see supernet.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import collections  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from dataloader import ImageFolderLoader, dali_available  # noqa: E402
from network import FlopsBinnedSampler, ShuffleNetV2OneShot  # noqa: E402
from spos.hardware import compute_dtype, prepare_model  # noqa: E402
from spos.loops import train_one_epoch  # noqa: E402
from spos.optim import make_lr_scheduler, make_optimizer, scaled_learning_rate  # noqa: E402
from spos.report import emit, markdown_table  # noqa: E402
from utils import UserError, run_main  # noqa: E402

NUM_CLASSES = 1000  # ImageNet's, for the training steps
LOADER_NAMES = {"dali": "DALI (CPU decoding)", "torch": "torchvision"}
# ImageNet's photos: mostly 500 pixels on the long side, 4:3 or so, a quarter of them portrait
LONG_SIDE = 500
SHORT_SIDE_RANGE = (280, 500)
JPEG_QUALITY = 90  # with the texture below: about 100 KB for 500x375 (ImageNet: 140 GB / 1.28M files, 110 KB)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None,
                        help="generate the images here and keep them (a folder with train/ already is read as "
                             "it is, e.g. a copy of part of ImageNet); default: a temporary folder")
    parser.add_argument("--images", type=int, default=256, help="images generated per split")
    parser.add_argument("--classes", type=int, default=8, help="class folders generated per split")
    parser.add_argument("--batch-size", type=int, default=32, help="for the loaders and the training steps")
    parser.add_argument("--batches", type=int, default=6,
                        help="timed batches per loader, after the warm-up (one batch per worker)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings per loader and split, each on a new loader, the loaders taking turns; "
                             "the table shows the median")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads / DataLoader worker processes")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--train-images-per-s", type=float, default=None,
                        help="what training consumes (e.g. 10000, the GPU goal); default: measured here with "
                             "--train-steps supernet steps")
    parser.add_argument("--train-steps", type=int, default=3, help="timed supernet steps, after one warm-up step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    if min(args.images, args.classes, args.batch_size, args.batches, args.repeats, args.workers,
           args.train_steps) < 1:
        parser.error("--images, --classes, --batch-size, --batches, --repeats, --workers and --train-steps must "
                     "be positive")
    # one pass over the split, so no loader pays for starting an epoch again inside the timing
    if images_needed(args) > args.images:
        parser.error(f"--images {args.images} is fewer than the {images_needed(args)} the warm-up and timed "
                     f"batches need: raise --images or lower --batches / --batch-size")
    return args


def images_needed(args):
    return (args.workers + args.batches) * args.batch_size


def photo_like_image(rng, width, height):
    """Smooth random colour fields with detail at every scale (amplitude falling with frequency, as in
    photographs) plus a gradient: JPEG encodes and decodes it at the cost and size of a real photo."""
    canvas = np.zeros((height, width, 3), np.float32)
    for octave in range(8):
        cells_across = 2 ** (octave + 2)
        cells_down = max(2, cells_across * height // width)
        noise = rng.standard_normal((cells_down, cells_across, 3), dtype=np.float32)
        layer = np.stack([np.asarray(Image.fromarray(noise[..., c]).resize((width, height), Image.BICUBIC))
                          for c in range(3)], axis=-1)
        canvas += layer * (60 / 1.2 ** octave)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    canvas += (rng.uniform(-1, 1) * x / width + rng.uniform(-1, 1) * y / height)[..., None] * 80
    canvas += rng.uniform(60, 190, 3).astype(np.float32)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def write_dataset(root, images_per_split, num_classes, seed):
    """``root/{train,val}/<class>/*.JPEG``, the images spread evenly over the classes."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i in range(images_per_split):
            class_dir = os.path.join(root, split, f"n{i % num_classes:08d}")
            os.makedirs(class_dir, exist_ok=True)
            short = int(rng.integers(*SHORT_SIDE_RANGE, endpoint=True))
            width, height = (short, LONG_SIDE) if rng.random() < 0.25 else (LONG_SIDE, short)
            photo_like_image(rng, width, height).save(os.path.join(class_dir, f"{split}_{i:06d}.JPEG"),
                                                      quality=JPEG_QUALITY)


def mean_file_kb(files):
    return sum(os.path.getsize(f) for f in files) / len(files) / 1e3


def time_loader(loader, num_warmup, num_batches):
    """Images/s over ``num_batches`` batches after ``num_warmup``. A DataLoader's workers start together and
    deliver their first batches at once: the warm-up takes one batch per worker, so the clock starts when
    the loader runs at its steady rate."""
    batches = iter(loader)
    for _ in range(num_warmup):
        next(batches)
    images = 0
    started = time.perf_counter()
    for _ in range(num_batches):
        _, labels = next(batches)
        images += labels.shape[0]
    return images / (time.perf_counter() - started)


def measure_training(batch_size, input_size, num_classes, steps, seed):
    """Images/s of supernet training on this CPU, as supernet.py runs it (channels-last, its optimiser,
    schedule and FLOPs-binned paths, ``train_one_epoch``), on synthetic batches."""
    torch.manual_seed(seed)
    device = torch.device("cpu")
    # FLOPs computed, not read from data/op_flops_dict.pkl: that table only holds 224x224
    model = ShuffleNetV2OneShot(input_size=input_size, n_classes=num_classes, affine=False, op_flops_path=None)
    prepare_model(model, device, channels_last=True)
    optimizer = make_optimizer(model, scaled_learning_rate(0.5, batch_size, 1024), 0.9, 4e-5)
    scheduler = make_lr_scheduler(optimizer, steps + 1)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    sampler = FlopsBinnedSampler(model, random.Random(seed))
    batch = (torch.randn(batch_size, 3, input_size, input_size), torch.randint(num_classes, (batch_size,)))
    autocast_dtype = compute_dtype("auto", device)
    # warm-up: the sampler's FLOPs table, the allocator, oneDNN's kernels
    train_one_epoch(model, [batch], criterion, optimizer, scheduler, 0, 1, 1, sampler, autocast_dtype)
    started = time.perf_counter()
    train_one_epoch(model, [batch] * steps, criterion, optimizer, scheduler, 0, 1, steps, sampler, autocast_dtype)
    return steps * batch_size / (time.perf_counter() - started)


def run(args, root):
    if os.path.isdir(os.path.join(root, "train")):
        print(f"reading the images already in {root}", file=sys.stderr)
    else:
        print(f"writing {args.images} JPEGs per split to {root}", file=sys.stderr)
        write_dataset(root, args.images, args.classes, args.seed)

    if args.train_images_per_s is not None:
        train_rate, train_source = args.train_images_per_s, "given (--train-images-per-s)"
    else:
        print(f"measuring supernet training: {args.train_steps} steps of {args.batch_size}", file=sys.stderr)
        train_rate = measure_training(args.batch_size, args.input_size, NUM_CLASSES, args.train_steps, args.seed)
        train_source = (f"measured: supernet, {args.input_size}x{args.input_size}, batch {args.batch_size}, "
                        f"{NUM_CLASSES:,} classes, fp32 channels-last, {torch.get_num_threads()} threads on this CPU")

    backends = ["dali", "torch"]
    notes = []
    if not dali_available():
        backends.remove("dali")
        notes.append("DALI: not installed (pip install nvidia-dali-cuda130); torchvision timed alone")
    timings, file_kb, num_files = collections.defaultdict(list), {}, {}
    classes = None
    for split in ("train", "val"):
        print(f"timing the loaders on {split}", file=sys.stderr)
        # taking turns, so that a change in the machine's load hits both alike
        for _ in range(args.repeats):
            for backend in list(backends):
                try:
                    loader = ImageFolderLoader(root, split, train=split == "train", batch_size=args.batch_size,
                                               input_size=args.input_size, workers=args.workers, backend=backend,
                                               seed=args.seed, classes=None if split == "train" else classes)
                except UserError as e:
                    if backend != "dali":  # the dataset itself is at fault: nothing to compare
                        raise
                    notes.append(f"{LOADER_NAMES[backend]}: could not be built ({e}); torchvision timed alone")
                    backends.remove(backend)
                    continue
                if split == "train":  # val's labels follow train's class order
                    classes = loader.classes
                file_kb[split], num_files[split] = mean_file_kb(loader.files), len(loader.files)
                if images_needed(args) > len(loader.files):
                    raise UserError(f"{loader.split_dir}: {len(loader.files)} images, fewer than the warm-up and "
                                    f"timed batches need ({images_needed(args)})")
                timings[backend, split].append(time_loader(loader, args.workers, args.batches))
                del loader  # its threads or worker processes end before the next loader is timed
    rates = {key: statistics.median(values) for key, values in timings.items()}

    rows = []
    for split in ("train", "val"):
        for backend in backends:
            rate = rates[backend, split]
            rows.append([LOADER_NAMES[backend], split, f"{rate:,.0f}", f"{rate / rates['torch', split]:.2f}x",
                         f"{rate / train_rate:.2f}x"])
    lines = [
        "# Data loading: DALI vs torchvision",
        "",
        f"{os.cpu_count()} CPU cores, {args.workers} workers (DALI threads / DataLoader processes), batch "
        f"{args.batch_size}, output {args.input_size}x{args.input_size} float32; median of {args.repeats} "
        f"timings of {args.batches} batches, each after {args.workers} warm-up batch(es), one per worker.",
        "",
        "Images: " + "; ".join(f"{split} {num_files[split]} JPEGs, {file_kb[split]:.0f} KB on average"
                               for split in ("train", "val")) + ".",
        "",
        f"Training consumes {train_rate:,.1f} images/s ({train_source}).",
        "",
        markdown_table(["loader", "split", "images/s", "vs torchvision", "vs training"], rows),
    ]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    emit("\n".join(lines), args.output)
    return rates


def main(argv=None):
    args = parse_args(argv)
    if args.data_dir:
        return run(args, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as root:
        return run(args, root)


if __name__ == "__main__":
    run_main(main)
