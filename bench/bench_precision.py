"""Does bf16 scoring rank candidates as fp32 does? Scores the same random candidates of a digits supernet with
scoring.evaluate_candidate in fp32 and under bf16 autocast, on the same data, and prints the accuracies, the
largest difference and the time each took. bf16 is the CPU default for scoring only if every candidate stays
within 0.1 point of fp32 (it does not on this repository's digits supernets: see the README).

    python bench/bench_precision.py --checkpoint demo_output/supernet     # after `make demo`
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tester.py (set before torch loads)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from network import FlopsBinnedSampler  # noqa: E402
from spos.checkpoint import find_checkpoint  # noqa: E402
from spos.hardware import get_device  # noqa: E402
from spos.scoring import evaluate_candidate, load_supernet  # noqa: E402
from spos.scoring_data import scoring_batches  # noqa: E402
from utils import run_main  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a digits supernet (file, or supernet.py's folder)")
    parser.add_argument("--imagenet-dir", default=os.path.join(ROOT, "data", "digits"))
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--train-iters", type=int, default=20)
    parser.add_argument("--train-batch-size", type=int, default=64)
    parser.add_argument("--test-batch-size", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    torch.set_flush_denormal(True)
    train, val, classes, _ = scoring_batches(args.imagenet_dir, train_batch_size=args.train_batch_size,
                                             train_iters=args.train_iters, test_batch_size=args.test_batch_size,
                                             input_size=args.input_size, workers=1, device=device)
    model = load_supernet(find_checkpoint(args.checkpoint), args.input_size, len(classes), device)
    sampler = FlopsBinnedSampler(model, random.Random(0))
    candidates = [sampler() for _ in range(args.candidates)]
    accuracies, seconds = {}, {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        evaluate_candidate(model, candidates[0], train, val, args.train_iters, autocast_dtype=dtype)  # warm-up
        started = time.perf_counter()
        accuracies[name] = [evaluate_candidate(model, c, train, val, args.train_iters, autocast_dtype=dtype)
                            ["accuracy"] for c in candidates]
        seconds[name] = time.perf_counter() - started
    differences = [abs(a - b) * 100 for a, b in zip(accuracies["fp32"], accuracies["bf16"])]
    val_images = sum(len(labels) for _, labels in val)
    print(f"{len(candidates)} candidates, {val_images} val images (one image = {100 / val_images:.2f} points)")
    print("| candidate | fp32 top-1 | bf16 top-1 | difference (points) |\n|---|---:|---:|---:|")
    for candidate, fp32, bf16, difference in zip(candidates, accuracies["fp32"], accuracies["bf16"], differences):
        print(f"| {' '.join(map(str, candidate))} | {fp32:.4f} | {bf16:.4f} | {difference:.2f} |")
    print(f"largest difference {max(differences):.2f} points; {sum(d > 0.1 for d in differences)} of "
          f"{len(candidates)} candidates differ by more than 0.1 point; time fp32 {seconds['fp32']:.1f} s, "
          f"bf16 {seconds['bf16']:.1f} s ({seconds['fp32'] / seconds['bf16']:.2f}x)")


if __name__ == "__main__":
    run_main(main)
