"""The search space of the supernet as `nnictl ss_gen` writes it (NNI 1.x format): LayerChoice1..20, each
choosing a block "0".."3", and for a supernet trained with channel search (supernet.py --channel-search)
ChannelChoice1..20, each choosing a scale "0.2".."1.6" of the block's middle channels. Imports nothing heavy, so that
ss_gen answers at once."""
import json
import sys

from spos.architecture import CHANNEL_SCALES, NUM_CHOICES, NUM_LAYERS, architecture_keys, block_keys, channel_keys


def search_space(channel_search=False):
    genes = 2 * NUM_LAYERS if channel_search else NUM_LAYERS
    return {key: {"_type": "layer_choice", "_value": values}
            for key, values in search_space_values(genes).items()}


def search_space_values(num_genes):
    """Each key's values, by index: block indices "0".."3", scales "0.2".."1.6"."""
    blocks = [str(c) for c in range(NUM_CHOICES)]
    scales = [f"{scale:.1f}" for scale in CHANNEL_SCALES]
    return {key: blocks if key.startswith("Layer") else scales for key in architecture_keys(num_genes)}


def parse_search_space(space):
    """The allowed indices of each gene (the 20 blocks, then the 20 scales of a block + channel space), from a
    space in this format (a key's "_value" may be narrowed); a ValueError naming the key otherwise."""
    with_channels = isinstance(space, dict) and any(str(key).startswith("ChannelChoice") for key in space)
    keys = block_keys() + (channel_keys() if with_channels else [])
    if not isinstance(space, dict) or sorted(space) != sorted(keys):
        found = sorted(space)[:3] if isinstance(space, dict) else type(space).__name__
        raise ValueError(f"the search space must have exactly the keys LayerChoice1..LayerChoice{NUM_LAYERS} "
                         f"(and ChannelChoice1..ChannelChoice{NUM_LAYERS} with channel search; write it with: "
                         f"nnictl ss_gen -t \"python tester.py\"), got {found}")
    allowed = search_space_values(len(keys))
    choices = []
    for key in keys:
        spec = space[key]
        values = spec.get("_value") if isinstance(spec, dict) else None
        if (not isinstance(spec, dict) or spec.get("_type") != "layer_choice" or not isinstance(values, list)
                or not values or any(str(v) not in allowed[key] for v in values)):
            raise ValueError(f"search space {key}: expected {{\"_type\": \"layer_choice\", \"_value\": [some of "
                             f"{', '.join(allowed[key])}]}}, got {spec!r}")
        choices.append(tuple(sorted({allowed[key].index(str(v)) for v in values})))
    return choices


def write_search_space(path, channel_search=False):
    try:
        with open(path, "w") as f:
            json.dump(search_space(channel_search), f, indent=2, sort_keys=True)
            f.write("\n")
    except OSError as e:
        print(f"error: {path}: cannot write the search space ({e.strerror or e})", file=sys.stderr)
        return 2
    what = f"{NUM_LAYERS} block choices of {NUM_CHOICES} and {NUM_LAYERS} channel choices of {len(CHANNEL_SCALES)}" \
        if channel_search else f"{NUM_LAYERS} layer choices of {NUM_CHOICES} blocks"
    print(f"wrote the search space ({what}) to {path}")
    return 0
