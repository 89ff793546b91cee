"""Architecture files: the formats users have (NNI 1.x one-hot lists, NNI 2.7+ strings, the tuner's
{"_value", "_idx"}, a list of 20 ints), read with clear errors, and written as architecture_final.json is."""
import json
import os
import tempfile

from utils import UserError


def architecture_keys(num_layers=20):
    return [f"LayerChoice{i + 1}" for i in range(num_layers)]


def parse_architecture(data, source, num_layers=20, num_choices=4):
    """20 choices from any format a user has: NNI 1.x one-hot lists (architecture_final.json), NNI 2.7+
    strings ``{"LayerChoice1": "2"}``, the tuner's ``{"_value": "2", "_idx": 2}``, or a list of ints.
    Anything else raises a UserError naming ``source`` and the key or value at fault."""
    if isinstance(data, list):
        if len(data) != num_layers:
            raise UserError(f"{source}: a list architecture needs {num_layers} choices, got {len(data)}")
        return tuple(_parse_choice(v, f"{source}: item {i}", num_choices) for i, v in enumerate(data))
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object of LayerChoice1..LayerChoice{num_layers} or a list "
                        f"of {num_layers} ints, got {type(data).__name__}")
    keys = architecture_keys(num_layers)
    missing = [k for k in keys if k not in data]
    extra = sorted(k for k in data if k not in keys)
    if missing:
        raise UserError(f"{source}: key {missing[0]!r} is missing ({len(missing)} of {num_layers} missing)")
    if extra:
        raise UserError(f"{source}: unexpected key {extra[0]!r} (expected LayerChoice1..LayerChoice{num_layers})")
    return tuple(_parse_choice(data[k], f"{source}: {k}", num_choices) for k in keys)


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


def load_architecture(path):
    """Read and check an architecture file (see ``parse_architecture``)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read the architecture file ({e.strerror or e})") from None
    if not text.strip():
        raise UserError(f"{path}: the architecture file is empty")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    return parse_architecture(data, path)


def architecture_to_json(choices, num_choices=4):
    """NNI 1.x format of architecture_final.json: one one-hot list per LayerChoice key."""
    return {key: [c == i for i in range(num_choices)] for key, c in zip(architecture_keys(len(choices)), choices)}


def write_architecture(path, choices):
    """Write ``choices`` as architecture_final.json does, one LayerChoice per line, atomically."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in architecture_to_json(choices).items()]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    os.replace(tmp_path, path)
