"""Step 3 of SPOS: train the found architecture from scratch (only its chosen blocks, BN with affine).

    python scratch.py --fixed-arc architecture_final.json

Writes ``<output-dir>/epoch_{e}.pth.tar`` (``{'state_dict': ...}``) and ``<output-dir>/training_state.pth.tar``
(what ``--resume`` continues from) after every epoch, and NNI's TensorBoard scalars into ``--tb-dir``:
``lr``, ``loss/train``, ``acc1/train``, ``acc5/train`` every step, ``loss/test``, ``acc1/test``,
``acc5/test`` every epoch. ``--evaluate CHECKPOINT`` only measures a saved net on the val split.
"""
import argparse
import os
import time

import torch
from torch import nn

from dataloader import ImageFolderLoader
from network import PAPER_CLASSES, PAPER_INPUT_SIZE, ShuffleNetV2OneShot, fold_batch_norms, load_weights
from spos import distributed
from spos.architecture import format_choices, load_architecture, write_architecture
from spos.checkpoint import describe_dataset, resume_training, save_training_state, save_weights, set_seed
from spos.hardware import compute_dtype, get_device, prepare_model, set_cpu_threads
from spos.loops import evaluate, train_one_epoch
from spos.optim import make_lr_scheduler, make_optimizer, scaled_learning_rate
from spos.options import (add_data_arguments, add_optimisation_arguments, add_performance_arguments,
                          add_small_input_argument, parse_args_with_recipe, project_file)
from utils import UserError, accuracy, logger, run_main, save_args, setup_logging

STATE_FILE = "training_state.pth.tar"
DEFAULT_ARCHITECTURE = "architecture_final.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", "--fixed-arc", dest="architecture", default=None,
                        help="the architecture to train: NNI 1.x one-hot lists, {\"LayerChoice1\": \"2\", ...}, "
                             "the tuner's {\"_value\", \"_idx\"} form or a JSON list of 20 ints; with "
                             "ChannelChoice1..20 (or Megvii's {\"architecture\": [...], \"scale_ids\": [...]}) a "
                             "block + channel net "
                             f"(default: {DEFAULT_ARCHITECTURE} of the working folder, else the project's own)")
    add_small_input_argument(add_data_arguments(parser, workers=4))
    group = add_optimisation_arguments(parser, batch_size=1024, epochs=240)
    group.add_argument("--lr-decay", choices=("linear", "cosine"), default="linear",
                       help="per step, to 0 at the end of the last epoch")
    add_performance_arguments(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--output-dir", default="./scratch_checkpoints")
    group.add_argument("--tb-dir", default="runs", help="TensorBoard log folder")
    group.add_argument("--resume", action="store_true", default=False,
                       help=f"continue from <output-dir>/{STATE_FILE}")
    group.add_argument("--evaluate", metavar="CHECKPOINT", default=None,
                       help="only evaluate these weights on the val split and print top-1/top-5")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--log-frequency", type=int, default=10)
    group.add_argument("--seed", type=int, default=42)
    args = parse_args_with_recipe(parser, argv, "scratch.py")
    if args.architecture is None:
        args.architecture = project_file(DEFAULT_ARCHITECTURE)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.batch_size < 1 or args.epochs < 1:
        raise UserError(f"--batch-size and --epochs must be positive, got {args.batch_size} and {args.epochs}")
    # a bad architecture file is refused before any folder, data or model is touched
    architecture = load_architecture(args.architecture)
    if args.evaluate:
        setup_logging()
        return evaluate_checkpoint(args, architecture)

    context = distributed.init(get_device(args.device))
    setup_logging(os.path.join(args.output_dir, "scratch.log"), quiet=not context.is_main)
    if args.recipe:
        logger.info("defaults from %s", args.recipe)
    try:
        train(args, architecture, context)
    finally:
        distributed.shutdown(context)


def train(args, architecture, context):
    set_seed(args.seed)
    device = context.device
    set_cpu_threads(device, context)
    batch_size = distributed.per_process_batch_size(args.batch_size, context)
    train_loader = make_loader(args, "train", device, batch_size=batch_size, context=context)
    val_loader = make_loader(args, "val", device, classes=train_loader.classes, batch_size=batch_size,
                             context=context)
    logger.info("data: %d train / %d val images, %d classes, %s loader, %d steps per epoch; %d process(es) on %s, "
                "%d images each a step", len(train_loader.files), len(val_loader.files), train_loader.num_classes,
                train_loader.backend, len(train_loader), context.world_size, device.type, batch_size)

    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=train_loader.num_classes, affine=True,
                                architecture=architecture, small_input=args.small_input)
    log_architecture(args.architecture, architecture, model)
    prepare_model(model, device, args.channels_last)
    autocast_dtype = compute_dtype(args.precision, device)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    learning_rate = scaled_learning_rate(args.learning_rate, args.batch_size, args.reference_batch_size)
    logger.info("learning rate %.4g (%.4g for %d images a step, scaled to the global batch of %d), %s decay",
                learning_rate,
                args.learning_rate, args.reference_batch_size, args.batch_size, args.lr_decay)
    optimizer = make_optimizer(model, learning_rate, args.momentum, args.weight_decay)
    steps = len(train_loader)
    scheduler = make_lr_scheduler(optimizer, args.epochs * steps, args.lr_decay)

    start_epoch, history = 0, []  # history: [top-1, top-5] on val after each epoch
    state_path = os.path.join(args.output_dir, STATE_FILE)
    # what a saved state must have been trained for to be continued: this net, the same data and steps an epoch
    identity = {"architecture": list(architecture), "dataset": describe_dataset(train_loader),
                "--batch-size": args.batch_size, "--small-input": args.small_input}
    if args.resume:
        state = resume_training(args.output_dir, STATE_FILE, args.epochs, model, optimizer, scheduler,
                                expect=identity, repair=context.is_main)
        if state:
            start_epoch, history = state["epoch"], [list(h) for h in state.get("history", [])]
            train_loader.set_epoch(start_epoch)  # the shuffle the interrupted run would have used next
    trained_model = distributed.wrap(model, context, supernet=False)
    # only now: a refused resume leaves the run it was pointed at as it was
    if context.is_main:
        save_args(args, args.output_dir)
        write_architecture(os.path.join(args.output_dir, "architecture.json"), architecture)

    from torch.utils.tensorboard import SummaryWriter

    # after a resume, hide what the interrupted run logged past its last saved state (all of it when nothing was
    # saved); rank 0 alone writes
    writer = (SummaryWriter(log_dir=args.tb_dir, purge_step=start_epoch * steps if args.resume else None)
              if context.is_main else _NoWriter())
    try:
        for epoch in range(start_epoch, args.epochs):
            started = time.perf_counter()
            train_criterion = TrainScalars(criterion, writer, optimizer, global_step=epoch * steps)
            train_stats = train_one_epoch(trained_model, train_loader, train_criterion, optimizer, scheduler, epoch,
                                          args.epochs, args.log_frequency, autocast_dtype=autocast_dtype)
            val_stats = evaluate(model, val_loader, criterion, autocast_dtype=autocast_dtype)
            history.append([val_stats["top1"], val_stats["top5"]])
            writer.flush()  # the epoch's training scalars, before the state that keeps them
            if context.is_main:  # the state first: see spos/checkpoint.py
                save_training_state(state_path, epoch + 1, model, optimizer, scheduler,
                                    extra={**identity, "history": history})
                # val scalars are stepped by epoch, out of purge_step's reach (it counts training steps), so they
                # are logged once the state keeps their epoch, never for one a resumed run trains again (a kill
                # in the instant before the flush loses them; top-1 and top-5 stay in the state's history)
                writer.add_scalar("loss/test", val_stats["loss"], global_step=epoch)
                writer.add_scalar("acc1/test", val_stats["top1"], global_step=epoch)
                writer.add_scalar("acc5/test", val_stats["top5"], global_step=epoch)
                writer.flush()
                save_weights(args.output_dir, epoch + 1, model.state_dict(), model.options())
            distributed.barrier(context)
            logger.info("Epoch [%d/%d] done in %.1f s: train loss %.4f top1 %.4f (%.0f img/s) | "
                        "val loss %.4f top1 %.4f top5 %.4f | saved epoch_%d.pth.tar",
                        epoch + 1, args.epochs, time.perf_counter() - started, train_stats["loss"],
                        train_stats["top1"], train_stats["images_per_s"], val_stats["loss"], val_stats["top1"],
                        val_stats["top5"], epoch + 1)
    finally:
        writer.close()
    if history:
        best = max(range(len(history)), key=lambda e: history[e][0])
        logger.info("best val top-1 %.4f top-5 %.4f (epoch %d); last (epoch %d) top-1 %.4f top-5 %.4f",
                    history[best][0], history[best][1], best + 1, len(history), history[-1][0], history[-1][1])


def make_loader(args, split, device, classes=None, batch_size=None, context=None):
    context = context or distributed.Context(device=device)
    return ImageFolderLoader(args.imagenet_dir, split, train=split == "train", batch_size=batch_size or args.batch_size,
                             input_size=args.input_size, spos_preprocessing=args.spos_preprocessing,
                             workers=args.workers, backend=args.loader, device=device, seed=args.seed,
                             classes=classes, shard_id=context.rank, num_shards=context.world_size)


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


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def architecture_flops(architecture, input_size, n_classes, small_input=False):
    """FLOPs of the from-scratch net: from NNI's table when it covers this size, computed otherwise."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        net = ShuffleNetV2OneShot(input_size=input_size, n_classes=n_classes, affine=True, architecture=architecture,
                                  small_input=small_input)
        try:
            return net.get_candidate_flops(), net
        except UserError:  # the table only holds the sizes it was made for
            net = ShuffleNetV2OneShot(input_size=input_size, n_classes=n_classes, affine=True,
                                      architecture=architecture, op_flops_path=None, small_input=small_input)
            return net.get_candidate_flops(), net


def log_architecture(path, architecture, model):
    flops, _ = architecture_flops(architecture, model.input_size, model.n_classes, model.small_input)
    paper_flops, paper_net = architecture_flops(architecture, PAPER_INPUT_SIZE, PAPER_CLASSES)
    logger.info("architecture %s: %s", path, format_choices(architecture))
    logger.info("FLOPs %.2fM at %dx%d and %d classes (%.1fM at %dx%d and %d classes, as the paper counts)",
                flops / 1e6, model.input_size, model.input_size, model.n_classes, paper_flops / 1e6,
                PAPER_INPUT_SIZE, PAPER_INPUT_SIZE, PAPER_CLASSES)
    logger.info("parameters %.2fM with %d classes (%.2fM with %d)", count_parameters(model) / 1e6, model.n_classes,
                count_parameters(paper_net) / 1e6, PAPER_CLASSES)


def evaluate_checkpoint(args, architecture):
    device = get_device(args.device)
    train_dir = os.path.join(args.imagenet_dir, "train")
    # the labels training used: train's class folders in sorted order (val alone may lack some)
    classes = None
    if os.path.isdir(train_dir):
        classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith(".")) or None
    val_loader = make_loader(args, "val", device, classes=classes)
    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=val_loader.num_classes, affine=True,
                                architecture=architecture, small_input=args.small_input)
    logger.info("architecture %s: %s", args.architecture, format_choices(architecture))
    load_weights(model, args.evaluate)
    prepare_model(model, device, args.channels_last)
    stats = evaluate(fold_batch_norms(model), val_loader, nn.CrossEntropyLoss(label_smoothing=args.label_smoothing),
                     autocast_dtype=compute_dtype(args.precision, device))
    print(f"{args.evaluate}: top-1 {stats['top1']:.4f}  top-5 {stats['top5']:.4f}  loss {stats['loss']:.4f}  "
          f"on {stats['images']} val images of {args.imagenet_dir}", flush=True)
    return stats


if __name__ == "__main__":
    run_main(main)
