"""Step 1 of SPOS: train the ShuffleNetV2 one-shot supernet, one FLOPs-binned uniform random path a step.

Writes ``<output-dir>/epoch_{e}.pth.tar`` (weights for tester.py and scratch.py) and
``<output-dir>/training_state.pth.tar`` (what ``--resume`` continues from) after every epoch.
"""
import os

# Before torch loads OpenMP: its threads spin while they wait, which starves DALI's threads and any other
# process sharing the CPU (an epoch on digits on 2 busy cores took 66 s instead of 13 s). Set it to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

from torch import nn  # noqa: E402

import distributed  # noqa: E402
from checkpoint import (describe_dataset, resume_training, save_training_state, save_weights,  # noqa: E402
                        set_seed)
from dataloader import ImageFolderLoader  # noqa: E402
from errors import UserError, run_main  # noqa: E402
from hardware import compute_dtype, get_device, prepare_model  # noqa: E402
from logs import logger, save_args, setup_logging  # noqa: E402
from loops import evaluate, train_one_epoch  # noqa: E402
from network import NUM_LAYERS, FlopsBinnedSampler, ShuffleNetV2OneShot, load_weights  # noqa: E402
from optim import make_lr_scheduler, make_optimizer, scaled_learning_rate  # noqa: E402
from options import add_data_arguments, add_optimisation_arguments, add_performance_arguments  # noqa: E402

OFFICIAL_CHECKPOINT = "./data/checkpoint-150000.pth.tar"
STATE_FILE = "training_state.pth.tar"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser, workers=4)
    add_optimisation_arguments(parser, batch_size=768, epochs=120)
    add_performance_arguments(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--output-dir", default="./checkpoints")
    group.add_argument("--load-checkpoint", nargs="?", const=OFFICIAL_CHECKPOINT, default=None, metavar="PATH",
                       help=f"start from these supernet weights (default {OFFICIAL_CHECKPOINT})")
    group.add_argument("--resume", action="store_true", default=False,
                       help=f"continue from <output-dir>/{STATE_FILE}")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--log-frequency", type=int, default=10)
    group.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def main(argv=None):
    """Train; returns each epoch's train and val statistics (of this run, after any resumed epochs)."""
    args = parse_args(argv)
    context = distributed.init(get_device(args.device))
    setup_logging(os.path.join(args.output_dir, "supernet.log"), quiet=not context.is_main)
    try:
        return train(args, context)
    finally:
        distributed.shutdown(context)


def train(args, context):
    if args.batch_size < 1 or args.epochs < 1:
        raise UserError(f"--batch-size and --epochs must be positive, got {args.batch_size} and {args.epochs}")
    batch_size = distributed.per_process_batch_size(args.batch_size, context)
    set_seed(args.seed)
    device = context.device

    loader_args = dict(input_size=args.input_size, spos_preprocessing=args.spos_preprocessing, workers=args.workers,
                       backend=args.loader, device=device, seed=args.seed, shard_id=context.rank,
                       num_shards=context.world_size)
    train_loader = ImageFolderLoader(args.imagenet_dir, "train", train=True, batch_size=batch_size, **loader_args)
    val_loader = ImageFolderLoader(args.imagenet_dir, "val", train=False, batch_size=batch_size,
                                   classes=train_loader.classes, **loader_args)
    logger.info("data: %d train / %d val images, %d classes, %s loader, %d steps per epoch; %d process(es) on %s, "
                "%d images each a step", len(train_loader.files), len(val_loader.files), train_loader.num_classes,
                train_loader.backend, len(train_loader), context.world_size, device.type, batch_size)

    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=train_loader.num_classes, affine=False)
    if args.load_checkpoint:
        if not args.spos_preprocessing:
            logger.warning("official checkpoints expect --spos-preprocessing")
        load_weights(model, args.load_checkpoint)
        logger.info("loaded supernet weights from %s", args.load_checkpoint)
    prepare_model(model, device, args.channels_last)
    autocast_dtype = compute_dtype(args.precision, device)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    learning_rate = scaled_learning_rate(args.learning_rate, args.batch_size, args.reference_batch_size)
    logger.info("learning rate %.4g (%.4g for %d images a step, scaled to the global batch of %d)", learning_rate,
                args.learning_rate, args.reference_batch_size, args.batch_size)
    optimizer = make_optimizer(model, learning_rate, args.momentum, args.weight_decay)
    scheduler = make_lr_scheduler(optimizer, args.epochs * len(train_loader), "linear")
    path_rng = random.Random(args.seed)
    sample_architecture = distributed.shared_draw(FlopsBinnedSampler(model, path_rng), context)
    # the sampler's FLOPs table is counted on throwaway blocks whose init draws from torch's generator: count it
    # now, before a resume restores that generator, so that a resumed run draws the dropout masks (and so
    # trains the weights) an uninterrupted run does
    model.get_candidate_flops((0,) * NUM_LAYERS)
    trained_model = distributed.wrap(model, context, supernet=True)

    start_epoch = 0
    state_path = os.path.join(args.output_dir, STATE_FILE)
    # what a saved state must have been trained on to be continued: the same data, the same steps an epoch
    identity = {"dataset": describe_dataset(train_loader), "--batch-size": args.batch_size}
    if args.resume:
        state = resume_training(args.output_dir, STATE_FILE, args.epochs, model, optimizer, scheduler,
                                expect=identity, repair=context.is_main, paths=path_rng)
        if state:
            start_epoch = state["epoch"]
            train_loader.set_epoch(start_epoch)
    # only now: a refused resume leaves the run it was pointed at as it was
    if context.is_main:
        save_args(args, args.output_dir)

    history = []
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        train_stats = train_one_epoch(trained_model, train_loader, criterion, optimizer, scheduler, epoch,
                                      args.epochs, args.log_frequency, sample_architecture, autocast_dtype)
        # the same random paths every epoch, so validation numbers compare across epochs
        # (drawn by every process alike without talking: shards may differ by a batch)
        val_stats = evaluate(model, val_loader, criterion,
                             sample_architecture=FlopsBinnedSampler(model, random.Random(args.seed)),
                             autocast_dtype=autocast_dtype)
        if context.is_main:  # the state first: see checkpoint.py
            save_training_state(state_path, epoch + 1, model, optimizer, scheduler, extra=identity,
                                paths=path_rng)
            save_weights(args.output_dir, epoch + 1, model.state_dict())
        distributed.barrier(context)
        logger.info("Epoch [%d/%d] done in %.1f s: train loss %.4f top1 %.4f (%.0f img/s) | "
                    "val on random paths loss %.4f top1 %.4f top5 %.4f (%d images) | saved epoch_%d.pth.tar",
                    epoch + 1, args.epochs, time.perf_counter() - started, train_stats["loss"], train_stats["top1"],
                    train_stats["images_per_s"], val_stats["loss"], val_stats["top1"], val_stats["top5"],
                    val_stats["images"], epoch + 1)
        history.append({"epoch": epoch + 1, "train": train_stats, "val": val_stats})
    return history


if __name__ == "__main__":
    run_main(main)
