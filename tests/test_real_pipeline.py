"""The whole DAG on a GTA5 -> Cityscapes fixture in the real layouts (tiny model)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from intrada.artifacts import read_pseudo_label
from intrada.checkpoint import load_model
from intrada.classes import dataset_classes
from tests.conftest import tiny_params
from tests.pipeline import dvc_stages, run_pipeline
from tests.real_layouts import cityscapes_target, write_cityscapes, write_gta5
from tests.test_dvc_pipeline import project_repo, ran_stages, run

pytestmark = pytest.mark.slow

SOURCE_SIZE, TARGET_SIZE, LABEL_SIZE = (96, 48), (128, 64), (128, 64)
MODELS = ("source_only", "inter", "intra")


def gta5_params(datasets) -> dict:
    params = tiny_params()
    params["data"].update(
        name="gta5",
        source_root=str(datasets / "GTA5"),
        **cityscapes_target(datasets / "cityscapes"),
        source_size=[64, 32],
        target_size=[64, 32],
        verify="header",
    )
    params["generate"] = {}
    return params


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_gta5(root / "GTA5", count=6, size=SOURCE_SIZE)
    write_cityscapes(root / "cityscapes", {"train": 6, "val": 2}, size=TARGET_SIZE)
    return root


def test_the_dag_runs_on_gta5_and_cityscapes_layouts(tmp_path, datasets):
    params = gta5_params(datasets)
    assert not any(name.startswith("generate_data") for name in dvc_stages(params))
    run_pipeline(tmp_path, params)

    source = pd.read_parquet(tmp_path / "data/index/source.parquet")
    assert source["image_path"][0] == (datasets / "GTA5/images/00001.png").as_posix()  # in place
    assert not (tmp_path / "data/synthetic").exists()
    classes = dataset_classes("gta5")
    _, meta = load_model(tmp_path / "models/intra/model.pt", classes)
    assert len(meta["class_names"]) == 19
    easy = pd.read_parquet(tmp_path / "data/splits/easy.parquet")
    assert len(easy) == 4  # int(6 * 0.67)
    pseudo = pd.read_parquet(tmp_path / "data/pseudo_labels/index.parquet")
    # Pseudo-labels at the network's input size, as train ids.
    label = read_pseudo_label(pseudo, pseudo["image_id"][0], tmp_path)
    assert label.shape == (32, 64)

    report = json.loads((tmp_path / "metrics/eval.json").read_text())
    assert len(report["intra"]["IoU"]) == 19
    # Evaluation at label resolution: every labelled pixel of the 128x64 val labels counts
    # (4 of the 7 fixture ids have a train id).
    cm = pd.read_csv(tmp_path / "metrics/confusion/intra.csv", index_col=0).to_numpy()
    val = pd.read_parquet(tmp_path / "data/index/target_val.parquet")
    labelled = sum(
        int(np.isin(np.array(Image.open(p)), [7, 11, 26, 33]).sum()) for p in val["label_path"]
    )
    assert cm.sum() == labelled
    assert report["diagnostics"]["pseudo_label_coverage"] == 100.0
    # The heat-map tables name the 19 classes in Cityscapes' order; the gallery is drawn.
    cells = pd.read_csv(tmp_path / "plots/confusion/intra.csv")
    assert len(cells) == 19 * 19
    assert cells["truth"].drop_duplicates().tolist() == list(classes.names)
    k = params["figures"]["gallery_k"]
    assert len(list((tmp_path / "plots/gallery").glob("*.png"))) == 2 * min(k, 6) + 1


@pytest.mark.long  # a whole GTA5-layout repro, then edits and re-runs (~50 s): make test-long
def test_dvc_repro_tracks_the_raw_trees_in_place(tmp_path, datasets):
    trees = tmp_path / "datasets"
    shutil.copytree(datasets, trees)
    params = gta5_params(trees)
    root = project_repo(tmp_path / "repo", params)
    first = run(["dvc", "repro"], root)
    assert ran_stages(first) == list(dvc_stages(params))
    lock = (root / "dvc.lock").read_text()
    assert str(trees / "GTA5") in lock and str(trees / "cityscapes") in lock

    # An edited val label re-runs indexing (unchanged: paths only), the training stages
    # (they validate on target-val: their model files record the curve) and what reads
    # their model files, and evaluation. Validation does not change the weights, so the
    # scores and splits stay as they were: rank_splits is skipped.
    weights = {s: load_model(root / f"models/{s}/model.pt")[0].state_dict() for s in MODELS}
    label = next((trees / "cityscapes/gtFine/val").rglob("*_labelIds.png"))
    array = np.array(Image.open(label))
    array[0, 0] = 7 if array[0, 0] != 7 else 8
    Image.fromarray(array).save(label)
    assert ran_stages(run(["dvc", "repro"], root)) == [
        "index_data",
        "train_source_only",
        "train_inter",
        "score_entropy",
        "pseudo_labels",
        "train_intra",
        "evaluate",
        "figures",
    ]
    for stage, before in weights.items():
        after = load_model(root / f"models/{stage}/model.pt")[0].state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items()), stage
