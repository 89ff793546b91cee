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
