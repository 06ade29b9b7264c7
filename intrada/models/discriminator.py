"""The fully-convolutional discriminator of AdvEnt (applied to self-information maps) and
of AdaptSegNet (applied to softmax maps): the two released codes define the same network."""

from __future__ import annotations

import torch
from torch import nn


class EntropyDiscriminator(nn.Module):
    """4x4 convolutions of stride 2 with LeakyReLU(0.2), ending in one logit per cell.

    `channels` are the hidden widths; AdvEnt and AdaptSegNet use (64, 128, 256, 512).
    The logit says "target" (1) against "source" (0).
    """

    def __init__(self, num_classes: int, channels: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = num_classes
        for cout in channels:
            layers += [
                nn.Conv2d(cin, cout, 4, stride=2, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, info_map: torch.Tensor) -> torch.Tensor:
        return self.net(info_map)
