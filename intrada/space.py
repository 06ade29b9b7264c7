"""Space before work: a stage that writes much estimates its bytes and stops with one
line, before it starts, when the file system of its outputs cannot hold them.

- Scoring and pseudo-labels: images × bytes per image, from a per-pixel figure about
  twice the largest the smoke run measured at the datasets' sizes, then again once the
  first shard of each output is written, at the bytes per image measured on it (a
  stage stopped there has written nothing: its temporary folders are removed).
- Training: the model file and the checkpoint are computable from the sizes of the
  tensors they hold (network, optimiser state, discriminators and their Adam moments);
  the checkpoint counts twice, the new one is written before the old one goes.

Outputs on different file systems are checked each against its own free space.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from intrada.config import ADVERSARIAL_METHODS, TrainParams
from intrada.errors import IntradaError
from intrada.io import existing_ancestor, free_space, human_bytes, mount_point

# Free space must exceed the estimate by this factor: other files grow meanwhile too.
MARGIN = 1.2

# Bytes per stored pixel of the PNGs in shards. The smoke run at the datasets' sizes
# (README, "Smoke run"; GTA5 / SYNTHIA inter models on Cityscapes-sized images) measured
# entropy maps 62.0 / 72.5 KiB at 512x256 (0.48 / 0.57 B per pixel), predictions
# 22.5 / 34.3 KiB and pseudo-labels 16.1 / 33.8 KiB at 1024x512 (0.03-0.07). About twice
# the largest; for maps that is also the raw 8-bit size, which zlib hardly exceeds.
BYTES_PER_PIXEL = {"map": 1.0, "label": 0.15}
# A member's PNG signature, chunks and CRCs, and its zip local and central headers.
MEMBER_BYTES = 512

# torch.save: per tensor its zip record (headers, name, 64-byte alignment) and pickled
# reference; per file the pickle of everything else (params, curves, provenance).
TENSOR_RECORD_BYTES = 512
FILE_BYTES = 256 * 1024
STEP_BYTES = 8  # Adam's step count of one tensor (a 0-d tensor)


class InsufficientSpace(IntradaError):
    """The free space cannot hold what a stage is about to write."""


def stored_pixels(height: int, width: int, downsample: int = 1) -> int:
    """Pixels of a map stored `downsample` times smaller in each direction."""
    return math.ceil(height / downsample) * math.ceil(width / downsample)


def png_member_bytes(kind: str, pixels: int) -> int:
    """Estimated bytes of one image's PNG in a shard: `kind` map (entropy, 8-bit grey)
    or label (train ids)."""
    return math.ceil(pixels * BYTES_PER_PIXEL[kind]) + MEMBER_BYTES


def input_size(size: tuple[int, int] | None, table: pd.DataFrame) -> tuple[int, int]:
    """(height, width) the network sees for the images of an index table: `size`
    (width, height) when images are resized, else the first image's own (read from its
    header; a first shard of other sizes corrects the estimate)."""
    if size is not None:
        return size[1], size[0]
    if len(table) == 0:
        return 0, 0
    with Image.open(table["image_path"].iloc[0]) as image:
        return image.size[1], image.size[0]


def tensors_bytes(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(bytes, count) of tensors' data."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    return sum(sizes), len(sizes)


def saved_bytes(data: int, tensors: int) -> int:
    """Estimated size of a torch.save file holding `tensors` tensors of `data` bytes."""
    return data + tensors * TENSOR_RECORD_BYTES + FILE_BYTES


def discriminator_params(num_classes: int, channels: Iterable[int]) -> tuple[int, int]:
    """(parameters, tensors) of an `EntropyDiscriminator`: 4x4 convolutions with biases
    from the class maps through `channels` to one logit."""
    count, tensors, cin = 0, 0, num_classes
    for cout in [*channels, 1]:
        count += cin * cout * 16 + cout
        tensors += 2
        cin = cout
    return count, tensors


def checkpoint_bytes(
    model_state: tuple[int, int],
    parameters: tuple[int, int],
    optimizer: str,
    discriminators: tuple[int, int] = (0, 0),
    best_snapshot: bool = False,
) -> int:
    """Estimated size of a training checkpoint (`intrada.resume`), from (bytes, tensors)
    of the network's state, of its parameters and of both discriminators' parameters:
    the network; its optimiser's state per parameter (`optimizer` sgd: the momentum
    buffer; adam: both moments and a step count; none: nothing); the discriminators with
    their Adam state; and with `best_snapshot` (any select but last) the best network."""
    copies, steps = {"none": (0, 0), "sgd": (1, 0), "adam": (2, 1)}[optimizer]
    data = model_state[0] + copies * parameters[0] + STEP_BYTES * steps * parameters[1]
    tensors = model_state[1] + (copies + steps) * parameters[1]
    # Discriminators: their weights, Adam's two moments and step per tensor.
    data += 3 * discriminators[0] + STEP_BYTES * discriminators[1]
    tensors += 4 * discriminators[1]
    if best_snapshot:
        data, tensors = data + model_state[0], tensors + model_state[1]
    return saved_bytes(data, tensors)


@dataclass
class Need:
    """`count` items of `each` bytes to write under `path` (`what` names them)."""

    path: Path
    what: str
    count: int
    each: float
    measured: bool = False
    done: int = 0
    plan: SpacePlan | None = field(default=None, repr=False)

    @property
    def remaining(self) -> float:
        return max(self.count - self.done, 0) * self.each

    def shard_written(self, images: int, size: int) -> None:
        """A shard of `images` images and `size` bytes was closed: the first one sets
        the bytes per image, and the space is checked again for the rest."""
        first = not self.measured
        if first:
            self.each, self.measured = size / max(images, 1), True
        self.done += images
        if first and self.plan is not None:
            self.plan.check()

    def describe(self) -> str:
        how = "measured on its first shard" if self.measured else "estimated"
        if self.count == 1:
            return f"{self.path.as_posix()} {human_bytes(self.remaining)} ({self.what}, {how})"
        return (
            f"{self.path.as_posix()} {human_bytes(self.remaining)} ({self.count - self.done} "
            f"{self.what} x {human_bytes(self.each)}, {how})"
        )


class SpacePlan:
    """What a stage will write, checked against the free space of each file system."""

    def __init__(self) -> None:
        self.needs: list[Need] = []

    def add(self, path: str | Path, what: str, count: int, each: float) -> Need:
        need = Need(Path(path), what, count, each, plan=self)
        self.needs.append(need)
        return need

    def check(self) -> None:
        """Raise `InsufficientSpace` (one line) when a file system's free space is less
        than `MARGIN` times what is still to be written on it."""
        by_device: dict[int, list[Need]] = {}
        for need in self.needs:
            device = os.stat(existing_ancestor(need.path)).st_dev
            by_device.setdefault(device, []).append(need)
        for needs in by_device.values():
            total = sum(n.remaining for n in needs)
            free = free_space(needs[0].path)
            if free < MARGIN * total:
                raise InsufficientSpace(
                    f"{', '.join(n.path.as_posix() for n in needs)}: not enough free space on "
                    f"{mount_point(needs[0].path)}: {human_bytes(free)} free, about "
                    f"{human_bytes(total)} to write ({'; '.join(n.describe() for n in needs)}) "
                    f"and a {round((MARGIN - 1) * 100)}% margin; free some space, then re-run"
                )


def training_plan(
    model: torch.nn.Module,
    cfg: TrainParams,
    num_classes: int,
    model_out: Path,
    checkpoint_dir: Path | None,
) -> SpacePlan:
    """What a training run writes: its model file, and with `checkpoint_dir` its
    checkpoint twice (the new one is written before the old one is removed)."""
    state = tensors_bytes(model.state_dict().values())
    plan = SpacePlan()
    plan.add(model_out, "model file", 1, saved_bytes(*state))
    if checkpoint_dir is not None:
        optimizer = "adam" if cfg.optimizer == "adam" else "sgd"
        if optimizer == "sgd" and cfg.momentum == 0:
            optimizer = "none"  # SGD without momentum keeps no state
        discs = (0, 0)
        if cfg.method in ADVERSARIAL_METHODS and cfg.disc_channels:  # advent, adaptsegnet
            count, tensors = discriminator_params(num_classes, cfg.disc_channels)
            discs = (2 * 4 * count, 2 * tensors)  # main and aux, fp32
        each = checkpoint_bytes(
            state,
            tensors_bytes(model.parameters()),
            optimizer,
            discs,
            best_snapshot=cfg.select != "last",  # best_val or a label-free pick
        )
        plan.add(checkpoint_dir, "checkpoint, new and old", 1, 2 * each)
    return plan
