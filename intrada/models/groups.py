"""Parameter lists for the segmentation networks' optimiser groups.

Two listings (`param_listing` of a training section):

- `unique`: each tensor once;
- `released`: the backbone as the released DeepLab-v2 code lists it for its 1x group:
  for each top-level module, every module inside it (itself included) contributes all
  of its parameters, so a tensor appears once per module enclosing it below the top one.
  In a ResNet, `conv1.weight` is listed once, a bottleneck's convolutions three times
  (layer, block, conv) and a downsample convolution four times (layer, block, downsample,
  conv). An SGD step then applies one momentum update per listing (`ListedSGD` in
  `intrada.training`), so the backbone trains faster than its nominal 1x rate.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

LISTINGS = ("unique", "released")


def listed_per_enclosing_module(tops: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Every parameter of `tops`, once per module of its top module that contains it."""
    return [p for top in tops for module in top.modules() for p in module.parameters()]


def backbone_listing(tops: list[nn.Module], listing: str) -> list[nn.Parameter]:
    """The backbone's parameters (the modules `tops`, in order) in `listing`."""
    if listing == "unique":
        return [p for top in tops for p in top.parameters()]
    if listing == "released":
        return listed_per_enclosing_module(tops)
    raise ValueError(f"unknown param_listing {listing!r}; expected one of {LISTINGS}")
