"""Step 1 of SPOS: train the ShuffleNetV2 one-shot supernet, one FLOPs-binned uniform random path a step.

Writes ``<output-dir>/epoch_{e}.pth.tar`` (weights, with the network options tester.py rebuilds the supernet
with) and ``<output-dir>/training_state.pth.tar`` (what ``--resume`` continues from) after every epoch.

Defaults are Megvii's (ImageNet); a dataset may ship other defaults in ``recipe.json`` beside itself (the digits
do: 32x32 input, batch 64 and a warm start). ``--warm-start-steps N`` first trains one template path and gives
its function to every choice of every layer (spos/warm_start.py), so that a supernet learns small data in minutes.
"""
import argparse
import os
import random
import time

from torch import nn

from dataloader import ImageFolderLoader
from network import FlopsBinnedSampler, ShuffleNetV2OneShot, load_weights, random_architecture
from spos import distributed, warm_start
from spos.checkpoint import (describe_dataset, kill_point_for_tests, resume_training, save_training_state, save_weights,
                             set_seed)
from spos.hardware import compute_dtype, get_device, prepare_model, set_cpu_threads
from spos.loops import evaluate, train_one_epoch
from spos.optim import make_lr_scheduler, make_optimizer, scaled_learning_rate
from spos.options import (OFFICIAL_CHECKPOINT, add_data_arguments, add_optimisation_arguments,
                          add_performance_arguments, add_small_input_argument, parse_args_with_recipe)
from utils import UserError, logger, run_main, save_args, setup_logging

STATE_FILE = "training_state.pth.tar"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_small_input_argument(add_data_arguments(parser, workers=4))
    add_optimisation_arguments(parser, batch_size=768, epochs=120)
    group = parser.add_argument_group("search space")
    group.add_argument("--channel-search", action="store_true", default=False,
                       help="also search each block's middle channels (0.2x..1.6x): blocks hold 1.6x the channels "
                            "and each step's path takes a block and a width per layer (SPEC section 13)")
    group = parser.add_argument_group("warm start (small data; see spos/warm_start.py)")
    group.add_argument("--warm-start-steps", type=int, default=0,
                       help="steps of the template path before path sampling starts; 0: Megvii's recipe")
    group.add_argument("--warm-start-fit-steps", type=int, default=200,
                       help="steps fitting the Xception blocks to the template's (with --warm-start-steps)")
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
    return parse_args_with_recipe(parser, argv, "supernet.py")


def main(argv=None):
    """Train; returns each epoch's train and val statistics (of this run, after any resumed epochs)."""
    args = parse_args(argv)
    context = distributed.init(get_device(args.device))
    setup_logging(os.path.join(args.output_dir, "supernet.log"), quiet=not context.is_main)
    if args.recipe:
        logger.info("defaults from %s", args.recipe)
    try:
        return train(args, context)
    finally:
        distributed.shutdown(context)


def train(args, context):
    if args.batch_size < 1 or args.epochs < 1:
        raise UserError(f"--batch-size and --epochs must be positive, got {args.batch_size} and {args.epochs}")
    if args.warm_start_steps and args.load_checkpoint:
        raise UserError("--warm-start-steps replaces the weights of every choice: it starts from random weights, "
                        "not from --load-checkpoint; give one of them")
    if args.warm_start_steps < 0 or args.warm_start_fit_steps < 0:
        raise UserError(f"--warm-start-steps and --warm-start-fit-steps must be 0 or more, got "
                        f"{args.warm_start_steps} and {args.warm_start_fit_steps}")
    batch_size = distributed.per_process_batch_size(args.batch_size, context)
    set_seed(args.seed)
    device = context.device
    set_cpu_threads(device, context)

    loader_args = dict(input_size=args.input_size, spos_preprocessing=args.spos_preprocessing, workers=args.workers,
                       backend=args.loader, device=device, seed=args.seed, shard_id=context.rank,
                       num_shards=context.world_size)
    train_loader = ImageFolderLoader(args.imagenet_dir, "train", train=True, batch_size=batch_size, **loader_args)
    val_loader = ImageFolderLoader(args.imagenet_dir, "val", train=False, batch_size=batch_size,
                                   classes=train_loader.classes, **loader_args)
    logger.info("data: %d train / %d val images, %d classes, %s loader, %d steps per epoch; %d process(es) on %s, "
                "%d images each a step", len(train_loader.files), len(val_loader.files), train_loader.num_classes,
                train_loader.backend, len(train_loader), context.world_size, device.type, batch_size)

    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=train_loader.num_classes, affine=False,
                                channel_search=args.channel_search, small_input=args.small_input)
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
    model.get_candidate_flops(random_architecture(random.Random(0), args.channel_search))

    start_epoch, state = 0, None
    state_path = os.path.join(args.output_dir, STATE_FILE)
    # what a saved state must have been trained on to be continued: the same data, the same steps an epoch
    identity = {"dataset": describe_dataset(train_loader), "--batch-size": args.batch_size,
                "--warm-start-steps": args.warm_start_steps, "--channel-search": args.channel_search,
                "--small-input": args.small_input}
    extra = {**identity, "network": model.options()}
    if args.resume:
        state = resume_training(args.output_dir, STATE_FILE, args.epochs, model, optimizer, scheduler,
                                expect=identity, repair=context.is_main, paths=path_rng)
        if state:
            start_epoch = state["epoch"]
    # only now: a refused resume leaves the run it was pointed at as it was
    if context.is_main:
        save_args(args, args.output_dir)
    if args.warm_start_steps and state is None:
        run_warm_start(args, model, train_loader, criterion, learning_rate, context)
        if context.is_main:  # a state after no epoch: a resume from here does not warm up again
            save_training_state(state_path, 0, model, optimizer, scheduler, extra=extra, paths=path_rng)
            kill_point_for_tests("after-warm-start")
        distributed.barrier(context)
    # wrapped only now: DDP's gradient hooks would fire in the warm start's backward passes (which train the
    # bare model, each process on its own) and leave its reducer counting blocks used that the first
    # sampled path does not use ("gradient which is undefined, but still allreduced")
    trained_model = distributed.wrap(model, context, supernet=True)
    distributed.check_same_parameters(model, context, "before path sampling")
    # the shuffle of the first epoch to train, whatever passes the warm start made over the data, so that a run
    # resumed after the warm start trains on the batches the uninterrupted one does
    train_loader.set_epoch(start_epoch)

    history = []
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        train_stats = train_one_epoch(trained_model, train_loader, criterion, optimizer, scheduler, epoch,
                                      args.epochs, args.log_frequency, sample_architecture, autocast_dtype)
        # the same random paths every epoch, so validation numbers compare across epochs (drawn by every process
        # alike without talking: shards may differ by a batch); BN statistics are the supernet's running ones,
        # mixed over all paths: `tester.py --random-paths` scores paths recalibrated, as the search does
        distributed.check_same_parameters(model, context, f"after epoch {epoch + 1}")
        val_stats = evaluate(model, val_loader, criterion,
                             sample_architecture=FlopsBinnedSampler(model, random.Random(args.seed)),
                             autocast_dtype=autocast_dtype)
        if context.is_main:  # the state first: see spos/checkpoint.py
            save_training_state(state_path, epoch + 1, model, optimizer, scheduler, extra=extra, paths=path_rng)
            save_weights(args.output_dir, epoch + 1, model.state_dict(), model.options())
        distributed.barrier(context)
        logger.info("Epoch [%d/%d] done in %.1f s: train loss %.4f top1 %.4f (%.0f img/s) | "
                    "val on random paths, BN not recalibrated: loss %.4f top1 %.4f top5 %.4f (%d images) | saved "
                    "epoch_%d.pth.tar",
                    epoch + 1, args.epochs, time.perf_counter() - started, train_stats["loss"], train_stats["top1"],
                    train_stats["images_per_s"], val_stats["loss"], val_stats["top1"], val_stats["top5"],
                    val_stats["images"], epoch + 1)
        history.append({"epoch": epoch + 1, "train": train_stats, "val": val_stats})
    return history


def run_warm_start(args, model, train_loader, criterion, learning_rate, context):
    """warm_start.warm_start on this process's batches; under torchrun every process then takes rank 0's
    result, so that all start path sampling from the same weights."""
    def batches():
        while True:
            yield from train_loader

    logger.info("warm start: %d steps of the template path, then %d steps fitting the Xception blocks",
                args.warm_start_steps, args.warm_start_fit_steps)
    optimizer = make_optimizer(model, learning_rate, args.momentum, args.weight_decay)
    warm_start.warm_start(model, batches(), args.warm_start_steps, args.warm_start_fit_steps, criterion, optimizer,
                          args.log_frequency)
    distributed.broadcast_weights(model, context)


if __name__ == "__main__":
    run_main(main)
