"""utils.py: top-k counts and fractions."""
import pytest
import torch

from utils import accuracy, correct_counts


def test_correct_counts_and_accuracy():
    output = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 1])
    assert correct_counts(output, labels, topk=(1, 2)).tolist() == [1.0, 2.0]
    assert accuracy(output, labels, topk=(1, 2)) == pytest.approx([1 / 3, 2 / 3])
