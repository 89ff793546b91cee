"""The data every candidate is scored on: BN recalibration batches of the training split (augmented as in
training) and the whole val split. A trial decodes them as it goes (``scoring_loaders``); a search that scores many
candidates in one process decodes them once and keeps them (``scoring_batches``), and ``--cache-dir`` keeps the
decoded tensors in a file that later trials load instead of decoding the same images again."""
import hashlib
import json
import logging
import os

import torch

from dataloader import HOLDOUT, ImageFolderLoader, dali_available, dali_installed, dataset_fingerprint
from spos.files import save_tensors
from utils import UserError

logger = logging.getLogger("spos")

SCORING_CACHE_VERSION = 1


def scoring_loaders(root, *, train_batch_size, test_batch_size, input_size=224, spos_preprocessing=False,
                    workers=4, backend="auto", device="cpu", seed=42, holdout_per_class=0):
    """The loaders a candidate is scored with: augmented training batches (for BN recalibration) and the split it
    is scored on, val/ or, with ``holdout_per_class``, the images held out of train/ (which the training batches
    then leave out). Iterating them decodes the images; ``scoring_batches`` keeps them decoded instead."""
    common = dict(input_size=input_size, spos_preprocessing=spos_preprocessing, workers=workers, backend=backend,
                  device=device, seed=seed, holdout_per_class=holdout_per_class)
    train_loader = ImageFolderLoader(root, "train", train=True, batch_size=train_batch_size, **common)
    val_loader = ImageFolderLoader(root, HOLDOUT if holdout_per_class else "val", train=False,
                                   batch_size=test_batch_size, classes=train_loader.classes, **common)
    return train_loader, val_loader


def scoring_batches(root, *, train_batch_size, train_iters, test_batch_size, input_size=224,
                    spos_preprocessing=False, workers=4, backend="auto", device="cpu", seed=42, cache_dir=None,
                    holdout_per_class=0):
    """The fixed data every candidate of a search is scored on, decoded once: the first ``train_iters``
    training batches (augmented as in training, for BN recalibration) and the whole split scored on (val/, or the
    ``holdout_per_class`` images a class held out of train/: see scoring_loaders), as re-iterable
    sequences of ``(images, labels)`` on ``device``, and the class names. On a GPU the tensors stay there when
    they fit in a quarter of its free memory; otherwise they are kept in host memory and each batch is copied
    over when it is used (ImageNet's 25,600 + 50,000 images are 45 GB as float32).

    With ``cache_dir`` the decoded tensors are also kept in a file there, keyed on the dataset (its class
    folders' modification times: adding or removing an image changes them) and every setting that changes
    the tensors; NNI trials then load that file instead of decoding the same images again. The file holds
    tensors only and is read with ``weights_only=True``."""
    device = torch.device(device)
    automatic = backend == "auto"
    if automatic:
        # Finding DALI's package is enough to name the cache file: a trial that reads it never imports DALI
        # (0.4 s). Before decoding, DALI is checked to really import.
        backend = "dali" if dali_installed() else "torch"
    settings = dict(root=os.path.abspath(root), train_batch_size=train_batch_size, train_iters=train_iters,
                    test_batch_size=test_batch_size, input_size=input_size, spos_preprocessing=spos_preprocessing,
                    backend=backend, seed=seed, holdout_per_class=holdout_per_class, version=SCORING_CACHE_VERSION)
    if cache_dir:
        settings["dataset"] = dataset_fingerprint(root)
    path = _scoring_cache_path(cache_dir, settings) if cache_dir else None
    cached = _load_scoring_cache(path, device) if path else None
    if cached is None and automatic and backend == "dali" and not dali_available():
        settings["backend"] = backend = "torch"  # installed but not importable: "auto" falls back
        path = _scoring_cache_path(cache_dir, settings) if cache_dir else None
        cached = _load_scoring_cache(path, device) if path else None
    if cached is not None:
        return cached
    train_loader, val_loader = scoring_loaders(root, train_batch_size=train_batch_size,
                                               test_batch_size=test_batch_size, input_size=input_size,
                                               spos_preprocessing=spos_preprocessing, workers=workers,
                                               backend=backend, device=device, seed=seed,
                                               holdout_per_class=holdout_per_class)
    place = _placement(device, (train_iters * train_batch_size + val_loader.num_images) * 3 * input_size ** 2 * 4)
    train = DeviceBatches([place(b) for b in cycle_batches(train_loader, train_iters)], device)
    val = DeviceBatches([place(b) for b in val_loader], device)
    if path:
        contents = {"classes": list(train_loader.classes)}
        for name, batches in (("train", train.batches), ("val", val.batches)):
            contents[f"{name}_images"] = torch.cat([images.cpu() for images, _ in batches]) if batches else \
                torch.empty(0, 3, input_size, input_size)
            contents[f"{name}_labels"] = torch.cat([labels.cpu() for _, labels in batches]) if batches else \
                torch.empty(0, dtype=torch.int64)
            contents[f"{name}_sizes"] = torch.tensor([len(labels) for _, labels in batches], dtype=torch.int64)
        os.makedirs(cache_dir, exist_ok=True)
        save_tensors(contents, path)
        logger.info("wrote the scoring cache %s", path)
    return train, val, list(train_loader.classes), "decoded"


def _scoring_cache_path(cache_dir, settings):
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"scoring_{digest}.pt")


def _load_scoring_cache(path, device):
    """``scoring_batches``' result from the cache file ``path``; None when there is none or it is unusable."""
    if not os.path.exists(path):
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        images = cached["train_images"].numel() + cached["val_images"].numel()
        place = _placement(device, images * 4)
        train = _split_batches(cached, "train", place, device)
        val = _split_batches(cached, "val", place, device)
    except Exception as e:  # a foreign or damaged file: decode again and replace it
        logger.warning("%s: unusable scoring cache (%s); decoding the images again", path,
                       str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        return None
    logger.info("scoring data from the cache %s", path)
    return train, val, list(cached["classes"]), path


class DeviceBatches:
    """Decoded ``(images, labels)`` batches, iterated as often as needed and handed out on ``device`` (a
    copy per batch when they are kept in host memory)."""

    def __init__(self, batches, device):
        self.batches, self.device = batches, torch.device(device)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for images, labels in self.batches:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


def _placement(device, num_bytes):
    """Where decoded batches are kept: on ``device``, or in host memory when the GPU would be short of room."""
    if device.type == "cuda" and num_bytes > torch.cuda.mem_get_info(device)[0] // 4:
        logger.info("keeping %.1f GB of decoded scoring data in host memory; each batch is copied to the GPU "
                    "when it is used", num_bytes / 1e9)
        return lambda batch: tuple(t.cpu().pin_memory() for t in batch)
    return lambda batch: tuple(t.to(device) for t in batch)


def cycle_batches(loader, num_batches):
    """``num_batches`` batches of ``loader``, starting it over as often as needed."""
    produced = 0
    while produced < num_batches:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            produced += 1
            if produced >= num_batches:
                return
        if empty:
            raise UserError(f"{getattr(loader, 'split_dir', 'the training data')}: no batches to recalibrate "
                            f"batch norm with")


def _split_batches(cached, name, place, device):
    sizes = cached[f"{name}_sizes"].tolist()
    images = cached[f"{name}_images"].split(sizes)
    labels = cached[f"{name}_labels"].split(sizes)
    return DeviceBatches([place(batch) for batch in zip(images, labels)], device)


def load_scoring_data(args, device, keep, cache_dir=None):
    """The recalibration batches and the val set of a command's scoring flags as ``(train, val, classes,
    source)``: decoded once and kept (``keep``, or with a cache folder, ``cache_dir`` or else --cache-dir: from or
    into the cache file), else loaders that decode as they go, so a trial needs memory for one batch, not for
    the whole val set."""
    cache_dir = cache_dir or args.cache_dir
    if keep or cache_dir:
        return scoring_batches(args.imagenet_dir, train_batch_size=args.train_batch_size,
                               train_iters=args.train_iters, test_batch_size=args.test_batch_size,
                               input_size=args.input_size, spos_preprocessing=args.spos_preprocessing,
                               workers=args.workers, backend=args.loader, device=device, seed=args.seed,
                               cache_dir=cache_dir, holdout_per_class=args.holdout_per_class)
    train_loader, val_loader = scoring_loaders(args.imagenet_dir, train_batch_size=args.train_batch_size,
                                               test_batch_size=args.test_batch_size, input_size=args.input_size,
                                               spos_preprocessing=args.spos_preprocessing, workers=args.workers,
                                               backend=args.loader, device=device, seed=args.seed,
                                               holdout_per_class=args.holdout_per_class)
    return train_loader, val_loader, train_loader.classes, f"{train_loader.backend} loader, decoded as used"


def log_scoring_data(train, val, classes, source, train_iters, seconds, holdout_per_class=0):
    val_images = val.num_images if hasattr(val, "num_images") else sum(len(labels) for _, labels in val.batches)
    scored_on = f"held-out images ({holdout_per_class} a class of train/)" if holdout_per_class else "val images"
    logger.info("data: %d recalibration batches, %d %s, %d classes (%s, %.1f s)", train_iters, val_images, scored_on,
                len(classes), source, seconds)
