"""The from-scratch network as ONNX, the form it leaves the project in (SPEC section 17): in eval mode, BN folded
into the convolutions, a dynamic batch, the architecture and the preprocessing it expects in its metadata; checked
by running it under ONNX Runtime (CPU) against PyTorch's logits on real images, and timed there.

    python -m spos.export --fixed-arc architecture_final.json --weights scratch_checkpoints/epoch_240.pth.tar \\
        --imagenet-dir data/imagenet --output net.onnx
    python -m spos.export --fixed-arc architecture_final.json --output net.onnx --latency-table latency_ort.json
                                            # random weights, for a latency check against the table's prediction

The weights' network options (scratch.py records them) give the input size, classes and stem; without weights,
--input-size, --n-classes and --small-input do. Prints the check's largest difference against its tolerance and
the latency, and exits 1 when the difference is over the tolerance.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from dataloader import IMAGENET_MEAN, IMAGENET_STD, ImageFolderLoader, resize_size
from network import ShuffleNetV2OneShot, fold_batch_norms, load_weights, read_checkpoint
from spos.architecture import format_choices, load_architecture
from spos.options import project_file
from utils import run_main

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# the check: the largest |ONNX Runtime - PyTorch| logit, relative to the largest logit (fp32 arithmetic in a
# different order: about 1e-6 of it)
TOLERANCE = 1e-4


def onnx_model(module, example, optimize=True):
    """``module`` (eval) exported by torch.onnx's exporter, with a dynamic batch: an onnx.ModelProto."""
    if example.shape[0] == 1:  # torch.export takes a batch of 1 for a constant one
        example = torch.cat([example, example])
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter reports its passes on stdout
        program = torch.onnx.export(module, (example,), dynamo=True, verbose=False, optimize=optimize,
                                    external_data=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET)
    return program.model_proto


def ort_session(model, threads):
    """An ONNX Runtime CPU session of ``model`` (ModelProto or bytes) on ``threads`` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def preprocessing(input_size, spos_preprocessing):
    """What the network expects of an image (the val transform of dataloader.py), as the metadata says it."""
    if spos_preprocessing:
        colour = {"channels": "BGR", "range": "0..255", "mean": [0.0] * 3, "std": [1.0] * 3}
    else:
        colour = {"channels": "RGB", "range": "0..255", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {"resize_shorter_side": resize_size(input_size), "center_crop": input_size, "layout": "NCHW",
            "normalise": "(pixel - mean) / std", **colour,
            "interpolation": "linear" if spos_preprocessing else "triangular (antialiased)"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spos.export", description=__doc__.splitlines()[0])
    parser.add_argument("--fixed-arc", "--architecture", dest="architecture", default=None,
                        help="the architecture (any format scratch.py takes; default: architecture_final.json)")
    parser.add_argument("--weights", default=None,
                        help="scratch.py's epoch_N.pth.tar; default: random weights (for a latency check)")
    parser.add_argument("--output", default="network.onnx")
    group = parser.add_argument_group("the network, without --weights (theirs otherwise)")
    group.add_argument("--input-size", type=int, default=224)
    group.add_argument("--n-classes", type=int, default=1000)
    group.add_argument("--small-input", action="store_true", help="the stride-1 stem of small images")
    group = parser.add_argument_group("the check")
    group.add_argument("--imagenet-dir", default=os.path.join("data", "digits"),
                       help="real images for the check, from its val/ (any images: they are resized)")
    group.add_argument("--spos-preprocessing", action="store_true", help="Megvii's input: BGR, 0..255")
    group.add_argument("--images", type=int, default=32, help="how many images the check compares logits on")
    group.add_argument("--threads", type=int, default=1, help="ONNX Runtime's threads, for the latency")
    group.add_argument("--batch-size", type=int, default=1, help="the batch the latency is measured at")
    group.add_argument("--repeats", type=int, default=50, help="timed runs (after 20 warm-up ones)")
    group.add_argument("--latency-table", default=None,
                       help="a table of python -m spos.latency (ONNX Runtime, these settings): its prediction "
                            "beside the measured latency")
    args = parser.parse_args(argv)
    if args.architecture is None:
        args.architecture = project_file("architecture_final.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    genes = load_architecture(args.architecture)
    if args.weights:
        options = read_checkpoint(args.weights)[1] or {}
        args.input_size = options.get("input_size", args.input_size)
        args.n_classes = options.get("n_classes", args.n_classes)
        args.small_input = bool(options.get("small_input", args.small_input))
    table = None
    if args.latency_table:  # refused before any work when it was measured for other settings
        from spos.latency import load_table

        table = load_table(args.latency_table, backend="onnxruntime", input_size=args.input_size,
                           batch_size=args.batch_size, threads=args.threads, n_classes=args.n_classes,
                           small_input=args.small_input)
    model = ShuffleNetV2OneShot(input_size=args.input_size, n_classes=args.n_classes, affine=True,
                                architecture=genes, small_input=args.small_input)
    if args.weights:
        load_weights(model, args.weights)
    fold_batch_norms(model)

    images = next(iter(ImageFolderLoader(args.imagenet_dir, "val", train=False, batch_size=args.images,
                                         input_size=args.input_size, spos_preprocessing=args.spos_preprocessing,
                                         workers=1, backend="torch")))[0].as_subclass(torch.Tensor)
    model_proto = onnx_model(model, images[:1])
    metadata = {"spos.architecture": format_choices(genes), "spos.genes": json.dumps(list(genes)),
                "spos.preprocessing": json.dumps(preprocessing(args.input_size, args.spos_preprocessing)),
                "spos.input": json.dumps({"name": INPUT_NAME, "shape": ["batch", 3, args.input_size,
                                                                      args.input_size]}),
                "spos.weights": os.path.abspath(args.weights) if args.weights else "random (a latency check)",
                "spos.torch": torch.__version__}
    for key, value in metadata.items():
        model_proto.metadata_props.add(key=key, value=value)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        f.write(model_proto.SerializeToString())

    session = ort_session(model_proto, args.threads)
    with torch.inference_mode():
        expected = model(images).numpy()
    got = session.run(None, {INPUT_NAME: images.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    scale = max(1.0, float(np.abs(expected).max()))
    matches = difference <= TOLERANCE * scale
    batch = np.ascontiguousarray(np.repeat(images[:1].numpy(), args.batch_size, axis=0))
    latency = time_session(session, batch, args.repeats)
    print(f"wrote {args.output}: {format_choices(genes)}, {args.input_size}x{args.input_size}, {args.n_classes} "
          f"classes, opset {OPSET}, input {INPUT_NAME!r} (batch, 3, {args.input_size}, {args.input_size}), output "
          f"{OUTPUT_NAME!r}; metadata: architecture, preprocessing")
    print(f"check on {len(images)} images of {os.path.join(args.imagenet_dir, 'val')}: largest |ONNX Runtime - "
          f"PyTorch| logit {difference:.3g}, tolerance {TOLERANCE:g} x {scale:.3g}: "
          f"{'match' if matches else 'MISMATCH'}")
    line = f"latency under ONNX Runtime (CPU, {args.threads} thread(s), batch {args.batch_size}): {latency:.3f} ms"
    if table is not None:
        from spos.latency import predict

        predicted = predict(table, genes)
        line += f"; the table predicts {predicted:.3f} ms ({100 * (predicted / latency - 1):+.1f} %)"
    print(line)
    if not matches:
        sys.exit(1)
    return {"difference": difference, "scale": scale, "latency_ms": latency}


def time_session(session, batch, repeats, warmup=20):
    """Median milliseconds of ``session`` on ``batch`` over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        session.run(None, {INPUT_NAME: batch})
    times = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        session.run(None, {INPUT_NAME: batch})
        times.append((time.perf_counter_ns() - started) / 1e6)
    return statistics.median(times)


if __name__ == "__main__":
    run_main(main)
