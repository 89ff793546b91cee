"""data/: the embedded digits and the Fashion-MNIST subset writer, on real files in the formats they read."""
import gzip
import json
import os

import numpy as np
import pytest
from PIL import Image

from make_fashion_mnist import CLASSES, write_fashion_mnist


def test_digits_layout_and_recipe(digits_dir):
    counts = {split: sum(len(files) for _, _, files in os.walk(os.path.join(digits_dir, split)))
              for split in ("train", "val")}
    assert counts == {"train": 1497, "val": 300}
    assert sorted(os.listdir(os.path.join(digits_dir, "train"))) == [str(d) for d in range(10)]
    with open(os.path.join(digits_dir, "recipe.json")) as f:
        assert set(json.load(f)) == {"supernet.py", "tester.py", "scratch.py", "reproduction.rank"}


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_source(folder, per_class):
    """IDX files as Fashion-MNIST ships them, each image a flat grey level that encodes its label."""
    rng = np.random.default_rng(0)
    for prefix, count in (("train", per_class * 10), ("t10k", per_class * 10)):
        labels = rng.permutation(np.arange(count) % 10)
        images = np.repeat((labels * 25)[:, None, None], 28 * 28, axis=1).reshape(count, 28, 28)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images, 2051)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels, 2049)


def test_fashion_subset_is_balanced_and_labelled(tmp_path):
    source = tmp_path / "idx"
    source.mkdir()
    fake_fashion_source(str(source), per_class=6)
    output = str(tmp_path / "fashion")
    assert write_fashion_mnist(output, str(source), train_per_class=4, val_per_class=2) == 60
    for split, per_class in (("train", 4), ("val", 2)):
        assert sorted(os.listdir(os.path.join(output, split))) == sorted(CLASSES)
        for label, name in enumerate(CLASSES):
            files = os.listdir(os.path.join(output, split, name))
            assert len(files) == per_class
            image = np.asarray(Image.open(os.path.join(output, split, name, files[0])).convert("L"))
            assert image.shape == (32, 32)
            assert abs(float(image.mean()) - label * 25) < 3  # the image of its own label
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # the staging folder was renamed


def test_fashion_refuses_a_file_of_the_wrong_kind(tmp_path):
    fake_fashion_source(str(tmp_path), per_class=1)
    os.replace(tmp_path / "train-labels-idx1-ubyte.gz", tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte.gz: not an IDX file of the expected kind"):
        write_fashion_mnist(str(tmp_path / "out"), str(tmp_path))
    assert not os.path.exists(tmp_path / "out")


def test_fashion_refuses_missing_and_damaged_files(tmp_path):
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte.gz: missing"):
        write_fashion_mnist(str(tmp_path / "out"), str(tmp_path))
    fake_fashion_source(str(tmp_path), per_class=1)
    image_file = tmp_path / "train-images-idx3-ubyte.gz"
    image_file.write_bytes(image_file.read_bytes()[:20])  # cut inside the gzip stream
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte.gz: not a readable gzip file"):
        write_fashion_mnist(str(tmp_path / "out"), str(tmp_path))
    assert not os.path.exists(tmp_path / "out")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # nor its staging folder


def test_fashion_recipe_is_the_digits_with_its_changes_and_each_step_takes_its_section(tmp_path):
    from make_digits import RECIPE as DIGITS
    from make_fashion_mnist import RECIPE

    assert RECIPE["supernet.py"] == {**DIGITS["supernet.py"], "epochs": 4, "small_input": True}
    assert RECIPE["scratch.py"] == {**DIGITS["scratch.py"], "epochs": 5, "small_input": True}
    with open(tmp_path / "recipe.json", "w") as f:
        json.dump(RECIPE, f)
    import scratch
    import supernet
    import tester
    from reproduction import budget, rank, reproduce
    from spos import search

    data = ["--imagenet-dir", str(tmp_path)]
    assert supernet.parse_args(data).small_input and tester.parse_args(data).test_batch_size == 500
    assert search.parse_args(data).test_batch_size == 500  # the search scores as the trials do
    assert scratch.parse_args(data).small_input and scratch.parse_args([]).small_input is False
    assert scratch.parse_args([*data, "--no-small-input"]).small_input is False  # a flag given beats the recipe
    assert rank.parse_args([*data, "--checkpoint", "x"]).epochs == 1
    protocol = reproduce.parse_args(data)
    assert (protocol.epochs, protocol.seeds, protocol.holdout_per_class) == (2, 2, 500)
    measured = budget.parse_args(data)
    assert (measured.epochs, measured.seeds, measured.holdout_per_class) == ([2, 8], 2, 500)  # the default vs 4x
