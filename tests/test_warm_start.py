"""spos/warm_start.py: every choice of every layer gets the template block's function, exactly for the shuffle blocks
and by fitting for the Xception block (that the demo's warm-started supernet scores random paths far above chance
is in test_demo.py, which shares the demo's run)."""
import itertools

import pytest
import torch
from torch import nn

from dataloader import ImageFolderLoader
from network import ShuffleNetV2OneShot
from spos import warm_start

pytestmark = pytest.mark.usefixtures("one_thread")


def layer_inputs(model, x, architecture, mids):
    """The input each of the 20 layers gets on ``architecture`` at the middle widths ``mids``."""
    inputs = []
    for choices, choice, mid in zip(model.features, architecture, mids):
        inputs.append(x)
        x = choices[choice](x, mid)
    return inputs


@pytest.mark.parametrize("channel_search", [False, True])
def test_shuffle_siblings_compute_the_template_function_and_xception_takes_its_projection(channel_search):
    """With channel search, at every width: a narrower block is the first channels of the wider one."""
    torch.manual_seed(0)
    model = ShuffleNetV2OneShot(input_size=64, n_classes=10, op_flops_path=None, channel_search=channel_search)
    for m in model.modules():  # statistics of a trained net, so that eval mode tests the copied ones too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    pairs = warm_start.copy_template_into_siblings(model)
    assert len(pairs) == 20  # one Xception main branch a layer
    x = model.first_conv.eval()(torch.randn(4, 3, 64, 64))
    torch.manual_seed(1)
    _, mids = model.path_widths(warm_start.template_path(model))
    assert (len(set(mids)) > 1) == channel_search
    with torch.no_grad():
        for train in (False, True):  # eval first: train mode moves the running statistics
            model.train(train)
            for layer, layer_input, mid in zip(model.features, layer_inputs(
                    model, x, (warm_start.TEMPLATE_CHOICE,) * 20, mids), mids):
                expected = layer[warm_start.TEMPLATE_CHOICE](layer_input, mid)
                for choice in (0, 1, 2):
                    torch.testing.assert_close(layer[choice](layer_input, mid), expected, rtol=1e-5, atol=1e-5)
                if layer[3].branch_proj is not None:
                    torch.testing.assert_close(layer[3].branch_proj(layer_input),
                                               layer[warm_start.TEMPLATE_CHOICE].branch_proj(layer_input))


def test_a_smaller_kernel_is_not_copied_into_a_larger_template_layout():
    source, target = nn.Conv2d(4, 4, 7, groups=4, bias=False), nn.Conv2d(4, 4, 3, groups=4, bias=False)
    with pytest.raises(ValueError, match="cannot copy"):
        warm_start._copy_padded(source, target)


@pytest.mark.parametrize("channel_search", [False, True])
def test_fitting_brings_the_xception_branches_to_the_template_outputs(digits_dir, channel_search):
    torch.manual_seed(0)
    model = ShuffleNetV2OneShot(input_size=32, n_classes=10, op_flops_path=None, channel_search=channel_search)
    loader = ImageFolderLoader(digits_dir, "train", train=True, batch_size=32, input_size=32, workers=1,
                               backend="torch")
    batches = itertools.cycle(list(itertools.islice(iter(loader), 4)))
    pairs = warm_start.copy_template_into_siblings(model)
    first = warm_start.fit_branches(model, batches, pairs, steps=1)
    last = warm_start.fit_branches(model, batches, pairs, steps=60)
    # at drawn widths each step's error is that of other widths: it falls less far in these few steps
    assert last < (0.75 if channel_search else 0.5) * first, (first, last)
