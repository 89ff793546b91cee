"""Step 3 of SPOS: train the found architecture from scratch (only its chosen blocks, BN with affine).

    python scratch.py --fixed-arc architecture_final.json

Writes ``<output-dir>/epoch_{e}.pth.tar`` (``{'state_dict': ...}``) and ``<output-dir>/training_state.pth.tar``
(what ``--resume`` continues from) after every epoch, and NNI's TensorBoard scalars into ``--tb-dir``:
``lr``, ``loss/train``, ``acc1/train``, ``acc5/train`` every step, ``loss/test``, ``acc1/test``,
``acc5/test`` every epoch. ``--evaluate CHECKPOINT`` only measures a saved net on the val split.
"""
import argparse
import os

from torch import nn

from dataloader import ImageFolderLoader
from network import (PAPER_CLASSES, PAPER_INPUT_SIZE, ShuffleNetV2OneShot, architecture_flops, architecture_net,
                     count_parameters, fold_batch_norms, load_weights)
from spos import training
from spos.architecture import format_choices, load_architecture, write_architecture
from spos.hardware import compute_dtype, get_device, prepare_model
from spos.loops import evaluate
from spos.options import (add_data_arguments, add_optimisation_arguments, add_performance_arguments,
                          add_run_arguments, add_small_input_argument, parse_args_with_recipe, project_file)
from utils import logger, run_main, setup_logging

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
    group = add_run_arguments(parser, output_dir="./scratch_checkpoints")
    group.add_argument("--tb-dir", default="runs", help="TensorBoard log folder")
    group.add_argument("--evaluate", metavar="CHECKPOINT", default=None,
                       help="only evaluate these weights on the val split and print top-1/top-5")
    args = parse_args_with_recipe(parser, argv, "scratch.py")
    if args.architecture is None:
        args.architecture = project_file(DEFAULT_ARCHITECTURE)
    return args


def main(argv=None):
    args = parse_args(argv)
    # a bad architecture file is refused before any folder, data or model is touched
    architecture = load_architecture(args.architecture)
    if args.evaluate:
        setup_logging()
        return evaluate_checkpoint(args, architecture)
    with training.training_process(args, "scratch.log") as context:
        train(args, architecture, context)


def train(args, architecture, context):
    loaders = training.make_loaders(args, context)
    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=loaders[0].num_classes, affine=True,
                                architecture=architecture, small_input=args.small_input)
    log_architecture(args.architecture, architecture, model)
    run = training.start_run(args, context, model, loaders, identity={"architecture": list(architecture)},
                             lr_decay=args.lr_decay)
    run.resume()
    if context.is_main:
        write_architecture(os.path.join(args.output_dir, "architecture.json"), architecture)
    tensorboard = training.open_tensorboard(run, args.tb_dir)
    try:
        training.train_epochs(run, supernet=False, tensorboard=tensorboard)
    finally:
        tensorboard.close()


def log_architecture(path, architecture, model):
    flops = architecture_flops(architecture, model.input_size, model.n_classes, model.small_input)
    paper_flops = architecture_flops(architecture, PAPER_INPUT_SIZE, PAPER_CLASSES)
    logger.info("architecture %s: %s", path, format_choices(architecture))
    logger.info("FLOPs %.2fM at %dx%d and %d classes (%.1fM at %dx%d and %d classes, as the paper counts)",
                flops / 1e6, model.input_size, model.input_size, model.n_classes, paper_flops / 1e6,
                PAPER_INPUT_SIZE, PAPER_INPUT_SIZE, PAPER_CLASSES)
    logger.info("parameters %.2fM with %d classes (%.2fM with %d)", count_parameters(model) / 1e6, model.n_classes,
                count_parameters(architecture_net(architecture)) / 1e6, PAPER_CLASSES)


def evaluate_checkpoint(args, architecture):
    device = get_device(args.device)
    train_dir = os.path.join(args.imagenet_dir, "train")
    # the labels training used: train's class folders in sorted order (val alone may lack some)
    classes = None
    if os.path.isdir(train_dir):
        classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith(".")) or None
    val_loader = ImageFolderLoader(args.imagenet_dir, "val", train=False, batch_size=args.batch_size,
                                   input_size=args.input_size, spos_preprocessing=args.spos_preprocessing,
                                   workers=args.workers, backend=args.loader, device=device, seed=args.seed,
                                   classes=classes)
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
