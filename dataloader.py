"""ImageNet-layout data for all steps: NVIDIA DALI pipelines (CPU-only or GPU decoding) and a torchvision
fallback with the same semantics. Both yield ``(images, labels)``: float32 NCHW on the target device and
1-D int64 labels.

Preprocessing (NNI's SPOS example): train = random resized crop, brightness/contrast/saturation each
uniform in [0.6, 1.4], random horizontal flip; val = resize the shorter side to input_size / 0.875, centre
crop. ``spos_preprocessing`` gives Megvii's input: BGR, 0..255 without mean/std, linear interpolation;
otherwise RGB with ImageNet mean/std and antialiased (triangular) interpolation.
"""
import importlib.util
import json
import logging
import math
import os
import random

import torch

from utils import UserError

logger = logging.getLogger("spos")

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# the formats both DALI and torchvision.io decode: JPEG, PNG, WebP (a RIFF file of type WEBP)
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF")
# formats one of them cannot decode (DALI: GIF; torchvision.io: BMP, TIFF)
_UNSUPPORTED_SIGNATURES = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
PREPROCESSING_FILE = "preprocessing.json"
# The split of N images a class held out of train/ (--holdout-per-class): what the search scores candidates on and
# the supernet validates on, so that val/ stays unseen until the final numbers (SPEC section 16). The images are
# drawn by a fixed seed, so every step holds out the same ones.
HOLDOUT = "holdout"
HOLDOUT_SEED = 0
HOLDOUT_LIST = "holdout.txt"  # the held-out images, one a line: what a run that holds them out writes beside itself
# color_jitter 0.4: brightness, contrast and saturation factors uniform in [0.6, 1.4]
DEFAULT_AUGMENTATION = {"min_crop_area": 0.08, "mirror": True, "color_jitter": 0.4}


def read_augmentation(root):
    """ImageNet's train augmentation, unless the dataset's ``preprocessing.json`` narrows it for data that
    does not survive it (a digit cropped to 8 % of its area or mirrored is no longer that digit; 8x8 scans
    lose their strokes under contrast jitter)."""
    path = os.path.join(root, PREPROCESSING_FILE)
    if not os.path.exists(path):
        return dict(DEFAULT_AUGMENTATION)
    try:
        with open(path) as f:
            settings = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(settings, dict) or set(settings) - set(DEFAULT_AUGMENTATION):
        raise UserError(f"{path}: expected an object with keys among {sorted(DEFAULT_AUGMENTATION)}")
    augmentation = {**DEFAULT_AUGMENTATION, **settings}
    area, mirror, jitter = augmentation["min_crop_area"], augmentation["mirror"], augmentation["color_jitter"]
    if (not isinstance(area, (int, float)) or not 0 < area <= 1 or not isinstance(mirror, bool)
            or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1):
        raise UserError(f"{path}: min_crop_area must be in (0, 1], mirror true or false and color_jitter in "
                        f"[0, 1), got {settings}")
    logger.info("train augmentation from %s: %s", path, augmentation)
    return augmentation


def resize_size(input_size):
    return int(input_size / 0.875)  # 256 for 224


def dali_installed():
    """Whether DALI's package is there, without importing it (which takes 0.4 s)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no nvidia package at all (CPU-only torch, no DALI)
        return False


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def _image_problem(path):
    """None when ``path`` looks like a complete image, else what is wrong. Reads only the header and the
    tail: DALI's decoder can crash the whole process on a JPEG with a damaged header and fails on a truncated
    one without naming the file, so such files must never reach it."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            for signature, name in _UNSUPPORTED_SIGNATURES.items():
                if head.startswith(signature):
                    return f"{name} images are not supported (convert it to JPEG or PNG)"
            if not head.startswith(_IMAGE_SIGNATURES) or (head.startswith(b"RIFF") and head[8:12] != b"WEBP"):
                return "not an image file (JPEG, PNG or WebP)"
            size = os.fstat(f.fileno()).st_size
            if head.startswith(b"\xff\xd8"):
                return _jpeg_problem(f, size)
            if head.startswith(b"\x89PNG"):
                f.seek(max(0, size - _TAIL_BYTES))
                if b"IEND" not in f.read():
                    return "truncated PNG (no IEND chunk at the end)"
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    return None


_TAIL_BYTES = 1024  # where the end marker must be (a little junk after it is tolerated)


def _jpeg_problem(f, size):
    """Walk the marker segments up to the first scan, then look for the end-of-image marker near the end
    (it cannot occur inside entropy-coded data, so a truncated file lacks it)."""
    position, has_frame = 2, False
    while True:
        f.seek(position)
        if f.read(1) != b"\xff":
            return "damaged JPEG header (bad marker)"
        code = f.read(1)
        while code == b"\xff":  # fill bytes
            code = f.read(1)
        if not code:
            return "truncated JPEG header"
        marker = code[0]
        if marker == 0xDA:  # start of scan: the header is complete
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position = f.tell()
            continue
        if marker in (0x00, 0xD8, 0xD9):
            return "damaged JPEG header (bad marker)"
        length = f.read(2)
        if len(length) < 2 or int.from_bytes(length, "big") < 2:
            return "truncated JPEG header"
        has_frame |= 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
        position = f.tell() + int.from_bytes(length, "big") - 2
        if position > size:
            return "truncated JPEG header"
    if not has_frame:
        return "damaged JPEG header (no frame header before the image data)"
    f.seek(max(f.tell(), size - _TAIL_BYTES))
    if b"\xff\xd9" not in f.read():
        return "truncated JPEG (no end-of-image marker)"
    return None


def scan_image_folder(split_dir, classes=None):
    """Files and labels of ``split_dir/<class>/*``; files that are not images, or not complete ones, are
    skipped with a warning naming them.

    ``classes`` (from the train split) fixes the label of each class name for the val split."""
    if not os.path.isdir(split_dir):
        raise UserError(f"{split_dir}: dataset folder not found (expected <class>/<image> folders inside)")
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise UserError(f"{split_dir}: no class folders inside (expected <class>/<image> folders)")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{split_dir}: class folder {unknown[0]!r} does not exist in the train split")
    label_of = {name: i for i, name in enumerate(classes)}
    files, labels, skipped = [], [], []
    for name in found:
        class_dir = os.path.join(split_dir, name)
        for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if not entry.is_file() or entry.name.startswith("."):
                continue
            problem = _image_problem(entry.path)
            if problem is None:
                files.append(entry.path)
                labels.append(label_of[name])
            else:
                skipped.append((entry.path, problem))
    for path, problem in skipped[:10]:
        logger.warning("skipping %s: %s", path, problem)
    if len(skipped) > 10:
        logger.warning("skipping %d more files that are not complete images under %s", len(skipped) - 10, split_dir)
    if not files:
        raise UserError(f"{split_dir}: no image files found in its class folders")
    return files, labels, classes


def held_out(files, labels, classes, per_class):
    """Indices of the ``per_class`` images of each class held out of train/: drawn by a fixed seed from the class's
    files (in name order), so that they do not depend on the other classes or on the machine."""
    by_label = {label: [] for label in range(len(classes))}
    for i, label in enumerate(labels):  # one pass: ImageNet's 1.28M images in 1,000 classes
        by_label[label].append(i)
    chosen = []
    for label, name in enumerate(classes):
        members = by_label[label]
        if len(members) <= per_class:
            raise UserError(f"{os.path.dirname(files[members[0]]) if members else name}: {len(members)} images, too "
                            f"few to hold {per_class} out and train on the rest; lower --holdout-per-class")
        chosen += random.Random(f"{HOLDOUT_SEED}/{name}").sample(members, per_class)
    return sorted(chosen)


def dataset_fingerprint(root):
    """What changes when images are added, removed or replaced, without reading every file: the class
    folders' names and modification times, and the dataset's preprocessing.json (what cached data and a run's
    identity are keyed on)."""
    entries = []
    for split in ("train", "val"):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise UserError(f"{split_dir}: not a folder (expected {root}/{{train,val}}/<class>/<image>)")
        entries += [(split, e.name, e.stat().st_mtime_ns) for e in os.scandir(split_dir) if e.is_dir()]
    preprocessing = os.path.join(root, PREPROCESSING_FILE)
    if os.path.exists(preprocessing):
        entries.append((PREPROCESSING_FILE, os.stat(preprocessing).st_mtime_ns))
    return sorted(entries)


def shard_indices(num_items, shard_id, num_shards):
    """Contiguous split as DALI's reader does it: every item in exactly one shard."""
    return range(num_items * shard_id // num_shards, num_items * (shard_id + 1) // num_shards)


class ImageFolderLoader:
    """Iterates one split of an ImageNet-layout folder in batches; see the module docstring. ``split``: "train",
    "val", or HOLDOUT, the ``holdout_per_class`` images a class held out of train/ (which "train" then leaves out)."""

    def __init__(self, root, split, *, train, batch_size, input_size=224, spos_preprocessing=False,
                 workers=4, backend="auto", device="cpu", shard_id=0, num_shards=1, seed=42, classes=None,
                 holdout_per_class=0):
        if holdout_per_class < 0:
            raise UserError(f"--holdout-per-class must be 0 or more, got {holdout_per_class}")
        if split == HOLDOUT and not holdout_per_class:
            raise ValueError("the held-out split needs holdout_per_class")
        self.split = split
        self.split_dir = os.path.join(root, "train" if split == HOLDOUT else split)
        self.files, self.labels, self.classes = scan_image_folder(self.split_dir, classes)
        self.held_out_files = []  # of train/, by --holdout-per-class
        if holdout_per_class and split in ("train", HOLDOUT):
            chosen = set(held_out(self.files, self.labels, self.classes, holdout_per_class))
            self.held_out_files = [self.files[i] for i in sorted(chosen)]
            keep = [i for i in range(len(self.files)) if (i in chosen) == (split == HOLDOUT)]
            self.files, self.labels = [self.files[i] for i in keep], [self.labels[i] for i in keep]
        self.train, self.batch_size, self.input_size = train, batch_size, input_size
        self.spos_preprocessing, self.workers, self.seed = spos_preprocessing, max(1, workers), seed
        self.device = torch.device(device)
        self.shard_id, self.num_shards = shard_id, num_shards
        # train shards must be equal, or processes would take different numbers of steps and wait forever
        self._used_files = len(self.files) - (len(self.files) % num_shards if train else 0)
        self.num_images = len(shard_indices(self._used_files, shard_id, num_shards))
        if train and self.num_images < batch_size:
            raise UserError(f"{self.split_dir}: {self.num_images} images per process, fewer than one batch "
                            f"of {batch_size}; lower --batch-size")
        if backend == "auto":
            backend = "dali" if dali_available() else "torch"
        elif backend == "dali" and not dali_available():
            raise UserError("--loader dali: nvidia-dali is not installed (pip install -r requirements.txt)")
        self.backend = backend
        self.augmentation = read_augmentation(root) if train else None
        self._epoch = 0
        self._unreadable = set()
        self._dali_mid_epoch = False
        self._impl = self._build_dali() if backend == "dali" else self._build_torch()

    def held_out_list(self):
        """The images held out of train/, one a line, relative to the dataset's folder: the list a run writes beside
        its results."""
        root = os.path.dirname(self.split_dir)
        return "".join(f"{os.path.relpath(path, root)}\n" for path in self.held_out_files)

    @property
    def num_classes(self):
        return len(self.classes)

    def __len__(self):
        if self.train:
            return self.num_images // self.batch_size
        return math.ceil(self.num_images / self.batch_size)

    def set_epoch(self, epoch):
        """Where a resumed run continues: the torchvision backend's shuffle of that epoch (DALI's reader
        keeps its own sequence of shuffles, restarted by a resume)."""
        self._epoch = epoch

    def __iter__(self):
        if self.backend == "dali":
            yield from self._iter_dali()
        else:
            yield from self._iter_torch()
        self._epoch += 1

    # DALI

    def _build_dali(self):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIClassificationIterator, LastBatchPolicy

        on_gpu = self.device.type == "cuda"
        files, labels = self.files, self.labels
        if self.train:  # the reader only reshuffles after the first epoch, and files come sorted by class
            order = list(range(len(files)))
            random.Random(self.seed).shuffle(order)
            order = order[:self._used_files]
            files, labels = [files[i] for i in order], [labels[i] for i in order]
        interp = types.INTERP_LINEAR if self.spos_preprocessing else types.INTERP_TRIANGULAR
        antialias = not self.spos_preprocessing
        mean, std = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) if self.spos_preprocessing else (IMAGENET_MEAN, IMAGENET_STD)
        size, train = self.input_size, self.train

        @pipeline_def
        def pipeline():
            jpegs, label = fn.readers.file(
                files=files, labels=labels, name="Reader", shard_id=self.shard_id, num_shards=self.num_shards,
                shuffle_after_epoch=train, pad_last_batch=not train, stick_to_shard=not train)
            images = fn.decoders.image(jpegs, device="mixed" if on_gpu else "cpu",
                                       output_type=types.BGR if self.spos_preprocessing else types.RGB)
            if train:
                jitter = self.augmentation["color_jitter"]
                images = fn.random_resized_crop(images, size=(size, size), interp_type=interp, antialias=antialias,
                                                random_area=(self.augmentation["min_crop_area"], 1.0))
                if jitter:
                    images = fn.color_twist(images, brightness=fn.random.uniform(range=(1 - jitter, 1 + jitter)),
                                            contrast=fn.random.uniform(range=(1 - jitter, 1 + jitter)),
                                            saturation=fn.random.uniform(range=(1 - jitter, 1 + jitter)))
                mirror = fn.random.coin_flip() if self.augmentation["mirror"] else 0
            else:
                images = fn.resize(images, resize_shorter=resize_size(size), interp_type=interp, antialias=antialias)
                mirror = 0
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(size, size),
                                              mean=list(mean), std=list(std), mirror=mirror)
            if on_gpu:
                label = label.gpu()
            return images, label

        pipe = pipeline(batch_size=self.batch_size, num_threads=self.workers,
                        device_id=(self.device.index or 0) if on_gpu else None,
                        seed=self.seed + self.shard_id, prefetch_queue_depth=2)
        try:
            pipe.build()
        except RuntimeError as e:
            raise UserError(f"{self.split_dir}: DALI could not build the pipeline ({_first_line(e)})") from None
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.PARTIAL
        return DALIClassificationIterator(pipe, reader_name="Reader", last_batch_policy=policy, auto_reset=True)

    def _iter_dali(self):
        # DALI cannot restart an epoch it is in the middle of (a reader left mid-epoch, as by the warm start,
        # would go on from there): finish that epoch first, so that every pass starts one, as torchvision's does
        if self._dali_mid_epoch:
            for _ in self._dali_batches():
                pass
        self._dali_mid_epoch = True
        for batch in self._dali_batches():
            images, labels = batch[0]["data"], batch[0]["label"]
            yield images.to(self.device, non_blocking=True), labels.reshape(-1).long().to(self.device)
        self._dali_mid_epoch = False

    def _dali_batches(self):
        """The rest of DALI's epoch. ``next`` only: ``iter`` on DALI's iterator mid-epoch asks it to reset."""
        while True:
            try:
                yield next(self._impl)
            except StopIteration:
                return
            except RuntimeError as e:
                raise UserError(f"{self.split_dir}: DALI failed to decode an image ({_dali_reason(e)}); run with "
                                f"--loader torch to have unreadable images named and skipped") from None

    # torchvision fallback

    def _build_torch(self):
        from torchvision.transforms import InterpolationMode, v2

        antialias = not self.spos_preprocessing
        if self.train:
            jitter = self.augmentation["color_jitter"]
            transform = v2.Compose([
                v2.RandomResizedCrop(self.input_size, scale=(self.augmentation["min_crop_area"], 1.0),
                                     interpolation=InterpolationMode.BILINEAR, antialias=antialias),
                v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
                v2.RandomHorizontalFlip(0.5 if self.augmentation["mirror"] else 0.0),
            ])
        else:
            transform = v2.Compose([
                v2.Resize(resize_size(self.input_size), interpolation=InterpolationMode.BILINEAR, antialias=antialias),
                v2.CenterCrop(self.input_size),
            ])
        return _ImageFiles(self.files, self.labels, transform)

    def _iter_torch(self):
        indices = list(range(len(self.files)))
        if self.train:  # a fresh global permutation each epoch, then this process's share of it
            random.Random(self.seed + self._epoch).shuffle(indices)
        indices = indices[:self._used_files]
        indices = [indices[i] for i in shard_indices(len(indices), self.shard_id, self.num_shards)]
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.shard_id * 100 + self._epoch)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self._impl, indices), batch_size=self.batch_size, shuffle=False,
            num_workers=self.workers, drop_last=self.train, collate_fn=_collate_skipping_unreadable,
            pin_memory=self.device.type == "cuda", generator=generator,
            persistent_workers=False, worker_init_fn=_seed_worker)
        for images, labels, unreadable in loader:
            for path, reason in unreadable:  # warned here, not in a worker, and once per file
                if path not in self._unreadable:
                    self._unreadable.add(path)
                    logger.warning("skipping %s: cannot decode it (%s)", path, reason)
            if not len(labels):
                continue
            images = images.to(self.device, non_blocking=True).float()
            if self.spos_preprocessing:
                images = images.flip(1)  # RGB -> BGR, values stay 0..255
            else:
                mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
                std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
                images = (images - mean) / std
            yield images, labels.to(self.device)


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        from torchvision.io import ImageReadMode, decode_image

        path = self.files[index]
        try:
            image = decode_image(path, mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as e:
            return None, path, _first_line(e)
        return self.transform(image), self.labels[index]


def _collate_skipping_unreadable(samples):
    """(images, labels, [(path, reason) of the samples that could not be decoded])."""
    unreadable = [s[1:] for s in samples if s[0] is None]
    samples = [s for s in samples if s[0] is not None]
    if not samples:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), unreadable
    return (torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples], dtype=torch.int64),
            unreadable)


def _seed_worker(worker_id):
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)


def _dali_reason(error):
    """The line of a DALI pipeline error that says what went wrong (it starts with generic lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines[:-1]:
        return lines[lines.index("encountered:") + 1]
    useful = [line for line in lines if not line.startswith(("Critical error", "Current pipeline object"))]
    return useful[-1] if useful else _first_line(error)


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
