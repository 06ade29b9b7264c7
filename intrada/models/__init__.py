"""Segmentation networks by name, and the discriminator."""

from __future__ import annotations

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


__all__ = ["ARCHITECTURES", "EntropyDiscriminator", "SmallSegNet", "build_model"]
