"""Losses: the head each loss needs is applied by the objective, and the teaching material's numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnlab.losses import cross_entropy, nll


def test_softmax_of_2_and_5():
    probs = cross_entropy().probabilities(torch.tensor([[2.0, 5.0]]))
    assert torch.allclose(probs, torch.tensor([[0.047, 0.953]]), atol=5e-4)


def test_ce_on_logits_equals_nll_on_log_softmax():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 10), torch.randint(0, 10, (16,))
    assert torch.allclose(cross_entropy()(logits, target), nll()(logits, target))
    assert torch.allclose(nll()(logits, target), F.nll_loss(F.log_softmax(logits, 1), target))


def test_label_smoothing_reaches_torch():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    expected = F.cross_entropy(logits, target, label_smoothing=0.1)
    assert torch.allclose(cross_entropy(label_smoothing=0.1)(logits, target), expected)


def test_cross_entropy_of_the_seed_predictions():
    # Predictions (0.9, 0.1), (0.1, 0.9), (0.4, 0.6) for (dog, cat), labels dog, cat, dog: CE 0.38.
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 0])
    assert round(nll()(probs.log(), labels).item(), 2) == 0.38  # log-probs in, the head is identity on them
    worse = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    assert round(nll()(worse.log(), labels).item(), 2) == 1.06
