"""The smoke run's code path at sizes / 16 (`python -m benchmarks.smoke --tiny`): the
GTA5 profile's DeepLab-v2 through `dvc repro`, then a released-layout inter model with
`inter.iterations: 0` in the same project."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from benchmarks.smoke import CITYSCAPES_TRAIN, report, run_smoke
from intrada.artifacts import read_member
from intrada.checkpoint import load_model
from tests.pipeline import dvc_stages
from tests.test_deeplabv2 import released_layout
from tests.test_dvc_pipeline import ran_stages, run

# DeepLab-v2 (ResNet-101) through every stage of dvc repro, then most of them again:
# minutes, so in `make test-long`.
pytestmark = [pytest.mark.slow, pytest.mark.long]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return run_smoke("gta5_cityscapes", tmp_path_factory.mktemp("smoke"), tiny=True)


def test_tiny_smoke_runs_the_profile_through_dvc_and_measures_it(smoke):
    params = smoke["params"]
    assert params["data"]["source_size"] == [80, 45] and params["data"]["target_size"] == [64, 32]
    assert params["model"]["name"] == "deeplabv2" and params["inter"]["batchnorm"] == "released"
    # Every stage ran through DVC (no generate stage: the datasets are trees on disk).
    assert list(smoke["stages"]) == list(dvc_stages(params))
    for name, measured in smoke["stages"].items():
        assert measured["returncode"] == 0, name
        assert 0 < measured["stage_seconds"] <= measured["seconds"], name
        assert measured["stage_peak_rss_bytes"] > 50 * 2**20, name  # a Python with torch
    # Both logged iterations of every loss, finite and moderate (the random ImageNet file
    # is conditioned): cross-entropy near ln(19) = 2.9 at the start.
    losses = smoke["losses"]
    assert set(losses) == {"source_only", "inter", "intra"}
    for stage, values in losses.items():
        for name, series in values.items():
            assert len(series) == 2 and all(np.isfinite(series)), (stage, name)
            assert max(series) < 20, (stage, name)
    assert 1.5 < losses["source_only"]["loss_seg_src_main"][0] < 6
    # Per image: the shard files' bytes over their images, at least the member's PNG
    # (read back through the reader API); entropy maps stored at half the 64x32 input.
    sizes = smoke["artifacts"]
    project = Path(smoke["project"])
    scores = pd.read_parquet(project / "data/entropy/scores.parquet")
    stored = read_member(project / scores["map_path"][0], scores["map_member"][0])
    assert Image.open(io.BytesIO(stored)).size == (32, 16)
    for name, files in (("entropy maps", 3), ("predictions", 3), ("pseudo-labels", 2)):
        assert sizes[name]["files"] == files, name  # pseudo-labels: int(3 * 0.67)
        assert sizes[name]["bytes_per_file"] >= sizes[name]["member_bytes"] > 0, name
    assert sizes["model file"]["files"] == sizes["training checkpoint"]["files"] == 3
    projected = {name: (n, size) for name, n, size in smoke["disk_projection"]}
    per_map = sizes["entropy maps"]["bytes_per_file"]
    assert projected["entropy maps"] == (CITYSCAPES_TRAIN, CITYSCAPES_TRAIN * per_map)
    text = report(smoke)
    for row in ("| train_inter |", "| entropy maps |", "index_data validation pass"):
        assert row in text
    json.dumps(smoke)  # the report's data is plain JSON


def test_a_released_inter_model_with_no_iterations_runs_rank_to_evaluate(smoke, tmp_path):
    """The inter stage takes a network saved in the released code's layout as it is; the
    rest of the DAG runs from it and measures exactly what the same weights measure when
    loaded as this pipeline's own model file."""
    project = Path(smoke["project"])
    before = json.loads((project / "metrics/eval.json").read_text())
    # The published networks are state dicts; here the source-only model's weights, so
    # that the inter stage's outcome is known: the source-only row of the first run.
    source_only, _ = load_model(project / "models/source_only/model.pt")
    released = tmp_path / "gta2cityscapes_advent.pth"
    torch.save(released_layout(source_only.state_dict()), released)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["inter"].update(init="file", init_file=str(released), iterations=0)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # As in a project where the inter stage never trained: its persisted checkpoint
    # folder, a declared output, does not exist yet.
    shutil.rmtree(project / "checkpoints/inter")

    result = run(["dvc", "repro"], project)
    assert ran_stages(result) == [
        "check_params",
        "train_inter",
        "score_entropy",
        "rank_splits",
        "pseudo_labels",
        "train_intra",
        "evaluate",
        "figures",
    ]
    inter, meta = load_model(project / "models/inter/model.pt")
    assert meta["init_from"]["stage"] == "released"
    assert meta["init_from"]["path"] == released.as_posix()
    assert meta["validation"]["curve"] == [] and meta["validation"]["last_iteration"] == 0
    expected = source_only.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in inter.state_dict().items())
    after = json.loads((project / "metrics/eval.json").read_text())
    assert after["inter"]["IoU"] == before["source_only"]["IoU"]
    assert after["inter"]["mIoU"] == before["source_only"]["mIoU"]
    assert after["source_only"] == before["source_only"]  # not re-run

    # Replacing the file re-runs the inter stage: it is a declared dependency.
    assert "train_inter" not in run(["dvc", "status"], project).stdout
    state = released_layout(expected)
    state["layer6.conv2d_list.0.bias"] = state["layer6.conv2d_list.0.bias"] + 1
    torch.save(state, released)
    assert "train_inter" in run(["dvc", "status"], project).stdout


def test_replacing_the_imagenet_file_in_place_reruns_the_training_stages(smoke):
    """model.pretrained is a dependency, not only a path param: new weights under the same
    name re-run every training stage (and, through them, the rest)."""
    project = Path(smoke["project"])
    weights = Path(smoke["params"]["model"]["pretrained"])
    training = ("train_source_only", "train_inter", "train_intra")
    before = run(["dvc", "status"], project).stdout  # the test before may leave train_inter
    assert "train_source_only:" not in before and "train_intra:" not in before, before
    state = torch.load(weights, weights_only=True)
    state["Scale.conv1.weight"] = state["Scale.conv1.weight"] * 1.01
    torch.save(state, weights)
    status = run(["dvc", "status"], project).stdout
    assert all(f"{name}:" in status for name in training), status
