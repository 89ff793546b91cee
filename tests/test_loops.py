"""spos/loops.py: the training loop's statistics, which it keeps on the device between log lines."""
import torch
from torch import nn

from spos.loops import train_one_epoch
from utils import accuracy


def test_train_one_epoch_reports_the_image_weighted_means_of_its_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7))
    batches = [(torch.randn(n, 3, 2, 2), torch.randint(0, 7, (n,))) for n in (5, 3, 4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    seen = []

    def criterion(output, labels):  # records what each step saw, before its update
        loss = nn.functional.cross_entropy(output, labels)
        top1, top5 = accuracy(output.detach(), labels)
        seen.append((loss.item(), top1, top5, len(labels)))
        return loss

    stats = train_one_epoch(model, batches, criterion, optimizer, scheduler, 0, 1, log_frequency=2)
    total = sum(n for *_, n in seen)
    for i, key in enumerate(("loss", "top1", "top5")):
        assert abs(stats[key] - sum(step[i] * step[3] for step in seen) / total) < 1e-6, key
    assert 0 < stats["top1"] <= stats["top5"] <= 1 and stats["images_per_s"] > 0
