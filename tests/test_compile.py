"""compute.compile: torch.compile of the segmentation network gives the eager results."""

from __future__ import annotations

import dataclasses

import torch
from torch._dynamo.utils import counters

from intrada.compute import CPU
from intrada.config import get
from intrada.models import build_model
from intrada.training import AdaptationStep, set_batchnorm
from tests.conftest import tiny_params


def advent_steps(compile: bool, count: int = 3):
    """`count` AdvEnt steps of the tiny profile's network (as benchmarks.gpu_check --tiny
    builds it: the two share inductor's compiled code) from the same weights and batches."""
    cfg = dataclasses.replace(get(tiny_params(), "inter"), optimizer="sgd", lr=1e-2)
    torch.manual_seed(0)
    model = build_model("small", 8, width=4).train()
    set_batchnorm(model, "frozen")
    step = AdaptationStep(model, cfg, 8, dataclasses.replace(CPU, compile=compile))
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(count):
        src = {
            "image": torch.rand(2, 3, 32, 64, generator=g),
            "label": torch.randint(0, 8, (2, 32, 64), generator=g),
        }
        losses.append(step(src, {"image": torch.rand(2, 3, 32, 64, generator=g)}))
    return step, losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_compiled_training_matches_eager_training_on_the_cpu():
    counters.clear()
    eager_step, eager_losses, eager = advent_steps(compile=False)
    assert eager_step.net is eager_step.model  # compile off: the network itself
    assert counters["stats"]["unique_graphs"] == 0
    step, losses, compiled = advent_steps(compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # inductor compiled the network
    assert step.net is not step.model and step.net._orig_mod is step.model
    for got, want in zip(losses, eager_losses, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert abs(got[key] - want[key]) <= 1e-5 * max(abs(want[key]), 1.0), key
    # Fused kernels round differently from eager ones: fp32 noise, not a different result.
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-6, msg=key)
