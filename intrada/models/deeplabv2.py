"""DeepLab-v2 with a ResNet-101 backbone, as in the AdvEnt / IntraDA reference code.

torchvision's ResNet-101 with layer3 and layer4 dilated instead of strided (output
stride 8). Two ASPP classifiers: `aux` on layer3 (1024 channels), `main` on layer4 (2048
channels). Takes RGB images in [0, 1]; returns (aux, main) class scores at 1/8 resolution.

`weights_format` says which ImageNet file the backbone is meant to start from; the two
differ in structure and input normalisation, so it is part of the architecture:

- "torchvision": torchvision's ResNet-101 as is (layer2 strides in its first 3x3 conv),
  input normalised with the ImageNet mean and std on RGB in [0, 1].
- "deeplab": the Caffe-converted `DeepLab_resnet_pretrained_imagenet.pth` that the
  reference code loads: layer2 strides in its first 1x1 conv, the max-pool rounds up
  (`ceil_mode`), and the input is BGR in [0, 255] minus the Caffe mean, with no std.

`load_pretrained` accepts these key layouts (`torch.load(..., weights_only=True)`):

1. a state dict saved from torchvision's `resnet101()`: `conv1.weight`, `bn1.*`,
   `layer1.0.conv1.weight`, ..., `layer4.*`, and `fc.*` (ignored);
2. the DeepLab-converted file: the same names with a `Scale.` prefix (e.g.
   `Scale.layer1.0.downsample.0.weight`) and its own classifier under `Scale.layer5.*`
   (ignored, as the reference code does); also accepted without the prefix;
3. either of them wrapped as `{"state_dict": {...}}` or `{"model": {...}}`.

`num_batches_tracked` entries may be missing (files from old PyTorch); every other
backbone tensor must be present with the model's shape, and nothing else but the ignored
heads may be there. A file whose layout shows (`Scale.` or `layer5.*`: DeepLab; `fc.*`:
torchvision) must match the model's `weights_format`. The classifiers always keep their
initialisation.

`load_released` loads a whole trained network saved as the released AdvEnt / IntraDA
code saves its snapshots (`torch.save(model.state_dict())` of its `ResNetMulti`): the
Caffe-converted backbone's names without prefix (`conv1.weight`, `bn1.*`,
`layer1.0.conv1.weight`, ..., `layer4.*`, running statistics included), and its two
ASPP classifiers as `layer5.conv2d_list.{0..3}.{weight,bias}` (on layer3: our `aux`
head) and `layer6.conv2d_list.{0..3}.{weight,bias}` (on layer4: our `main` head).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from intrada.errors import IntradaError, load_failure
from intrada.models.groups import backbone_listing
from intrada.models.small import DilatedClassifier

WEIGHTS_FORMATS = ("torchvision", "deeplab")
ASPP_RATES = (6, 12, 18, 24)
# Input normalisation per weights format: (mean, std, as BGR in [0, 255]).
NORMALISATION = {
    "torchvision": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    # The Caffe mean of the DeepLab release, in B, G, R order; Caffe divides by no std.
    "deeplab": ((104.00698793, 116.66876762, 122.67891434), (1.0, 1.0, 1.0), True),
}
EXPECTED = "expected an ImageNet ResNet-101 state dict (torchvision or DeepLab layout)"
DEEPLAB_PREFIX = "Scale."
# Heads of the ImageNet files; the segmentation classifiers are trained from scratch.
IGNORED_PREFIXES = ("fc.", "layer5.")


def aspp_classifier(cin: int, num_classes: int, summed: int = len(ASPP_RATES)) -> nn.Module:
    head = DilatedClassifier(cin, num_classes, ASPP_RATES, summed)
    for conv in head.modules():
        if isinstance(conv, nn.Conv2d):
            # The reference initialises the classifier weights (not the biases) so.
            nn.init.normal_(conv.weight, 0.0, 0.01)
    return head


class DeepLabV2(nn.Module):
    """Takes RGB images in [0, 1]; returns (aux, main) class scores at 1/8 resolution.

    `align_corners`: how its scores are upsampled to image size (`models.upsample`; the
    released code uses true). `aspp_branches`: how many of the four ASPP branches each
    classifier sums (4: DeepLab-v2, AdvEnt; 2: the released AdaptSegNet network, whose
    classifier returns after its second branch)."""

    def __init__(
        self,
        num_classes: int,
        weights_format: str = "torchvision",
        align_corners: bool = False,
        aspp_branches: int = len(ASPP_RATES),
    ):
        super().__init__()
        if weights_format not in WEIGHTS_FORMATS:
            raise ValueError(
                f"unknown weights_format {weights_format!r}; expected one of {WEIGHTS_FORMATS}"
            )
        self.weights_format = weights_format
        self.align_corners = align_corners
        self.num_classes = num_classes
        # Imported here: torchvision's import pulls in torch._dynamo (seconds), which every
        # stage would pay at start-up although only DeepLab-v2 needs its ResNet.
        from torchvision.models import resnet101

        backbone = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        # Only the convolutional trunk is used.
        del backbone.avgpool, backbone.fc
        # torchvision keeps the previous dilation in the first block of a dilated layer;
        # DeepLab-v2 dilates every block of layer3 by 2 and of layer4 by 4.
        for layer, dilation in ((backbone.layer3, 2), (backbone.layer4, 4)):
            for block in layer:
                block.conv2.dilation = (dilation, dilation)
                block.conv2.padding = (dilation, dilation)
        if weights_format == "deeplab":
            # The Caffe ResNet strides in the 1x1 conv and rounds the pooled size up; the
            # converted weights were learnt with that geometry.
            backbone.layer2[0].conv1.stride = (2, 2)
            backbone.layer2[0].conv2.stride = (1, 1)
            backbone.maxpool.ceil_mode = True
        self.backbone = backbone
        self.aux_classifier = aspp_classifier(1024, num_classes, aspp_branches)
        self.main_classifier = aspp_classifier(2048, num_classes, aspp_branches)

        mean, std, self.bgr255 = NORMALISATION[weights_format]
        # Constants of the format, not weights: kept out of the state dict.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bgr255:
            x = x.flip(1) * 255.0
        x = (x - self.mean) / self.std
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x3 = b.layer3(b.layer2(b.layer1(x)))
        # The auxiliary head first, as the released code orders it: the gradients
        # reaching layer3 from its five uses then add up in the released order.
        aux = self.aux_classifier(x3)
        return aux, self.main_classifier(b.layer4(x3))

    def param_groups(self, listing: str = "unique") -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, learning-rate multiplier) groups: the classifiers learn 10x
        faster than the pretrained backbone, as in the reference. With the `released`
        listing (`models.groups`) the backbone's tensors are listed as the released code
        lists them (stem conv once, block convs 3 times, downsample convs 4 times); the
        classifiers are listed once either way."""
        b = self.backbone
        trunk = backbone_listing([b.conv1, b.bn1, b.layer1, b.layer2, b.layer3, b.layer4], listing)
        heads = [*self.aux_classifier.parameters(), *self.main_classifier.parameters()]
        return [(trunk, 1.0), (heads, 10.0)]


# The released networks' names for our modules (`load_released`).
RELEASED_HEADS = (
    ("layer5.conv2d_list.", "aux_classifier.branches."),
    ("layer6.conv2d_list.", "main_classifier.branches."),
)
RELEASED_BACKBONE = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
RELEASED_EXPECTED = (
    "expected a released AdvEnt / IntraDA DeepLab-v2 state dict (conv1.weight, bn1.*, "
    "layer1-4.*, layer5.conv2d_list.* = aux head, layer6.conv2d_list.* = main head) or a "
    "model file written by this pipeline"
)


def _released_name(key: str) -> str | None:
    """Our state-dict name of a released network's tensor; None if it has none."""
    for theirs, ours in RELEASED_HEADS:
        if key.startswith(theirs):
            return ours + key.removeprefix(theirs)
    if key.startswith(RELEASED_BACKBONE):
        return "backbone." + key
    return None


def _their_name(name: str) -> str:
    """The released network's name of one of our tensors."""
    for theirs, ours in RELEASED_HEADS:
        if name.startswith(ours):
            return theirs + name.removeprefix(ours)
    return name.removeprefix("backbone.")


def load_released(model: DeepLabV2, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load a released network's state dict (module docstring) into `model`, every
    tensor of it: backbone, BatchNorm running statistics and both classifiers.

    Raises IntradaError, one line naming the file and the first offending key (in the
    file's order; a missing one in the model's), when a key has no place in the model,
    a tensor has another shape (say another number of classes), or a tensor is missing;
    `num_batches_tracked` may be missing (files from PyTorch < 0.4.1). Nothing is loaded
    then.
    """
    if model.weights_format != "deeplab":
        raise IntradaError(
            f"{path}: a released DeepLab-v2 network needs weights_format 'deeplab' (its "
            f"Caffe geometry and input normalisation); the model is built with "
            f"{model.weights_format!r}"
        )
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _released_name(key)
        if name is None or name not in own:
            hint = ""
            if key.startswith(DEEPLAB_PREFIX):
                hint = " (an ImageNet file? It starts a backbone: init: pretrained)"
            raise IntradaError(f"{path}: unexpected key {key}{hint}; {RELEASED_EXPECTED}")
        if value.shape != own[name].shape:
            raise IntradaError(
                f"{path}: {key} has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[name].shape)} in the model ({model.num_classes} classes); "
                f"{RELEASED_EXPECTED}"
            )
        mapped[name] = value
    for name in own:
        if name not in mapped and not name.endswith("num_batches_tracked"):
            raise IntradaError(f"{path}: key {_their_name(name)} missing; {RELEASED_EXPECTED}")
    model.load_state_dict({**own, **mapped})


def _listed(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def state_dict_of(blob) -> dict[str, torch.Tensor] | None:
    """The dict of tensors in a loaded file: the file itself, or its `state_dict` or
    `model` entry; None if there is none."""
    if _is_state_dict(blob):
        return blob
    if isinstance(blob, dict):
        return next((blob[k] for k in ("state_dict", "model") if _is_state_dict(blob.get(k))), None)
    return None


def load_pretrained(model: DeepLabV2, path: str | Path) -> list[str]:
    """Load an ImageNet ResNet-101 file into `model`'s backbone; returns the ignored keys.

    Raises IntradaError (one line naming the file) when the file is missing, unreadable,
    or does not hold exactly the backbone's tensors with the backbone's shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise IntradaError(f"{path}: file not found; {EXPECTED}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise IntradaError(
            f"{path}: not a readable weights file ({load_failure(exc)}); {EXPECTED}"
        ) from exc
    blob = state_dict_of(blob)
    if blob is None:
        raise IntradaError(f"{path}: not a dict of tensors; {EXPECTED}")

    state: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in blob.items():
        name = key.removeprefix(DEEPLAB_PREFIX)
        if name.startswith(IGNORED_PREFIXES):
            ignored.append(key)
        else:
            state[name] = value

    # The two formats differ in input normalisation and stride placement: weights used
    # with the other format's geometry still train, but start far from what they learnt.
    deeplab_file = any(k.startswith((DEEPLAB_PREFIX, "layer5.")) for k in blob)
    torchvision_file = any(k.startswith("fc.") for k in blob)
    layout = {(True, False): "deeplab", (False, True): "torchvision"}.get(
        (deeplab_file, torchvision_file)
    )
    if layout is not None and layout != model.weights_format:
        raise IntradaError(
            f"{path}: weights in the {layout} layout, but the model was built with "
            f"weights_format {model.weights_format!r}; expected weights_format {layout!r}"
        )

    own = model.backbone.state_dict()
    for name, value in state.items():
        if name in own and value.shape != own[name].shape:
            raise IntradaError(
                f"{path}: {name} has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[name].shape)} in the model; {EXPECTED}"
            )
    # Files from old PyTorch lack the BN step counters; the model's are as good.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"backbone keys missing: {len(missing)} ({_listed(missing)})")
        if unexpected:
            problems.append(f"unexpected keys: {len(unexpected)} ({_listed(unexpected)})")
        raise IntradaError(f"{path}: {' and '.join(problems)}; {EXPECTED}")

    model.backbone.load_state_dict({**own, **state})
    return ignored
