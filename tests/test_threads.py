"""PyTorch's threads: every CPU the process may use, unless the environment says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from intrada.compute import cgroup_cpu_limit, set_threads, usable_cpus
from tests.conftest import REPO


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def cpu_max(tmp_path, text):
    path = tmp_path / "cpu.max"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, cpus",
    [("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)],
)
def test_cgroup_quota_is_read_as_whole_cpus_rounded_up(tmp_path, text, cpus):
    assert cgroup_cpu_limit(cpu_max(tmp_path, text)) == cpus


def test_no_cgroup_file_means_no_quota(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "absent") is None
    assert cgroup_cpu_limit(cpu_max(tmp_path, "garbage")) is None


def test_a_quota_caps_the_affinity_mask(tmp_path):
    assert usable_cpus(cpu_max(tmp_path, "100000 100000")) == 1
    assert usable_cpus(tmp_path / "absent") == len(os.sched_getaffinity(0))


def test_without_thread_variables_torch_gets_every_usable_cpu(tmp_path, restore_threads):
    torch.set_num_threads(3)
    assert set_threads({}, cpu_max(tmp_path, "100000 100000")) == 1
    assert torch.get_num_threads() == 1


def test_omp_num_threads_is_left_to_torch(tmp_path, restore_threads):
    torch.set_num_threads(3)
    assert set_threads({"OMP_NUM_THREADS": "3"}, cpu_max(tmp_path, "100000 100000")) == 3
    assert torch.get_num_threads() == 3


def test_a_stage_process_uses_the_cpus_its_affinity_allows():
    """What a stage does on a VM whose PyTorch default is 1 thread for 2 CPUs: its
    `setup` follows the CPUs it may run on (here: pinned to one, so 1; unpinned, all)."""
    code = (
        "import logging, os, torch; logging.basicConfig(level=logging.INFO); "
        "default = torch.get_num_threads(); from intrada.compute import setup; "
        "from intrada.config import ComputeParams; "
        "p = ComputeParams('cpu', False, True, False, 0, 1); "
        "torch.set_num_threads(1); setup(p); a = torch.get_num_threads(); "
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); setup(p); "
        "print(a, torch.get_num_threads(), default)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    threads, pinned, default = out.stdout.split()
    assert (threads, pinned) == (str(usable_cpus()), "1")
    # The log says what PyTorch alone would have used: a slow machine's log shows it.
    lines = [line for line in out.stderr.splitlines() if "PyTorch threads" in line]
    assert len(lines) == 2 and f"(PyTorch's default here: {default})" in lines[0], out.stderr
