"""network.py: official naming and checkpoints, FLOPs (computed and from Megvii's table), sizes, sampling."""
import os
import pickle
import random

import pytest
import torch
from torch import nn

import network
from network import (FlopsBinnedSampler, ShuffleNetV2OneShot, layer_specs, load_and_parse_state_dict, load_weights,
                     random_architecture)
from utils import UserError

FINAL_ARCHITECTURE = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_TABLE = "/nonexistent/op_flops_dict.pkl"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """OpenMP threads spin while they wait: on 2 shared cores two threads ran 10x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return ShuffleNetV2OneShot(op_flops_path=NO_TABLE)


def official_keys():
    """State-dict keys of Megvii's supernet (affine=False BN), written out from its layer order."""
    def conv(prefix):
        return [f"{prefix}.weight"]

    def bn(prefix):
        return [f"{prefix}.running_mean", f"{prefix}.running_var", f"{prefix}.num_batches_tracked"]

    keys = conv("first_conv.0") + bn("first_conv.1")
    for layer, (_, _, _, stride, _) in enumerate(layer_specs(224)):
        for choice in range(4):
            main = f"features.{layer}.{choice}.branch_main"
            if choice < 3:  # conv BN ReLU, dw-conv BN, conv BN ReLU
                convs, bns = (0, 3, 5), (1, 4, 6)
            else:  # (dw-conv BN, conv BN ReLU) x 3
                convs, bns = (0, 2, 5, 7, 10, 12), (1, 3, 6, 8, 11, 13)
            keys += [k for i in convs for k in conv(f"{main}.{i}")] + [k for i in bns for k in bn(f"{main}.{i}")]
            if stride == 2:
                proj = f"features.{layer}.{choice}.branch_proj"
                keys += conv(f"{proj}.0") + bn(f"{proj}.1") + conv(f"{proj}.2") + bn(f"{proj}.3")
    return set(keys + conv("conv_last.0") + bn("conv_last.1") + ["classifier.0.weight"])


def test_official_module_names(supernet):
    assert set(supernet.state_dict()) == official_keys()
    assert supernet.features[0][0].branch_proj[0].weight.shape == (16, 1, 3, 3)
    assert supernet.features[19][3].branch_main[12].weight.shape == (640 - 320, 320, 1, 1)
    assert supernet.classifier[0].weight.shape == (1000, 1024)
    assert supernet.classifier[0].bias is None


def test_official_init(supernet):
    assert abs(supernet.first_conv[0].weight.std().item() - 0.01) < 0.002
    assert abs(supernet.classifier[0].weight.std().item() - 0.01) < 0.001
    pointwise = supernet.features[5][1].branch_main[0].weight  # 1x1 conv 80 -> 80
    assert abs(pointwise.std().item() - 1 / 80) < 0.002
    assert all(torch.all(m.running_mean == 0) for m in supernet.modules() if isinstance(m, nn.BatchNorm2d))
    scratch = ShuffleNetV2OneShot(architecture=FINAL_ARCHITECTURE, affine=True, op_flops_path=NO_TABLE)
    bn = scratch.first_conv[1]
    assert torch.all(bn.weight == 1) and torch.allclose(bn.bias, torch.full_like(bn.bias, 1e-4))


def test_official_format_checkpoint_loads_strictly_and_gives_identical_outputs(supernet, tmp_path):
    torch.manual_seed(1)
    source = ShuffleNetV2OneShot(n_classes=1000, op_flops_path=NO_TABLE)
    with torch.no_grad():  # non-trivial BN statistics, so that loading them matters too
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "checkpoint-150000.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)

    state_dict = load_and_parse_state_dict(str(path))
    assert not any(k.startswith("module.") for k in state_dict)
    target = ShuffleNetV2OneShot(n_classes=1000, op_flops_path=NO_TABLE)
    target.load_state_dict(state_dict, strict=True)
    x = torch.randn(2, 3, 64, 64)
    source.eval(), target.eval()
    with torch.no_grad():
        for architecture in (FINAL_ARCHITECTURE, (3,) * 20, (0,) * 20):
            assert torch.equal(source(x, architecture), target(x, architecture))
    assert load_weights(ShuffleNetV2OneShot(n_classes=1000, op_flops_path=NO_TABLE), str(path)) is not None


def test_from_scratch_net_has_only_the_chosen_blocks():
    net = ShuffleNetV2OneShot(architecture=FINAL_ARCHITECTURE, affine=True, op_flops_path=NO_TABLE)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(3.56e6, abs=0.01e6)
    assert len(net.features) == 20
    assert all(bn.affine for bn in net.modules() if isinstance(bn, nn.BatchNorm2d))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    assert net.get_candidate_flops() == net.get_candidate_flops(FINAL_ARCHITECTURE)


def test_supernet_needs_an_architecture(supernet):
    with pytest.raises(ValueError):
        supernet(torch.randn(1, 3, 32, 32))


def test_flops_of_the_released_architecture(supernet):
    flops = supernet.get_candidate_flops(FINAL_ARCHITECTURE)
    assert flops == pytest.approx(323e6, rel=0.005)
    tuner_form = {f"LayerChoice{i + 1}": {"_value": str(c), "_idx": c} for i, c in enumerate(FINAL_ARCHITECTURE)}
    assert supernet.get_candidate_flops(tuner_form) == flops
    # more expensive blocks, more FLOPs
    assert supernet.get_candidate_flops((0,) * 20) < flops < supernet.get_candidate_flops((2,) * 20)


@pytest.mark.parametrize("input_size", [224, 32])
def test_mac_count_equals_torch_flop_counter(input_size):
    """network._count_macs (hooks on a real pass) counts what torch's FlopCounterMode counts for the convolutions
    and linear layers of every block (on meta tensors, where every layer runs as a convolution: on a CPU, small
    maps compute the same sums another way, blocks.PointwiseConv2d and DepthwiseConv2d)."""
    from torch.utils.flop_counter import FlopCounterMode

    from blocks import make_block

    def torch_count(module, shape):
        with FlopCounterMode(display=False) as counter:
            module.to("meta").eval()(torch.zeros(shape, device="meta"))
        return counter.get_total_flops() // 2

    for inp, oup, mid, stride, fm in layer_specs(input_size)[:5] + layer_specs(input_size)[-2:]:
        for choice in range(4):
            shape = (1, inp * (3 - stride), fm, fm)
            expected = torch_count(make_block(choice, inp, oup, mid, stride, False), shape)
            assert network._count_macs(make_block(choice, inp, oup, mid, stride, False), shape) == expected
    linear = nn.Linear(1024, 1000, bias=False)
    assert network._count_macs(linear, (1, 1024)) == torch_count(linear, (1, 1024)) == 1024 * 1000


def test_path_network_skips_initialising_its_meta_weights(supernet, fresh_python):
    """path_network builds on meta and assigns the supernet's weights: the path computes what the supernet
    computes on that path, and no init runs on meta (there it loads torch's compiler, a second a process;
    checked in a fresh interpreter, where nothing else has loaded it)."""
    path = network.path_network(supernet.eval(), FINAL_ARCHITECTURE)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(path(x), supernet(x, FINAL_ARCHITECTURE))
    code = ("import sys, network\n"
            f"supernet = network.ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path={NO_TABLE!r})\n"
            f"network.path_network(supernet, {FINAL_ARCHITECTURE!r})\n"
            "print('torch._dynamo' in sys.modules)")
    assert fresh_python(code) == ["False"]


def test_small_input_path_matches_a_plain_conv_path():
    """At 32x32 the 1x1 and depthwise convs of stages 3 and 4 (maps of 1 to 4 pixels) compute their sums without
    oneDNN's convolution: the net gives the same outputs as with plain convolutions in train and eval mode, and
    the same gradients in training (in float64, where a chain of 20 blocks keeps rounding out of the comparison)."""
    input_size = 32
    torch.manual_seed(0)
    net = ShuffleNetV2OneShot(input_size=input_size, n_classes=10, op_flops_path=NO_TABLE,
                              architecture=FINAL_ARCHITECTURE).double()
    plain = ShuffleNetV2OneShot(input_size=input_size, n_classes=10, op_flops_path=NO_TABLE,
                                architecture=FINAL_ARCHITECTURE)
    for parent in list(plain.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                                child.stride, child.padding, groups=child.groups, bias=False))
    plain.double().load_state_dict(net.state_dict())
    x = torch.randn(16, 3, input_size, input_size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for mode in (True, False):
        net.train(mode), plain.train(mode)
        torch.manual_seed(1)
        out = net(x)
        torch.manual_seed(1)
        out_plain = plain(x)
        torch.testing.assert_close(out, out_plain, rtol=1e-10, atol=1e-10)
        if mode:
            out.square().sum().backward()
            out_plain.square().sum().backward()
            grads = {name: p.grad for name, p in plain.named_parameters()}
            for name, p in net.named_parameters():
                torch.testing.assert_close(p.grad, grads[name], rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("input_size, n_classes", [(32, 10), (96, 7), (160, 3)])
def test_any_multiple_of_32_and_class_count(input_size, n_classes):
    net = ShuffleNetV2OneShot(input_size=input_size, n_classes=n_classes, op_flops_path=NO_TABLE).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, input_size, input_size), FINAL_ARCHITECTURE).shape == (2, n_classes)
    assert net.get_candidate_flops(FINAL_ARCHITECTURE) > 0


@pytest.mark.parametrize("input_size", [100, 0, -32, 33])
def test_non_multiple_of_32_is_a_user_error(input_size):
    with pytest.raises(UserError, match=str(input_size)):
        ShuffleNetV2OneShot(input_size=input_size, op_flops_path=NO_TABLE)


def megvii_table(model, bump):
    """Megvii's op_flops_dict.pkl format from this model's computed numbers, each plus ``bump``."""
    stem, per_layer, rest = model._flops_computed((network.UNSCALED,))
    table = {"conv1": {(3, 16, 224, 224, 2): stem + bump},
             "rest_operation": {(640, model.n_classes, 7, 7, 1): rest + bump}}
    for (inp, oup, mid, stride, fm), flops in zip(layer_specs(224), per_layer):
        for choice, name in enumerate(("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")):
            value = flops[choice, network.UNSCALED]
            # Megvii's feature map sizes are floats after halving (56.0): equal keys all the same
            table.setdefault(f"{name}_stride_{stride}", {})[(inp, oup, mid, float(fm), float(fm), stride)] = \
                value + bump
    return table


def test_flops_table_is_used_when_present(supernet, tmp_path):
    path = tmp_path / "op_flops_dict.pkl"
    with open(path, "wb") as f:
        pickle.dump(megvii_table(supernet, 1000), f)
    from_table = ShuffleNetV2OneShot(op_flops_path=str(path))
    computed = supernet.get_candidate_flops(FINAL_ARCHITECTURE)
    assert from_table.get_candidate_flops(FINAL_ARCHITECTURE) == computed + 22 * 1000


def test_flops_table_for_another_input_size_is_a_user_error(supernet, tmp_path):
    path = tmp_path / "op_flops_dict.pkl"
    with open(path, "wb") as f:
        pickle.dump(megvii_table(supernet, 0), f)
    with pytest.raises(UserError, match="op_flops_dict.pkl.*no FLOPs entry"):
        ShuffleNetV2OneShot(input_size=32, op_flops_path=str(path)).get_candidate_flops(FINAL_ARCHITECTURE)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_flops_table_with_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "op_flops_dict.pkl"
    with open(path, "wb") as f:
        pickle.dump({"conv1": {(3, 16, 224, 224, 2): _Exploit(marker)}}, f)
    with pytest.raises(UserError, match="op_flops_dict.pkl.*refusing to load"):
        ShuffleNetV2OneShot(op_flops_path=str(path)).get_candidate_flops(FINAL_ARCHITECTURE)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"this is not a pickle", b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f", b"",
                                     pickle.dumps([1, 2, 3]), pickle.dumps({"conv1": {(3, 16, 224, 224, 2): "x"}})])
def test_garbage_flops_table_is_a_user_error_naming_the_path(tmp_path, content):
    path = tmp_path / "op_flops_dict.pkl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=str(path)):
        ShuffleNetV2OneShot(op_flops_path=str(path)).get_candidate_flops(FINAL_ARCHITECTURE)


def test_random_garbage_flops_tables_never_escape_as_other_errors(tmp_path):
    path = tmp_path / "op_flops_dict.pkl"
    rng = random.Random(0)
    for i in range(300):
        path.write_bytes(b"\x80\x04" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
        try:
            network._read_op_flops_table(str(path))
        except UserError as e:
            assert str(path) in str(e)


@pytest.fixture
def checkpoint(tmp_path, supernet):
    path = tmp_path / "epoch_1.pth.tar"
    torch.save({"state_dict": supernet.state_dict(), "epoch": 1}, path)
    return path


def test_truncated_checkpoint_is_a_user_error(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=f"{checkpoint}: not a readable PyTorch checkpoint"):
        load_and_parse_state_dict(str(checkpoint))


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing.pth.tar: checkpoint not found"):
        load_and_parse_state_dict(str(tmp_path / "nothing.pth.tar"))


def test_text_file_as_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match=str(path)):
        load_and_parse_state_dict(str(path))


def test_checkpoint_of_unrelated_tensors_is_a_user_error(tmp_path):
    path = tmp_path / "foreign.pth.tar"
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, path)
    with pytest.raises(UserError, match=f"{path}: does not fit this network.*missing"):
        load_weights(ShuffleNetV2OneShot(op_flops_path=NO_TABLE), str(path))


def test_checkpoint_of_another_class_count_is_a_user_error(checkpoint):
    with pytest.raises(UserError, match=f"{checkpoint}: does not fit this network.*wrong shape.*classifier"):
        load_weights(ShuffleNetV2OneShot(n_classes=10, op_flops_path=NO_TABLE), str(checkpoint))


def test_checkpoint_holding_objects_is_not_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"x": _Exploit(marker)}}, path)
    with pytest.raises(UserError, match=str(path)):
        load_and_parse_state_dict(str(path))
    assert not marker.exists()


def test_flops_binned_sampler_draws_paths_in_the_scaled_bins(supernet):
    for input_size, n_classes in ((224, 1000), (32, 10)):
        model = supernet if input_size == 224 else ShuffleNetV2OneShot(input_size=input_size, n_classes=n_classes,
                                                                       op_flops_path=NO_TABLE)
        sampler = FlopsBinnedSampler(model, random.Random(0))
        scale = (input_size / 224) ** 2
        assert sampler.bins[0][0] == pytest.approx(290e6 * scale) and sampler.bins[-1][1] == pytest.approx(
            360e6 * scale)
        assert len(sampler.bins) == 7
        hits = [0] * 7
        for _ in range(200):
            flops = model.get_candidate_flops(sampler())
            in_bins = [i for i, (low, high) in enumerate(sampler.bins) if low <= flops <= high]
            assert in_bins, f"{flops} outside every bin at input {input_size}"
            hits[in_bins[0]] += 1
        assert all(hits), hits  # each bin drawn
    # about 59 % of uniform paths are at most 330M FLOPs (SPEC): checks the computed FLOPs' spread
    rng = random.Random(1)
    share = sum(supernet.get_candidate_flops(random_architecture(rng)) <= 330e6 for _ in range(2000)) / 2000
    assert 0.55 < share < 0.63


@pytest.mark.parametrize("channels_last", [False, True])
def test_path_network_and_folded_bn_compute_what_the_supernet_path_computes(channels_last):
    torch.manual_seed(0)
    supernet = network.ShuffleNetV2OneShot(input_size=64, n_classes=10)
    with torch.no_grad():  # BN statistics of a few batches, so that folding has something to fold
        supernet.train()
        for _ in range(3):
            supernet(torch.randn(16, 3, 64, 64) * 3 + 1, FINAL_ARCHITECTURE)
    supernet.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    supernet.to(memory_format=memory_format)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    x = torch.randn(8, 3, 64, 64)
    expected = supernet(x, FINAL_ARCHITECTURE)

    path = network.path_network(supernet, FINAL_ARCHITECTURE)
    assert path.architecture == FINAL_ARCHITECTURE and not path.training
    assert sum(p.numel() for p in path.parameters()) < sum(p.numel() for p in supernet.parameters()) / 2
    torch.testing.assert_close(path(x), expected)
    folded = network.fold_batch_norms(path)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert folded.first_conv[0].weight.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
    for key, value in supernet.state_dict().items():  # the supernet keeps its weights and statistics
        assert torch.equal(value, before[key]), key


# channel search (SPEC section 13)

MEGVII_BLOCKS = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2)
MEGVII_SCALE_IDS = (6, 5, 3, 5, 2, 6, 3, 4, 2, 5, 7, 5, 4, 6, 7, 4, 4, 5, 4, 3)


def test_released_block_and_channel_network_counts_megvii_flops_and_parameters(supernet):
    released = MEGVII_BLOCKS + MEGVII_SCALE_IDS
    assert supernet.get_candidate_flops(released) == 327_857_920
    with torch.device("meta"):
        net = ShuffleNetV2OneShot(n_classes=1000, affine=True, architecture=released, op_flops_path=NO_TABLE)
        unscaled = ShuffleNetV2OneShot(n_classes=1000, affine=True, architecture=MEGVII_BLOCKS, op_flops_path=NO_TABLE)
    assert sum(p.numel() for p in net.parameters()) == 3_432_579
    assert net.get_candidate_flops() == 327_857_920
    # the same blocks at 1.0x: the block-search count, from either form
    assert sum(p.numel() for p in unscaled.parameters()) == 3_345_088
    assert supernet.get_candidate_flops(MEGVII_BLOCKS) == 318_729_024
    assert supernet.get_candidate_flops(MEGVII_BLOCKS + (network.UNSCALED,) * 20) == 318_729_024


def test_mid_channels_of_every_scale_and_flops_grow_with_width(supernet):
    assert [network.scaled_mid_channels(32, s) for s in range(8)] == [6, 12, 19, 25, 32, 38, 44, 51]
    _, per_layer, _ = supernet._get_channel_flops_table()
    for layer in per_layer:
        for block in range(4):
            costs = [layer[block, s] for s in range(8)]
            assert costs == sorted(costs) and len(set(costs)) == 8


def test_mac_count_of_scaled_blocks_equals_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from blocks import make_block

    for inp, oup, mid, stride, fm in layer_specs(224)[:2] + layer_specs(224)[-1:]:
        for choice in range(4):
            for scale in (0, 3, 7):
                block_mid = network.scaled_mid_channels(mid, scale)
                shape = (1, inp * (3 - stride), fm, fm)
                with FlopCounterMode(display=False) as counter:
                    make_block(choice, inp, oup, block_mid, stride, False).to("meta").eval()(
                        torch.zeros(shape, device="meta"))
                assert network._count_macs(make_block(choice, inp, oup, block_mid, stride, False), shape) == \
                    counter.get_total_flops() // 2


def trained_channel_supernet(input_size=32, seed=0):
    """A channel-search supernet whose BN statistics have seen a few random paths."""
    torch.manual_seed(seed)
    model = ShuffleNetV2OneShot(input_size=input_size, n_classes=10, channel_search=True, op_flops_path=NO_TABLE)
    rng = random.Random(seed)
    with torch.no_grad():
        model.train()
        for _ in range(4):
            model(torch.randn(8, 3, input_size, input_size) * 2 + 1, random_architecture(rng, channel_search=True))
    return model.eval()


def test_channel_supernet_holds_the_widest_blocks_and_records_the_option():
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, channel_search=True, op_flops_path=NO_TABLE)
    assert model.options()["channel_search"] is True
    for layer, (_, _, mid, _, _) in zip(model.features, layer_specs(32)):
        assert layer[0].branch_main[0].out_channels == network.scaled_mid_channels(mid, network.WIDEST)
    plain = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE)
    assert plain.options()["channel_search"] is False
    # the same module names as Megvii's: only the widths differ
    assert set(model.state_dict()) == set(plain.state_dict())


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_path_network_computes_what_the_supernet_path_computes(channels_last):
    supernet = trained_channel_supernet()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    supernet.to(memory_format=memory_format)
    rng = random.Random(5)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        path = random_architecture(rng, channel_search=True)
        expected = supernet(x, path)
        net = network.path_network(supernet, path)
        blocks, scales = network.split_architecture(path)
        for layer, block, scale, (_, _, mid, _, _) in zip(net.features, blocks, scales, layer_specs(32)):
            assert layer.branch_main[-3].in_channels == network.scaled_mid_channels(mid, scale)  # the last 1x1 conv
        assert net.first_conv[0].weight.is_contiguous(memory_format=memory_format)
        scale_of_output = expected.abs().max().item()
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-4 * scale_of_output)
        torch.testing.assert_close(network.fold_batch_norms(net)(x), expected, rtol=1e-3, atol=1e-3 * scale_of_output)
        assert net.get_candidate_flops() == supernet.get_candidate_flops(path)


def test_channel_path_trains_only_its_first_channels():
    supernet = trained_channel_supernet()
    supernet.train()
    path = (0,) * 20 + (0,) * 20  # every layer at 0.2x
    supernet(torch.randn(4, 3, 32, 32), path).sum().backward()
    conv = supernet.features[5][0].branch_main[0]
    used = network.scaled_mid_channels(layer_specs(32)[5][2], 0)
    assert conv.weight.grad[:used].abs().sum() > 0 and conv.weight.grad[used:].abs().sum() == 0
    assert supernet.features[5][1].branch_main[0].weight.grad is None  # another block: untouched


def test_block_supernet_refuses_scales_and_takes_unscaled_genes():
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x, FINAL_ARCHITECTURE), model(x, FINAL_ARCHITECTURE + (network.UNSCALED,) * 20))
    with pytest.raises(UserError, match="without channel search"):
        model(x, FINAL_ARCHITECTURE + (3,) * 20)


def test_channel_sampler_draws_legal_blocks_and_scales_in_the_bins():
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, channel_search=True, op_flops_path=NO_TABLE)
    sampler = FlopsBinnedSampler(model, random.Random(0))
    drawn = [sampler() for _ in range(100)]
    for path in drawn:
        assert len(path) == 40 and all(0 <= b < 4 for b in path[:20]) and all(0 <= s < 8 for s in path[20:])
        flops = model.get_candidate_flops(path)
        assert any(low <= flops <= high for low, high in sampler.bins)
    assert {s for path in drawn for s in path[20:]} == set(range(8))


def test_channel_checkpoint_round_trip(tmp_path):
    from spos.checkpoint import save_weights
    from spos.scoring import load_supernet

    supernet = trained_channel_supernet()
    save_weights(str(tmp_path), 1, supernet.state_dict(), supernet.options())
    loaded = load_supernet(str(tmp_path / "epoch_1.pth.tar"), 32, 10, channels_last=False)
    assert loaded.channel_search
    path = random_architecture(random.Random(2), channel_search=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x, path), supernet(x, path))
    # a block-search supernet does not take these weights: one clear message
    with pytest.raises(UserError, match="does not fit this network"):
        load_weights(ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=NO_TABLE),
                     str(tmp_path / "epoch_1.pth.tar"))


def test_small_input_runs_every_stage_on_maps_twice_as_large_with_the_same_weights():
    """A stride-1 first conv: at 32x32 the stages run on 32..2 maps (16..1 with Megvii's stem); the weights are
    the same tensors, and FLOPs are counted for it (4x in the blocks), as torch's counter counts them on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    architecture = [0, 1, 2, 3] * 5
    small = ShuffleNetV2OneShot(input_size=32, n_classes=10, architecture=architecture, small_input=True)
    plain = ShuffleNetV2OneShot(input_size=32, n_classes=10, architecture=architecture)
    assert [spec[4] for spec in layer_specs(32, small_input=True)][::4] == [32, 16, 8, 4, 4]
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    sizes = []
    hooks = [small.features[i].register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for i in (0, 19)]
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    for hook in hooks:
        hook.remove()
    assert sizes == [16, 2]
    assert small.options()["small_input"] is True and plain.options()["small_input"] is False
    with FlopCounterMode(display=False) as counter:
        small.to("meta").eval()(torch.zeros(1, 3, 32, 32, device="meta"))
    assert small.get_candidate_flops() == counter.get_total_flops() // 2
    assert 3.5 < small.get_candidate_flops() / plain.get_candidate_flops() < 4.1
