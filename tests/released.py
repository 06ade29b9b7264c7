"""The released networks and optimisers, restated for the parity tests without intrada.

Written from the structure of the released AdvEnt (`advent/model/deeplabv2.py`,
`discriminator.py`) and AdaptSegNet (`model/deeplab_multi.py`, `model/discriminator.py`)
code, in our own words: nothing here imports or calls intrada, so a change to the
project's networks (a layer, a dilation, a slope) shows up as a parity failure instead
of being mirrored on both sides.

- `released_input`, `released_outputs`: what the released loops feed the network, and
  its two heads' scores upsampled to the input as they use them.
- `DeepLabMulti`: DeepLab-v2 ResNet-101 as both releases define it. A stem (7x7 conv
  stride 2, BatchNorm, ReLU, 3x3 max-pool stride 2 rounding up), four stages of
  bottleneck blocks (3, 4, 23, 3 of them; 64, 128, 256, 512 planes, 4x expansion):
  the Caffe ResNet strides in a block's first 1x1 conv (stage 2 only); stages 3 and 4
  keep stride 1 and dilate every 3x3 conv by 2 and 4; a stage's first block projects
  its shortcut (1x1 conv + BatchNorm). Every BatchNorm's affine parameters are frozen.
  Two ASPP classifiers (3x3 convs with bias, dilations 6, 12, 18, 24): `layer5` on
  stage 3 (the auxiliary head), `layer6` on stage 4 (the main head). AdvEnt sums all
  four branches; AdaptSegNet's classifier returns after adding the second (`summed=2`).
- `Discriminator`: four 4x4 convs of stride 2 (64, 128, 256, 512 channels) with
  LeakyReLU(0.2), then a 4x4 stride-2 conv to one channel.
- `released_sgd_step`: SGD with momentum and weight decay as PyTorch 0.4-1.4 ran it on
  parameter lists that repeat a tensor.
- `Adam041`: Adam as PyTorch 0.4.1 ran it (eps added before the bias correction).
- `copy_weights`: loads intrada's initial weights into a restatement through a name
  mapping written here, refusing any tensor without a counterpart of the same shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
ASPP_DILATIONS = (6, 12, 18, 24)


def released_input(images: torch.Tensor) -> torch.Tensor:
    """What the released data loaders feed the network for RGB images in [0, 1]: BGR in
    [0, 255] minus the Caffe mean."""
    mean = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    return images.flip(1) * 255.0 - mean


def released_outputs(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Both heads' scores for RGB images in [0, 1], as the released loops take them: the
    network fed `released_input`, each output upsampled to the images' size (bilinear,
    align_corners=True)."""
    size = images.shape[-2:]
    return tuple(
        F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        for x in model(released_input(images))
    )


def frozen_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    for p in bn.parameters():
        p.requires_grad = False
    return bn


class Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, dilation: int, project: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=stride, bias=False)
        self.bn1 = frozen_bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = frozen_bn(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = frozen_bn(4 * planes)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(cin, 4 * planes, 1, stride=stride, bias=False), frozen_bn(4 * planes)
            )
            if project
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ASPP(nn.Module):
    def __init__(self, cin: int, num_classes: int, summed: int):
        super().__init__()
        self.summed = summed
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(cin, num_classes, 3, padding=d, dilation=d) for d in ASPP_DILATIONS
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1 : self.summed]:
            out = out + conv(x)
        return out


class DeepLabMulti(nn.Module):
    """Input: `released_input` images; output: (layer5 scores, layer6 scores)."""

    def __init__(self, num_classes: int, summed: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = frozen_bn(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.cin = 64
        self.layer1 = self.stage(64, 3, stride=1, dilation=1)
        self.layer2 = self.stage(128, 4, stride=2, dilation=1)
        self.layer3 = self.stage(256, 23, stride=1, dilation=2)
        self.layer4 = self.stage(512, 3, stride=1, dilation=4)
        self.layer5 = ASPP(1024, num_classes, summed)
        self.layer6 = ASPP(2048, num_classes, summed)

    def stage(self, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        # Every stage's first block projects (the channel count always changes here).
        layers = [Bottleneck(self.cin, planes, stride, dilation, project=True)]
        self.cin = 4 * planes
        layers += [Bottleneck(self.cin, planes, 1, dilation, False) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x3 = self.layer3(self.layer2(self.layer1(x)))
        return self.layer5(x3), self.layer6(self.layer4(x3))

    def lr_lists(self) -> list[list[nn.Parameter]]:
        """The released optimiser's two lists: every trainable backbone tensor once per
        module that encloses it below [conv1, bn1, layer1 .. layer4] (the 1x list), and
        both classifiers' tensors (the 10x list)."""
        tops = (self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4)
        once_per_module = [
            p for top in tops for m in top.modules() for p in m.parameters() if p.requires_grad
        ]
        return [once_per_module, [*self.layer5.parameters(), *self.layer6.parameters()]]


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, ndf: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(num_classes, ndf, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(ndf, 2 * ndf, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * ndf, 4 * ndf, 4, stride=2, padding=1)
        self.conv4 = nn.Conv2d(4 * ndf, 8 * ndf, 4, stride=2, padding=1)
        self.classifier = nn.Conv2d(8 * ndf, 1, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.leaky_relu(conv(x), 0.2)
        return self.classifier(x)


# --- intrada's names -> the released names (written here, not taken from intrada) ---------


def deeplab_name(ours: str) -> str:
    """The released DeepLab-v2's name for a tensor of intrada's DeepLabV2."""
    for prefix, theirs in (
        ("backbone.", ""),
        ("aux_classifier.branches.", "layer5.conv2d_list."),
        ("main_classifier.branches.", "layer6.conv2d_list."),
    ):
        if ours.startswith(prefix):
            return theirs + ours.removeprefix(prefix)
    raise KeyError(f"{ours}: no released counterpart")


DISCRIMINATOR_LAYERS = {"net.0": "conv1", "net.2": "conv2", "net.4": "conv3", "net.6": "conv4"}
DISCRIMINATOR_LAYERS["net.8"] = "classifier"


def discriminator_name(ours: str) -> str:
    layer, _, tensor = ours.rpartition(".")
    if layer not in DISCRIMINATOR_LAYERS:
        raise KeyError(f"{ours}: no released counterpart")
    return f"{DISCRIMINATOR_LAYERS[layer]}.{tensor}"


def copy_weights(ours: nn.Module, theirs: nn.Module, name) -> dict[str, str]:
    """Load every tensor of `ours` (parameters and buffers) into `theirs` under
    `name(key)`; returns {our key: their key}. Fails when a tensor has no counterpart,
    two share one, a shape differs, or `theirs` has a tensor left unfilled: a layer
    added, dropped, renamed or reshaped on either side."""
    own, target = ours.state_dict(), theirs.state_dict()
    mapping = {key: name(key) for key in own}
    assert len(set(mapping.values())) == len(mapping), "two tensors map to one name"
    missing = sorted(set(mapping.values()) - set(target))
    unfilled = sorted(set(target) - set(mapping.values()))
    assert not missing and not unfilled, (missing[:3], unfilled[:3])
    for key, other in mapping.items():
        assert own[key].shape == target[other].shape, (key, own[key].shape, target[other].shape)
    theirs.load_state_dict({mapping[k]: v.clone() for k, v in own.items()})
    return mapping


# --- optimisers as the released code's PyTorch ran them ------------------------------------


def released_sgd_step(lists, lrs, buffers: dict, momentum: float, weight_decay: float) -> None:
    """The SGD of PyTorch 0.4-1.4 over lists that may repeat a tensor: for every entry in
    turn, weight decay is added into the tensor's gradient in place (so it accumulates
    over its entries), the momentum buffer becomes momentum * buffer + gradient (the
    gradient itself the first time) and the tensor moves by -lr * buffer."""
    grads = {id(p): p.grad.clone() for lst in lists for p in lst if p.grad is not None}
    with torch.no_grad():
        for lst, lr in zip(lists, lrs, strict=True):
            for p in lst:
                if id(p) not in grads:
                    continue
                d_p = grads[id(p)]
                d_p.add_(p, alpha=weight_decay)
                if id(p) not in buffers:
                    buffers[id(p)] = d_p.clone()
                else:
                    buffers[id(p)].mul_(momentum).add_(d_p)
                p.add_(buffers[id(p)], alpha=-lr)


class Adam041:
    """Adam as PyTorch 0.4.1 computed it: t-th step of a tensor with gradient g,
    m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.99), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.moments: dict[int, list] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            t, m, v = self.moments.get(id(p), (0, torch.zeros_like(p), torch.zeros_like(p)))
            t, m, v = t + 1, b1 * m + (1 - b1) * p.grad, b2 * v + (1 - b2) * p.grad * p.grad
            self.moments[id(p)] = (t, m, v)
            p -= self.lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + self.eps)


# --- comparing runs -------------------------------------------------------------------------


def relative_differences(before, after_ours, after_ref) -> dict[str, float]:
    """Per tensor: |update_ours - update_ref| / |update_ref| (0 when both are 0)."""
    out = {}
    for key, start in before.items():
        if not start.is_floating_point():
            out[key] = 0.0 if torch.equal(after_ours[key], after_ref[key]) else float("inf")
            continue
        ours = (after_ours[key] - start).double()
        ref = (after_ref[key] - start).double()
        scale = ref.norm()
        diff = (ours - ref).norm()
        value = float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))
        out[key] = value if math.isfinite(value) else float("inf")  # NaN: as different as can be
    return out


def loss_differences(ours: list[dict], ref: list[dict]) -> dict[str, float]:
    """Per iteration and loss: |ours - ref| / |ref| of the logged values."""
    out = {}
    for it, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert set(a) == set(b), (sorted(a), sorted(b))
        for key in a:
            scale = abs(b[key])
            diff = abs(a[key] - b[key])
            out[f"loss[{it}].{key}"] = diff / scale if scale > 0 else (0.0 if diff == 0 else 1.0)
    return out
