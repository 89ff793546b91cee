"""The command-line flags the steps share, grouped by purpose (NNI's names and defaults)."""
import argparse
import os

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))


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


def project_file(name):
    """The default for a file the project ships (architecture_final.json, config_search.yml): the working
    folder's own when it has one, else the project's, so that a step runs from any folder."""
    return name if os.path.exists(name) else os.path.join(PROJECT_DIR, name)
