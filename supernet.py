"""Step 1 of SPOS: train the ShuffleNetV2 one-shot supernet, one FLOPs-binned uniform random path a step.

Writes ``<output-dir>/epoch_{e}.pth.tar`` (weights, with the network options tester.py rebuilds the supernet
with) and ``<output-dir>/training_state.pth.tar`` (what ``--resume`` continues from) after every epoch.

Defaults are Megvii's (ImageNet); a dataset may ship other defaults in ``recipe.json`` beside itself (the digits
do: 32x32 input, batch 64 and a warm start). ``--warm-start-steps N`` first trains one template path and gives
its function to every choice of every layer (spos/warm_start.py), so that a supernet learns small data in minutes.
"""
import argparse
import random

from dataloader import HOLDOUT
from network import FlopsBinnedSampler, ShuffleNetV2OneShot, load_weights, random_architecture
from spos import distributed, training, warm_start
from spos.optim import make_optimizer
from spos.options import (OFFICIAL_CHECKPOINT, add_data_arguments, add_optimisation_arguments,
                          add_performance_arguments, add_run_arguments, add_small_input_argument,
                          parse_args_with_recipe)
from utils import UserError, logger, run_main


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
    group = add_run_arguments(parser, output_dir="./checkpoints")
    group.add_argument("--load-checkpoint", nargs="?", const=OFFICIAL_CHECKPOINT, default=None, metavar="PATH",
                       help=f"start from these supernet weights (default {OFFICIAL_CHECKPOINT})")
    return parse_args_with_recipe(parser, argv, "supernet.py")


def main(argv=None):
    """Train; returns each epoch's train and val statistics (of this run, after any resumed epochs)."""
    args = parse_args(argv)
    if args.warm_start_steps and args.load_checkpoint:
        raise UserError("--warm-start-steps replaces the weights of every choice: it starts from random weights, "
                        "not from --load-checkpoint; give one of them")
    if args.warm_start_steps < 0 or args.warm_start_fit_steps < 0:
        raise UserError(f"--warm-start-steps and --warm-start-fit-steps must be 0 or more, got "
                        f"{args.warm_start_steps} and {args.warm_start_fit_steps}")
    with training.training_process(args, "supernet.log") as context:
        return train(args, context)


def train(args, context):
    # the supernet's own validation: the held-out images when there are some (val/ is then the test data)
    loaders = training.make_loaders(args, context, validate_on=HOLDOUT if args.holdout_per_class else "val")
    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=loaders[0].num_classes, affine=False,
                                channel_search=args.channel_search, small_input=args.small_input)
    if args.load_checkpoint:
        if not args.spos_preprocessing:
            logger.warning("official checkpoints expect --spos-preprocessing")
        load_weights(model, args.load_checkpoint)
        logger.info("loaded supernet weights from %s", args.load_checkpoint)
    path_rng = random.Random(args.seed)
    run = training.start_run(args, context, model, loaders, generators={"paths": path_rng},
                             identity={"--warm-start-steps": args.warm_start_steps,
                                       "--channel-search": args.channel_search})
    # the sampler's FLOPs table is counted on throwaway blocks whose init draws from torch's generator: count it
    # now, before a resume restores that generator, so that a resumed run draws the dropout masks (and so
    # trains the weights) an uninterrupted run does
    model.get_candidate_flops(random_architecture(random.Random(0), args.channel_search))
    resumed = run.resume()
    if args.warm_start_steps and not resumed:
        run_warm_start(args, run)
        if context.is_main:  # a state after no epoch: a resume from here does not warm up again
            run.save_state(0)
        distributed.barrier(context)
    # the same random paths every epoch, so validation numbers compare across epochs (drawn by every process alike
    # without talking: shards may differ by a batch); BN statistics are the supernet's running ones, mixed over all
    # paths: `python -m spos.random_paths` scores paths recalibrated, as the search does
    return training.train_epochs(
        run, supernet=True,
        sample_architecture=distributed.shared_draw(FlopsBinnedSampler(model, path_rng), context),
        validation_sampler=lambda: FlopsBinnedSampler(model, random.Random(args.seed)),
        val_name=f"{'held-out' if args.holdout_per_class else 'val'} on random paths (BN not recalibrated)")


def run_warm_start(args, run):
    """warm_start.warm_start on this process's batches (on the bare model: DDP's gradient hooks would count blocks
    used that no sampled path uses); under torchrun every process then takes rank 0's result, so that all start
    path sampling from the same weights."""
    def batches():
        while True:
            yield from run.train_loader

    logger.info("warm start: %d steps of the template path, then %d steps fitting the Xception blocks",
                args.warm_start_steps, args.warm_start_fit_steps)
    optimizer = make_optimizer(run.model, run.optimisation.learning_rate, args.momentum, args.weight_decay)
    warm_start.warm_start(run.model, batches(), args.warm_start_steps, args.warm_start_fit_steps,
                          run.optimisation.criterion, optimizer, args.log_frequency)
    distributed.broadcast_weights(run.model, run.context)


if __name__ == "__main__":
    run_main(main)
