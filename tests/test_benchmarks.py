"""The benchmarks run end to end: method gain on the tiny profile (one seed), and the
speed measurements with small counts (their numbers are printed, never asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import REPO, tiny_params, write_params

pytestmark = pytest.mark.slow


def test_method_gain_prints_the_seed_and_lambda_tables(tmp_path):
    params = write_params(tmp_path, tiny_params())
    workdir = tmp_path / "runs"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.method_gain",
            "--params",
            str(params),
            "--seeds",
            "3",
            "--lambdas",
            "1.0",
            "--workdir",
            str(workdir),
            "--bootstrap",
            "20",
            "--jobs",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = (workdir / "report.md").read_text()
    assert "| 3 |" in report and "| mean ± std |" in report
    assert "| 1.0 (self-training) |" in report and "| 0.67 |" in report
    assert "- [" in report  # the checks, ticked or not
    assert "--jobs 2, threads per stage: 1" in report
    results = json.loads((workdir / "results.json").read_text())["3"]
    assert set(results) == {"main", "source_long", "intra_ce", "oracle", "noise", "lambda_1.0"}
    assert " oracle |" in report
    assert "intra: gap closed %" in report and "## Noise of one seed's gains" in report
    assert set(results["noise"]) == {
        "inter - source-only",
        "intra - inter",
        "intra - intra, CE only",
    }
    assert all(v >= 0 for v in results["noise"].values())
    # The oracle trained on target-train's images with their ground truth, as long as
    # the whole pipeline.
    oracle = workdir / "seed_3/oracle"
    table = pd.read_parquet(oracle / "data/index/source.parquet")
    assert len(table) == 10 and table["image_path"].str.contains("leftImg8bit/train").all()
    assert table["label_path"].str.contains("gtFine/train").all()
    oracle_params = yaml.safe_load((oracle / "params.yaml").read_text())
    assert oracle_params["source_only"]["iterations"] == 3 + 3 + 3
    assert 0 <= results["oracle"]["mIoU"] <= 100
    # The long control trained source-only for source + inter + intra iterations.
    long_params = yaml.safe_load((workdir / "seed_3/source_long/params.yaml").read_text())
    assert long_params["source_only"]["iterations"] == 3 + 3 + 3
    # Variants re-run only the stale stages and link the rest from the main run.
    variant = workdir / "seed_3/lambda_1.0"
    assert (variant / "models/inter/model.pt").is_symlink()
    assert not (variant / "models/intra/model.pt").is_symlink()
    assert results["lambda_1.0"]["diagnostics"]["inter_hard_mIoU"] is None
    assert results["main"]["source_only"] == results["lambda_1.0"]["source_only"]


def test_speed_benchmark_prints_the_five_measurements():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.speed",
            "--steps",
            "1",
            "--step-rounds",
            "1",
            "--images",
            "8",
            "--deeplab-images",
            "0",
            "--scores",
            "1000",
            "--scale-images",
            "24",
            "--scale-shard-size",
            "10",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # The machine first: CPU model and the instruction set PyTorch's kernels use.
    assert re.search(r"\(x86_64|aarch64|arm64", lines[0]) and " kernels)" in lines[0], lines[0]
    isa = torch.backends.cpu.get_cpu_capability()
    if isa not in ("AVX2", "DEFAULT", "NO AVX"):  # the same step with AVX2 kernels
        (avx2,) = [line for line in lines if line.startswith("(a) [AVX2] training step")]
        assert re.search(r"-> \d+\.\d\dx \(goal >= 1\.0x\)", avx2), avx2
    for prefix, pattern in (
        (f"(a) [{isa}] training step", r"-> \d+\.\d\dx \(goal >= 1\.0x\); ours in NCHW"),
        (f"(b) [{isa}] inference, small model", r"overhead -?\d+\.\d % \(goal <= 15 %\)"),
        ("(c) ranking 1,000 scores", r"\d+\.\d\d s \(goal < 2 s\)"),
        ("(d) no-op dvc repro", r"\d+\.\d\d s \(goal < 5 s\)"),
        ("(e) 24 images of 64x32", r"one file per image \(before\) vs shards of 10$"),
        ("(e)   scoring stage", r"\d+\.\d\d s vs \d+\.\d\d s$"),
        # 24 maps and 24 predictions, or 3 shards of each; and the scores table.
        ("(e)   files", r"^\(e\)   files: 49 vs 7$"),
        ("(e)   dvc status", r"s vs \d+\.\d\d s \(goal < 10 s\)"),
        ("(e)   no-op dvc repro", r"s vs \d+\.\d\d s \(goal < 5 s\)"),
        ("(e)   dvc checkout", r"s vs \d+\.\d\d s$"),
    ):
        (line,) = [line for line in lines if line.startswith(prefix)]
        assert re.search(pattern, line), line


def test_map_formats_prints_both_sets(tmp_path):
    command = [sys.executable, "-m", "benchmarks.map_formats", "--images", "2"]
    command += ["--model", str(tmp_path / "absent.pt")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "maps of an untrained model" in result.stdout
    for name in ("default benchmark, 2 maps of 128x64", "Cityscapes-sized, 2 maps of 1024x512"):
        assert name in result.stdout
    assert result.stdout.count("zip of 8-bit PNGs, full size") == 2


def test_released_adam_prints_the_difference_table():
    command = [sys.executable, "-m", "benchmarks.released_adam", "--iterations", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2"]
    # The two rules differ at the first step whatever the gradients (eps counts 10x).
    assert float(rows[0].split(" | ")[1]) > 0
