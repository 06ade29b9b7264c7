"""A small CPU-friendly segmentation network shaped like DeepLab-v2.

Output stride 4 with dilated residual blocks instead of further downsampling; an
auxiliary head on the third block and a main head (a sum of dilated 3x3 convolutions,
as DeepLab-v2's ASPP classifier) on the fourth, mirroring DeepLab-v2's conv4 / conv5
heads so that the adaptation code treats both models alike.
"""

from __future__ import annotations

import torch
from torch import nn

from intrada.models.groups import backbone_listing


def conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride, dilation)
        self.conv2 = nn.Sequential(
            nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class DilatedClassifier(nn.Module):
    """DeepLab-v2's ASPP classifier: class scores summed over parallel dilated convs.

    `summed` < len(rates) sums only the first `summed` branches, as the released
    AdaptSegNet network does (2 of 4); the others stay in the state dict, so that the
    released files load, frozen (`requires_grad` off: they never see a gradient, and so
    that DDP does not wait for one)."""

    def __init__(
        self, cin: int, num_classes: int, rates: tuple[int, ...], summed: int | None = None
    ):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(cin, num_classes, 3, padding=r, dilation=r) for r in rates
        )
        self.summed = len(rates) if summed is None else summed
        if not 1 <= self.summed <= len(rates):
            raise ValueError(f"summed = {summed}: expected 1 to {len(rates)} branches")
        for branch in self.branches[self.summed :]:
            branch.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches[: self.summed])


class PerImageStandardize(nn.Module):
    """Standardise each image per channel (zero mean, unit variance).

    Haze, darkness and colour casts shift and scale whole images; without this the
    network sees degraded targets far out of distribution and is confidently wrong,
    which inverts the entropy ranking (BENCHMARK-NOTES.md, lesson 1).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True)
        return (x - mean) / (std + 1e-3)


class SmallSegNet(nn.Module):
    """Takes RGB images in [0, 1]; returns (aux, main) class scores at 1/4 resolution.

    `align_corners`: how its scores are upsampled to image size (`models.upsample`)."""

    def __init__(self, num_classes: int, width: int = 16, align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        w = width
        self.normalize = PerImageStandardize()
        self.stem = nn.Sequential(conv_bn_relu(3, w, stride=2), conv_bn_relu(w, w))
        self.layer2 = ResidualBlock(w, 2 * w, stride=2)
        self.layer3 = nn.Sequential(
            ResidualBlock(2 * w, 2 * w, dilation=2), ResidualBlock(2 * w, 4 * w, dilation=2)
        )
        self.layer4 = ResidualBlock(4 * w, 4 * w, dilation=4)
        self.aux_head = DilatedClassifier(4 * w, num_classes, rates=(1, 2))
        self.main_head = DilatedClassifier(4 * w, num_classes, rates=(1, 2, 4, 8))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.stem(self.normalize(x)))
        x3 = self.layer3(x)
        x4 = self.layer4(x3)
        return self.aux_head(x3), self.main_head(x4)

    def param_groups(self, listing: str = "unique") -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, learning-rate multiplier) groups: all at the base rate. With the
        `released` listing (`models.groups`) the trunk's tensors are listed once per
        enclosing module, as the released code lists DeepLab-v2's, the heads once."""
        trunk = backbone_listing([self.stem, self.layer2, self.layer3, self.layer4], listing)
        return [(trunk + [*self.aux_head.parameters(), *self.main_head.parameters()], 1.0)]
