"""Write a class-balanced subset of Fashion-MNIST as JPEGs in ImageNet layout: harder data than the digits, with
a val split large enough to tell architectures apart (python -m reproduction.reproduce, python -m
reproduction.rank; README "Reproduction results").

    sudo apt-get install dataset-fashion-mnist       # Debian's package (MIT): all 70,000 images as IDX files
    python data/make_fashion_mnist.py                # data/fashion/{train,val}/<class>/<index>.JPEG

--train-per-class images of each class from Fashion-MNIST's training set (default 1,000: 10,000 in all) and
--val-per-class from its test set (default 1,000: all 10,000, so one image is 0.01 point), the first ones of each
class in the files' order. The 28x28 images are upscaled to 32x32, the digits' input size. preprocessing.json and
recipe.json as for the digits. The reproduction holds 500 a class out of train/ (its recipe's
holdout_per_class): the search scores candidates on those, every network trains on the other 5,000, and val/
(Fashion-MNIST's test set) is only for the numbers reported (SPEC section 16).
"""
import argparse
import gzip
import os

import numpy as np
from PIL import Image

from image_folder import write_image_folder
from make_digits import RECIPE as DIGITS_RECIPE

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
SIZE = 32
# Clothes are left-right symmetric, so mirroring is a fair augmentation (unlike the digits'); crops as the digits'.
AUGMENTATION = {"min_crop_area": 0.8, "mirror": True, "color_jitter": 0.0}
# The digits' recipe (data/make_digits.py) with the small-input network (a stride-1 first conv: at 32x32 every
# stage's kernel choice matters, at 4x the compute a step), 4 supernet epochs (312 path steps), val batches of 500,
# and the comparison's protocol (SPEC section 16): 500 images a class held out of train/ for the search (every
# network trains on the other 5,000; val/ is only for the numbers reported), 2 stand-alone epochs, 2 seeds. One
# epoch ranked architectures unlike 4 epochs (tau 0.56), 2 epochs like them (0.78): docs/reproduce.md. A run takes
# about 80 s on one of 2 cores, so reproduce.py's 54 runs take about 36 min.
CHANGES = {"supernet.py": {"epochs": 4, "small_input": True}, "tester.py": {"test_batch_size": 500},
           "scratch.py": {"epochs": 5, "small_input": True}, "reproduction.rank": {"epochs": 1},
           "reproduction.reproduce": {"epochs": 2, "seeds": 2, "holdout_per_class": 500},
           "reproduction.budget": {"epochs": [2, 8], "seeds": 2, "holdout_per_class": 500}}
RECIPE = {script: {**DIGITS_RECIPE.get(script, {}), **CHANGES.get(script, {})}
          for script in {**DIGITS_RECIPE, **CHANGES}}


def read_idx(path, magic):
    """An IDX file's array (uint8): images (magic 2051, N x 28 x 28) or labels (2049, N)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SystemExit(f"{path}: missing; install Debian's dataset-fashion-mnist or give --source-dir") from None
    except (OSError, EOFError) as e:
        raise SystemExit(f"{path}: not a readable gzip file ({getattr(e, 'strerror', None) or e})") from None
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        raise SystemExit(f"{path}: not an IDX file of the expected kind (magic {found}, expected {magic})")
    if len(data) < 4 + 4 * data[3]:
        raise SystemExit(f"{path}: truncated header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims))
    if array.size != int(np.prod(dims)):
        raise SystemExit(f"{path}: truncated ({array.size} values, its header says {int(np.prod(dims))})")
    return array.reshape(dims)


def first_per_class(labels, per_class):
    """Indices of the first ``per_class`` samples of each class, in file order."""
    chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASSES))])
    return np.sort(chosen)


def write_fashion_mnist(output_dir, source_dir=DEBIAN_DIR, train_per_class=1000, val_per_class=1000):
    splits = {"train": ("train", train_per_class), "val": ("t10k", val_per_class)}

    def samples():
        for split, (prefix, per_class) in splits.items():
            images = read_idx(os.path.join(source_dir, f"{prefix}-images-idx3-ubyte.gz"), 2051)
            labels = read_idx(os.path.join(source_dir, f"{prefix}-labels-idx1-ubyte.gz"), 2049)
            for index in first_per_class(labels, per_class):
                image = Image.fromarray(images[index], mode="L").resize((SIZE, SIZE), Image.BILINEAR)
                yield split, CLASSES[labels[index]], f"{index:05d}", image

    return write_image_folder(output_dir, samples(), AUGMENTATION, RECIPE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion"))
    parser.add_argument("--source-dir", default=DEBIAN_DIR, help="the four Fashion-MNIST IDX .gz files")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--val-per-class", type=int, default=1000)
    args = parser.parse_args()
    count = write_fashion_mnist(args.output_dir, args.source_dir, args.train_per_class, args.val_per_class)
    print(f"wrote {count} Fashion-MNIST images to {args.output_dir}")


if __name__ == "__main__":
    main()
