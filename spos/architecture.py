"""Architecture files: the formats users have (NNI 1.x one-hot lists, NNI 2.7+ strings, the tuner's
{"_value", "_idx"}, a list of 20 ints), read with clear errors, and written as architecture_final.json is. A block +
channel architecture adds ChannelChoice1..20 (scale indices 0..7 into 0.2x..1.6x) in the same forms, or is
Megvii's released lists {"architecture": [20 blocks], "scale_ids": [20 indices]} (or "channels_scales": [20
scales]); it is read as 40 genes, the 20 blocks then the 20 scale indices (network.split_architecture)."""
import json

from spos.files import read_json, write_text
from utils import UserError


NUM_LAYERS, NUM_CHOICES = 20, 4
# network.CHANNEL_SCALES (tests check they agree), here so that reading a file imports no torch
CHANNEL_SCALES = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)
MEGVII_KEYS = ("architecture", "scale_ids", "channels_scales")


def block_keys(num_layers=NUM_LAYERS):
    return [f"LayerChoice{i + 1}" for i in range(num_layers)]


def channel_keys(num_layers=NUM_LAYERS):
    return [f"ChannelChoice{i + 1}" for i in range(num_layers)]


def architecture_keys(num_genes=NUM_LAYERS):
    """The keys of an architecture of ``num_genes`` genes: LayerChoice1..20, then ChannelChoice1..20 for 40."""
    return block_keys() + (channel_keys() if num_genes == 2 * NUM_LAYERS else [])


def parse_architecture(data, source):
    """20 block choices, or 40 genes with the scale indices, from any format a user has: NNI 1.x one-hot lists
    (architecture_final.json), NNI 2.7+ strings ``{"LayerChoice1": "2"}``, the tuner's ``{"_value": "2",
    "_idx": 2}``, a list of 20 (or 40) ints, Megvii's released lists. Anything else raises a UserError naming
    ``source`` and the key or value at fault."""
    if isinstance(data, list):
        if len(data) not in (NUM_LAYERS, 2 * NUM_LAYERS):
            raise UserError(f"{source}: a list architecture needs {NUM_LAYERS} block choices (or those and "
                            f"{NUM_LAYERS} scale indices), got {len(data)} items")
        return tuple(_parse_choice(v, f"{source}: item {i}", NUM_CHOICES if i < NUM_LAYERS else len(CHANNEL_SCALES))
                     for i, v in enumerate(data))
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object of LayerChoice1..LayerChoice{NUM_LAYERS} or a list "
                        f"of {NUM_LAYERS} ints, got {type(data).__name__}")
    if "architecture" in data:
        return _parse_megvii(data, source)
    keys = block_keys() + (channel_keys() if any(k.startswith("ChannelChoice") for k in data) else [])
    missing = [k for k in keys if k not in data]
    extra = sorted(k for k in data if k not in keys)
    if missing:
        raise UserError(f"{source}: key {missing[0]!r} is missing ({len(missing)} of {len(keys)} missing)")
    if extra:
        raise UserError(f"{source}: unexpected key {extra[0]!r} (expected LayerChoice1..LayerChoice{NUM_LAYERS}, "
                        f"and ChannelChoice1..ChannelChoice{NUM_LAYERS} for a block + channel architecture)")
    return tuple(_parse_choice(data[k], f"{source}: {k}", NUM_CHOICES if k.startswith("Layer") else
                               len(CHANNEL_SCALES)) for k in keys)


def _parse_megvii(data, source):
    """Megvii's ``{"architecture": [...], "scale_ids": [...]}`` or ``"channels_scales": [...]``."""
    extra = sorted(k for k in data if k not in MEGVII_KEYS)
    given = [k for k in ("scale_ids", "channels_scales") if k in data]
    if extra or len(given) > 1:
        raise UserError(f"{source}: Megvii's form is {{'architecture': [...], 'scale_ids': [...]}} or with "
                        f"'channels_scales', got the keys {sorted(data)}")
    blocks = data["architecture"]
    if not isinstance(blocks, list) or len(blocks) != NUM_LAYERS:
        raise UserError(f"{source}: architecture: expected a list of {NUM_LAYERS} block choices, got {blocks!r:.100}")
    genes = [_parse_choice(v, f"{source}: architecture item {i}", NUM_CHOICES) for i, v in enumerate(blocks)]
    if not given:
        return tuple(genes)
    scales = data[given[0]]
    if not isinstance(scales, list) or len(scales) != NUM_LAYERS:
        raise UserError(f"{source}: {given[0]}: expected a list of {NUM_LAYERS}, got {scales!r:.100}")
    for i, value in enumerate(scales):
        if given[0] == "scale_ids":
            genes.append(_parse_choice(value, f"{source}: scale_ids item {i}", len(CHANNEL_SCALES)))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value in CHANNEL_SCALES:
            genes.append(CHANNEL_SCALES.index(value))
        else:
            raise UserError(f"{source}: channels_scales item {i}: {value!r} is not one of {list(CHANNEL_SCALES)}")
    return tuple(genes)


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


def format_choices(genes):
    """``"2 1 0 ..."``, with the scale indices after a bar for a block + channel architecture."""
    text = " ".join(map(str, genes[:NUM_LAYERS]))
    return text if len(genes) == NUM_LAYERS else f"{text} | scales {' '.join(map(str, genes[NUM_LAYERS:]))}"


def load_architecture(path):
    """Read and check an architecture file (see ``parse_architecture``)."""
    return parse_architecture(read_json(path, "the architecture file"), path)


def architecture_to_json(genes):
    """NNI 1.x format of architecture_final.json: one one-hot list per LayerChoice (and ChannelChoice) key."""
    sizes = [NUM_CHOICES] * NUM_LAYERS + [len(CHANNEL_SCALES)] * NUM_LAYERS
    return {key: [c == i for i in range(size)] for key, c, size in zip(architecture_keys(len(genes)), genes, sizes)}


def write_architecture(path, choices):
    """Write ``choices`` (20 or 40 genes) as architecture_final.json does, one key per line, atomically."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in architecture_to_json(choices).items()]
    write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")
