"""GPU check: the CUDA code paths run, agree with the CPU, and how fast they are.

One command, no dataset, no ImageNet file (random weights, synthetic tensors and
images in a temporary folder). Prints a markdown table and writes `<out>/gpu_check.json`
after every row, so a crash still leaves what was measured:

1. correctness: one AdvEnt step of the segmentation network on CUDA in fp32 against the
   same step on the CPU; the bf16 + channels_last step against fp32; one process under
   torchrun (NCCL on a GPU, gloo on a CPU) running DDP and the collectives against a
   plain run;
2. speed of the AdvEnt step: the reference loop's structure in fp32
   (`benchmarks.speed.ReferenceStyleStep`), ours in fp32, ours with bf16 +
   channels_last, ours with torch.compile; ms per step, ratios, peak GPU memory and the
   projected hours of an `inter.iterations` stage;
3. scoring throughput (entropy maps and predictions written) and evaluation at label
   resolution.

    python -m benchmarks.gpu_check [--out runs/gpu_check] [--preset full|default|tiny]
        [--budget-s 420]

Presets: `full` (the default when PyTorch sees a GPU) runs the GTA5 -> Cityscapes
profile's DeepLab-v2 ResNet-101 at its sizes; `default` (the default without a GPU) the
embedded benchmark's params.yaml; `tiny` shrinks that for the test suite. On a CPU the
CUDA-only rows say "skipped (no CUDA)". It imports neither dvc nor dvclive: a bare
PyTorch install runs it. The exit status is 1 when a row failed its tolerance or
raised.

Random weights are made well-conditioned first (`condition`): BatchNorm statistics set
from a batch, and each residual branch's last BatchNorm gain set to 0.2. With unit gains
a random ResNet-101 is chaotic: fp32 rounding grows a thousandfold through its depth
(CPU fp32 against fp64 gradients: 4 % apart instead of 1e-6), which would hide any CUDA
error and make bf16 gradients meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.models.resnet import Bottleneck

from benchmarks.speed import ReferenceStyleStep
from intrada.artifacts import EntropyShards, LabelShards
from intrada.classes import ClassSet, dataset_classes
from intrada.compute import CPU, Compute, setup
from intrada.config import ModelParams, TrainParams, get, read_params
from intrada.data import SegmentationSet, in_order, loader
from intrada.evaluation import evaluate_confusion
from intrada.inference import predict_probs, score_images
from intrada.io import write_json
from intrada.layouts import index_cityscapes
from intrada.models import build_model
from intrada.runs import arch_config
from intrada.synthetic import set_files, write_images
from intrada.training import AdaptationStep, set_batchnorm

REPO = Path(__file__).resolve().parents[1]

# fp32 on CUDA against the CPU: largest accepted relative L2 distance of the step's
# gradients. fp32 rounding puts the CPU 2e-7 from fp64 on the conditioned network (the
# check measures it each run and accepts 10 times that when larger); TF32 convolutions
# (10-bit mantissa, unit roundoff 4.9e-4) land above 1e-4, so TF32 left on would fail.
FP32_TOL = 1e-4
# bf16 autocast against fp32: relative L2 distance of the gradients, and of each loss.
# bf16 keeps 8 bits of mantissa (unit roundoff 3.9e-3); the CPU's bf16 autocast puts
# DeepLab-v2's gradients 0.6 % from fp32 (seg. loss 0.003 %), so 5 % and 2 % leave room
# for CUDA's kernels while a broken cast or a lost gradient lands near 100 %.
BF16_TOL = 5e-2
BF16_LOSS_TOL = 2e-2
# torch.compile against eager, in fp32: inductor's fused kernels round differently. On
# this project's CPU its backward lands 5e-7 (tiny preset) to 9e-5 (default preset, batch
# 16) from eager, while eager is 9e-7 from fp64 (the `aot_eager` backend, decompositions
# without inductor's code, is exact): 1e-3 passes that, and a wrong result lands near 1.
# With bf16 autocast the bf16 tolerance applies.
COMPILE_TOL = 1e-3
# Gain of each residual branch's last BatchNorm in the conditioned random network.
RESIDUAL_GAIN = 0.2
GOAL_SPEEDUP = 1.5
GOAL_HOURS = 12.0


@dataclass(frozen=True)
class Preset:
    """Sizes are (width, height)."""

    params: str  # model, `inter` (the AdvEnt step), inference, evaluate and compute
    check_size: tuple[int, int]  # images of the correctness rows
    source_size: tuple[int, int]  # speed rows
    target_size: tuple[int, int]
    batch_size: int | None  # None: the params' inter.batch_size
    width: int | None  # None: the params' model.width (small network only)
    warmup: int  # untimed steps before timing (cudnn autotuning, allocator, compile)
    steps: int  # timed steps per speed row
    torchrun_steps: int
    file_size: tuple[int, int]  # the image and label files written for row 3
    read_size: tuple[int, int]  # images are read (resized) to this for the network
    score_images: int
    eval_images: int
    unique_images: int  # distinct images generated; copies make up the counts


PRESETS = {
    # The paper's setting on GTA5 -> Cityscapes: batch 1, 1280x720 source, 1024x512
    # target, Cityscapes files of 2048x1024 read at 1024x512.
    "full": Preset(
        params="profiles/gta5_cityscapes.yaml",
        check_size=(256, 128),
        source_size=(1280, 720),
        target_size=(1024, 512),
        batch_size=None,
        width=None,
        warmup=5,
        steps=20,
        torchrun_steps=2,
        file_size=(2048, 1024),
        read_size=(1024, 512),
        score_images=64,
        eval_images=32,
        unique_images=4,
    ),
    # The embedded benchmark's network, sizes and batch (params.yaml).
    "default": Preset(
        params="params.yaml",
        check_size=(128, 64),
        source_size=(128, 64),
        target_size=(128, 64),
        batch_size=None,
        width=None,
        warmup=3,
        steps=20,
        torchrun_steps=2,
        file_size=(128, 64),
        read_size=(128, 64),
        score_images=256,
        eval_images=200,
        unique_images=16,
    ),
    # The test suite's: the same code in seconds (tests/test_compile.py compiles the same
    # network at the same size, so the two share inductor's cache).
    "tiny": Preset(
        params="params.yaml",
        check_size=(64, 32),
        source_size=(64, 32),
        target_size=(64, 32),
        batch_size=2,
        width=4,
        warmup=1,
        steps=2,
        torchrun_steps=2,
        file_size=(128, 64),
        read_size=(64, 32),
        score_images=8,
        eval_images=4,
        unique_images=2,
    ),
}


@dataclass(frozen=True)
class Context:
    """What every row reads: the preset, the params it names, the compute of this machine."""

    preset_name: str
    preset: Preset
    raw: dict
    model: ModelParams
    cfg: TrainParams  # the AdvEnt step
    classes: ClassSet
    compute: Compute  # the params' compute section resolved on this machine (one process)
    workdir: Path  # temporary files of the rows

    @property
    def check_cfg(self) -> TrainParams:
        """The step the correctness rows compare: the params' step with BatchNorm frozen
        on the conditioned statistics. Batch statistics of one small image (the profiles'
        `released` mode) are themselves ill-conditioned: CPU fp32 gradients land 3e-3
        from fp64, which would hide a CUDA error; the speed rows keep the params' mode."""
        return dataclasses.replace(self.cfg, batchnorm="frozen")

    @classmethod
    def create(cls, preset_name: str, workdir: Path, preset: Preset | None = None) -> Context:
        preset = preset or PRESETS[preset_name]
        raw = read_params(REPO / preset.params)
        model = get(raw, "model")
        if preset.width is not None:
            model = dataclasses.replace(model, width=preset.width)
        cfg = dataclasses.replace(get(raw, "inter"), method="advent")
        if preset.batch_size is not None:
            cfg = dataclasses.replace(cfg, batch_size=preset.batch_size)
        # The check runs where it is started: on the GPU when PyTorch sees one, else the
        # CPU rows (the profiles' `device: cuda` would stop on a CPU machine).
        params = dataclasses.replace(get(raw, "compute"), device="auto", nproc=1, compile=False)
        return cls(
            preset_name,
            preset,
            raw,
            model,
            cfg,
            # Not get(raw, "data"): it checks that the dataset folders exist.
            dataset_classes(raw["data"]["name"]),
            setup(params),
            workdir,
        )

    @property
    def cuda(self) -> bool:
        return self.compute.cuda

    def bf16(self, **changes) -> Compute:
        """The profiles' CUDA setting: bf16 autocast (where the GPU has bf16) and
        channels_last, with `changes` on top."""
        amp = torch.cuda.is_bf16_supported()
        return dataclasses.replace(self.compute, **{"amp": amp, "channels_last": True, **changes})

    def fp32(self, **changes) -> Compute:
        """This machine's device in plain fp32 (no autocast, no channels_last), with
        `changes` on top."""
        return dataclasses.replace(
            self.compute, **{"amp": False, "channels_last": False, **changes}
        )


# --- building blocks ------------------------------------------------------------------


class Skipped(Exception):
    """A row that cannot run here (no CUDA, no time left): reported, not a failure."""


def require_cuda(ctx: Context) -> None:
    if not ctx.cuda:
        raise Skipped("no CUDA")


def condition(model: nn.Module, size: tuple[int, int]) -> nn.Module:
    """Random weights made well-conditioned (module docstring): every BatchNorm's running
    statistics from one random batch, and residual branches scaled down."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0  # running statistics := this batch's
    width, height = size
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(2))
    model.train()
    with torch.no_grad():
        model(images)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, Bottleneck):
                block.bn3.weight.fill_(RESIDUAL_GAIN)
    return model


_CONDITIONED: dict[tuple, nn.Module] = {}


def fresh_model(ctx: Context) -> nn.Module:
    """The params' network with seeded random weights, conditioned, on the CPU (a copy:
    building and conditioning ResNet-101 takes seconds, and every row wants one)."""
    key = (ctx.model, len(ctx.classes), ctx.preset.check_size)
    if key not in _CONDITIONED:
        torch.manual_seed(0)
        model = build_model(ctx.model.name, len(ctx.classes), **arch_config(ctx.model))
        _CONDITIONED[key] = condition(model, ctx.preset.check_size)
    return copy.deepcopy(_CONDITIONED[key])


def make_step(
    ctx: Context,
    compute: Compute,
    model: nn.Module | None = None,
    step_class: type[AdaptationStep] = AdaptationStep,
    cfg: TrainParams | None = None,
) -> AdaptationStep:
    """An AdvEnt step as `train()` sets it up (`cfg`, default the params' step), on
    `compute`'s device; the discriminators' initialisation is seeded, so two steps built
    alike start alike on any device."""
    cfg = cfg or ctx.cfg
    model = compute.module(model if model is not None else fresh_model(ctx))
    set_batchnorm(model, cfg.batchnorm)
    torch.manual_seed(1)
    return step_class(model, cfg, len(ctx.classes), compute)


def make_batches(
    ctx: Context, source_size: tuple[int, int], target_size: tuple[int, int], pin: bool = False
) -> tuple[dict, dict]:
    """Fixed random source (with labels) and target batches on the CPU; pinned as the
    training loader's are on CUDA."""
    g = torch.Generator().manual_seed(3)
    batch = ctx.cfg.batch_size
    (ws, hs), (wt, ht) = source_size, target_size
    src = {
        "image": torch.rand(batch, 3, hs, ws, generator=g),
        "label": torch.randint(0, len(ctx.classes), (batch, hs, ws), generator=g),
    }
    trg = {"image": torch.rand(batch, 3, ht, wt, generator=g)}
    if pin:
        src = {k: v.pin_memory() for k, v in src.items()}
        trg = {k: v.pin_memory() for k, v in trg.items()}
    return src, trg


def as_double(batch: dict) -> dict:
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.grad.detach().double().cpu()
        for name, p in module.named_parameters()
        if p.grad is not None
    }


def float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().double().cpu()
        for k, v in module.state_dict().items()
        if v.is_floating_point()
    }


@dataclass
class StepResult:
    losses: dict[str, float]
    grads: dict[str, torch.Tensor]  # segmentation network, last step
    disc_grads: dict[str, torch.Tensor]  # both discriminators, last step
    before: dict[str, torch.Tensor]  # network parameters and buffers
    after: dict[str, torch.Tensor]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def run_steps(step: AdaptationStep, src: dict, trg: dict, count: int = 1) -> StepResult:
    before = float_state(step.model)
    for _ in range(count):
        losses = step(src, trg)
    disc = {
        **{f"main.{k}": v for k, v in gradients(step.discs.main).items()},
        **{f"aux.{k}": v for k, v in gradients(step.discs.aux).items()},
    }
    return StepResult(losses, gradients(step.model), disc, before, float_state(step.model))


def relative_error(test: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """||test - ref|| / ||ref|| over all tensors together (the same names required)."""
    if test.keys() != ref.keys():
        missing = sorted(set(ref) ^ set(test))[:3]
        raise AssertionError(f"different tensors were computed: {missing}")
    num = sum(float((test[k] - ref[k]).pow(2).sum()) for k in ref)
    den = sum(float(ref[k].pow(2).sum()) for k in ref)
    return (num / den) ** 0.5 if den > 0 else float(num > 0)


def largest_difference(test: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    return max(float((test[k] - ref[k]).abs().max()) for k in ref)


def loss_difference(test: dict[str, float], ref: dict[str, float]) -> float:
    """Largest relative difference of the logged losses."""
    return max(abs(test[k] - ref[k]) / max(abs(ref[k]), 1e-12) for k in ref)


@contextlib.contextmanager
def exact_fp32():
    """IEEE fp32 convolutions and matmuls (TF32 off) and deterministic cudnn algorithms
    for the comparisons; PyTorch's defaults (cudnn may use TF32) come back afterwards."""
    backends = torch.backends
    new_api = hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision") and hasattr(
        backends.cuda.matmul, "fp32_precision"
    )
    if new_api:  # PyTorch >= 2.9; mixing it with allow_tf32 is an error there
        saved = (backends.cudnn.conv.fp32_precision, backends.cuda.matmul.fp32_precision)
        backends.cudnn.conv.fp32_precision = backends.cuda.matmul.fp32_precision = "ieee"
    else:
        saved = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    cudnn = (backends.cudnn.benchmark, backends.cudnn.deterministic)
    backends.cudnn.benchmark, backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        backends.cudnn.benchmark, backends.cudnn.deterministic = cudnn
        if new_api:
            backends.cudnn.conv.fp32_precision, backends.cuda.matmul.fp32_precision = saved
        else:
            backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved


def tf32_setting() -> str:
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision"):
        return f"cudnn conv fp32_precision={cudnn.conv.fp32_precision}"
    return f"cudnn allow_tf32={cudnn.allow_tf32}"


def synchronize(compute: Compute) -> None:
    if compute.cuda:
        torch.cuda.synchronize(compute.device)


def reset_memory(compute: Compute) -> None:
    gc.collect()
    if compute.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(compute.device)


def peak_gib(compute: Compute) -> float | None:
    if not compute.cuda:
        return None
    return torch.cuda.max_memory_allocated(compute.device) / 2**30


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


def precision_text(compute: Compute) -> str:
    parts = ["bf16" if compute.amp else "fp32"]
    if compute.channels_last:
        parts.append("channels_last")
    if compute.compile:
        parts.append("torch.compile")
    return " + ".join(parts)


def model_text(ctx: Context) -> str:
    return "DeepLab-v2 ResNet-101" if ctx.model.name == "deeplabv2" else f"{ctx.model.name} network"


def child_command(ctx: Context, role: str, out: Path, torchrun: bool = False) -> list[str]:
    """This module again, as a child process doing one row (`--child`)."""
    module = ["-m", "benchmarks.gpu_check", "--preset", ctx.preset_name]
    module += ["--child", role, "--child-out", str(out)]
    if not torchrun:
        return [sys.executable, *module]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    return [sys.executable, *launcher, *module]


def run_child(command: list[str], timeout: float) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    try:
        result = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise Skipped(f"time budget: stopped after {timeout:.0f} s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"child exited with {result.returncode}: " + " | ".join(tail))


# --- 1. correctness -------------------------------------------------------------------


def row_fp32_cuda_vs_cpu(ctx: Context, clock: Clock) -> dict:
    require_cuda(ctx)
    model = fresh_model(ctx)
    src, trg = make_batches(ctx, ctx.preset.check_size, ctx.preset.check_size)
    with exact_fp32():
        cpu = run_steps(make_step(ctx, CPU, copy.deepcopy(model), cfg=ctx.check_cfg), src, trg)
        fp64 = run_steps(
            make_step(ctx, CPU, copy.deepcopy(model).double(), cfg=ctx.check_cfg),
            as_double(src),
            as_double(trg),
        )
        cuda = run_steps(
            make_step(ctx, ctx.fp32(), copy.deepcopy(model), cfg=ctx.check_cfg), src, trg
        )
    noise = relative_error(cpu.grads, fp64.grads)
    tol = max(FP32_TOL, 10 * noise)
    grad = relative_error(cuda.grads, cpu.grads)
    disc = relative_error(cuda.disc_grads, cpu.disc_grads)
    values = {
        "grad_rel_diff": grad,
        "disc_grad_rel_diff": disc,
        "cpu_fp32_vs_fp64_grad_rel_diff": noise,
        "cuda_fp32_vs_fp64_grad_rel_diff": relative_error(cuda.grads, fp64.grads),
        "max_param_diff": largest_difference(cuda.after, cpu.after),
        "max_param_update": largest_difference(cpu.after, cpu.before),
        "loss_rel_diff": loss_difference(cuda.losses, cpu.losses),
        "tolerance": tol,
    }
    values["ok"] = max(grad, disc) <= tol
    values["result"] = (
        f"gradients {grad:.1e} apart (discriminators {disc:.1e}; CPU fp32 vs fp64 "
        f"{noise:.1e}); largest parameter difference {values['max_param_diff']:.1e} "
        f"(largest update {values['max_param_update']:.1e}); tolerance {tol:.0e}"
    )
    return values


def row_bf16_vs_fp32(ctx: Context, clock: Clock) -> dict:
    require_cuda(ctx)
    if not torch.cuda.is_bf16_supported():
        raise Skipped("this GPU has no bf16")
    model = fresh_model(ctx)
    src, trg = make_batches(ctx, ctx.preset.check_size, ctx.preset.check_size)
    with exact_fp32():
        fp32 = run_steps(
            make_step(ctx, ctx.fp32(), copy.deepcopy(model), cfg=ctx.check_cfg), src, trg
        )
    bf16 = run_steps(make_step(ctx, ctx.bf16(), copy.deepcopy(model), cfg=ctx.check_cfg), src, trg)
    grad = relative_error(bf16.grads, fp32.grads)
    losses = loss_difference(bf16.losses, fp32.losses)
    return {
        "grad_rel_diff": grad,
        "disc_grad_rel_diff": relative_error(bf16.disc_grads, fp32.disc_grads),
        "loss_rel_diff": losses,
        "max_param_diff": largest_difference(bf16.after, fp32.after),
        "tolerance": BF16_TOL,
        "loss_tolerance": BF16_LOSS_TOL,
        "ok": grad <= BF16_TOL and losses <= BF16_LOSS_TOL,
        "result": (
            f"gradients {grad:.1e} apart, losses {losses:.1e} (tolerances {BF16_TOL:.0e}, "
            f"{BF16_LOSS_TOL:.0e})"
        ),
    }


def torchrun_steps(ctx: Context, step: AdaptationStep) -> StepResult:
    src, trg = make_batches(ctx, ctx.preset.check_size, ctx.preset.check_size)
    with exact_fp32():
        return run_steps(step, src, trg, ctx.preset.torchrun_steps)


def child_torchrun(ctx: Context, out: Path) -> None:
    """Under torchrun: join a process group of one and train through DDP, the
    distributed cross-entropy and the collectives."""
    device = ctx.compute.device
    if ctx.cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if ctx.cuda else "gloo")
    try:
        compute = ctx.fp32(
            device=device, rank=dist.get_rank(), world=dist.get_world_size(), group_of_one=True
        )
        step = make_step(ctx, compute)
        result = torchrun_steps(ctx, step)
        ddp = isinstance(step.net, DistributedDataParallel)
        torch.save({**result.as_dict(), "backend": dist.get_backend(), "ddp": ddp}, out)
    finally:
        dist.destroy_process_group()


def row_torchrun_vs_plain(ctx: Context, clock: Clock) -> dict:
    plain = torchrun_steps(ctx, make_step(ctx, ctx.fp32()))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torchrun.pt"
        run_child(child_command(ctx, "torchrun", out, torchrun=True), clock.allow(240))
        child = torch.load(out, weights_only=True)
    backend = child["backend"]
    if not child["ddp"]:
        raise AssertionError("the torchrun process did not train through DDP")
    grad = relative_error(child["grads"], plain.grads)
    params = largest_difference(child["after"], plain.after)
    identical = params == 0.0 and grad == 0.0
    return {
        "backend": backend,
        "ddp": child["ddp"],
        "steps": ctx.preset.torchrun_steps,
        "grad_rel_diff": grad,
        "max_param_diff": params,
        "bit_identical": identical,
        "loss_rel_diff": loss_difference(child["losses"], plain.losses),
        "tolerance": FP32_TOL,
        "ok": grad <= FP32_TOL,
        "result": (
            f"{backend}, {ctx.preset.torchrun_steps} steps: "
            + (
                "bit-identical"
                if identical
                else f"gradients {grad:.1e} apart, largest parameter difference {params:.1e}"
            )
            + f" (tolerance {FP32_TOL:.0e})"
        ),
    }


# --- 2. speed -------------------------------------------------------------------------


def time_steps(step: AdaptationStep, src: dict, trg: dict, count: int, compute: Compute) -> list:
    seconds = []
    for _ in range(count):
        synchronize(compute)
        start = time.perf_counter()
        step(src, trg)
        synchronize(compute)
        seconds.append(time.perf_counter() - start)
    return seconds


def speed_values(ctx: Context, seconds: list[float], compute: Compute) -> dict:
    ms = 1000 * float(np.median(seconds))
    iterations = ctx.cfg.iterations
    return {
        "ms_per_step": ms,
        "images_per_s": 1000 * ctx.cfg.batch_size / ms,
        "peak_gpu_gib": peak_gib(compute),
        "iterations": iterations,
        "projected_hours": ms * iterations / 3.6e6,
        "timed_steps": len(seconds),
    }


def speed_row(ctx: Context, compute: Compute, step_class=AdaptationStep) -> dict:
    reset_memory(compute)
    step = make_step(ctx, compute, step_class=step_class)
    src, trg = make_batches(ctx, ctx.preset.source_size, ctx.preset.target_size, compute.cuda)
    time_steps(step, src, trg, ctx.preset.warmup, compute)
    values = speed_values(ctx, time_steps(step, src, trg, ctx.preset.steps, compute), compute)
    del step
    reset_memory(compute)
    return values


def row_reference(ctx: Context, clock: Clock) -> dict:
    return speed_row(ctx, ctx.fp32(), ReferenceStyleStep)


def row_ours_fp32(ctx: Context, clock: Clock) -> dict:
    return speed_row(ctx, ctx.fp32())


def row_ours_bf16(ctx: Context, clock: Clock) -> dict:
    require_cuda(ctx)
    return speed_row(ctx, ctx.bf16())


def compile_compute(ctx: Context) -> Compute:
    """The fastest eager setting this machine has (bf16 + channels_last on CUDA), compiled."""
    if ctx.cuda:
        return ctx.bf16(compile=True)
    return ctx.fp32(compile=True)


def child_compile(ctx: Context, out: Path) -> None:
    """Eager and compiled steps from the same weights: the first step of each compared,
    then timed in alternating blocks (so that a shared machine's drift hits both)."""
    compiled_compute = compile_compute(ctx)
    eager_compute = dataclasses.replace(compiled_compute, compile=False)
    src, trg = make_batches(ctx, ctx.preset.source_size, ctx.preset.target_size, ctx.cuda)
    eager = make_step(ctx, eager_compute)
    compiled = make_step(ctx, compiled_compute)
    first_eager = run_steps(eager, src, trg)
    start = time.perf_counter()
    first_compiled = run_steps(compiled, src, trg)
    compile_s = time.perf_counter() - start
    for step in (eager, compiled):
        time_steps(step, src, trg, max(ctx.preset.warmup - 1, 1), compiled_compute)
    blocks = {"eager": [], "compiled": []}
    block = max(ctx.preset.steps // 4, 1)
    for _ in range(max(ctx.preset.steps // block, 1)):
        blocks["eager"] += time_steps(eager, src, trg, block, eager_compute)
        blocks["compiled"] += time_steps(compiled, src, trg, block, compiled_compute)
    del eager
    reset_memory(compiled_compute)
    time_steps(compiled, src, trg, 2, compiled_compute)
    values = speed_values(ctx, blocks["compiled"], compiled_compute)
    eager_ms = 1000 * float(np.median(blocks["eager"]))
    tol = BF16_TOL if compiled_compute.amp else COMPILE_TOL
    grad = relative_error(first_compiled.grads, first_eager.grads)
    values.update(
        compile_s=compile_s,
        eager_ms_per_step=eager_ms,
        speedup_vs_eager=eager_ms / values["ms_per_step"],
        grad_rel_diff=grad,
        loss_rel_diff=loss_difference(first_compiled.losses, first_eager.losses),
        tolerance=tol,
        ok=grad <= tol,
    )
    out.write_text(json.dumps(values))


def row_compile(ctx: Context, clock: Clock) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compile.json"
        run_child(child_command(ctx, "compile", out), clock.allow(None))
        values = json.loads(out.read_text())
    values["result_extra"] = (
        f"first step (compiling) {values['compile_s']:.0f} s; {values['speedup_vs_eager']:.2f}× "
        f"eager in the same process; gradients {values['grad_rel_diff']:.1e} from eager "
        f"(tolerance {values['tolerance']:.0e})"
    )
    return values


# --- 3. scoring and evaluation --------------------------------------------------------


def image_table(ctx: Context, count: int) -> pd.DataFrame:
    """The first `count` of the labelled images rows 3 read, in the Cityscapes layout at
    the preset's file size: a few distinct synthetic scenes, copied (written once)."""
    root = ctx.workdir / "files"
    preset = ctx.preset
    if not root.exists():
        total = max(preset.score_images, preset.eval_images)
        unique = min(preset.unique_images, total)
        width, height = preset.file_size
        write_images(("target_val", 0, unique, 0, height, width, 1.0, 1.0, root))
        for i in range(unique, total):
            for made, copied in zip(
                set_files("target_val", i % unique)[1:], set_files("target_val", i)[1:], strict=True
            ):
                shutil.copyfile(root / made, root / copied)
    return index_cityscapes(root, "val").head(count)


def inference_model(ctx: Context) -> nn.Module:
    return ctx.compute.module(fresh_model(ctx)).eval()


def row_scoring(ctx: Context, clock: Clock) -> dict:
    compute, preset = ctx.compute, ctx.preset
    inference = get(ctx.raw, "inference")
    batch_size, rare = inference.batch_size, inference.rare_classes
    model = inference_model(ctx)
    table = image_table(ctx, preset.score_images)
    dataset = SegmentationSet(table, ctx.classes, Path("."), labelled=False, size=preset.read_size)
    batches = in_order(len(dataset), batch_size)
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        tmp = Path(tmp)

        def bare() -> None:
            for batch in loader(dataset, batches, compute.num_workers, pin_memory=compute.cuda):
                images = batch["image"]
                predict_probs(model, images, tuple(images.shape[-2:]), compute)

        def scored() -> None:
            out = tmp / f"out_{time.perf_counter_ns()}"
            maps = EntropyShards(
                out / "maps", out / "maps", inference.shard_size, inference.map_downsample
            )
            preds = LabelShards(out / "preds", out / "preds", inference.shard_size, "prediction")
            score_images(
                model, dataset, table, ctx.classes, batch_size, maps, preds,
                rare_classes=rare, compute=compute,
            )  # fmt: skip

        width, height = preset.read_size
        resident = compute.images(torch.rand(batch_size, 3, height, width))

        @torch.no_grad()
        def network() -> None:
            for _ in batches:
                with compute.autocast():
                    model(resident)
            synchronize(compute)

        network()
        bare()  # warm-up: file cache, cudnn autotuning, worker start
        timings = {}
        for name, fn in (
            ("network", network),
            ("bare", bare),
            ("scored", scored),
            ("bare2", bare),
            ("scored2", scored),
        ):
            start = time.perf_counter()
            fn()
            timings[name] = time.perf_counter() - start
    count = preset.score_images
    base = min(timings["bare"], timings["bare2"])
    full = min(timings["scored"], timings["scored2"])
    values = {
        "images": count,
        "batch_size": batch_size,
        "num_workers": compute.num_workers,
        "scored_images_per_s": count / full,
        "bare_images_per_s": count / base,
        "network_images_per_s": count / timings["network"],
        "overhead_vs_bare": full / base - 1,
    }
    values["result"] = (
        f"{values['scored_images_per_s']:.1f} images/s with maps and predictions written; "
        f"bare forwards (same loading) {values['bare_images_per_s']:.1f} images/s: overhead "
        f"{100 * values['overhead_vs_bare']:.0f} %; the network alone "
        f"{values['network_images_per_s']:.1f} images/s"
    )
    return values


def row_evaluation(ctx: Context, clock: Clock) -> dict:
    batch_size = get(ctx.raw, "evaluate").batch_size
    model = inference_model(ctx)
    dataset = SegmentationSet(
        image_table(ctx, ctx.preset.eval_images),
        ctx.classes,
        Path("."),
        labelled=True,
        size=ctx.preset.read_size,
        resize_labels=False,  # as stages.evaluate: predictions upsampled to the labels
    )
    evaluate_confusion(model, dataset, batch_size, ctx.compute)  # warm-up
    start = time.perf_counter()
    cm = evaluate_confusion(model, dataset, batch_size, ctx.compute)
    seconds = time.perf_counter() - start
    count = ctx.preset.eval_images
    return {
        "images": count,
        "batch_size": batch_size,
        "labelled_pixels": int(cm.sum()),
        "images_per_s": count / seconds,
        "result": f"{count / seconds:.1f} images/s (confusion matrix at label resolution)",
    }


# --- the table ------------------------------------------------------------------------


@dataclass
class Clock:
    budget_s: float
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allow(self, most: float | None, reserve: float = 20.0) -> float:
        """Seconds a child process may run: what the budget leaves (after `reserve` for
        the rows after it), at most `most`; none left is a skip."""
        left = self.budget_s - self.elapsed() - reserve
        if left < 30:
            raise Skipped(f"time budget: {self.elapsed():.0f} s of {self.budget_s:.0f} s used")
        return left if most is None else min(left, most)


@dataclass(frozen=True)
class Row:
    key: str
    section: str
    title: Callable[[Context], str]
    run: Callable[[Context, Clock], dict]


def _step_title(what: str) -> Callable[[Context], str]:
    def title(ctx: Context) -> str:
        p = ctx.preset
        return (
            f"AdvEnt step, {what}: {model_text(ctx)}, {size_text(p.source_size)} + "
            f"{size_text(p.target_size)}, batch {ctx.cfg.batch_size}"
        )

    return title


ROWS = (
    Row(
        "fp32_cuda_vs_cpu",
        "correctness",
        lambda c: (
            f"fp32 AdvEnt step, CUDA vs CPU ({model_text(c)}, "
            f"{size_text(c.preset.check_size)}, TF32 off)"
        ),
        row_fp32_cuda_vs_cpu,
    ),
    Row(
        "bf16_vs_fp32",
        "correctness",
        lambda c: (
            f"bf16 + channels_last AdvEnt step vs fp32 on CUDA ({model_text(c)}, "
            f"{size_text(c.preset.check_size)})"
        ),
        row_bf16_vs_fp32,
    ),
    Row(
        "torchrun_vs_plain",
        "correctness",
        lambda c: (
            f"1 process under torchrun (DDP, {'NCCL' if c.cuda else 'gloo'}) vs a plain "
            f"run, fp32 ({model_text(c)}, {size_text(c.preset.check_size)})"
        ),
        row_torchrun_vs_plain,
    ),
    Row("step_reference_fp32", "speed", _step_title("reference-style loop, fp32"), row_reference),
    Row("step_ours_fp32", "speed", _step_title("ours, fp32"), row_ours_fp32),
    Row("step_ours_bf16", "speed", _step_title("ours, bf16 + channels_last"), row_ours_bf16),
    Row(
        "step_ours_compile",
        "speed",
        lambda c: _step_title(f"ours, {precision_text(compile_compute(c))}")(c),
        row_compile,
    ),
    Row(
        "scoring",
        "throughput",
        lambda c: (
            f"scoring at {size_text(c.preset.read_size)} ({c.preset.score_images} "
            f"images of {size_text(c.preset.file_size)})"
        ),
        row_scoring,
    ),
    Row(
        "evaluation",
        "throughput",
        lambda c: (
            f"evaluation at {size_text(c.preset.file_size)} labels "
            f"({c.preset.eval_images} images read at {size_text(c.preset.read_size)})"
        ),
        row_evaluation,
    ),
)
SECTIONS = {
    "correctness": "1. correctness",
    "speed": "2. speed",
    "throughput": "3. scoring and evaluation",
}


def speed_result(row: dict, reference: dict | None) -> str:
    text = f"{row['ms_per_step']:.1f} ms/step"
    if reference is not None:
        row["speedup_vs_reference"] = reference["ms_per_step"] / row["ms_per_step"]
        text += f", {row['speedup_vs_reference']:.2f}× reference"
    if row.get("peak_gpu_gib") is not None:
        text += f", peak {row['peak_gpu_gib']:.1f} GiB"
    text += f"; {row['iterations']:,} iterations: {row['projected_hours']:.3g} h"
    if "result_extra" in row:
        text += f"; {row.pop('result_extra')}"
    return text


def status_text(row: dict) -> str:
    if row["status"] in ("skipped", "error"):
        return f"{row['status']} ({row['reason']})"
    return row["status"]


def goals(rows: dict[str, dict], ctx: Context) -> dict:
    """The check's targets: ours at least 1.5x the reference-style loop, and the
    120,000-iteration stage under 12 h on one GPU (CUDA only)."""
    reference = rows.get("step_reference_fp32", {})
    ours = [
        rows[k]["values"]
        for k in ("step_ours_fp32", "step_ours_bf16", "step_ours_compile")
        if rows.get(k, {}).get("status") == "ok"
    ]
    if reference.get("status") != "ok" or not ours:
        return {"measured": False}
    best = min(ours, key=lambda v: v["ms_per_step"])
    speedup = reference["values"]["ms_per_step"] / best["ms_per_step"]
    return {
        "measured": True,
        "on_gpu": ctx.cuda,
        "best_ms_per_step": best["ms_per_step"],
        "speedup_vs_reference": speedup,
        "projected_hours": best["projected_hours"],
        "speedup_goal": GOAL_SPEEDUP,
        "hours_goal": GOAL_HOURS,
        # The goals are for one GPU at the paper's sizes: not judged elsewhere.
        "speedup_met": speedup >= GOAL_SPEEDUP if ctx.cuda else None,
        "hours_met": best["projected_hours"] < GOAL_HOURS if ctx.cuda else None,
    }


def markdown(report: dict) -> str:
    lines = ["| section | check | result | status |", "| --- | --- | --- | --- |"]
    for row in report["rows"]:
        result = row.get("result", "") if row["status"] in ("ok", "fail") else ""
        lines.append(
            f"| {SECTIONS[row['section']]} | {row['title']} | {result} | {status_text(row)} |"
        )
    g = report["goals"]
    if g.get("measured"):
        best = (
            f"Best of ours: {g['speedup_vs_reference']:.2f}× the reference-style loop, "
            f"{g['projected_hours']:.3g} h projected for the stage"
        )
        if g["on_gpu"]:
            met = {True: "met", False: "NOT met"}
            best += (
                f" (goals: ≥ {g['speedup_goal']}×, {met[g['speedup_met']]}; "
                f"< {g['hours_goal']:.0f} h, {met[g['hours_met']]})"
            )
        else:
            best += " (the goals, ≥ 1.5× and < 12 h, are for one GPU: not judged on a CPU)"
        lines += ["", best + "."]
    return "\n".join(lines)


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "tf32_default": tf32_setting(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda_version=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16=torch.cuda.is_bf16_supported(),
        )
    return info


def run_row(spec: Row, ctx: Context, clock: Clock, reference: dict | None) -> dict:
    """One row, whatever happens in it: measured, failed, skipped or raised."""
    row = {"key": spec.key, "section": spec.section, "title": spec.title(ctx)}
    start = time.perf_counter()
    try:
        values = spec.run(ctx, clock)
        row["status"] = "ok" if values.pop("ok", True) else "fail"
        row["result"] = values.pop("result", "")
        row["values"] = values
        if spec.section == "speed":
            row["result"] = speed_result(values, reference)
    except Skipped as why:
        row.update(status="skipped", reason=str(why))
    except Exception as exc:  # one failing row must not stop the others
        traceback.print_exc()
        message = str(exc).strip().splitlines()
        row.update(status="error", reason=f"{type(exc).__name__}: {message[0] if message else ''}")
        row["reason"] = row["reason"][:300]
        reset_memory(ctx.compute)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def check(preset_name: str, out: Path, budget_s: float) -> int:
    """Run every row and write the report; returns the number of rows that failed or
    raised. torch.compile runs last (its compilation time is the hardest to bound), in
    a child process stopped when the budget runs out; the table keeps the rows' order."""
    clock = Clock(budget_s)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
        ctx = Context.create(preset_name, Path(workdir))
        report: dict[str, Any] = {
            "machine": machine(),
            "preset": preset_name,
            "sizes": dataclasses.asdict(ctx.preset),
            "model": ctx.model.name,
            "device": str(ctx.compute.device),
            "budget_s": budget_s,
            "sections": {},
            "rows": [],
            "goals": {},
            "complete": False,
        }
        info = report["machine"]
        print(
            f"GPU check ({preset_name}): torch {info['torch']}, "
            + (f"{info['gpu']}, CUDA {info['cuda_version']}" if info["cuda"] else "no CUDA")
            + f", {info['cpu_cores']} CPU cores ({info['threads']} threads)",
            flush=True,
        )
        rows: dict[str, dict] = {}
        order = sorted(ROWS, key=lambda r: r.key == "step_ours_compile")
        for spec in order:
            reference = rows.get("step_reference_fp32", {}).get("values")
            if spec.key == "step_reference_fp32":
                reference = None
            row = run_row(spec, ctx, clock, reference)
            rows[spec.key] = row
            report["rows"] = [rows[r.key] for r in ROWS if r.key in rows]
            report["sections"] = {
                section: round(
                    sum(r["seconds"] for r in rows.values() if r["section"] == section), 1
                )
                for section in SECTIONS
            }
            report["elapsed_s"] = round(clock.elapsed(), 1)
            write_json(out / "gpu_check.json", report)
            print(
                f"[{clock.elapsed():6.1f} s] {SECTIONS[spec.section]}, {spec.key}: "
                f"{status_text(row)}" + (f": {row['result']}" if row.get("result") else ""),
                flush=True,
            )
    report["goals"] = goals(rows, ctx)
    report["complete"] = True
    report["elapsed_s"] = round(clock.elapsed(), 1)
    write_json(out / "gpu_check.json", report)
    table = markdown(report)
    (out / "gpu_check.md").write_text(table + "\n")
    print()
    print(table)
    print()
    for section, seconds in report["sections"].items():
        print(f"{SECTIONS[section]}: {seconds:.1f} s")
    print(f"{report['elapsed_s']:.0f} s in all; wrote {out / 'gpu_check.json'}", flush=True)
    return sum(row["status"] in ("fail", "error") for row in report["rows"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs/gpu_check")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="full with a GPU, default without (module docstring)",
    )
    parser.add_argument("--tiny", action="store_true", help="same as --preset tiny")
    parser.add_argument(
        "--budget-s", type=float, default=420, help="child processes stop within it"
    )
    parser.add_argument("--child", choices=("torchrun", "compile"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset = "tiny" if args.tiny else args.preset
    if preset is None:
        preset = "full" if torch.cuda.is_available() else "default"
    if args.child is not None:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as workdir:
            ctx = Context.create(preset, Path(workdir))
            child = {"torchrun": child_torchrun, "compile": child_compile}[args.child]
            child(ctx, args.child_out)
        return
    sys.exit(1 if check(preset, args.out, args.budget_s) else 0)


if __name__ == "__main__":
    main()
