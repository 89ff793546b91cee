"""The search space of the supernet as `nnictl ss_gen` writes it (NNI 1.x format): LayerChoice1..20, each
choosing a block "0".."3". Imports nothing heavy, so that ss_gen answers at once."""
import json
import sys

# network.NUM_LAYERS and network.NUM_CHOICES (tests check they agree), repeated here so that ss_gen answers
# without importing torch.
NUM_LAYERS = 20
NUM_CHOICES = 4


def search_space():
    return {f"LayerChoice{i + 1}": {"_type": "layer_choice", "_value": [str(c) for c in range(NUM_CHOICES)]}
            for i in range(NUM_LAYERS)}


def parse_search_space(space):
    """The allowed block indices of each layer, from a space in this format (a layer's "_value" may be
    narrowed); a ValueError naming the key otherwise."""
    keys = [f"LayerChoice{i + 1}" for i in range(NUM_LAYERS)]
    if not isinstance(space, dict) or sorted(space) != sorted(keys):
        found = sorted(space)[:3] if isinstance(space, dict) else type(space).__name__
        raise ValueError(f"the search space must have exactly the keys LayerChoice1..LayerChoice{NUM_LAYERS} "
                         f"(write it with: nnictl ss_gen -t \"python tester.py\"), got {found}")
    choices = []
    for key in keys:
        spec = space[key]
        values = spec.get("_value") if isinstance(spec, dict) else None
        if (not isinstance(spec, dict) or spec.get("_type") != "layer_choice" or not isinstance(values, list)
                or not values or any(str(v) not in {str(c) for c in range(NUM_CHOICES)} for v in values)):
            raise ValueError(f"search space {key}: expected {{\"_type\": \"layer_choice\", \"_value\": [block "
                             f"indices \"0\"..\"{NUM_CHOICES - 1}\"]}}, got {spec!r}")
        choices.append(tuple(sorted({int(v) for v in values})))
    return choices


def write_search_space(path):
    try:
        with open(path, "w") as f:
            json.dump(search_space(), f, indent=2, sort_keys=True)
            f.write("\n")
    except OSError as e:
        print(f"error: {path}: cannot write the search space ({e.strerror or e})", file=sys.stderr)
        return 2
    print(f"wrote the search space ({NUM_LAYERS} layer choices of {NUM_CHOICES} blocks) to {path}")
    return 0
