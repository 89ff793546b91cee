"""The ShuffleNetV2 one-shot supernet of SPOS and its from-scratch form (one definition for all steps).

Module names equal Megvii's, so official checkpoints load with strict=True.
"""
import functools
import os
import pickle

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from blocks import CHOICE_NAMES, PointwiseConv2d, make_block
from utils import UserError

NUM_LAYERS = 20
NUM_CHOICES = len(CHOICE_NAMES)
STAGE_REPEATS = (4, 4, 8, 4)
STAGE_OUT_CHANNELS = (64, 160, 320, 640)
# channel search (SPEC section 13): a block's middle channels are int(base * scale), base = output channels / 2
CHANNEL_SCALES = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)
NUM_SCALES = len(CHANNEL_SCALES)
UNSCALED = CHANNEL_SCALES.index(1.0)  # the scale of every block in block search
WIDEST = NUM_SCALES - 1  # what a channel-search supernet holds
REFERENCE_INPUT_SIZE = 224
# FLOPs limits are in the paper's units: multiply-adds at 224x224 with 1,000 classes, whatever the data
PAPER_INPUT_SIZE, PAPER_CLASSES = 224, 1000
# Megvii's FLOPs table, where NNI's example expects it (optional: FLOPs are computed without it)
OP_FLOPS_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "op_flops_dict.pkl")


def scaled_mid_channels(base_mid, scale_id):
    """Megvii's middle width of a block at scale ``CHANNEL_SCALES[scale_id]`` (int() rounds down, as theirs)."""
    return int(base_mid * CHANNEL_SCALES[scale_id])


def layer_specs(input_size, first_conv_channels=16, small_input=False):
    """(inp, oup, mid_channels, stride, input feature map size) of each of the 20 choice layers, ``mid_channels``
    the unscaled (block search) width."""
    specs = []
    in_channels, fm_size = first_conv_channels, input_size // stem_stride(small_input)
    for repeats, out_channels in zip(STAGE_REPEATS, STAGE_OUT_CHANNELS):
        for i in range(repeats):
            if i == 0:
                specs.append((in_channels, out_channels, out_channels // 2, 2, fm_size))
                fm_size //= 2
            else:
                specs.append((out_channels // 2, out_channels, out_channels // 2, 1, fm_size))
        in_channels = out_channels
    return specs


def stem_stride(small_input):
    """The first conv's stride: 2 (Megvii's), or 1 for small inputs, so that at 32x32 the five stages run on 32..2
    maps instead of 16..1, where a 5x5 or 7x7 kernel sees mostly padding (SPEC section 14; CIFAR ports do this)."""
    return 1 if small_input else 2


def _count_macs(module, input_shape):
    """Multiply-adds of the convolutions and linear layers of ``module``, counted in one pass over a zero input:
    each output element of one costs a row of its weight (in channels per group x kernel area, or in features).
    The same count as torch's FlopCounterMode (tests/test_network.py); a real pass of one small image takes a
    fraction of the time that loading FlopCounterMode, or running shape-only (meta) tensors, costs."""
    macs = 0

    def count(layer, inputs, output):
        nonlocal macs
        macs += output.numel() * layer.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return macs


class _RestrictedUnpickler(pickle.Unpickler):
    """Megvii's FLOPs table holds only dicts, tuples, numbers and strings: refuse anything else."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the table may only hold plain data")


def _read_op_flops_table(path):
    try:
        with open(path, "rb") as f:
            table = _RestrictedUnpickler(f).load()
    except OSError as e:
        raise UserError(f"{path}: cannot read the FLOPs table ({e.strerror or e})") from None
    except Exception as e:  # garbage makes the unpickler raise many kinds (even OverflowError, MemoryError)
        raise UserError(f"{path}: not a readable FLOPs table ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UserError(f"{path}: not a FLOPs table (expected a dict of dicts, got {type(table).__name__})")
    return table


class ShuffleNetV2OneShot(nn.Module):
    """SPOS supernet (``architecture=None``: ``model(x, architecture)``) or the net of one architecture
    (only the chosen blocks exist, at the chosen widths, and ``model(x)`` runs them). An architecture is 20 block
    choices, or with channel search 40 genes: 20 blocks, then 20 scale indices into CHANNEL_SCALES (see
    ``split_architecture``). ``channel_search``: the supernet's blocks hold the widest (1.6x) middle channels and
    a path takes a block and a scale per layer, using the first channels of that block. ``small_input``: a
    stride-1 first conv (``stem_stride``): the same weights' shapes, 4x the compute; no official checkpoint has it."""

    def __init__(self, input_size=224, first_conv_channels=16, last_conv_channels=1024, n_classes=1000,
                 op_flops_path="./data/op_flops_dict.pkl", affine=False, architecture=None, channel_search=False,
                 small_input=False):
        super().__init__()
        if input_size <= 0 or input_size % 32 != 0:
            raise UserError(f"input size must be a positive multiple of 32, got {input_size}")
        self.input_size = input_size
        self.first_conv_channels = first_conv_channels
        self.last_conv_channels = last_conv_channels
        self.n_classes = n_classes
        self.op_flops_path = op_flops_path
        self.architecture = None if architecture is None else validate_architecture(architecture)
        self.channel_search = bool(channel_search) and self.architecture is None
        self.small_input = bool(small_input)
        self._layer_specs = layer_specs(input_size, first_conv_channels, self.small_input)
        self._flops_table = None  # block search: from Megvii's table when present
        self._channel_flops_table = None  # every (block, scale), counted

        self.first_conv = nn.Sequential(
            nn.Conv2d(3, first_conv_channels, 3, stem_stride(self.small_input), 1, bias=False),
            nn.BatchNorm2d(first_conv_channels, affine=affine),
            nn.ReLU(inplace=True),
        )
        if self.architecture is None:
            built_scale = WIDEST if self.channel_search else UNSCALED
            self.features = nn.ModuleList(
                nn.ModuleList(make_block(c, inp, oup, scaled_mid_channels(mid, built_scale), stride, affine)
                              for c in range(NUM_CHOICES))
                for inp, oup, mid, stride, _ in self._layer_specs)
        else:
            blocks, scales = split_architecture(self.architecture)
            self.features = nn.Sequential(*(make_block(c, inp, oup, scaled_mid_channels(mid, s), stride, affine)
                                            for c, s, (inp, oup, mid, stride, _) in zip(blocks, scales,
                                                                                      self._layer_specs)))
        self.conv_last = nn.Sequential(
            PointwiseConv2d(STAGE_OUT_CHANNELS[-1], last_conv_channels),
            nn.BatchNorm2d(last_conv_channels, affine=affine),
            nn.ReLU(inplace=True),
        )
        self.globalpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Sequential(nn.Linear(last_conv_channels, n_classes, bias=False))
        self._initialize_weights()

    def options(self):
        """The arguments this network was built with (its architecture and FLOPs table aside), which
        checkpoints record so that a later step builds the same network without being told."""
        return {"input_size": self.input_size, "first_conv_channels": self.first_conv_channels,
                "last_conv_channels": self.last_conv_channels, "n_classes": self.n_classes,
                "affine": self.first_conv[1].affine, "channel_search": self.channel_search,
                "small_input": self.small_input}

    @property
    def is_supernet(self):
        return self.architecture is None

    def forward(self, x, architecture=None):
        if self.first_conv[0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # a channels-last model (hardware.prepare_model)
        x = self.first_conv(x)
        if self.is_supernet:
            if architecture is None:
                raise ValueError("the supernet needs an architecture: model(x, architecture)")
            if len(architecture) == NUM_LAYERS and not self.channel_search:
                for choices, choice in zip(self.features, architecture):
                    x = choices[choice](x)
            else:
                for choices, choice, mid in zip(self.features, *self.path_widths(architecture)):
                    x = choices[choice](x, mid)
        else:
            x = self.features(x)
        x = self.conv_last(x)
        x = self.globalpool(x).flatten(1)
        x = self.dropout(x)
        return self.classifier(x)

    def path_widths(self, architecture):
        """``(blocks, mids)`` of a supernet path: each layer's block and the middle channels it uses (None: all
        the block holds)."""
        blocks, scales = split_architecture(architecture)
        if not self.channel_search:
            if any(s != UNSCALED for s in scales):
                raise UserError(f"this supernet was trained without channel search (supernet.py --channel-search): "
                                f"it has no widths but 1.0x, and the architecture asks for the scale indices {scales}")
            return blocks, (None,) * NUM_LAYERS
        mids = tuple(None if s == WIDEST else scaled_mid_channels(spec[2], s)
                     for s, spec in zip(scales, self._layer_specs))
        return blocks, mids

    def _initialize_weights(self):
        if self.first_conv[0].weight.is_meta:
            return  # no values to set (path_network assigns the weights); on meta it would cost a second
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                std = 0.01 if name.startswith("first") else 1.0 / m.weight.shape[1]
                nn.init.normal_(m.weight, 0, std)
            elif isinstance(m, nn.BatchNorm2d):
                if m.weight is not None:
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0.0001)
                nn.init.constant_(m.running_mean, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)

    def get_candidate_flops(self, candidate=None):
        """Multiply-adds of convs and linear layers for one path (20 ints or the tuner's dict), at this
        model's input size and class count; the net's own architecture when none is given."""
        if candidate is None:
            if self.is_supernet:
                raise ValueError("the supernet needs a candidate to count FLOPs")
            candidate = self.architecture
        architecture = validate_architecture(candidate)
        blocks, scales = split_architecture(architecture)
        if len(architecture) == NUM_LAYERS:
            stem, per_layer, rest = self._get_flops_table()
        else:  # a block + channel architecture, whatever its scales: one table for all the paths a sampler draws
            stem, per_layer, rest = self._get_channel_flops_table()
        return stem + rest + sum(per_layer[i][c, s] for i, (c, s) in enumerate(zip(blocks, scales)))

    def _get_flops_table(self):
        """(stem, per layer {(block, scale): FLOPs}, last conv and classifier) for the unscaled blocks."""
        if self._flops_table is None:
            # Megvii's table holds the stride-2 stem's feature maps only
            if self.op_flops_path and os.path.exists(self.op_flops_path) and not self.small_input:
                self._flops_table = self._flops_from_file(self.op_flops_path)
            else:
                self._flops_table = self._flops_computed((UNSCALED,))
        return self._flops_table

    def _get_channel_flops_table(self):
        """The same for every (block, scale), counted (Megvii's table holds only the unscaled widths)."""
        if self._channel_flops_table is None:
            self._channel_flops_table = self._flops_computed(range(NUM_SCALES))
        return self._channel_flops_table

    def _flops_computed(self, scale_ids):
        with torch.device("cpu"):
            stem = _count_macs(nn.Conv2d(3, self.first_conv_channels, 3, stem_stride(self.small_input), 1, bias=False),
                               (1, 3, self.input_size, self.input_size))
            block_macs = {}  # the layers of a stage after its first have the same shapes: count each once
            for spec in self._layer_specs:
                if spec not in block_macs:
                    inp, oup, mid, stride, fm = spec
                    # a stride-1 block sees the whole input; inp counts only the half entering its main branch
                    block_macs[spec] = {
                        (c, s): _count_macs(make_block(c, inp, oup, scaled_mid_channels(mid, s), stride, False),
                                            (1, inp * (3 - stride), fm, fm))
                        for c in range(NUM_CHOICES) for s in scale_ids}
            per_layer = [block_macs[spec] for spec in self._layer_specs]
            fm = self._layer_specs[-1][4]
            rest = (_count_macs(nn.Conv2d(STAGE_OUT_CHANNELS[-1], self.last_conv_channels, 1, bias=False),
                                (1, STAGE_OUT_CHANNELS[-1], fm, fm))
                    + _count_macs(nn.Linear(self.last_conv_channels, self.n_classes, bias=False),
                                  (1, self.last_conv_channels)))
        return stem, per_layer, rest

    def _flops_from_file(self, path):
        table = _read_op_flops_table(path)
        fm = self.input_size // 32

        def lookup(op, key):
            try:
                value = table[op][key]
            except KeyError:
                raise UserError(f"{path}: no FLOPs entry {op!r} {key}; the table was made for another "
                                f"network or input size (remove it to compute FLOPs instead)") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{path}: FLOPs entry {op!r} {key} is {value!r}, not a number")
            return value

        stem = lookup("conv1", (3, self.first_conv_channels, self.input_size, self.input_size, 2))
        # Megvii's key holds the class count where the last conv's width would be expected.
        rest = lookup("rest_operation", (STAGE_OUT_CHANNELS[-1], self.n_classes, fm, fm, 1))
        per_layer = [{(c, UNSCALED): lookup(f"{CHOICE_NAMES[c]}_stride_{stride}", (inp, oup, mid, fm_in, fm_in, stride))
                      for c in range(NUM_CHOICES)}
                     for inp, oup, mid, stride, fm_in in self._layer_specs]
        return stem, per_layer, rest


# what ShuffleNetV2OneShot.options() records, the arguments that rebuild the same network
NETWORK_OPTIONS = ("input_size", "first_conv_channels", "last_conv_channels", "n_classes", "affine", "channel_search",
                   "small_input")


def path_network(supernet, architecture):
    """The stand-alone network of one supernet path, with a copy of that path's weights and BN statistics (of a
    channel-search supernet, the first channels each block's width uses), on the supernet's device and in its
    memory format."""
    weight = supernet.first_conv[0].weight
    supernet.path_widths(architecture)  # a path this supernet has, or a ValueError
    with torch.device("meta"):  # no memory and no random init for weights that are replaced at once
        net = ShuffleNetV2OneShot(input_size=supernet.input_size, first_conv_channels=supernet.first_conv_channels,
                                  last_conv_channels=supernet.last_conv_channels, n_classes=supernet.n_classes,
                                  op_flops_path=supernet.op_flops_path, affine=supernet.first_conv[1].affine,
                                  architecture=architecture, small_input=supernet.small_input)
    # clones keep the memory format; only the chosen blocks are read
    chosen = {}
    for name in ("first_conv", "conv_last", "classifier"):
        getattr(supernet, name).state_dict(destination=chosen, prefix=f"{name}.", keep_vars=False)
    for layer, choice in enumerate(split_architecture(net.architecture)[0]):
        supernet.features[layer][choice].state_dict(destination=chosen, prefix=f"features.{layer}.")
    # a narrower block's tensors are the first rows (and columns) of the wider one's; clones keep the memory format
    shapes = {key: value.shape for key, value in net.state_dict().items()}
    chosen = {key: value[tuple(slice(0, n) for n in shapes[key])].clone() for key, value in chosen.items()}
    net.load_state_dict(chosen, assign=True)
    net._flops_table, net._channel_flops_table = supernet._flops_table, supernet._channel_flops_table
    memory_format = (torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last)
                     else torch.contiguous_format)
    return net.to(weight.device, memory_format=memory_format).eval()


def fold_batch_norms(model):
    """Fold, in place, every BN that follows a conv into that conv (its running statistics become the conv's
    weight scale and bias), for inference: the same outputs in eval mode, with a third fewer layers to run.
    ``model``: a network, or any module of its (a block). Returns it, in eval mode."""
    weight = next(p for p in model.parameters() if p.dim() == 4)
    memory_format = (torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last)
                     else torch.contiguous_format)
    model.eval()
    for sequence in model.modules():
        if not isinstance(sequence, nn.Sequential):
            continue
        for i in range(len(sequence) - 1):
            conv, bn = sequence[i], sequence[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                              bn.running_var, bn.eps, bn.weight, bn.bias)
                sequence[i + 1] = nn.Identity()
    return model.to(memory_format=memory_format)


def validate_architecture(candidate):
    """20 block choices in 0..3, or those and 20 scale indices in 0..7 (channel search), from a sequence of ints
    or the tuner's ``{"LayerChoiceN": {"_idx": i}, "ChannelChoiceN": {"_idx": j}}`` dict."""
    if isinstance(candidate, dict):
        keys = [f"LayerChoice{i + 1}" for i in range(NUM_LAYERS)]
        if "ChannelChoice1" in candidate:
            keys += [f"ChannelChoice{i + 1}" for i in range(NUM_LAYERS)]
        candidate = [candidate[key]["_idx"] for key in keys]
    genes = [int(c) for c in candidate]
    if (len(genes) not in (NUM_LAYERS, 2 * NUM_LAYERS) or any(c not in range(NUM_CHOICES) for c in genes[:NUM_LAYERS])
            or any(s not in range(NUM_SCALES) for s in genes[NUM_LAYERS:])):
        raise ValueError(f"an architecture is {NUM_LAYERS} block choices in 0..{NUM_CHOICES - 1}, optionally followed "
                         f"by {NUM_LAYERS} scale indices in 0..{NUM_SCALES - 1}, got {candidate!r}")
    return tuple(genes)


def split_architecture(architecture):
    """``(blocks, scale indices)`` of an architecture; a block-search one has every scale 1.0 (UNSCALED)."""
    if len(architecture) == NUM_LAYERS:
        return tuple(architecture), (UNSCALED,) * NUM_LAYERS
    return tuple(architecture[:NUM_LAYERS]), tuple(architecture[NUM_LAYERS:])


def random_architecture(rng, channel_search=False):
    """Uniform random blocks (and with ``channel_search`` uniform random scales after them)."""
    blocks = tuple(rng.randrange(NUM_CHOICES) for _ in range(NUM_LAYERS))
    if not channel_search:
        return blocks
    return blocks + tuple(rng.randrange(NUM_SCALES) for _ in range(NUM_LAYERS))


class FlopsBinnedSampler:
    """Megvii's path sampling: pick one of 7 equal FLOPs bins between 290M and 360M (scaled by the input
    area) uniformly, then draw uniform paths until one falls in it; after 500 misses take any path. A
    channel-search supernet's paths draw a block and a scale per layer."""

    def __init__(self, model, rng, low=290e6, high=360e6, num_bins=7, max_tries=500):
        scale = (model.input_size / REFERENCE_INPUT_SIZE) ** 2
        step = (high - low) / num_bins
        self.bins = [(scale * (low + i * step), scale * (low + (i + 1) * step)) for i in range(num_bins)]
        self.model, self.rng, self.max_tries = model, rng, max_tries

    def __call__(self):
        low, high = self.rng.choice(self.bins)
        for _ in range(self.max_tries):
            architecture = random_architecture(self.rng, self.model.channel_search)
            if low <= self.model.get_candidate_flops(architecture) <= high:
                return architecture
        return random_architecture(self.rng, self.model.channel_search)


@functools.lru_cache(maxsize=None)
def paper_flops_model(op_flops_path=OP_FLOPS_TABLE):
    """The supernet at the paper's 224x224 and 1,000 classes, built once per process: only for FLOPs."""
    return ShuffleNetV2OneShot(input_size=PAPER_INPUT_SIZE, n_classes=PAPER_CLASSES, op_flops_path=op_flops_path)


def paper_flops(architecture):
    """FLOPs of a path as the paper counts them, the units of the search's FLOPs limit."""
    return paper_flops_model().get_candidate_flops(architecture)


def architecture_net(architecture, input_size=PAPER_INPUT_SIZE, n_classes=PAPER_CLASSES, small_input=False):
    """The from-scratch net of ``architecture`` (affine BN) on the meta device: its shapes, for counting."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        return ShuffleNetV2OneShot(input_size=input_size, n_classes=n_classes, affine=True, architecture=architecture,
                                   small_input=small_input)


def architecture_flops(architecture, input_size=PAPER_INPUT_SIZE, n_classes=PAPER_CLASSES, small_input=False):
    """FLOPs of the from-scratch net of ``architecture``: from Megvii's table when it covers this size, counted
    otherwise (the paper's 224x224 and 1,000 classes by default)."""
    net = architecture_net(architecture, input_size, n_classes, small_input)
    try:
        return net.get_candidate_flops()
    except UserError:  # the table only holds the sizes it was made for
        net.op_flops_path = None
        return net.get_candidate_flops()


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def load_and_parse_state_dict(filepath):
    """Read an official (``{'state_dict': ...}``, keys ``module.``-prefixed) or own checkpoint as a
    plain state dict; never unpickles objects."""
    return read_checkpoint(filepath)[0]


def read_checkpoint(filepath):
    """``(state dict, network options)`` of a checkpoint: the options (``ShuffleNetV2OneShot.options()``) that
    supernet.py records beside its weights, or None for files without them (Megvii's)."""
    if not os.path.isfile(filepath):
        raise UserError(f"{filepath}: checkpoint not found")
    try:
        checkpoint = torch.load(filepath, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated, foreign or non-torch files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{filepath}: not a readable PyTorch checkpoint ({reason})") from None
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not state_dict or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise UserError(f"{filepath}: holds no state dict of tensors (expected {{'state_dict': {{name: tensor}}}})")
    options = checkpoint.get("network") if isinstance(checkpoint, dict) else None
    if options is not None and (not isinstance(options, dict) or set(options) - set(NETWORK_OPTIONS)):
        raise UserError(f"{filepath}: its 'network' entry is not network options (expected keys among "
                        f"{', '.join(NETWORK_OPTIONS)}, got {options!r:.200})")
    return {k.removeprefix("module."): v for k, v in state_dict.items()}, options


def load_weights(model, filepath):
    """Load a checkpoint strictly into ``model``, with one clear message when it belongs to another net."""
    state_dict, options = read_checkpoint(filepath)
    trained_small = bool((options or {}).get("small_input"))
    if trained_small != model.small_input:  # same shapes, so the strict load would not notice
        source = "an official checkpoint (no network options)" if options is None else "its network options"
        raise UserError(f"{filepath}: trained with a stride-{stem_stride(trained_small)} first conv ({source}), "
                        f"but this network has a stride-{stem_stride(model.small_input)} one "
                        f"({'with' if model.small_input else 'without'} --small-input): refused")
    return load_state_dict_checked(model, state_dict, filepath)


def load_state_dict_checked(model, state_dict, filepath):
    """``model.load_state_dict(state_dict, strict=True)``, with one clear message naming ``filepath`` when the
    weights belong to another net."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        details = "; ".join(f"{what}: {len(keys)} (e.g. {keys[0]})" for what, keys in
                            (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)) if keys)
        raise UserError(f"{filepath}: does not fit this network ({details})")
    model.load_state_dict(state_dict, strict=True)
    return model
