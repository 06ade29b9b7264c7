"""Losses of the adaptation step: segmentation, adversarial (BCE or least squares) and
entropy terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from intrada.classes import IGNORE_INDEX
from intrada.entropy import entropy_map

# Discriminator targets: the segmentation network wants target maps judged "source".
SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy, ignoring label 255. Returns 0 if every pixel is ignored."""
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def adversarial_loss(d_logits: torch.Tensor, label: float) -> torch.Tensor:
    """BCE between every discriminator cell and one domain label."""
    return F.binary_cross_entropy_with_logits(d_logits, torch.full_like(d_logits, label))


def least_squares_loss(d_out: torch.Tensor, label: float) -> torch.Tensor:
    """LS-GAN: the mean squared error between every raw discriminator output (no
    sigmoid) and one domain label, as AdaptSegNet's `--gan LS` (`MSELoss`)."""
    return F.mse_loss(d_out, torch.full_like(d_out, label))


def entropy_loss(prob: torch.Tensor) -> torch.Tensor:
    """MinEnt: the mean normalised entropy of a batch of softmax maps."""
    return entropy_map(prob).mean()
