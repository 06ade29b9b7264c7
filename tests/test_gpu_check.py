"""The GPU check in its reduced form: every row runs on this machine or says why not, and
the rows written for CUDA run their code on the CPU, so the check cannot rot between
the rare runs on a GPU."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check
from tests.conftest import REPO

pytestmark = pytest.mark.slow

CUDA_ROWS = {"fp32_cuda_vs_cpu", "bf16_vs_fp32", "step_ours_bf16"}


def test_tiny_check_reports_every_row_without_dvc(tmp_path):
    # The GPU machines have PyTorch but neither dvc nor dvclive: importing them fails here.
    for name in ("dvc", "dvclive"):
        (tmp_path / "stubs" / name).mkdir(parents=True)
        (tmp_path / "stubs" / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed on the GPU machines')\n"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "stubs"), str(REPO)])}
    out = tmp_path / "report"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    report = json.loads((out / "gpu_check.json").read_text())
    assert report["complete"] and report["preset"] == "tiny"
    rows = {row["key"]: row for row in report["rows"]}
    assert list(rows) == [row.key for row in gpu_check.ROWS]
    assert set(report["sections"]) == {"correctness", "speed", "throughput"}
    cuda = torch.cuda.is_available()
    for key, row in rows.items():
        if key in CUDA_ROWS and not cuda:
            assert (row["status"], row["reason"]) == ("skipped", "no CUDA"), key
        else:
            assert row["status"] == "ok", (key, row)
            assert row["result"] and row["values"], key

    torchrun = rows["torchrun_vs_plain"]["values"]
    assert torchrun["backend"] == ("nccl" if cuda else "gloo") and torchrun["ddp"]
    assert torchrun["grad_rel_diff"] <= torchrun["tolerance"]
    for key in ("step_reference_fp32", "step_ours_fp32", "step_ours_compile"):
        values = rows[key]["values"]
        assert values["ms_per_step"] > 0 and values["timed_steps"] == 2
        assert values["projected_hours"] == pytest.approx(
            values["ms_per_step"] * values["iterations"] / 3.6e6
        )
    assert rows["step_ours_fp32"]["values"]["speedup_vs_reference"] > 0
    compiled = rows["step_ours_compile"]["values"]
    assert compiled["grad_rel_diff"] <= compiled["tolerance"] and compiled["compile_s"] > 0
    assert rows["scoring"]["values"]["scored_images_per_s"] > 0
    # Labels stay at their 128x64 files while images are read at 64x32.
    assert 4 * 64 * 32 < rows["evaluation"]["values"]["labelled_pixels"] <= 4 * 128 * 64
    assert report["goals"]["measured"] and report["goals"]["speedup_met"] is (
        True if cuda else None
    )

    table = (out / "gpu_check.md").read_text()
    assert table in result.stdout
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 2 + len(rows)
    if not cuda:
        assert table.count("skipped (no CUDA)") == len(CUDA_ROWS)


@pytest.fixture
def deeplab_on_cpu(tmp_path, monkeypatch):
    """The paper profile's DeepLab-v2 at 64x32 on the CPU, with the CUDA rows let through
    (their CUDA device is then the CPU)."""
    monkeypatch.setattr(gpu_check, "require_cuda", lambda ctx: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    preset = dataclasses.replace(
        gpu_check.PRESETS["tiny"], params="profiles/gta5_cityscapes.yaml", width=None
    )
    preset = dataclasses.replace(preset, batch_size=None)
    return gpu_check.Context.create("deeplab-on-cpu", tmp_path, preset)


def run(key: str, ctx) -> dict:
    (spec,) = [row for row in gpu_check.ROWS if row.key == key]
    return gpu_check.run_row(spec, ctx, gpu_check.Clock(600), reference=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs these rows for real")
@pytest.mark.filterwarnings("ignore:CUDA is not available")  # autocast("cuda") on the CPU
def test_cuda_rows_run_their_code_on_the_cpu(deeplab_on_cpu):
    ctx = deeplab_on_cpu
    assert ctx.model.name == "deeplabv2" and len(ctx.classes) == 19
    fp32 = run("fp32_cuda_vs_cpu", ctx)
    assert fp32["status"] == "ok", fp32
    values = fp32["values"]
    # The conditioned random network is well-conditioned: fp32 rounding stays at 1e-7
    # against fp64 (4e-2 with unit residual gains), far below the tolerance.
    assert 0 < values["cpu_fp32_vs_fp64_grad_rel_diff"] < gpu_check.FP32_TOL / 100
    assert values["grad_rel_diff"] == 0 and values["max_param_update"] > 0  # CPU against CPU
    bf16 = run("bf16_vs_fp32", ctx)
    assert bf16["status"] == "ok" and bf16["values"]["grad_rel_diff"] < gpu_check.BF16_TOL
    bf16_compute = ctx.bf16()  # the speed row's
    assert (bf16_compute.amp, bf16_compute.channels_last, bf16_compute.compile) == (
        True,
        True,
        False,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gpu_check.Context, "cuda", property(lambda self: True))
        compiled = gpu_check.compile_compute(ctx)
    assert (compiled.amp, compiled.channels_last, compiled.compile) == (True, True, True)


def test_a_raising_row_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx, clock):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    rows = [dataclasses.replace(row, run=broken) if row.key == "scoring" else row
            for row in gpu_check.ROWS]  # fmt: skip
    keep = {"scoring", "evaluation", "step_reference_fp32"}
    monkeypatch.setattr(gpu_check, "ROWS", tuple(r for r in rows if r.key in keep))
    failures = gpu_check.check("tiny", tmp_path, budget_s=60)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = {row["key"]: row["status"] for row in report["rows"]}
    assert failures == 1
    assert statuses == {"step_reference_fp32": "ok", "scoring": "error", "evaluation": "ok"}
    (scoring,) = [row for row in report["rows"] if row["key"] == "scoring"]
    assert scoring["reason"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
