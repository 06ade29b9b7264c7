"""What a measurement ran on, printed beside every timing: times differ by CPU kind
(a 2-core AMD EPYC with AVX2 ran the default pipeline 3x slower than an AVX-512 one)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from intrada.compute import TORCH_DEFAULT_THREADS, usable_cpus


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def instruction_set() -> str:
    """The vector instruction set PyTorch's CPU kernels use here (AVX512, AVX2, ...):
    `ATEN_CPU_CAPABILITY=avx2` lowers it on a newer CPU (and `ONEDNN_MAX_CPU_ISA=AVX2`
    oneDNN's convolutions, named when set)."""
    aten = torch.backends.cpu.get_cpu_capability()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{aten}, oneDNN {onednn}" if onednn else aten


def describe() -> str:
    """One line: CPU model, cores, the kernels' instruction set, torch and its threads."""
    return (
        f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} cores, "
        f"{instruction_set()} kernels), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads; PyTorch's default here "
        f"{TORCH_DEFAULT_THREADS}, usable CPUs {usable_cpus()}), CUDA {torch.cuda.is_available()}"
    )
