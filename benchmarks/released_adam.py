"""How much PyTorch 0.4.1's Adam (`adam: released`) changes the discriminators' updates.

Trains the parity tests' setting (DeepLab-v2 ResNet-101 in the Caffe geometry with
random weights, 2 classes, 65 x 33 random images and labels, batch 1, every switch at
the released code's value, `adam: released`) for N iterations. After each discriminator
step it computes, from the same Adam state (step t, moments m and v), the update that
PyTorch >= 1.3's arithmetic would have made, and prints at chosen iterations the
relative difference |u_released - u_current| / |u_released| over all discriminator
tensors together and the largest one per tensor. One trajectory, both rules on the same
state: the difference of the rule itself, not of two diverging runs.

    python -m benchmarks.released_adam [--method advent|adaptsegnet] [--iterations 300]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from intrada.models import DeepLabV2
from intrada.training import AdaptationStep, set_batchnorm
from tests.parity import released_settings

NUM_CLASSES, HEIGHT, WIDTH = 2, 33, 65
REPORTED = (1, 2, 3, 5, 10, 20, 50, 100, 200, 300, 500, 1000)


def rule_difference(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """(over all tensors, largest per tensor) relative difference between the update
    just made by PyTorch 0.4.1's rule and the one PyTorch >= 1.3's makes from the same
    state."""
    diff_sq = ref_sq = 0.0
    worst = 0.0
    for group in optimizer.param_groups:
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            t = state["step"]
            m, v = state["exp_avg"].double(), state["exp_avg_sq"].double()
            bc1, bc2 = 1 - beta1**t, 1 - beta2**t
            released = lr * math.sqrt(bc2) / bc1 * m / (v.sqrt() + eps)
            current = lr / bc1 * m / (v.sqrt() / math.sqrt(bc2) + eps)
            d, r = float((released - current).norm()), float(released.norm())
            diff_sq, ref_sq = diff_sq + d * d, ref_sq + r * r
            worst = max(worst, d / r if r > 0 else 0.0)
    return math.sqrt(diff_sq / ref_sq), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("advent", "adaptsegnet"), default="adaptsegnet")
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    # The parity tests' settings over the released schedule's length.
    cfg = released_settings(args.method, args.iterations, schedule_iterations=250000)
    torch.manual_seed(0)
    model = DeepLabV2(
        NUM_CLASSES,
        weights_format="deeplab",
        align_corners=True,
        aspp_branches=2 if args.method == "adaptsegnet" else 4,
    )
    set_batchnorm(model, cfg.batchnorm)
    step = AdaptationStep(model, cfg, NUM_CLASSES)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, method {args.method}")
    print("| iteration | all D tensors | largest per tensor |")
    print("| --- | --- | --- |")
    early, late = 0.0, 0.0
    start = time.perf_counter()
    for it in range(args.iterations):
        label = torch.randint(0, NUM_CLASSES, (1, HEIGHT, WIDTH), generator=g)
        src = {"image": torch.rand(1, 3, HEIGHT, WIDTH, generator=g), "label": label}
        trg = {"image": torch.rand(1, 3, HEIGHT, WIDTH, generator=g)}
        step.set_iteration(it)
        step(src, trg)
        overall, worst = rule_difference(step.discs.optimizer)
        if it + 1 <= 10:
            early = max(early, worst)
        if it + 1 > args.iterations - 50:
            late = max(late, worst)
        if it + 1 in REPORTED or it + 1 == args.iterations:
            print(f"| {it + 1} | {overall:.3g} | {worst:.3g} |", flush=True)
    seconds = time.perf_counter() - start
    print(f"largest per tensor: first 10 iterations {early:.3g}, last 50 {late:.3g}")
    print(f"{args.iterations} iterations in {seconds:.0f} s")


if __name__ == "__main__":
    main()
