"""Training-step throughput of each method on the default model and image size.

Prints images per second for a source-only step, an AdvEnt step and a MinEnt step,
and each adaptation step's cost relative to a source-only step, measured in one run
on random tensors (so the numbers reflect compute, not data loading).

    python -m benchmarks.step_throughput [--steps 20] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from intrada.classes import dataset_classes
from intrada.config import get, read_params
from intrada.models import build_model
from intrada.runs import arch_config
from intrada.training import AdaptationStep, set_batchnorm


def measure(method: str, raw: dict, steps: int) -> float:
    """Seconds per step of `method`, after two warm-up steps."""
    data, model_params = get(raw, "data"), get(raw, "model")
    cfg = dataclasses.replace(get(raw, "inter"), method=method)
    classes = dataset_classes(data.name)
    torch.manual_seed(0)
    model = build_model(model_params.name, len(classes), **arch_config(model_params)).train()
    set_batchnorm(model, cfg.batchnorm)
    step = AdaptationStep(model, cfg, len(classes))
    width, height = data.target_size
    shape = (cfg.batch_size, 3, height, width)
    src = {
        "image": torch.rand(shape),
        "label": torch.randint(0, len(classes), (cfg.batch_size, height, width)),
    }
    trg = {"image": torch.rand(shape)}
    for _ in range(2):
        step(src, trg)
    start = time.perf_counter()
    for _ in range(steps):
        step(src, trg)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    raw = read_params(args.params)
    batch = get(raw, "inter").batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}")
    base = None
    for method in ("source_only", "advent", "minent"):
        seconds = measure(method, raw, args.steps)
        base = base or seconds
        print(
            f"{method:12s} {seconds * 1000:8.1f} ms/step {batch / seconds:8.1f} img/s "
            f"{seconds / base:6.2f}x source-only"
        )


if __name__ == "__main__":
    main()
