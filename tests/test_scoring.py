"""spos/scoring.py: the checkpoint a folder means, BN recalibration, and a candidate scored on a copy of its path as
NNI's tester scores it on the supernet."""
import copy

import pytest
import torch
from torch import nn

import network
from spos import scoring
from spos.hardware import prepare_model

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = (2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)


def test_recalibration_is_a_cumulative_average_over_the_path():
    torch.manual_seed(0)
    supernet = network.ShuffleNetV2OneShot(input_size=32, n_classes=10).eval()
    path = network.path_network(supernet, ARCH)
    batches = [(torch.randn(8, 3, 32, 32) * (i + 1), torch.zeros(8, dtype=torch.long)) for i in range(3)]
    scoring.recalibrate_bn(path, batches, 5)  # 3 batches, then the first two again
    used = [batches[i % 3][0] for i in range(5)]
    with torch.no_grad():
        conv_means = [path.first_conv[0](x).mean(dim=(0, 2, 3)) for x in used]
    bn = path.first_conv[1]
    assert not path.training
    assert bn.momentum is None and int(bn.num_batches_tracked) == 5
    torch.testing.assert_close(bn.running_mean, torch.stack(conv_means).mean(0), rtol=1e-4, atol=1e-5)
    assert int(supernet.first_conv[1].num_batches_tracked) == 0  # the supernet is not touched


def _plain_candidate_accuracy(model, architecture, train, val):
    """NNI's tester as written: reset the supernet's BN statistics, forward the batches in train mode, then
    evaluate the supernet itself (no copy, no folding)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for images, _ in train:
            model(images, architecture)
        model.eval()
        correct = sum(int((model(images, architecture).argmax(1) == labels).sum()) for images, labels in val)
    return correct / sum(len(labels) for _, labels in val)


@pytest.mark.parametrize("channels_last", [False, True])
def test_evaluate_candidate_scores_as_plain_recalibration_and_leaves_the_supernet(channels_last):
    torch.manual_seed(0)
    model = network.ShuffleNetV2OneShot(input_size=32, n_classes=10).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    # a classifier whose predictions vary with the input, so the accuracy tells folded and plain apart
    nn.init.normal_(model.classifier[0].weight, 0, 1)
    prepare_model(model, torch.device("cpu"), channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))) for _ in range(3)]
    val = [(torch.randn(50, 3, 32, 32), torch.randint(0, 10, (50,))) for _ in range(2)]
    seen = []
    result = scoring.evaluate_candidate(model, ARCH, train, val, 3, on_before_recalibration=seen.append)
    assert seen == [result["accuracy_before_recalibration"]]
    assert result["images"] == 100
    assert result["accuracy"] == pytest.approx(_plain_candidate_accuracy(model, ARCH, train, val), abs=1e-6)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
