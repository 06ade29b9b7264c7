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


@pytest.mark.long  # the tiny pipeline five times over, stage by stage: make test-long
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


@pytest.mark.long  # (d) reproduces a tiny project, (e) scores and hashes twice: make test-long
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
        (avx2,) = [
            line for line in lines if line.startswith("(a) [AVX2, oneDNN AVX2] training step")
        ]
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


def test_method_study_tables_from_a_results_dict():
    """The study's tables and orderings on hand-made results (its runs are the method
    gain benchmark's, tested above): each row reads the run and model it names."""
    from benchmarks import method_study as ms

    def run(**models):
        return {name: {"mIoU": value} for name, value in models.items()}

    def seed(offset: float) -> dict:
        curve = [[50, 60.0 + offset], [100, 62.0 + offset]]
        picks = {
            "entropy": {"iteration": 50},
            "infomax": {"iteration": 100},
            "snd": {"iteration": 50},
        }
        validation = {
            "curve": curve, "last_iteration": 100, "best_mIoU": 62.0 + offset, "picks": picks
        }  # fmt: skip
        main = run(source_only=50 + offset, inter=60 + offset, intra=62 + offset,
                   round_2=63 + offset, round_3=62.5 + offset)  # fmt: skip
        main["diagnostics"] = {"pseudo_label_accuracy": 90.0}
        main["round_2_diagnostics"] = {"pseudo_label_accuracy": 91.0}
        main["round_3_diagnostics"] = {"pseudo_label_accuracy": 92.0}
        return {
            "main": main,
            "oracle": {"mIoU": 80 + offset},
            "adv_only": run(intra=61 + offset),
            "self_training": run(intra=61.5 + offset),
            "normalised": run(intra=62.5 + offset),
            "intra_ce": run(intra=61.8 + offset),
            "asn": run(inter=59 + offset, intra=61 + offset),
            "asn_adv_only": run(intra=60 + offset),
            "asn_self_training": run(intra=60.5 + offset),
            "asn_normalised": run(intra=60.8 + offset),
            "asn_intra_ce": run(intra=60.9 + offset),
            "select_entropy": run(intra=61.9 + offset),
            "validation": {stage: validation for stage in ms.STAGES},
            "noise": {name: 0.1 for name, *_ in ms.GAINS},
        }

    results = {0: seed(0.0), 1: seed(1.0)}
    advent = ms.ablation_table(results, "advent")
    assert "| Ours (IntraDA) | 46.30 | 62.50 ± 0.71 | 62.00 | 63.00 |" in advent
    assert "| AdvEnt + self-training (lambda = 1) | 45.50 | 62.00 ± 0.71 |" in advent
    orderings = ms.orderings(results, "advent")
    assert orderings[0].endswith("2 of 2 seeds, mean +1.00 (holds on every seed)")
    asn = ms.ablation_table(results, "adaptsegnet")
    assert "| Ours (IntraDA on AdaptSegNet) | – | 61.50 ± 0.71 |" in asn
    rounds = ms.rounds_table(results)
    assert "| 2 | 63.50 ± 0.71 | 43.33 ± 0.00 | 91.00 ± 0.00 | 63.00 | 64.00 |" in rounds
    picks, final = ms.selection_tables(results)
    assert "| inter | entropy | -2.00 ± 0.00 | -2.00 ± 0.00 | 50, 50 |" in picks
    # entropy's pick was rerun; infomax picked the last snapshot: the main run.
    assert "| entropy | 62.40 ± 0.71 | 61.90 | 62.90 |" in final
    assert "| infomax | 62.50 ± 0.71 | 62.00 | 63.00 |" in final
    # With the default's `inter.select: infomax` main ranked with infomax's pick, and the
    # last snapshot was the rerun: each row still reads the run that ranked its way.
    for offset, r in results.items():
        r["select_last"] = run(intra=61.0 + offset)
        r.pop("select_entropy")
    final = ms.selection_tables(results)[1]
    assert "| last | 61.50 ± 0.71 | 61.00 | 62.00 |" in final
    assert "| infomax | 62.50 ± 0.71 | 62.00 | 63.00 |" in final
    # Which rules the selection phase runs again: those whose inter snapshot main did not
    # keep, whatever the default's rule.
    record = {"last_iteration": 400, "picks": {"entropy": {"iteration": 400},
              "infomax": {"iteration": 300}, "snd": {"iteration": 400}}}  # fmt: skip
    assert ms.other_selections({**record, "selected_iteration": 400}) == ["infomax"]
    assert ms.other_selections({**record, "selected_iteration": 300}) == ["last", "entropy", "snd"]
    spread = ms.spread_table(results, {1: results[1]["main"]})
    assert "| intra - inter | 2.00 ± 0.00 | 2.00 ± 0.00 |" in spread
    assert "+2.00 ± 0.10" in ms.noise_table(results)
