"""Top-k accuracy and running averages."""
import torch


class AverageMeter:
    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, n=1):
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def correct_counts(output, target, topk=(1, 5)):
    """How many of the batch have their label among the top-k predictions: a float tensor on output's device."""
    maxk = min(max(topk), output.shape[1])
    correct = output.topk(maxk, 1).indices.eq(target.view(-1, 1))
    return torch.stack([correct[:, :min(k, maxk)].any(1).sum() for k in topk]).float()


def accuracy(output, target, topk=(1, 5)):
    """Fractions of the batch whose label is among the top-k predictions."""
    return (correct_counts(output, target, topk) / target.shape[0]).tolist()
