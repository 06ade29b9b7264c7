"""Several intra rounds: the stages `python -m intrada.rounds` writes into dvc.yaml, the
check that params and dvc.yaml agree, and a tiny two-round DAG run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from intrada.config import ParamsError
from intrada.dag import copy_pipeline, resolved_stages, stage_outputs
from intrada.rounds import rounds_in, with_rounds
from stages.check_params import check_rounds
from tests.conftest import REPO, tiny_params
from tests.pipeline import run_pipeline

DVC_YAML = (REPO / "dvc.yaml").read_text()


def stages_of(text: str, tmp_path, params: dict) -> dict[str, dict]:
    path = tmp_path / "dvc.yaml"
    path.write_text(text)
    return resolved_stages(path, params)


def test_one_round_is_the_dag_as_it_is_and_rounds_come_and_go(tmp_path):
    assert rounds_in(DVC_YAML) == 1
    assert with_rounds(DVC_YAML, 1) == DVC_YAML
    three = with_rounds(DVC_YAML, 3)
    assert rounds_in(three) == 3
    assert with_rounds(three, 1) == DVC_YAML  # and back, byte for byte
    assert with_rounds(with_rounds(three, 2), 3) == three


def test_round_k_ranks_with_round_k_minus_1_and_writes_its_own_outputs(tmp_path):
    params = tiny_params()
    params["intra"]["rounds"] = 3
    stages = stages_of(with_rounds(DVC_YAML, 3), tmp_path, params)
    later = [name for name in stages if "_round_" in name]
    assert later == [f"{s}_round_{k}" for k in (2, 3) for s in (
        "score_entropy", "rank_splits", "pseudo_labels", "train_intra", "evaluate"
    )]  # fmt: skip
    # Round 2 ranks and pseudo-labels with round 1's intra model, round 3 with round 2's.
    assert "--model models/intra/model.pt" in stages["score_entropy_round_2"]["cmd"]
    assert "--model models/round_2/model.pt" in stages["pseudo_labels_round_3"]["cmd"]
    intra3 = stages["train_intra_round_3"]
    assert "--inter-model models/round_2/model.pt" in intra3["cmd"]
    assert "--model-out models/round_3/model.pt" in intra3["cmd"]
    assert intra3["cmd"].endswith("--round 3")
    assert "data/rounds/round_3/pseudo_labels" in intra3["deps"]
    assert "models/round_2/model.pt" in intra3["deps"]
    evaluate2 = stages["evaluate_round_2"]["cmd"]
    assert "--model intra=models/intra/model.pt --model round_2=models/round_2/model.pt" in (
        evaluate2
    )
    assert "--metrics metrics/rounds/round_2.json" in evaluate2
    # No two stages write the same path; each round's outputs live in its own folders.
    outputs = [out for stage in stages.values() for out in stage_outputs(stage)]
    assert len(outputs) == len(set(outputs))
    assert all("round_2" in out for out in stage_outputs(stages["train_intra_round_2"]))


def test_params_and_dvc_yaml_must_agree_on_the_rounds(tmp_path):
    path = tmp_path / "dvc.yaml"
    path.write_text(DVC_YAML)
    check_rounds(1, path)
    with pytest.raises(ParamsError, match=r"intra.rounds = 2 but .* stages of 1 round\(s\): run "):
        check_rounds(2, path)


def test_the_rounds_command_writes_params_and_dvc_yaml(tmp_path):
    copy_pipeline(REPO, tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    run = [sys.executable, "-m", "intrada.rounds"]
    done = subprocess.run([*run, "2"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "stages of 2 round(s) (was 1)" in done.stdout
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["intra"]["rounds"] == 2
    assert (tmp_path / "params.yaml").read_text().count("# rounds of rank") == 1  # comments kept
    assert rounds_in((tmp_path / "dvc.yaml").read_text()) == 2
    subprocess.run([*run, "1"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "dvc.yaml").read_text() == DVC_YAML


@pytest.mark.slow
def test_a_two_round_dag_runs_and_round_2_adapts_from_round_1(tmp_path):
    params = tiny_params()
    params["intra"]["rounds"] = 2
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(with_rounds(DVC_YAML, 2))
    run_pipeline(tmp_path / "run", params, dvc_yaml=dvc_yaml)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics/rounds/round_2.json").read_text())
    assert list(metrics)[:2] == ["intra", "round_2"] and "diagnostics" in metrics
    first = json.loads((run / "metrics/eval.json").read_text())
    assert metrics["intra"]["mIoU"] == first["intra"]["mIoU"]  # the same model, measured again
    model = torch.load(run / "models/round_2/model.pt", weights_only=True)
    assert model["meta"]["init_from"]["path"] == "models/intra/model.pt"
    easy1 = (run / "data/splits/easy.parquet").read_bytes()
    assert (run / "data/rounds/round_2/splits/easy.parquet").read_bytes() != easy1
