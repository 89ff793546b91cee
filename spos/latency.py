"""The latency of the from-scratch network on the user's own machine, as a lookup table (SPEC section 17): every
choice block (and with --channel-search every width) of every layer shape, and the fixed parts (the stem; the
last conv, pool and classifier), each timed alone in the deployed form (eval, BN folded into the convolutions,
channels-last for PyTorch) at its input shape, for one input size, batch size and thread count, on one backend:
PyTorch on the CPU, ONNX Runtime on the CPU, or CUDA. A network's latency is predicted as the sum of its parts,
times the whole-network correction ``check`` fits (cross-layer effects make the plain sum drift).

    python -m spos.latency build --backend torch --output latency_torch.json          # 224x224, batch 1, 1 thread
    python -m spos.latency build --backend onnxruntime --output latency_ort.json
    python -m spos.latency check latency_torch.json --networks 20    # the prediction against whole networks

A latency on a shared machine is a distribution: each part is run ``--warmup`` times, then ``--repeats`` times
timed one by one; the table keeps the median and the 10th and 90th percentiles, and the process is pinned to
``--threads`` cores. The table names the machine (CPU, cores, library versions) and its settings; a table of other
settings or of another search space is refused in one line where it is used (the search, the export).
"""
import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

from network import (CHANNEL_SCALES, NUM_CHOICES, NUM_LAYERS, UNSCALED, layer_specs, random_architecture,
                     scaled_mid_channels, split_architecture)
from spos.architecture import format_choices
from spos.files import read_json, write_text
from spos.stats import kendall_tau
from utils import UserError, run_main

TABLE_FORMAT = 1
BACKENDS = ("torch", "onnxruntime", "cuda")
# the settings a table is measured for: a prediction is only for the same
SETTINGS = ("backend", "input_size", "batch_size", "threads", "n_classes", "small_input", "channel_search")


# measuring

def pin_threads(threads):
    """Compute on ``threads`` threads, pinned to as many of this process's cores."""
    import torch

    torch.set_num_threads(threads)
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < threads:
            raise UserError(f"--threads {threads}: this process may run on {len(cores)} core(s) only")
        os.sched_setaffinity(0, cores[:threads])


def runner(module, example, backend, threads):
    """A function that runs ``module`` (eval) on ``example`` once, on ``backend``, and waits for the result."""
    import torch

    if backend == "onnxruntime":
        from spos.export import INPUT_NAME, onnx_model, ort_session

        session = ort_session(onnx_model(module, example), threads)
        feed = {INPUT_NAME: example.numpy()}
        return lambda: session.run(None, feed)
    device = torch.device("cuda" if backend == "cuda" else "cpu")
    module = module.to(device, memory_format=torch.channels_last)
    example = example.to(device).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            module(example)
        if backend == "cuda":
            torch.cuda.synchronize()
    return run


def time_runs(run, warmup, repeats):
    """{median_ms, p10_ms, p90_ms} of ``repeats`` timed runs after ``warmup``."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - started) / 1e6)
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[(9 * len(times)) // 10]}


def deployed(module):
    """``module`` as it is deployed: eval, BN folded into the convolutions."""
    from network import fold_batch_norms

    return fold_batch_norms(module.eval())


def parts(settings):
    """(name, module, input shape) of the fixed parts: the stem, and the head (last conv, pool, classifier)."""
    from torch import nn

    from network import STAGE_OUT_CHANNELS, ShuffleNetV2OneShot, stem_stride

    net = ShuffleNetV2OneShot(input_size=settings["input_size"], n_classes=settings["n_classes"], affine=True,
                              architecture=(0,) * NUM_LAYERS, small_input=settings["small_input"])
    head = nn.Sequential(net.conv_last, net.globalpool, nn.Flatten(1), net.dropout, net.classifier)
    size, batch = settings["input_size"], settings["batch_size"]
    last = size // stem_stride(settings["small_input"]) // 16
    return [("stem", net.first_conv, (batch, 3, size, size)),
            ("head", head, (batch, STAGE_OUT_CHANNELS[-1], last, last))]


def block_shapes(settings):
    """The distinct layer shapes (inp, oup, mid, stride, map size) and, for each of the 20 layers, its shape's
    index: the layers of a stage after its first share one."""
    specs = layer_specs(settings["input_size"], small_input=settings["small_input"])
    distinct = sorted(set(specs), key=specs.index)
    return distinct, [distinct.index(spec) for spec in specs]


def build(settings, warmup, repeats, log):
    """Time every part of ``settings`` (see SETTINGS); returns the table."""
    import torch

    from blocks import make_block

    pin_threads(settings["threads"])
    table = {"format": TABLE_FORMAT, "settings": settings, "machine": machine(settings), "warmup": warmup,
             "repeats": repeats, "fixed": {}, "shapes": [], "layer_shape": [], "correction": None}
    started = time.perf_counter()
    for name, module, shape in parts(settings):
        table["fixed"][name] = time_runs(runner(deployed(module), torch.randn(shape), settings["backend"],
                                                settings["threads"]), warmup, repeats)
    distinct, table["layer_shape"] = block_shapes(settings)
    scales = range(len(CHANNEL_SCALES)) if settings["channel_search"] else (UNSCALED,)
    for index, (inp, oup, mid, stride, size) in enumerate(distinct):
        example = torch.randn(settings["batch_size"], inp * (3 - stride), size, size)
        entries = {}
        for block in range(NUM_CHOICES):
            for scale in scales:
                module = deployed(make_block(block, inp, oup, scaled_mid_channels(mid, scale), stride, True))
                entries[f"{block},{scale}"] = time_runs(runner(module, example, settings["backend"],
                                                               settings["threads"]), warmup, repeats)
        table["shapes"].append({"inp": inp, "oup": oup, "mid": mid, "stride": stride, "map": size, "blocks": entries})
        log(f"layer shape {index + 1}/{len(distinct)} ({inp}->{oup}, stride {stride}, {size}x{size}): "
            + ", ".join(f"{key} {value['median_ms']:.3f}" for key, value in entries.items()) + " ms")
    table["seconds"] = round(time.perf_counter() - started, 1)
    return table


def machine(settings):
    """What the table was measured on."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    found = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
             "platform": platform.platform()}
    if settings["backend"] == "onnxruntime":
        import onnxruntime

        found["onnxruntime"] = onnxruntime.__version__
    if settings["backend"] == "cuda":
        found["gpu"] = torch.cuda.get_device_name()
    return found


# predicting

def load_table(path, **expected):
    """A table written by ``build``; each ``expected`` setting (see SETTINGS) must be the table's, else one
    UserError naming the file and the setting."""
    table = read_json(path, "the latency table")
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT or set(SETTINGS) - set(
            table.get("settings") or {}):
        raise UserError(f"{path}: not a latency table of format {TABLE_FORMAT} (write one with python -m spos.latency "
                        f"build)")
    for key, value in expected.items():
        if table["settings"][key] != value:
            raise UserError(f"{path}: measured for {key} {table['settings'][key]!r}, not {value!r}: build a table "
                            f"for these settings (python -m spos.latency build)")
    return table


def layer_costs(table, layer):
    """{(block, scale): median ms} of one layer."""
    entries = table["shapes"][table["layer_shape"][layer]]["blocks"]
    return {tuple(map(int, key.split(","))): value["median_ms"] for key, value in entries.items()}


def sum_of_parts(table, genes):
    """The plain sum: the fixed parts and each layer's block, in ms."""
    blocks, scales = split_architecture(genes)
    if len(genes) > NUM_LAYERS and not table["settings"]["channel_search"]:
        raise UserError("this latency table was built without --channel-search: it has no widths but 1.0x, and the "
                        f"architecture asks for the scale indices {scales}")
    total = sum(part["median_ms"] for part in table["fixed"].values())
    return total + sum(layer_costs(table, layer)[block, scale]
                       for layer, (block, scale) in enumerate(zip(blocks, scales)))


def predict(table, genes):
    """``genes``' latency in ms on the table's machine and settings: the sum of its parts, corrected by the table's
    whole-network fit when ``check`` made one."""
    total = sum_of_parts(table, genes)
    correction = table.get("correction")
    return correction["slope"] * total + correction["intercept"] if correction else total


def least_latency(table, choices):
    """The latency of the fastest architecture of a search space (``choices``: each gene's allowed values, blocks
    then scales): each layer's fastest allowed (block, scale), as the layers add up."""
    with_scales = len(choices) > NUM_LAYERS
    fastest = []
    for layer in range(NUM_LAYERS):
        scales = choices[NUM_LAYERS + layer] if with_scales else (UNSCALED,)
        costs = layer_costs(table, layer)
        fastest.append(min(((block, scale) for block in choices[layer] for scale in scales),
                           key=lambda pair: costs[pair]))
    genes = tuple(b for b, _ in fastest) + (tuple(s for _, s in fastest) if with_scales else ())
    return predict(table, genes)


# checking the prediction against whole networks

def measure_networks(table, count, seed, warmup, repeats):
    """(architecture, predicted sum of parts, measured ms) of ``count`` random whole networks, measured as the
    table's parts were."""
    import torch

    from network import ShuffleNetV2OneShot

    settings = table["settings"]
    pin_threads(settings["threads"])
    rng, measured = random.Random(seed), []
    for _ in range(count):
        genes = random_architecture(rng, settings["channel_search"])
        net = ShuffleNetV2OneShot(input_size=settings["input_size"], n_classes=settings["n_classes"], affine=True,
                                  architecture=genes, small_input=settings["small_input"])
        example = torch.randn(settings["batch_size"], 3, settings["input_size"], settings["input_size"])
        timed = time_runs(runner(deployed(net), example, settings["backend"], settings["threads"]), warmup, repeats)
        measured.append((genes, sum_of_parts(table, genes), timed["median_ms"]))
    return measured


def accuracy(pairs):
    """How well predictions match measurements: [(predicted, measured)] -> the share within +-10 %, the median
    and the worst relative error, Kendall tau."""
    errors = [abs(predicted / measured - 1) for predicted, measured in pairs]
    return {"within_10_percent": sum(e <= 0.10 for e in errors) / len(errors),
            "median_error": statistics.median(errors), "worst_error": max(errors),
            "kendall_tau": kendall_tau(*zip(*pairs))}


def fit_correction(fitted):
    """measured = slope * sum of parts + intercept, by least squares over (sum, measured) pairs."""
    xs, ys = zip(*fitted)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / spread if spread else 1.0
    return {"slope": slope, "intercept": my - slope * mx}


# Richer whole-network fits, printed beside the kept line to show whether the line leaves accuracy behind: a line
# per stage (the sums of each stage's layers and of the fixed parts), and the sum with a term per block type.
STAGE_BOUNDS = (0, 4, 8, 16, 20)
OTHER_FITS = {"a line per stage": "stages", "the sum and a term per block type": "block types"}


def fit_features(table, genes, kind):
    """The inputs of a whole-network least-squares fit of kind "stages" or "block types"."""
    blocks, scales = split_architecture(genes)
    layers = [layer_costs(table, layer)[block, scale] for layer, (block, scale) in enumerate(zip(blocks, scales))]
    fixed = sum(part["median_ms"] for part in table["fixed"].values())
    if kind == "stages":
        return [sum(layers[a:b]) for a, b in zip(STAGE_BOUNDS, STAGE_BOUNDS[1:])] + [fixed, 1.0]
    return [fixed + sum(layers)] + [float(blocks.count(block)) for block in range(NUM_CHOICES)]


def other_fit_accuracy(table, fitted, tested, kind):
    """``accuracy`` on ``tested`` of the least-squares fit of ``kind`` on ``fitted`` ((genes, sum, ms) triples)."""
    import numpy as np

    weights = np.linalg.lstsq(np.array([fit_features(table, genes, kind) for genes, _, _ in fitted]),
                              np.array([ms for _, _, ms in fitted]), rcond=None)[0]
    return accuracy([(float(np.dot(fit_features(table, genes, kind), weights)), ms) for genes, _, ms in tested])


def check(path, count, warmup, repeats, log):
    """Fit the whole-network correction on ``count`` random networks and test it on ``count`` others; the
    correction is kept in the table. Returns the report's rows."""
    table = load_table(path)
    log(f"measuring {2 * count} whole networks ({count} to fit the correction, {count} to test it)")
    fitted = measure_networks(table, count, seed=0, warmup=warmup, repeats=repeats)
    tested = measure_networks(table, count, seed=1, warmup=warmup, repeats=repeats)
    correction = fit_correction([(total, ms) for _, total, ms in fitted])
    plain = accuracy([(total, ms) for _, total, ms in tested])
    corrected = accuracy([(correction["slope"] * total + correction["intercept"], ms) for _, total, ms in tested])
    table["correction"] = {**correction, "fitted_on": count, "tested_on": count, "plain": plain,
                           "corrected": corrected,
                           "networks": [{"architecture": list(genes), "sum_ms": total, "measured_ms": ms, "use": use}
                                        for use, networks in (("fit", fitted), ("test", tested))
                                        for genes, total, ms in networks]}
    write_text(path, json.dumps(table, indent=1) + "\n")
    results = [("sum of the parts", plain),
               (f"x {correction['slope']:.3f} {correction['intercept']:+.3f} ms (kept; fitted on {count} others)",
                corrected)]
    if count >= 8:  # enough networks for the 6 parameters of a line per stage
        results += [(f"{name} (not kept)", other_fit_accuracy(table, fitted, tested, kind))
                    for name, kind in OTHER_FITS.items()]
    rows = [[name, f"{100 * result['within_10_percent']:.0f} %", f"{100 * result['median_error']:.1f} %",
             f"{100 * result['worst_error']:.1f} %", f"{result['kendall_tau']:.3f}"] for name, result in results]
    examples = [[format_choices(genes), f"{total:.3f}", f"{correction['slope'] * total + correction['intercept']:.3f}",
                 f"{ms:.3f}"] for genes, total, ms in tested[:5]]
    return rows, examples


# the command

def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spos.latency", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="time every part and write the table")
    build_parser.add_argument("--backend", choices=BACKENDS, default="torch")
    build_parser.add_argument("--input-size", type=int, default=224)
    build_parser.add_argument("--batch-size", type=int, default=1)
    build_parser.add_argument("--threads", type=int, default=1)
    build_parser.add_argument("--n-classes", type=int, default=1000)
    build_parser.add_argument("--small-input", action="store_true", help="the stride-1 stem of small images")
    build_parser.add_argument("--channel-search", action="store_true", help="every width of every block too")
    build_parser.add_argument("--output", required=True, help="the table (JSON)")
    check_parser = commands.add_parser("check", help="the prediction against measured whole networks; keeps a "
                                                     "whole-network correction in the table")
    check_parser.add_argument("table")
    check_parser.add_argument("--networks", type=int, default=20, help="random networks to fit on, as many to test")
    for sub in (build_parser, check_parser):
        sub.add_argument("--warmup", type=int, default=20)
        sub.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 3 or getattr(args, "networks", 2) < 2:
        raise UserError("--warmup must be 0 or more, --repeats 3 or more, --networks 2 or more")
    return args


def main(argv=None):
    from spos.report import emit, markdown_table

    args = parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if args.command == "build":
        if args.backend == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UserError("--backend cuda: no CUDA GPU is available here")
        settings = {"backend": args.backend, "input_size": args.input_size, "batch_size": args.batch_size,
                    "threads": args.threads, "n_classes": args.n_classes, "small_input": args.small_input,
                    "channel_search": args.channel_search}
        table = build(settings, args.warmup, args.repeats, log)
        write_text(args.output, json.dumps(table, indent=1) + "\n")
        smallest = predict(table, (0,) * NUM_LAYERS)
        emit(f"wrote {args.output} in {table['seconds']:.0f} s: {args.backend}, {args.input_size}x{args.input_size}, "
             f"batch {args.batch_size}, {args.threads} thread(s), on {table['machine']['cpu']}; stem "
             f"{table['fixed']['stem']['median_ms']:.3f} ms, head {table['fixed']['head']['median_ms']:.3f} ms, "
             f"all Shuffle 3x3 {smallest:.3f} ms as the sum of its parts")
        return table
    rows, examples = check(args.table, args.networks, args.warmup, args.repeats, log)
    emit(f"{args.table}: the prediction against {args.networks} random whole networks (fitted on {args.networks} "
         f"others)\n\n" + markdown_table(["prediction", "within +-10 %", "median error", "worst error",
                                          "Kendall tau"], rows)
         + "\n\n" + markdown_table(["architecture", "sum of parts (ms)", "corrected (ms)", "measured (ms)"], examples))
    return rows


if __name__ == "__main__":
    run_main(main)
