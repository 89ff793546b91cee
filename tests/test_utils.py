"""utils.py: the training loop's statistics, which it keeps on the device between log lines."""
import pytest
import torch
from torch import nn

import utils


def test_train_one_epoch_reports_the_image_weighted_means_of_its_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7))
    batches = [(torch.randn(n, 3, 2, 2), torch.randint(0, 7, (n,))) for n in (5, 3, 4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    seen = []

    def criterion(output, labels):  # records what each step saw, before its update
        loss = nn.functional.cross_entropy(output, labels)
        top1, top5 = utils.accuracy(output.detach(), labels)
        seen.append((loss.item(), top1, top5, len(labels)))
        return loss

    stats = utils.train_one_epoch(model, batches, criterion, optimizer, scheduler, 0, 1, log_frequency=2)
    total = sum(n for *_, n in seen)
    for i, key in enumerate(("loss", "top1", "top5")):
        assert abs(stats[key] - sum(step[i] * step[3] for step in seen) / total) < 1e-6, key
    assert 0 < stats["top1"] <= stats["top5"] <= 1 and stats["images_per_s"] > 0


def test_correct_counts_and_accuracy():
    output = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 1])
    assert utils.correct_counts(output, labels, topk=(1, 2)).tolist() == [1.0, 2.0]
    assert utils.accuracy(output, labels, topk=(1, 2)) == pytest.approx([1 / 3, 2 / 3])
