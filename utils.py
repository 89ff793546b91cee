"""What the three steps share: errors for the user, logging, checkpoints, optimisation and the two loops."""
import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import tempfile
import time

import torch
from torch import nn

logger = logging.getLogger("spos")


class UserError(Exception):
    """Bad input from the user: reported as one line naming the file or value, exit status 2."""


def add_data_arguments(parser, workers):
    """The data flags every step shares (NNI's names and defaults); returns the group for more."""
    group = parser.add_argument_group("data")
    group.add_argument("--imagenet-dir", default="./data/imagenet", help="folder with train/ and val/")
    group.add_argument("--spos-preprocessing", action="store_true", default=False,
                       help="Megvii's input: BGR, 0..255, linear interpolation (for official checkpoints)")
    group.add_argument("--input-size", type=int, default=224, help="a multiple of 32")
    group.add_argument("--workers", type=int, default=workers)
    group.add_argument("--loader", choices=("auto", "dali", "torch"), default="auto",
                       help="auto: DALI when installed, else torchvision")
    return group


def add_optimisation_arguments(parser, batch_size, epochs):
    """The SGD flags supernet.py and scratch.py share; returns the group for more."""
    group = parser.add_argument_group("optimisation")
    group.add_argument("--batch-size", type=int, default=batch_size, help="global, over all processes")
    group.add_argument("--epochs", type=int, default=epochs)
    group.add_argument("--learning-rate", type=float, default=0.5,
                       help="for --reference-batch-size images a step, scaled linearly to --batch-size")
    group.add_argument("--reference-batch-size", type=int, default=1024,
                       help="Megvii's batch for lr 0.5; set it to --batch-size to use --learning-rate as it is")
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--weight-decay", type=float, default=4e-5, help="on conv and linear weights only")
    group.add_argument("--label-smoothing", type=float, default=0.1)
    return group


def add_performance_arguments(parser):
    """How the steps run their network; none of these changes what is computed beyond rounding."""
    group = parser.add_argument_group("performance")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="channels-last memory format (1.4-1.7x on CPU, needed by tensor cores)")
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="bf16 autocast or fp32; auto: bf16 on a GPU, fp32 on a CPU")
    return group


def compute_dtype(precision, device):
    """The autocast dtype for ``--precision`` on ``device``; None means plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


def autocast(device, dtype):
    """bf16 autocast when ``dtype`` is set; nothing otherwise."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def prepare_model(model, device, channels_last):
    """The model on ``device`` in the memory format its forward then gives its input too."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # 80 conv shapes in all: each is tuned once
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def run_main(main):
    """Run a step's ``main``: a UserError ends in one clear line and exit status 2, Ctrl-C in status 130."""
    try:
        main()
    except UserError as e:
        if logger.handlers:
            logger.error("%s", e)
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def setup_logging(log_file=None, quiet=False):
    """Log to stderr (and to ``log_file``); ``quiet`` processes (ranks > 0) only log warnings."""
    level = logging.WARNING if quiet else logging.INFO
    handlers = [logging.StreamHandler()]
    if log_file and not quiet:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    formatter = logging.Formatter("[%(asctime)s] %(levelname)s (%(name)s) %(message)s", "%Y-%m-%d %H:%M:%S")
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def save_args(args, output_dir):
    """Write the resolved arguments next to a run's outputs."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=2, sort_keys=True, default=str)


def atomic_save(obj, path):
    """torch.save through a temporary file and a rename, so a crash never leaves a torn checkpoint."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".pth.tar", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def load_training_state(path):
    """A resumable state written by ``atomic_save``, read without unpickling objects."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no resumable state to continue from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files raise many kinds
        raise UserError(f"{path}: not a readable training state ({str(e).strip().splitlines()[0]})") from None
    required = ("state_dict", "optimizer", "scheduler", "epoch", "rng")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UserError(f"{path}: not a training state of this project (needs {', '.join(required)})")
    return state


def get_rng_state(**generators):
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state.update({name: g.getstate() for name, g in generators.items()})
    return state


def set_rng_state(state, **generators):
    random.setstate(_as_random_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        g.setstate(_as_random_state(state[name]))


def _as_random_state(state):
    version, internal, gauss = state
    return version, tuple(internal), gauss


def set_seed(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def get_device(requested="auto"):
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA GPU is available here")
    return torch.device(requested)


def scaled_learning_rate(learning_rate, batch_size, reference_batch_size):
    """Linear scaling rule: ``learning_rate`` is meant for ``reference_batch_size`` images a step."""
    return learning_rate * batch_size / reference_batch_size


def make_optimizer(model, lr, momentum, weight_decay):
    """SGD with weight decay on conv and linear weights only (Megvii's rule: BN and biases get none)."""
    decayed, not_decayed = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decayed if is_weight else not_decayed).append(param)
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    if not_decayed:
        groups.append({"params": not_decayed, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def make_lr_scheduler(optimizer, total_iters, kind="linear"):
    """Stepped once per iteration: linear decay to 0 (Megvii) or a half cosine."""
    if kind == "linear":
        def factor(step):
            return max(0.0, 1.0 - step / total_iters)
    elif kind == "cosine":
        def factor(step):
            return 0.5 * (1 + math.cos(math.pi * min(step, total_iters) / total_iters))
    else:
        raise UserError(f"--lr-decay {kind!r}: expected 'linear' or 'cosine'")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class AverageMeter:
    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def correct_counts(output, target, topk=(1, 5)):
    """How many of the batch have their label among the top-k predictions: a float tensor on output's device."""
    maxk = min(max(topk), output.shape[1])
    correct = output.topk(maxk, 1).indices.eq(target.view(-1, 1))
    return torch.stack([correct[:, :min(k, maxk)].any(1).sum() for k in topk]).float()


def accuracy(output, target, topk=(1, 5)):
    """Fractions of the batch whose label is among the top-k predictions."""
    return (correct_counts(output, target, topk) / target.shape[0]).tolist()


def _progress(iterable, total, description, log_frequency):
    """A tqdm bar on a terminal (the caller refreshes its figures every ``log_frequency`` steps); otherwise
    (logs, CI) the caller logs a line every ``log_frequency`` steps."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True), True
    return iterable, False


def train_one_epoch(model, loader, criterion, optimizer, scheduler, epoch, num_epochs, log_frequency,
                    sample_architecture=None, autocast_dtype=None):
    """One pass over ``loader``. For a supernet, ``sample_architecture()`` gives each step's path; the
    blocks off that path get no gradient and so no update, momentum or weight decay at all. With
    ``autocast_dtype`` (bf16) the forward runs in it; weights, gradients and the update stay fp32."""
    model.train()
    steps = len(loader)
    batches, has_bar = _progress(loader, steps, f"epoch {epoch + 1}/{num_epochs}", log_frequency)
    start = time.perf_counter()
    images_seen = 0
    # loss and correct-prediction sums stay on the device: reading one waits for the GPU, so only logging does
    sums = None
    for step, (images, labels) in enumerate(batches):
        with autocast(images.device, autocast_dtype):
            if sample_architecture is None:
                output = model(images)
            else:
                output = model(images, sample_architecture())
            loss = criterion(output.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

        n = labels.shape[0]
        images_seen += n
        step_sums = torch.cat([loss.detach().float().reshape(1) * n, correct_counts(output.detach(), labels)])
        sums = step_sums if sums is None else sums + step_sums
        if (step + 1) % log_frequency == 0 or step + 1 == steps:
            loss_avg, top1_avg, top5_avg = (sums / images_seen).tolist()
            speed = images_seen / (time.perf_counter() - start)
            lr = optimizer.param_groups[0]["lr"]
            if has_bar:
                batches.set_postfix(loss=f"{loss_avg:.3f}", top1=f"{top1_avg:.3f}", lr=f"{lr:.4f}",
                                    img_s=f"{speed:.0f}")
            else:
                logger.info("Epoch [%d/%d] Step [%d/%d]  loss %.4f  top1 %.4f  top5 %.4f  lr %.5f  %.0f img/s",
                            epoch + 1, num_epochs, step + 1, steps, loss_avg, top1_avg, top5_avg, lr, speed)
    elapsed = max(time.perf_counter() - start, 1e-9)
    totals = sums.tolist() if sums is not None else [0.0, 0.0, 0.0]
    loss_sum, top1_sum, top5_sum, count = _sum_over_processes([*totals, images_seen])
    count = max(count, 1)
    return {"loss": loss_sum / count, "top1": top1_sum / count, "top5": top5_sum / count,
            "images_per_s": count / elapsed}


@torch.inference_mode()
def evaluate(model, loader, criterion, architecture=None, sample_architecture=None, autocast_dtype=None):
    """Loss and top-1/top-5 over every image of ``loader``; a supernet runs ``architecture`` or a path
    drawn by ``sample_architecture()`` for each batch."""
    model.eval()
    loss_meter, top1_meter, top5_meter = AverageMeter(), AverageMeter(), AverageMeter()
    for images, labels in loader:
        with autocast(images.device, autocast_dtype):
            if sample_architecture is not None:
                output = model(images, sample_architecture())
            elif architecture is not None:
                output = model(images, architecture)
            else:
                output = model(images)
        output = output.float()
        n = labels.shape[0]
        top1, top5 = accuracy(output, labels)
        loss_meter.update(criterion(output, labels).item(), n)
        top1_meter.update(top1, n)
        top5_meter.update(top5, n)
    loss_sum, top1_sum, top5_sum, count = _sum_over_processes(
        [loss_meter.sum, top1_meter.sum, top5_meter.sum, loss_meter.count])
    count = max(count, 1)
    return {"loss": loss_sum / count, "top1": top1_sum / count, "top5": top5_sum / count, "images": int(count)}


def _sum_over_processes(values):
    """Sums across torchrun's processes (each evaluated its own shard); the values themselves otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def architecture_keys(num_layers=20):
    return [f"LayerChoice{i + 1}" for i in range(num_layers)]


def parse_architecture(data, source, num_layers=20, num_choices=4):
    """20 choices from any format a user has: NNI 1.x one-hot lists (architecture_final.json), NNI 2.7+
    strings ``{"LayerChoice1": "2"}``, the tuner's ``{"_value": "2", "_idx": 2}``, or a list of ints.
    Anything else raises a UserError naming ``source`` and the key or value at fault."""
    if isinstance(data, list):
        if len(data) != num_layers:
            raise UserError(f"{source}: a list architecture needs {num_layers} choices, got {len(data)}")
        return tuple(_parse_choice(v, f"{source}: item {i}", num_choices) for i, v in enumerate(data))
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object of LayerChoice1..LayerChoice{num_layers} or a list "
                        f"of {num_layers} ints, got {type(data).__name__}")
    keys = architecture_keys(num_layers)
    missing = [k for k in keys if k not in data]
    extra = sorted(k for k in data if k not in keys)
    if missing:
        raise UserError(f"{source}: key {missing[0]!r} is missing ({len(missing)} of {num_layers} missing)")
    if extra:
        raise UserError(f"{source}: unexpected key {extra[0]!r} (expected LayerChoice1..LayerChoice{num_layers})")
    return tuple(_parse_choice(data[k], f"{source}: {k}", num_choices) for k in keys)


def _parse_choice(value, where, num_choices):
    if isinstance(value, dict):  # the tuner's {"_value": "2", "_idx": 2}
        if "_idx" not in value:
            raise UserError(f"{where}: {value!r} has no '_idx'")
        value = value["_idx"]
    elif isinstance(value, list):  # NNI 1.x one-hot
        if len(value) != num_choices or not all(isinstance(v, bool) for v in value):
            raise UserError(f"{where}: a one-hot choice is {num_choices} true/false values, got {value!r}")
        if sum(value) != 1:
            raise UserError(f"{where}: a one-hot choice needs exactly one true, got {value!r}")
        return value.index(True)
    if isinstance(value, bool):
        raise UserError(f"{where}: {value!r} is not a choice index")
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise UserError(f"{where}: {value!r} is not a choice index")
        value = int(value)
    if not isinstance(value, int):
        raise UserError(f"{where}: {value!r} is not a choice index")
    if not 0 <= value < num_choices:
        raise UserError(f"{where}: choice {value} is out of range 0..{num_choices - 1}")
    return value


def load_architecture(path):
    """Read and check an architecture file (see ``parse_architecture``)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read the architecture file ({e.strerror or e})") from None
    if not text.strip():
        raise UserError(f"{path}: the architecture file is empty")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    return parse_architecture(data, path)


def architecture_to_json(choices, num_choices=4):
    """NNI 1.x format of architecture_final.json: one one-hot list per LayerChoice key."""
    return {key: [c == i for i in range(num_choices)] for key, c in zip(architecture_keys(len(choices)), choices)}


def write_architecture(path, choices):
    """Write ``choices`` as architecture_final.json does, one LayerChoice per line, atomically."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in architecture_to_json(choices).items()]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    os.replace(tmp_path, path)


def save_epoch(output_dir, state_file, epoch, model, optimizer, scheduler, extra=None, **generators):
    """After ``epoch`` (1-based) epochs: the weights as ``epoch_{epoch}.pth.tar`` (``{'state_dict', 'epoch'}``,
    what network.load_weights reads) and all ``--resume`` needs as ``state_file``, both written atomically.
    ``extra`` (plain data) goes into the state; ``generators`` are random.Random objects to restore too."""
    atomic_save({"state_dict": model.state_dict(), "epoch": epoch},
                os.path.join(output_dir, f"epoch_{epoch}.pth.tar"))
    atomic_save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "rng": get_rng_state(**generators),
                 **(extra or {})}, os.path.join(output_dir, state_file))


def resume_training(path, model, optimizer, scheduler, expect=None, **generators):
    """Load a state written by ``save_epoch`` into the model, optimizer, scheduler and random generators;
    returns the state (``state['epoch']`` epochs are done). ``expect``: values the state's ``extra`` must
    hold for this run (e.g. the architecture), each refused with its name when it differs."""
    state = load_training_state(path)
    for key, value in (expect or {}).items():
        if key in state and state[key] != value:
            raise UserError(f"{path}: was written for {key} {state[key]}, not {value}; resume with the "
                            f"arguments of the run that wrote it")
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise UserError(f"{path}: the saved network does not fit this run ({detail[:200]}); "
                        f"resume with the arguments of the run that wrote it") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], **generators)
    return state
