"""dataloader.py: both backends (DALI on CPU, torchvision), both preprocessing modes, bad data."""
import collections
import hashlib
import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import dataloader
from dataloader import IMAGENET_MEAN, IMAGENET_STD, ImageFolderLoader, read_augmentation
from utils import UserError

BACKENDS = ["dali", "torch"]
NUM_TRAIN, NUM_VAL = 1497, 300


def make_loader(root, split, backend, **kwargs):
    options = dict(train=split == "train", batch_size=64, input_size=32, workers=1, backend=backend)
    options.update(kwargs)
    return ImageFolderLoader(root, split, **options)


def fingerprints(loader):
    """One (label, hash of the image) per image the loader yields."""
    result = collections.Counter()
    for images, labels in loader:
        for image, label in zip(images, labels):
            result[int(label), hashlib.sha1(image.numpy().round(2).tobytes()).hexdigest()] += 1
    return result


@pytest.mark.parametrize("spos", [True, False], ids=["spos", "normal"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_dtype_and_value_range(digits_dir, backend, spos):
    for split in ("train", "val"):
        loader = make_loader(digits_dir, split, backend, spos_preprocessing=spos)
        images, labels = next(iter(loader))
        assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32 and images.is_contiguous()
        assert labels.shape == (64,) and labels.dtype == torch.int64
        assert 0 <= labels.min() and labels.max() <= 9
        if spos:  # 0..255, no mean or std; white strokes on black
            assert images.min() >= 0 and images.max() <= 255 and images.max() > 200
        else:
            low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
            high = max((255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
            assert low - 1e-3 <= images.min() < -1.5 and 2.0 < images.max() <= high + 1e-3
            black = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
            assert torch.allclose(images[:, :, 0, 0].median(0).values, black, atol=0.1)  # corners are black


@pytest.fixture(scope="module")
def colour_dir(tmp_path_factory):
    """Two classes of smooth colour images, so that channel order shows."""
    root = tmp_path_factory.mktemp("colour")
    colours = {"orange": (220, 120, 30), "blue": (20, 90, 210)}
    for split in ("train", "val"):
        for name, colour in colours.items():
            os.makedirs(root / split / name)
            for i in range(4):
                pixels = np.empty((48, 48, 3), np.uint8)
                pixels[:] = colour
                pixels[:, :, 1] += np.arange(48, dtype=np.uint8)[None, :] // 4  # a gentle gradient in G
                Image.fromarray(pixels).save(root / split / name / f"{i}.JPEG", quality=95)
    return root


@pytest.mark.parametrize("spos", [True, False], ids=["spos", "normal"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_order_matches_the_decoded_image(colour_dir, backend, spos):
    loader = make_loader(colour_dir, "val", backend, spos_preprocessing=spos, batch_size=8)
    images, labels = next(iter(loader))
    for image, label in zip(images, labels):
        name = loader.classes[label]
        decoded = np.asarray(Image.open(colour_dir / "val" / name / "0.JPEG").convert("RGB"), np.float32)
        rgb = torch.from_numpy(decoded[8:40, 8:40].mean((0, 1)))  # the centre crop's mean colour
        expected = rgb.flip(0) if spos else (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        tolerance = 3.0 if spos else 3.0 / 255 / 0.224
        assert torch.allclose(image.mean((1, 2)), expected, atol=tolerance), (name, image.mean((1, 2)), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_val_image_once_also_across_shards(digits_dir, backend):
    full = make_loader(digits_dir, "val", backend)
    assert len(full) == 5  # 300 = 4 x 64 + 44
    whole = fingerprints(full)
    assert sum(whole.values()) == NUM_VAL
    expected_labels = collections.Counter(full.labels)
    assert collections.Counter(label for label, _ in whole.elements()) == expected_labels
    assert fingerprints(full) == whole  # a second evaluation sees the same images again

    shards = [fingerprints(make_loader(digits_dir, "val", backend, shard_id=i, num_shards=2)) for i in range(2)]
    assert [sum(s.values()) for s in shards] == [150, 150]
    assert not set(shards[0]) & set(shards[1])  # disjoint
    assert shards[0] + shards[1] == whole  # together complete, nothing twice


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_drops_the_last_partial_batch_every_epoch(digits_dir, backend):
    loader = make_loader(digits_dir, "train", backend)
    assert len(loader) == NUM_TRAIN // 64
    epochs = [[labels for _, labels in loader] for _ in range(2)]
    for batches in epochs:
        assert len(batches) == NUM_TRAIN // 64
        assert all(len(labels) == 64 for labels in batches)
    assert not torch.equal(epochs[0][0], epochs[1][0])  # reshuffled


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pass_left_mid_epoch_does_not_shorten_the_next(digits_dir, backend, caplog):
    """The warm start stops reading mid-epoch; the first epoch after it must still be a whole one (DALI's
    iterator cannot reset mid-epoch: it warned and went on from where it was)."""
    loader = make_loader(digits_dir, "train", backend)
    left = iter(loader)
    for _ in range(3):
        next(left)
    with caplog.at_level(logging.WARNING):
        whole = [labels for _, labels in loader]
    assert len(whole) == NUM_TRAIN // 64 and all(len(labels) == 64 for labels in whole)
    assert "resetting" not in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_split_smaller_than_a_batch_is_a_user_error(colour_dir, backend):
    with pytest.raises(UserError, match="fewer than one batch of 64"):
        make_loader(colour_dir, "train", backend)


def test_missing_dataset_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere' / 'train'}: dataset folder not found"):
        make_loader(tmp_path / "nowhere", "train", "torch")


def test_empty_dataset_folder_is_a_user_error(tmp_path):
    os.makedirs(tmp_path / "train")
    with pytest.raises(UserError, match=f"{tmp_path / 'train'}: no class folders"):
        make_loader(tmp_path, "train", "torch")
    os.makedirs(tmp_path / "train" / "cat")
    (tmp_path / "train" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=f"{tmp_path / 'train'}: no image files"):
        make_loader(tmp_path, "train", "torch")


def test_val_class_missing_from_train_is_a_user_error(digits_copy):
    shutil.copytree(digits_copy / "val" / "3", digits_copy / "val" / "eleven")
    train = make_loader(digits_copy, "train", "torch")
    with pytest.raises(UserError, match="'eleven' does not exist in the train split"):
        make_loader(digits_copy, "val", "torch", classes=train.classes)


def first_val_image(root):
    class_dir = root / "val" / "3"
    return class_dir / sorted(os.listdir(class_dir))[0]


def damage(path, how):
    data = path.read_bytes()
    rng = random.Random(0)
    if how == "header then garbage":  # a valid JPEG start, then random bytes
        path.write_bytes(data[:200] + bytes(rng.randrange(256) for _ in range(3000)))
    elif how == "truncated":
        path.write_bytes(data[:len(data) * 6 // 10])
    elif how == "only the signature":
        path.write_bytes(data[:10])


@pytest.mark.parametrize("how", ["header then garbage", "truncated", "only the signature"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_jpeg_is_skipped_with_a_warning_naming_it(digits_copy, spos_warnings, backend, how):
    """DALI would crash the process (header) or fail without naming the file (truncated): the folder scan
    catches both for both backends."""
    bad = first_val_image(digits_copy)
    damage(bad, how)
    loader = make_loader(digits_copy, "val", backend)
    assert sum(len(labels) for _, labels in loader) == NUM_VAL - 1
    assert str(bad) not in loader.files
    assert any(str(bad) in r.getMessage() and r.levelno == logging.WARNING for r in spos_warnings.records)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jpeg_with_garbage_image_data_never_crashes(digits_copy, spos_warnings, backend):
    """Header and end marker intact, image data random: torchvision's decoder refuses it (skipped with a
    warning, once, from the main process); DALI's decodes it as noise."""
    bad = first_val_image(digits_copy)
    data = bad.read_bytes()
    start = data.index(b"\xff\xda") + 20
    rng = random.Random(0)
    bad.write_bytes(data[:start] + bytes(rng.randrange(256) for _ in range(len(data) - start - 2)) + b"\xff\xd9")
    loader = make_loader(digits_copy, "val", backend)
    counts = [sum(len(labels) for _, labels in loader) for _ in range(2)]
    if backend == "torch":
        assert counts == [NUM_VAL - 1] * 2
        named = [r for r in spos_warnings.records if str(bad) in r.getMessage()]
        assert len(named) == 1 and "cannot decode" in named[0].getMessage()
    else:
        assert counts == [NUM_VAL] * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_image_files_are_skipped_with_a_warning_naming_them(digits_copy, spos_warnings, backend):
    notes = digits_copy / "val" / "3" / "notes.txt"
    notes.write_text("scanned by hand\n")
    gif = digits_copy / "val" / "4" / "animation.gif"
    Image.new("RGB", (32, 32), (255, 255, 255)).save(gif)
    loader = make_loader(digits_copy, "val", backend)
    assert sum(len(labels) for _, labels in loader) == NUM_VAL
    messages = [r.getMessage() for r in spos_warnings.records]
    assert any(str(notes) in m and "not an image file" in m for m in messages)
    assert any(str(gif) in m and "GIF images are not supported" in m for m in messages)


def test_intact_images_of_all_kinds_are_kept(tmp_path, spos_warnings):
    """The header check must not reject real-world JPEGs: progressive, EXIF, CMYK, grayscale, trailing
    bytes after the end marker; nor PNG and WebP."""
    class_dir = tmp_path / "val" / "a"
    os.makedirs(class_dir)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    rgb.save(class_dir / "progressive.JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x010F] = "camera"
    rgb.save(class_dir / "exif.JPEG", exif=exif)
    rgb.convert("CMYK").save(class_dir / "cmyk.JPEG")
    rgb.convert("L").save(class_dir / "gray.JPEG")
    rgb.save(class_dir / "trailing.JPEG")
    with open(class_dir / "trailing.JPEG", "ab") as f:
        f.write(b"\x00" * 100)
    rgb.save(class_dir / "image.png")
    rgb.save(class_dir / "image.webp")
    for backend in BACKENDS:
        loader = make_loader(tmp_path, "val", backend, batch_size=16)
        assert len(loader.files) == 7
        images, labels = next(iter(loader))
        assert images.shape == (7, 3, 32, 32) and torch.isfinite(images).all()
    assert not spos_warnings.records


def test_dali_failure_is_one_clear_error(colour_dir, monkeypatch):
    """Should DALI still fail on an image, the message names the folder and how to find the file."""
    loader = make_loader(colour_dir, "val", "dali", batch_size=8)

    class Failing:
        def __iter__(self):
            return self

        def __next__(self):
            raise RuntimeError("Critical error in pipeline:\nError in CPU operator `decoders.image`,\n"
                               "encountered:\n\nnvImageCodec failure: '#3'\n"
                               "Current pipeline object is no longer valid.")

    monkeypatch.setattr(loader, "_impl", Failing())
    with pytest.raises(UserError, match=f"{colour_dir / 'val'}: DALI failed to decode an image "
                                        f"\\(nvImageCodec failure: '#3'\\); run with --loader torch"):
        next(iter(loader))


def test_dali_requested_but_not_installed(digits_dir, monkeypatch):
    monkeypatch.setattr(dataloader, "dali_available", lambda: False)
    with pytest.raises(UserError, match="--loader dali: nvidia-dali is not installed"):
        make_loader(digits_dir, "val", "dali")
    assert make_loader(digits_dir, "val", "auto").backend == "torch"


def test_preprocessing_json_narrows_the_augmentation(digits_dir, tmp_path):
    assert read_augmentation(tmp_path) == {"min_crop_area": 0.08, "mirror": True, "color_jitter": 0.4}
    assert read_augmentation(digits_dir) == {"min_crop_area": 0.8, "mirror": False, "color_jitter": 0.0}
    (tmp_path / "preprocessing.json").write_text(json.dumps({"mirror": "no"}))
    with pytest.raises(UserError, match="preprocessing.json: min_crop_area must be"):
        read_augmentation(tmp_path)
    (tmp_path / "preprocessing.json").write_text("{not json")
    with pytest.raises(UserError, match="preprocessing.json: not readable JSON"):
        read_augmentation(tmp_path)


def test_dali_installed_is_false_without_any_nvidia_package(monkeypatch):
    """With a CPU-only torch there is no `nvidia` package at all: find_spec("nvidia.dali") then raises."""
    def no_nvidia(name):
        raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")

    with monkeypatch.context() as patch:
        patch.setattr(dataloader.importlib.util, "find_spec", no_nvidia)
        installed = dataloader.dali_installed()
    assert installed is False


def test_held_out_images_are_the_same_n_a_class_every_time_and_never_trained_on(digits_dir):
    from dataloader import HOLDOUT

    train = make_loader(digits_dir, "train", "torch", holdout_per_class=20)
    held = make_loader(digits_dir, HOLDOUT, "torch", holdout_per_class=20)
    assert set(train.files).isdisjoint(held.files) and len(train.files) + len(held.files) == NUM_TRAIN
    assert collections.Counter(held.labels) == {label: 20 for label in range(10)}
    assert all("/train/" in path for path in held.files)  # held out of train/, not val/
    again = make_loader(digits_dir, HOLDOUT, "dali", holdout_per_class=20)
    assert again.files == held.files  # a fixed seed: every step and backend holds out the same images
    assert sorted(train.held_out_files) == sorted(held.files)
    assert train.held_out_list().splitlines() == [os.path.relpath(p, digits_dir) for p in train.held_out_files]
    assert sum(len(y) for _, y in held) == 200  # every held-out image once, with eval transforms
    assert make_loader(digits_dir, "val", "torch", holdout_per_class=20).files == make_loader(
        digits_dir, "val", "torch").files  # val/ is untouched


def test_holding_out_more_than_a_class_has_is_one_clear_error(digits_dir):
    with pytest.raises(UserError, match="too few to hold 200 out and train on the rest; lower --holdout-per-class"):
        make_loader(digits_dir, "train", "torch", holdout_per_class=200)
    with pytest.raises(UserError, match="--holdout-per-class must be 0 or more, got -1"):
        make_loader(digits_dir, "train", "torch", holdout_per_class=-1)
