"""Segmentation networks by name, and the discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from intrada.models.discriminator import EntropyDiscriminator
from intrada.models.small import SmallSegNet

# name -> constructor(num_classes, **arch_config)
ARCHITECTURES = {"small": SmallSegNet}


def build_model(name: str, num_classes: int, **arch_config) -> nn.Module:
    """A segmentation network returning (aux, main) class scores."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](num_classes, **arch_config)


def upsample(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class scores resized (bilinear) to an image size: losses, entropy maps and
    predictions live at image resolution, the networks' outputs at a fraction of it."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


__all__ = ["ARCHITECTURES", "EntropyDiscriminator", "SmallSegNet", "build_model", "upsample"]
