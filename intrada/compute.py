"""Where and how the networks run: device, mixed precision, memory format, compilation,
and the processes of a `torchrun` launch (PyTorch DDP).

A stage whose params ask for `compute.nproc` > 1 re-runs its own command under torchrun
(`relaunch_under_torchrun`); each process then calls `setup()`, which joins the process
group torchrun describes in its environment. With one process nothing is initialised:
a 1-process run is a plain run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from intrada.config import ComputeParams
from intrada.errors import IntradaError
from intrada.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Compute:
    """The resolved settings one process runs with."""

    device: torch.device
    amp: bool  # bf16 autocast around network forwards (CUDA with bf16 support only)
    channels_last: bool
    num_workers: int
    rank: int = 0
    world: int = 1
    compile: bool = False  # torch.compile the segmentation network in training
    # Joined a process group although alone in it: only the GPU check does, to run the
    # DDP and collective code paths (NCCL on a GPU) with one process.
    group_of_one: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1 or self.group_of_one

    def autocast(self):
        """bf16 autocast for network forwards; losses, entropy and metrics are computed
        from `.float()` outputs outside it."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def images(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of images on the device, in the network's memory format."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        """A network moved to the device (and memory format)."""
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` through torch.compile (inductor) when `compile` is set; it shares the
        module's parameters, so state dicts and optimisers keep using the module itself.

        Static shapes: training batches have fixed sizes (source and target: one graph
        each), and a dynamic-shape graph would be slower for them.
        """
        if not self.compile:
            return module
        return torch.compile(module, dynamic=False)


# One process on the CPU, in fp32: the library's default.
CPU = Compute(device=torch.device("cpu"), amp=False, channels_last=False, num_workers=0)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def require_cuda() -> None:
    """Stop with one line when the params insist on CUDA and PyTorch sees no GPU: a
    profile sized for a GPU would otherwise run for months on the CPU."""
    if torch.cuda.is_available():
        return
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    raise IntradaError(
        f"params.yaml: compute.device = 'cuda' but PyTorch ({torch.__version__}, {build}) "
        "sees no CUDA device; expected a visible GPU (check nvidia-smi and "
        "CUDA_VISIBLE_DEVICES), or compute.device: cpu to run on the CPU on purpose"
    )


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        require_cuda()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# PyTorch's own choice in this process (physical cores, or the variables above), before
# `set_threads`: the stage log prints both, so a slow machine shows which it had.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def cgroup_cpu_limit(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """CPUs a cgroup v2 quota allows ("200000 100000" = 2), rounded up; None for no
    quota ("max ...") or no such file."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or float(period) <= 0:
        return None
    return max(1, -(-int(quota) // int(period)))


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cpu_max)
    return max(1, min(cpus, limit) if limit is not None else cpus)


def set_threads(environ=os.environ, cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Sets PyTorch's intra-op threads and returns them: what OMP_NUM_THREADS (or
    MKL_NUM_THREADS) asks for when set (PyTorch already reads them: a user's or
    torchrun's choice), else every usable CPU.

    Why not PyTorch's own default: it counts physical cores, so a VM that presents its
    two vCPUs as two hyperthreads of one core runs everything on 1 thread, leaving the
    second CPU idle (issue 22: source-only as slow with 2 CPUs as with 1); in a
    container it counts the host's cores, not the CPUs the container may use."""
    if any(environ.get(name) for name in THREAD_VARIABLES):
        return torch.get_num_threads()
    threads = usable_cpus(cpu_max)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def setup(params: ComputeParams) -> Compute:
    """This process's settings; joins the torchrun process group when there is one.
    On the CPU, PyTorch's threads are set first (`set_threads`)."""
    device = resolve_device(params.device)
    threads = set_threads()
    rank, world = 0, 1
    if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local_rank = int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    cuda = device.type == "cuda"
    if rank == 0:
        log.info(
            "%s, %d PyTorch threads (PyTorch's default here: %d), %d process(es)",
            device,
            threads,
            TORCH_DEFAULT_THREADS,
            world,
        )
    if cuda:
        # Fastest kernels for fixed input sizes; CUDA runs are not bit-reproducible anyway.
        torch.backends.cudnn.benchmark = True
    return Compute(
        device=device,
        amp=params.amp and cuda and torch.cuda.is_bf16_supported(),
        # NHWC on the CPU too: oneDNN's convolutions run 1.1-2x faster on it than on
        # NCHW for this project's small networks (benchmarks.speed, docs/benchmarks.md).
        channels_last=params.channels_last,
        num_workers=params.num_workers,
        rank=rank,
        world=world,
        compile=params.compile,
    )


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch_under_torchrun(nproc: int, module: str) -> None:
    """With nproc > 1 and not yet under torchrun: run `python -m <module> <same args>`
    as `torchrun --standalone --nproc-per-node <nproc>` and exit with its status.
    Otherwise return: this process does the work itself.

    For several nodes, run the stage command under your own torchrun
    (`torchrun --nnodes ... -m stages.train_inter ...`): it is then not relaunched.
    """
    if nproc <= 1 or launched_by_torchrun():
        return
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *sys.argv[1:],
    ]
    sys.exit(subprocess.run(command).returncode)


@contextlib.contextmanager
def processes(params: ComputeParams, module: str, sharded: bool = True):
    """A stage's compute: with `compute.nproc` > 1 (and `sharded`, a stage that can split
    its work) the stage first re-runs itself under torchrun; every process then gets its
    settings here, and leaves the process group on exit."""
    if sharded:
        relaunch_under_torchrun(params.nproc, module)
    compute = setup(params)
    try:
        yield compute
    finally:
        teardown()


@contextlib.contextmanager
def shared_atomic_dirs(paths: list[Path], compute: Compute):
    """Temporary folders every process writes into, renamed onto `paths` by the main
    process once all have finished (`io.atomic_path` for several processes)."""
    with contextlib.ExitStack() as stack:
        tmps = None
        if compute.main:
            tmps = [stack.enter_context(atomic_path(p)) for p in paths]
            for tmp in tmps:
                tmp.mkdir()
        if compute.distributed:
            shared = [tmps]
            dist.broadcast_object_list(shared, src=0)
            tmps = shared[0]
        yield tmps
        if compute.distributed:
            dist.barrier()  # every shard written before the main process renames


def sum_across(values: np.ndarray, compute: Compute) -> np.ndarray:
    """An array summed element-wise over all processes (identity for one): each process
    fills its own entries (others zero), or adds its partial counts. Float64 and int64
    sums of numbers that only one process contributes are exact."""
    if not compute.distributed:
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values)).to(compute.device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def mean_across(values: dict[str, float], compute: Compute) -> dict[str, float]:
    """Per-process numbers averaged over all processes (identity for one)."""
    if not compute.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=compute.device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / compute.world).tolist(), strict=True))
