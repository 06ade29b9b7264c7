"""Segmentation networks by name, and the discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from intrada.errors import IntradaError
from intrada.models.deeplabv2 import DeepLabV2
from intrada.models.deeplabv2 import load_pretrained as load_deeplab_pretrained
from intrada.models.discriminator import EntropyDiscriminator
from intrada.models.small import SmallSegNet

# name -> constructor(num_classes, **arch_config)
ARCHITECTURES = {"small": SmallSegNet, "deeplabv2": DeepLabV2}


def build_model(name: str, num_classes: int, **arch_config) -> nn.Module:
    """A segmentation network returning (aux, main) class scores."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](num_classes, **arch_config)


def load_pretrained(model: nn.Module, path: str) -> list[str]:
    """ImageNet weights from a local file into the network's backbone; returns the keys
    of the file it ignored."""
    if not isinstance(model, DeepLabV2):
        raise IntradaError(f"{path}: {type(model).__name__} has no pretrained backbone to load")
    return load_deeplab_pretrained(model, path)


def upsample(scores: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Class scores resized (bilinear) to an image size: losses, entropy maps and
    predictions live at image resolution, the networks' outputs at a fraction of it.
    `align_corners` is the network's own (`model.align_corners`, part of its architecture
    config), so that every stage upsamples a model's scores alike."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=align_corners)


__all__ = [
    "ARCHITECTURES",
    "DeepLabV2",
    "EntropyDiscriminator",
    "SmallSegNet",
    "build_model",
    "load_pretrained",
    "upsample",
]
