"""Entropy math of AdvEnt / IntraDA, as pure tensor functions.

For a softmax P with C channels the *weighted self-information map* is
I = -P * log2(P) / log2(C); summing it over channels gives the entropy normalised to
[0, 1] (0 for a one-hot prediction, 1 for the uniform one).
"""

from __future__ import annotations

import math

import torch

EPS = 1e-30  # keeps log2(0) finite; 0 * log2(EPS) is then exactly 0


def self_information(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) softmax -> (N, C, H, W) weighted self-information map."""
    num_classes = prob.shape[1]
    return -prob * torch.log2(prob + EPS) / math.log2(num_classes)


def entropy_map(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) softmax -> (N, H, W) normalised entropy in [0, 1].

    The sign and the 1 / log2(C) are applied after the sum over channels, on a C times
    smaller tensor. Without autograd (scoring, evaluation) the same operations run in
    place in one buffer: bit for bit the same map as with autograd, several times
    faster on the CPU than allocating a fresh softmax-sized tensor for each of them."""
    scale = -1.0 / math.log2(prob.shape[1])
    if prob.requires_grad and torch.is_grad_enabled():
        return (prob * torch.log2(prob + EPS)).sum(dim=1) * scale
    info = prob + EPS
    info.log2_().mul_(prob)
    return info.sum(dim=1).mul_(scale)


def image_entropy(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) softmax -> (N,) mean normalised entropy of each image: its rank score."""
    return entropy_map(prob).mean(dim=(1, 2))


def rare_class_normalised(score: float, num_present: int, num_rare: int) -> float:
    """The authors' normaliser: score * ((K - r) / K + 0.5) for r of K rare classes in the
    prediction. An image showing rare classes gets a lower score, so it is ranked easier
    and its rare-class pixels reach the pseudo-labels instead of the hard split."""
    if not 0 <= num_present <= num_rare:
        raise ValueError(f"{num_present} rare classes present out of {num_rare}")
    return score * ((num_rare - num_present) / num_rare + 0.5)
