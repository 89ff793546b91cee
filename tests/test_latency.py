"""spos/latency.py: the latency table of the user's machine (its format, what it refuses), the prediction from it
(the sum of the parts and the whole-network correction), the fastest architecture a space holds, and a real table
and check at a tiny size (the measured accuracy at 224x224 is in the README, measured with the machine idle)."""
import json

import pytest

from network import NUM_LAYERS
from spos import latency
from utils import UserError

SETTINGS = {"backend": "torch", "input_size": 32, "batch_size": 1, "threads": 1, "n_classes": 10,
            "small_input": False, "channel_search": False}


def synthetic_table(channel_search=False):
    """Every part's median known: the stem 1 ms, the head 2 ms, block b of layer shape s (b + 1) * (s + 1) ms at
    scale 1.0 (4), and with channel search (scale + 1) / 5 times that."""
    distinct, layer_shape = latency.block_shapes(SETTINGS)
    scales = range(8) if channel_search else (4,)
    shapes = [{"blocks": {f"{b},{s}": {"median_ms": (b + 1) * (i + 1) * (s + 1) / 5} for b in range(4)
                          for s in scales}} for i in range(len(distinct))]
    return {"format": latency.TABLE_FORMAT, "settings": {**SETTINGS, "channel_search": channel_search},
            "fixed": {"stem": {"median_ms": 1.0}, "head": {"median_ms": 2.0}}, "shapes": shapes,
            "layer_shape": layer_shape, "correction": None}


def test_a_prediction_is_the_sum_of_the_parts_then_the_fitted_correction():
    table = synthetic_table()
    shape = table["layer_shape"]
    assert latency.predict(table, (0,) * NUM_LAYERS) == pytest.approx(3.0 + sum(i + 1 for i in shape))
    assert latency.predict(table, (3,) * NUM_LAYERS) == pytest.approx(3.0 + 4 * sum(i + 1 for i in shape))
    table["correction"] = {"slope": 1.5, "intercept": -1.0}
    assert latency.predict(table, (0,) * NUM_LAYERS) == pytest.approx(1.5 * (3.0 + sum(i + 1 for i in shape)) - 1)
    with pytest.raises(UserError, match="built without --channel-search: it has no widths but 1.0x"):
        latency.predict(table, (0,) * NUM_LAYERS + (5,) * NUM_LAYERS)
    wide = synthetic_table(channel_search=True)  # at scale 1.0 (index 4) the same parts
    assert latency.predict(wide, (0,) * NUM_LAYERS + (4,) * NUM_LAYERS) == latency.predict(synthetic_table(),
                                                                                           (0,) * NUM_LAYERS)
    assert latency.predict(wide, (0,) * NUM_LAYERS + (0,) * NUM_LAYERS) == pytest.approx(
        3.0 + sum(i + 1 for i in shape) / 5)


def test_the_fastest_architecture_of_a_space_is_each_layers_fastest_allowed_choice():
    table = synthetic_table(channel_search=True)
    everything = [tuple(range(4))] * NUM_LAYERS + [tuple(range(8))] * NUM_LAYERS
    assert latency.least_latency(table, everything) == latency.predict(table, (0,) * NUM_LAYERS + (0,) * NUM_LAYERS)
    only_xception = [(3,)] * NUM_LAYERS + [(4,)] * NUM_LAYERS
    assert latency.least_latency(table, only_xception) == latency.predict(table, (3,) * NUM_LAYERS + (4,) * NUM_LAYERS)


def test_the_correction_is_a_least_squares_line_and_the_accuracy_counts_errors():
    correction = latency.fit_correction([(1.0, 3.0), (2.0, 5.0), (3.0, 7.0)])
    assert correction == pytest.approx({"slope": 2.0, "intercept": 1.0})
    result = latency.accuracy([(10.0, 10.0), (21.8, 20.0), (36.0, 30.0), (20.0, 40.0)])
    assert result["within_10_percent"] == 0.5 and result["worst_error"] == pytest.approx(0.5)
    assert result["median_error"] == pytest.approx(0.145, abs=1e-9)
    assert result["kendall_tau"] == pytest.approx(2 / 6)  # 4 of 6 pairs in order, 2 not


def test_the_richer_fits_recover_a_whole_network_cost_they_can_express():
    """Whole networks that cost their parts plus 0.3 ms per Xception block, or plus half their first stage: the fit
    with a term per block type, and the line per stage, each recover the cost it can express exactly."""
    import random

    from network import random_architecture
    table, rng = synthetic_table(), random.Random(0)
    networks = [(genes, latency.sum_of_parts(table, genes)) for genes in (random_architecture(rng, False)
                                                                          for _ in range(30))]
    exact = [(genes, total, total + 0.3 * genes.count(3)) for genes, total in networks]
    assert latency.other_fit_accuracy(table, exact[:15], exact[15:], "block types")["worst_error"] < 1e-9
    staged = [(genes, total, total + 0.5 * sum(latency.layer_costs(table, layer)[genes[layer], 4]
                                               for layer in range(4))) for genes, total in networks]
    assert latency.other_fit_accuracy(table, staged[:15], staged[15:], "stages")["worst_error"] < 1e-9


def test_a_table_of_other_settings_or_no_table_is_refused_in_one_line(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(synthetic_table()))
    assert latency.load_table(str(path), backend="torch", input_size=32)["settings"]["n_classes"] == 10
    with pytest.raises(UserError, match="table.json: measured for backend 'torch', not 'onnxruntime': build a table"):
        latency.load_table(str(path), backend="onnxruntime")
    with pytest.raises(UserError, match="table.json: measured for input_size 32, not 224"):
        latency.load_table(str(path), input_size=224)
    path.write_text(json.dumps({"format": 1, "settings": {"backend": "torch"}}))
    with pytest.raises(UserError, match="not a latency table of format 1"):
        latency.load_table(str(path))
    with pytest.raises(UserError, match="missing.json: cannot read the latency table"):
        latency.load_table(str(tmp_path / "missing.json"))


def test_onnx_runtime_times_a_part_as_exported():
    """The ONNX Runtime backend of the table: a block exported (tracing the small-map kernels at 2x2) and timed."""
    import torch

    from blocks import make_block

    block = latency.deployed(make_block(3, 80, 160, 80, 1, True))
    run = latency.runner(block, torch.randn(1, 160, 2, 2), "onnxruntime", 1)
    timed = latency.time_runs(run, warmup=1, repeats=5)
    assert 0 < timed["p10_ms"] <= timed["median_ms"] <= timed["p90_ms"]


def test_a_real_table_and_check_at_a_tiny_size(tmp_path, capsys):
    """32x32, few repeats: every part timed, the machine named, the check fitting and keeping a correction."""
    path = tmp_path / "latency.json"
    table = latency.main(["build", "--input-size", "32", "--n-classes", "10", "--warmup", "1", "--repeats", "3",
                          "--output", str(path)])
    assert table["machine"]["cpu"] and table["machine"]["torch"] and table["settings"]["threads"] == 1
    assert len(table["shapes"]) == 8 and len(table["layer_shape"]) == NUM_LAYERS
    assert all(set(shape["blocks"]) == {"0,4", "1,4", "2,4", "3,4"} for shape in table["shapes"])
    assert all(0 < entry["p10_ms"] <= entry["median_ms"] <= entry["p90_ms"] for shape in table["shapes"]
               for entry in shape["blocks"].values())
    assert f"wrote {path}" in capsys.readouterr().out
    rows = latency.main(["check", str(path), "--networks", "3", "--warmup", "1", "--repeats", "3"])
    assert [row[0] for row in rows][0] == "sum of the parts" and len(rows) == 2
    kept = json.loads(path.read_text())["correction"]
    assert kept["fitted_on"] == 3 and set(kept["plain"]) == {"within_10_percent", "median_error", "worst_error",
                                                             "kendall_tau"}
    assert [network["use"] for network in kept["networks"]] == ["fit"] * 3 + ["test"] * 3  # kept to study offline
    assert all(network["sum_ms"] > 0 and network["measured_ms"] > 0 for network in kept["networks"])
    table = json.loads(path.read_text())  # 3 networks on a busy machine fit any line: the prediction uses it
    total = latency.sum_of_parts(table, (0,) * NUM_LAYERS)
    assert latency.predict(table, (0,) * NUM_LAYERS) == pytest.approx(
        table["correction"]["slope"] * total + table["correction"]["intercept"])
