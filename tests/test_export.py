"""spos/export.py: the from-scratch network as ONNX, run under ONNX Runtime against PyTorch's logits on real images,
with its architecture and preprocessing in its metadata; trained weights and a block + channel architecture; the
latency beside a table's prediction, and a table of other settings refused."""
import json
import os

import onnx
import pytest
import torch
from conftest import REPO

import network
from spos import export, latency
from spos.architecture import load_architecture, write_architecture
from spos.checkpoint import save_weights
from utils import UserError

BLOCK_AND_CHANNEL = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2,
                     6, 5, 3, 5, 2, 6, 3, 4, 2, 5, 7, 5, 4, 6, 7, 4, 4, 5, 4, 3)  # SPEC section 13


def test_trained_weights_export_and_match_pytorch_on_real_images(digits_dir, tmp_path, capsys):
    """The weights' network options give the size, classes and stem (here 32x32, 10 classes, the small-input stem,
    whose small-map kernels must trace to plain ONNX); the check is on the digits' val images."""
    arch = tmp_path / "arch.json"
    write_architecture(str(arch), BLOCK_AND_CHANNEL)
    torch.manual_seed(0)
    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10, affine=True, architecture=BLOCK_AND_CHANNEL,
                                        small_input=True)
    for module in model.modules():  # trained-looking statistics, so that folding changes the weights
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    save_weights(str(tmp_path / "run"), 3, model.state_dict(), model.options())
    output = tmp_path / "net.onnx"
    result = export.main(["--fixed-arc", str(arch), "--weights", str(tmp_path / "run" / "epoch_3.pth.tar"),
                          "--imagenet-dir", digits_dir, "--output", str(output), "--repeats", "5"])
    printed = capsys.readouterr().out
    assert result["difference"] <= export.TOLERANCE * result["scale"] and "match" in printed
    assert "32x32, 10 classes, opset 18, input 'images'" in printed and result["latency_ms"] > 0
    onnx_model = onnx.load(str(output))
    onnx.checker.check_model(onnx_model)
    metadata = {p.key: p.value for p in onnx_model.metadata_props}
    assert json.loads(metadata["spos.genes"]) == list(BLOCK_AND_CHANNEL)
    assert json.loads(metadata["spos.preprocessing"])["center_crop"] == 32
    assert json.loads(metadata["spos.preprocessing"])["channels"] == "RGB"
    assert [d.dim_param or d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim] == [
        "batch", 3, 32, 32]
    # PyTorch's network still computes after the export traced it (no kept tensor of the tracing's)
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert type(network.fold_batch_norms(model.eval())(images)) is torch.Tensor
    session = export.ort_session(onnx_model, 1)
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"images": images.numpy()})[0]),
                                   model(images), rtol=1e-4, atol=1e-4)


def test_random_weights_for_a_latency_check_beside_the_tables_prediction(digits_dir, tmp_path, capsys):
    from test_latency import synthetic_table

    table_path = tmp_path / "latency.json"
    table = synthetic_table()
    table["settings"]["backend"] = "onnxruntime"
    table_path.write_text(json.dumps(table))
    export.main(["--imagenet-dir", digits_dir, "--input-size", "32", "--n-classes", "10", "--output",
                 str(tmp_path / "net.onnx"), "--repeats", "5", "--latency-table", str(table_path)])
    printed = capsys.readouterr().out
    assert "latency under ONNX Runtime (CPU, 1 thread(s), batch 1): " in printed
    final = load_architecture(os.path.join(REPO, "architecture_final.json"))  # the default architecture
    assert f"the table predicts {latency.predict(table, final):.3f} ms" in printed
    with pytest.raises(UserError, match="latency.json: measured for input_size 32, not 64"):
        export.main(["--imagenet-dir", digits_dir, "--input-size", "64", "--n-classes", "10", "--output",
                     str(tmp_path / "net64.onnx"), "--repeats", "3", "--latency-table", str(table_path)])
