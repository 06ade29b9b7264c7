"""Operations over the class channel, computed in the scores' own memory format.

With `compute.channels_last` the networks' class scores are NHWC in memory: each
pixel's C scores are contiguous. PyTorch's CPU softmax and cross-entropy over dim 1 of
such a tensor take a strided path, and softmax returns an NCHW tensor, so every later
element-wise op (self-information) mixes layouts and the channels-last discriminator
converts its input back. Over the last dim of the NHWC view the same functions read
contiguous rows: an AdvEnt step is ~20 % faster on a 2-core CPU (docs/benchmarks.md).
The values are the same functions' (sums in another order: last-bit differences).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def is_channels_last(scores: torch.Tensor) -> bool:
    """Whether `scores` (N, C, H, W) are laid out NHWC (and not also plain contiguous, as
    a tensor with C = 1 or H = W = 1 is)."""
    return (
        scores.dim() == 4
        and scores.is_contiguous(memory_format=torch.channels_last)
        and not scores.is_contiguous()
    )


def class_softmax(scores: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) scores -> softmax over C, in the scores' memory format."""
    if is_channels_last(scores):
        return F.softmax(scores.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
    return F.softmax(scores, dim=1)


def pixel_cross_entropy(
    scores: torch.Tensor, labels: torch.Tensor, ignore_index: int, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of (N, C, H, W) scores against (N, H, W) labels, pixels labelled
    `ignore_index` left out: `F.cross_entropy`'s, as one (N*H*W, C) batch of pixels when
    the scores are NHWC (a view, no copy)."""
    if is_channels_last(scores):
        pixels = scores.permute(0, 2, 3, 1).reshape(-1, scores.shape[1])
        return F.cross_entropy(
            pixels, labels.reshape(-1), ignore_index=ignore_index, reduction=reduction
        )
    return F.cross_entropy(scores, labels, ignore_index=ignore_index, reduction=reduction)
