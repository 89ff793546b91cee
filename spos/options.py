"""The command-line flags the steps share, grouped by purpose (NNI's names and defaults), and the recipe a dataset
may ship beside itself (``recipe.json``): other defaults for the flags of each step, for data unlike ImageNet."""
import argparse
import json
import os

from utils import UserError

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder above spos/
RECIPE_FILE = "recipe.json"
DEFAULT_SEED = 42  # NNI's
# Megvii's trained supernet, where NNI's example expects it
OFFICIAL_CHECKPOINT = "./data/checkpoint-150000.pth.tar"
# flags a recipe may not set: where things are, what to resume, and the dataset itself
_NOT_IN_RECIPES = {"help", "imagenet_dir", "output_dir", "resume", "checkpoint", "load_checkpoint", "device",
                   "architecture", "fixed_arc", "evaluate", "tb_dir", "cache_dir", "search_config", "evolution"}


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
    group.add_argument("--holdout-per-class", type=int, default=0, metavar="N",
                       help="train on train/ less N images a class held out of it (the same ones in every step, by a "
                            "fixed seed), which the search scores candidates on and the supernet validates on, so "
                            "that val/ is the test data no choice saw (the paper: 50 of ImageNet's); scratch.py "
                            "still reports on val/. 0: no holdout, the search on val/, as NNI's example")
    return group


def add_small_input_argument(group):
    """``--small-input``, of the steps that build a network from flags (tester.py reads it from the checkpoint)."""
    group.add_argument("--small-input", action=argparse.BooleanOptionalAction, default=False,
                       help="a stride-1 first conv for small images (32x32): the stages run on 32..2 maps, where "
                            "every kernel choice matters, at 4x the compute; no official checkpoint has it")


def add_scoring_arguments(parser):
    """The flags of the commands that score paths of a trained supernet as NNI's tester did (tester.py, the
    in-process search, the random-path check): the data, the supernet, the recalibration and evaluation batches,
    how and where it runs (NNI's names and defaults). Their recipe section is "tester.py"."""
    group = add_data_arguments(parser, workers=6)
    parser.set_defaults(input_size=None)  # the checkpoint's: see scoring.resolve_scoring_arguments
    group.add_argument("--train-batch-size", type=int, default=128, help="batch for BN recalibration")
    group.add_argument("--test-batch-size", type=int, default=512)
    group.add_argument("--cache-dir", default=None,
                       help="keep the decoded recalibration and val tensors in a file here, which later trials "
                            "load instead of decoding the same images (ImageNet: tens of GB; digits: 20 MB)")
    group = parser.add_argument_group("evaluation")
    group.add_argument("--checkpoint", default=OFFICIAL_CHECKPOINT,
                       help="supernet weights (official or supernet.py's); a folder means its newest epoch_N.pth.tar")
    group.add_argument("--train-iters", type=int, default=200,
                       help="training batches for BN recalibration; 0 keeps the checkpoint's statistics")
    add_performance_arguments(parser)
    add_device_arguments(parser.add_argument_group("run"))
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


def add_run_arguments(parser, output_dir):
    """Where a training run writes, whether it continues, where it runs, how often it logs, its seed (NNI's names
    and defaults); returns the group for more."""
    group = parser.add_argument_group("run")
    group.add_argument("--output-dir", default=output_dir)
    group.add_argument("--resume", action="store_true", default=False,
                       help="continue from <output-dir>/training_state.pth.tar (start the run when there is none)")
    add_device_arguments(group)
    return group


def add_device_arguments(group):
    """Where a step runs, how often it logs, its seed."""
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--log-frequency", type=int, default=10)
    group.add_argument("--seed", type=int, default=DEFAULT_SEED)
    return group


def parse_args_with_recipe(parser, argv, script):
    """Parse ``argv``; each flag it does not give takes its value from the ``script`` section of
    ``<--imagenet-dir>/recipe.json`` when the dataset ships one, else the parser's default. Megvii's defaults are
    for ImageNet; a small dataset says beside itself what suits it (as preprocessing.json does for augmentation).
    Returns the arguments, with ``recipe`` the file read (or None)."""
    args = parser.parse_args(argv)
    path = os.path.join(args.imagenet_dir, RECIPE_FILE)
    if not os.path.exists(path):
        args.recipe = None
        return args
    try:
        with open(path) as f:
            recipe = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None
    section = recipe.get(script, {}) if isinstance(recipe, dict) else None
    if not isinstance(section, dict):
        raise UserError(f"{path}: expected an object of per-script objects, e.g. "
                        f"{{\"{script}\": {{\"batch_size\": 64}}}}")
    actions = {action.dest: action for action in parser._actions if action.dest not in _NOT_IN_RECIPES}
    for key, value in section.items():
        action = actions.get(key)
        if action is None:
            raise UserError(f"{path}: {script}: {key!r} is not a flag a recipe can set (one of "
                            f"{', '.join(sorted(actions))})")
        kind = _value_kind(action)
        if action.nargs in ("+", "*"):  # a list flag (--epochs 1 4): a JSON list of such values
            if not isinstance(value, list) or not all(_is_kind(item, kind) for item in value) or (
                    action.nargs == "+" and not value):
                raise UserError(f"{path}: {script}: {key} must be a list of {kind.split(' ', 1)[-1]}s, got {value!r}")
        elif not _is_kind(value, kind):
            raise UserError(f"{path}: {script}: {key} must be {kind}, got {value!r}")
        if action.choices is not None and not all(
                item in action.choices for item in (value if isinstance(value, list) else [value])):
            raise UserError(f"{path}: {script}: {key} must be one of {list(action.choices)}, got {value!r}")
    parser.set_defaults(**section)
    args = parser.parse_args(argv)
    args.recipe = path if section else None
    return args


def _value_kind(action):
    if action.type is None and isinstance(action.default, bool):  # store_true, BooleanOptionalAction
        return "true or false"
    return {int: "an integer", float: "a number"}.get(action.type, "a string")


def _is_kind(value, kind):
    if kind == "true or false":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return {"an integer": isinstance(value, int), "a number": isinstance(value, (int, float))}.get(
        kind, isinstance(value, str))


def project_file(name):
    """The default for a file the project ships (architecture_final.json, config_search.yml): the working
    folder's own when it has one, else the project's, so that a step runs from any folder."""
    return name if os.path.exists(name) else os.path.join(PROJECT_DIR, name)
