"""The training run supernet.py and scratch.py share, each step calling it with only what differs (a supernet's path
sampler and warm start, what identifies a run to resume, TensorBoard for the from-scratch net): the process
(torchrun's group, the log file), the data, the optimisation, resuming, and the epoch loop, which writes each
epoch's training state before its weights (spos/checkpoint.py says why)."""
import contextlib
import os
import time
from dataclasses import dataclass, field

from torch import nn

from dataloader import HOLDOUT_LIST, ImageFolderLoader
from spos import distributed
from spos.checkpoint import STATE_FILE, describe_dataset, resume_training, save_training_state, save_weights, set_seed
from spos.files import write_text
from spos.hardware import compute_dtype, get_device, prepare_model, set_cpu_threads
from spos.loops import evaluate, train_one_epoch
from spos.optim import make_lr_scheduler, make_optimizer, scaled_learning_rate
from utils import UserError, accuracy, logger, save_args, setup_logging


@contextlib.contextmanager
def training_process(args, log_name):
    """This process's part of a run: torchrun's process group when torchrun started it, logging to stderr and (rank
    0) to <output-dir>/<log_name>, the seed, the CPU threads. Yields the distributed.Context."""
    if args.batch_size < 1 or args.epochs < 1:
        raise UserError(f"--batch-size and --epochs must be positive, got {args.batch_size} and {args.epochs}")
    context = distributed.init(get_device(args.device))
    try:
        setup_logging(os.path.join(args.output_dir, log_name), quiet=not context.is_main)
        if args.recipe:
            logger.info("defaults from %s", args.recipe)
        set_seed(args.seed)
        set_cpu_threads(context.device, context)
        yield context
    finally:
        distributed.shutdown(context)


def make_loaders(args, context, validate_on="val"):
    """The train split of --imagenet-dir (less its --holdout-per-class images) and the split validated on ("val", or
    HOLDOUT: the held-out images), this process's shard of each, in batches of its share of the global
    --batch-size."""
    batch_size = distributed.per_process_batch_size(args.batch_size, context)
    common = dict(batch_size=batch_size, input_size=args.input_size, spos_preprocessing=args.spos_preprocessing,
                  workers=args.workers, backend=args.loader, device=context.device, seed=args.seed,
                  shard_id=context.rank, num_shards=context.world_size, holdout_per_class=args.holdout_per_class)
    train_loader = ImageFolderLoader(args.imagenet_dir, "train", train=True, **common)
    val_loader = ImageFolderLoader(args.imagenet_dir, validate_on, train=False, classes=train_loader.classes,
                                   **common)
    logger.info("data: %d train / %d %s images, %d classes, %s loader, %d steps per epoch; %d process(es) on %s, "
                "%d images each a step", len(train_loader.files), len(val_loader.files), validate_on,
                train_loader.num_classes, train_loader.backend, len(train_loader), context.world_size,
                context.device.type, batch_size)
    if args.holdout_per_class:
        logger.info("%d images a class held out of train/ (their list: <output-dir>/%s)", args.holdout_per_class,
                    HOLDOUT_LIST)
    return train_loader, val_loader


@dataclass
class Optimisation:
    """Megvii's: cross entropy with label smoothing, SGD with weight decay on conv and linear weights only
    (spos/optim.py), ``learning_rate`` at the start, decayed every step; bf16 autocast on a GPU (``autocast_dtype``)."""
    learning_rate: float
    criterion: nn.Module
    optimizer: object
    scheduler: object
    autocast_dtype: object


@dataclass
class Run:
    """One training run as a step set it up (``start_run``). ``identity``: what a saved state must have been
    written for to be continued (the data, the batch, the architecture...), each refused by name when it differs;
    ``generators``: random.Random objects that a resume restores with the rest of the random state."""
    args: object
    context: distributed.Context
    model: nn.Module
    train_loader: ImageFolderLoader
    val_loader: ImageFolderLoader
    optimisation: Optimisation
    identity: dict
    generators: dict = field(default_factory=dict)
    start_epoch: int = 0
    history: list = field(default_factory=list)  # [val top-1, top-5] after each epoch done

    @property
    def state_path(self):
        return os.path.join(self.args.output_dir, STATE_FILE)

    def resume(self):
        """With --resume, continue from <output-dir>/training_state.pth.tar when there is one; then write
        args.json (only now: a refused resume leaves the run it was pointed at as it was). Returns whether a state
        was loaded."""
        state = None
        if self.args.resume:
            opt = self.optimisation
            state = resume_training(self.args.output_dir, STATE_FILE, self.args.epochs, self.model, opt.optimizer,
                                    opt.scheduler, expect=self.identity, repair=self.context.is_main,
                                    **self.generators)
        if state is not None:
            self.start_epoch, self.history = state["epoch"], [list(h) for h in state.get("history", [])]
        if self.context.is_main:
            save_args(self.args, self.args.output_dir)
            if self.train_loader.held_out_files:
                write_text(os.path.join(self.args.output_dir, HOLDOUT_LIST), self.train_loader.held_out_list())
        return state is not None

    def save_state(self, epoch):
        """What --resume needs after ``epoch`` epochs (rank 0 only)."""
        opt = self.optimisation
        save_training_state(self.state_path, epoch, self.model, opt.optimizer, opt.scheduler,
                            extra={**self.identity, "network": self.model.options(), "history": self.history},
                            **self.generators)


def start_run(args, context, model, loaders, identity, lr_decay="linear", generators=None):
    """A Run of ``model`` (moved to this process's device, in the memory format the steps use) on ``loaders``
    (train, val) with Megvii's optimisation: --learning-rate is the rate for --reference-batch-size images a step,
    scaled to the global --batch-size. ``identity`` adds to what every run is identified by: its data, its batch,
    its network's stem."""
    train_loader, val_loader = loaders
    prepare_model(model, context.device, args.channels_last)
    learning_rate = scaled_learning_rate(args.learning_rate, args.batch_size, args.reference_batch_size)
    logger.info("learning rate %.4g (%.4g for %d images a step, scaled to the global batch of %d), %s decay",
                learning_rate, args.learning_rate, args.reference_batch_size, args.batch_size, lr_decay)
    optimizer = make_optimizer(model, learning_rate, args.momentum, args.weight_decay)
    optimisation = Optimisation(
        learning_rate=learning_rate, criterion=nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
        optimizer=optimizer, scheduler=make_lr_scheduler(optimizer, args.epochs * len(train_loader), lr_decay),
        autocast_dtype=compute_dtype(args.precision, context.device))
    identity = {"dataset": describe_dataset(train_loader), "--batch-size": args.batch_size,
                "--small-input": args.small_input, **identity}
    return Run(args, context, model, train_loader, val_loader, optimisation, identity, generators or {})


def train_epochs(run, *, supernet, sample_architecture=None, validation_sampler=None, val_name="val",
                 tensorboard=None):
    """The epochs from ``run.start_epoch`` to --epochs: train one, validate, write the state, then the weights.
    A supernet trains ``sample_architecture()``'s path each step and validates on the paths of a fresh
    ``validation_sampler()`` each epoch (the same paths every epoch); ``tensorboard``: a writer that gets NNI's
    scalars. Returns each epoch's train and val statistics."""
    args, context, model, opt = run.args, run.context, run.model, run.optimisation
    trained_model = distributed.wrap(model, context, supernet=supernet)
    distributed.check_same_parameters(model, context, "before training")
    # the shuffle of the first epoch to train, whatever passes a warm start made over the data, so that a resumed
    # run trains on the batches the uninterrupted one does
    run.train_loader.set_epoch(run.start_epoch)
    steps = len(run.train_loader)
    epochs = []
    for epoch in range(run.start_epoch, args.epochs):
        started = time.perf_counter()
        criterion = opt.criterion if tensorboard is None else TrainScalars(opt.criterion, tensorboard, opt.optimizer,
                                                                           global_step=epoch * steps)
        train_stats = train_one_epoch(trained_model, run.train_loader, criterion, opt.optimizer, opt.scheduler,
                                      epoch, args.epochs, args.log_frequency, sample_architecture, opt.autocast_dtype)
        distributed.check_same_parameters(model, context, f"after epoch {epoch + 1}")
        val_stats = evaluate(model, run.val_loader, opt.criterion, autocast_dtype=opt.autocast_dtype,
                             sample_architecture=validation_sampler() if validation_sampler else None)
        run.history.append([val_stats["top1"], val_stats["top5"]])
        if context.is_main:  # the state first: see spos/checkpoint.py
            if tensorboard is not None:
                tensorboard.flush()  # the epoch's training scalars, before the state that keeps them
            run.save_state(epoch + 1)
            if tensorboard is not None:
                log_val_scalars(tensorboard, epoch, val_stats)
            save_weights(args.output_dir, epoch + 1, model.state_dict(), model.options())
        distributed.barrier(context)
        logger.info("Epoch [%d/%d] done in %.1f s: train loss %.4f top1 %.4f (%.0f img/s) | %s loss %.4f top1 %.4f "
                    "top5 %.4f (%d images) | saved epoch_%d.pth.tar", epoch + 1, args.epochs,
                    time.perf_counter() - started, train_stats["loss"], train_stats["top1"],
                    train_stats["images_per_s"], val_name, val_stats["loss"], val_stats["top1"], val_stats["top5"],
                    val_stats["images"], epoch + 1)
        epochs.append({"epoch": epoch + 1, "train": train_stats, "val": val_stats})
    if run.history:
        best = max(range(len(run.history)), key=lambda e: run.history[e][0])
        logger.info("best %s top-1 %.4f top-5 %.4f (epoch %d); last (epoch %d) top-1 %.4f top-5 %.4f", val_name,
                    *run.history[best], best + 1, len(run.history), *run.history[-1])
    return epochs


def open_tensorboard(run, tb_dir):
    """TensorBoard's writer for rank 0 (a stand-in that writes nothing elsewhere). After a resume it hides what the
    interrupted run logged past its last saved state (all of it when nothing was saved)."""
    if not run.context.is_main:
        return _NoWriter()
    from torch.utils.tensorboard import SummaryWriter

    steps = len(run.train_loader)
    return SummaryWriter(log_dir=tb_dir, purge_step=run.start_epoch * steps if run.args.resume else None)


def log_val_scalars(writer, epoch, val_stats):
    """An epoch's val scalars. They are stepped by epoch, out of purge_step's reach (it counts training steps), so
    they are logged once the state keeps their epoch, never for one a resumed run trains again (a kill in the
    instant before the flush loses them; top-1 and top-5 stay in the state's history)."""
    writer.add_scalar("loss/test", val_stats["loss"], global_step=epoch)
    writer.add_scalar("acc1/test", val_stats["top1"], global_step=epoch)
    writer.add_scalar("acc5/test", val_stats["top5"], global_step=epoch)
    writer.flush()


class _NoWriter:
    """Stands in for TensorBoard's writer on processes other than rank 0."""

    def add_scalar(self, *args, **kwargs):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class TrainScalars:
    """The training loss, also writing NNI's per-step TensorBoard scalars (``lr``, ``loss/train``,
    ``acc1/train``, ``acc5/train``): train_one_epoch calls its criterion once per step, after the forward
    pass and before the optimizer step, so ``lr`` is the one this step uses."""

    def __init__(self, criterion, writer, optimizer, global_step):
        self.criterion, self.writer, self.optimizer, self.global_step = criterion, writer, optimizer, global_step

    def __call__(self, output, labels):
        loss = self.criterion(output, labels)
        top1, top5 = accuracy(output.detach(), labels)
        self.writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], global_step=self.global_step)
        self.writer.add_scalar("loss/train", loss.item(), global_step=self.global_step)
        self.writer.add_scalar("acc1/train", top1, global_step=self.global_step)
        self.writer.add_scalar("acc5/train", top5, global_step=self.global_step)
        self.global_step += 1
        return loss

