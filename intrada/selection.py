"""Choosing a training snapshot without target labels.

The released code keeps the snapshot that scores best on the labelled evaluation set
itself; users without target labels (and honest comparisons) need a criterion computed
on the unlabelled target images only. At every validation point a training stage
predicts a fixed probe of target-train images and records three such criteria of the
softmax maps P (one C-vector per pixel):

- `entropy`: the mean normalised entropy of the predictions (AdvEnt's own objective);
  the snapshot with the lowest is picked.
- `infomax`: information maximisation, the entropy of the mean prediction minus the
  mean entropy of the predictions (diverse and confident); the highest is picked.
- `snd`: soft neighbourhood density (Saito et al., ICCV 2021): pixels' L2-normalised
  predictions, their cosine similarities divided by a temperature (0.05, the paper's),
  a softmax over each pixel's neighbours (itself left out), and the mean entropy of
  those distributions (normalised by log of the neighbour count); dense neighbourhoods
  score high and the highest is picked.

All three use the main head's softmax at the network's input size, on a fixed grid of
pixels of a fixed subset of target-train (`probe_indices`, `PIXEL_STRIDE`), so two runs
of one configuration compute the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from intrada.compute import CPU, Compute
from intrada.data import SegmentationSet, in_batches, loader
from intrada.entropy import entropy_map
from intrada.inference import predict_probs

# Label-free criteria, and whether a higher value is better.
CRITERIA = {"entropy": False, "infomax": True, "snd": True}
SND_TEMPERATURE = 0.05  # Saito et al.'s temperature
SND_PIXELS = 2048  # pixels compared pairwise (a 2048 x 2048 similarity matrix)
PIXEL_STRIDE = 4  # every 4th pixel of every 4th row of each probe image


def mean_entropy(prob: torch.Tensor) -> float:
    """(N, C) per-pixel softmax -> mean normalised entropy in [0, 1]."""
    return float(entropy_map(prob.T[None, :, :, None]).mean())


def information_maximisation(prob: torch.Tensor) -> float:
    """(N, C) per-pixel softmax -> H(mean prediction) - mean H(prediction), both
    normalised by log C: in [-1, 1], 1 for confident predictions spread evenly over
    the classes, 0 when every pixel gets the same prediction."""
    mean = prob.mean(dim=0, keepdim=True)
    return mean_entropy(mean) - mean_entropy(prob)


def soft_neighbourhood_density(prob: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """(N, C) per-pixel softmax, N >= 3 -> SND in [0, 1]: the mean entropy of each
    pixel's soft neighbour distribution softmax(cos(p_i, p_j) / T) over j != i,
    normalised by log(N - 1)."""
    n = prob.shape[0]
    if n < 3:
        raise ValueError(f"soft neighbourhood density needs at least 3 pixels, got {n}")
    unit = torch.nn.functional.normalize(prob.double(), dim=1)
    similarity = unit @ unit.T / temperature
    similarity.fill_diagonal_(-math.inf)  # a pixel is not its own neighbour
    neighbours = torch.softmax(similarity, dim=1)
    entropy = -(torch.special.xlogy(neighbours, neighbours)).sum(dim=1)
    return float(entropy.mean() / math.log(n - 1))


def criteria_of(prob: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
    """Every criterion of (N, C) probe pixels; SND on a seeded sample of them."""
    pick = torch.randperm(prob.shape[0], generator=generator)[:SND_PIXELS]
    return {
        "entropy": mean_entropy(prob),
        "infomax": information_maximisation(prob),
        "snd": soft_neighbourhood_density(prob[pick]),
    }


def probe_indices(size: int, count: int) -> list[int]:
    """`count` images of a set of `size`, evenly spread over its table order (all of
    them when it has fewer)."""
    if count >= size:
        return list(range(size))
    return [int(i) for i in np.linspace(0, size - 1, count).round()]


@dataclass
class TargetProbe:
    """A fixed subset of unlabelled target images the criteria are computed on."""

    dataset: SegmentationSet
    indices: list[int]
    batch_size: int

    @torch.no_grad()
    def criteria(self, model: nn.Module, compute: Compute = CPU) -> dict[str, float]:
        """The criteria of `model` (left in eval mode; the global RNG untouched)."""
        pixels = []
        with torch.random.fork_rng(devices=[]):
            for batch in loader(self.dataset, in_batches(self.indices, self.batch_size)):
                images = batch["image"]
                prob = predict_probs(model, images, tuple(images.shape[-2:]), compute)
                grid = prob[:, :, ::PIXEL_STRIDE, ::PIXEL_STRIDE]
                pixels.append(grid.permute(0, 2, 3, 1).reshape(-1, prob.shape[1]))
        return criteria_of(torch.cat(pixels), torch.Generator().manual_seed(0))


def pick(curve: list[tuple[int, dict[str, float]]], criterion: str) -> int | None:
    """The iteration a criterion picks from a curve of (iteration, criteria): the first
    with the best value (lowest entropy; highest infomax or SND); None if empty."""
    points = [(it, values[criterion]) for it, values in curve if values.get(criterion) is not None]
    if not points:
        return None
    sign = 1.0 if CRITERIA[criterion] else -1.0
    return max(points, key=lambda p: sign * p[1])[0]  # max keeps the first of a tie
