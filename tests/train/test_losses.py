"""The training losses: masked L1 and the Gaussian heatmap cross-entropy."""

import torch

from train.losses import heatmap_cross_entropy, masked_l1


def test_heatmap_cross_entropy_is_lowest_on_a_peak_at_the_target():
    h = w = 8
    stride = 4
    target = torch.tensor([[[13.5, 5.5]]])  # the centre of cell (row 1, column 3)
    vis = torch.ones(1, 1)
    losses = {}
    for row in range(h):
        for col in range(w):
            logits = torch.full((1, 1, h, w), -5.0)
            logits[0, 0, row, col] = 5.0
            losses[row, col] = heatmap_cross_entropy(logits, target, vis, stride).item()
    assert min(losses, key=losses.get) == (1, 3)
    far = heatmap_cross_entropy(torch.zeros(1, 1, h, w), target, torch.zeros(1, 1), stride)
    assert far.item() == 0.0  # invisible joints cost nothing


def test_heatmap_cross_entropy_gradient_pulls_towards_the_target():
    logits = torch.zeros(1, 1, 8, 8, requires_grad=True)
    heatmap_cross_entropy(logits, torch.tensor([[[1.5, 1.5]]]), torch.ones(1, 1), 4).backward()
    grad = logits.grad[0, 0]
    assert grad[0, 0] < 0 and grad[7, 7] > 0  # raise the target cell, lower a far one


def test_masked_l1_weights_joints():
    pred, target = torch.zeros(1, 2, 1), torch.tensor([[[1.0], [3.0]]])
    assert masked_l1(pred, target, torch.tensor([[1.0, 0.0]])).item() == 1.0
    assert masked_l1(pred, target, torch.tensor([[0.5, 0.5]])).item() == 2.0
