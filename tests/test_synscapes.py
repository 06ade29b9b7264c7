"""Synscapes as a source: its layout read in place, its Cityscapes label ids mapped to the
19 train ids, the validation pass, and the whole DAG with AdvEnt (in-process)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from intrada.checkpoint import load_model
from intrada.classes import CITYSCAPES_ID, dataset_classes
from intrada.errors import IntradaError
from intrada.io import read_label
from intrada.layouts import check_pairs, index_source, index_synscapes
from tests.conftest import tiny_params
from tests.pipeline import run_pipeline
from tests.real_layouts import (
    CITYSCAPES_IDS,
    cityscapes_target,
    id_pattern,
    save,
    write_cityscapes,
    write_synscapes,
)


def test_synscapes_index_pairs_rgb_with_class_in_numeric_order(tmp_path):
    root = write_synscapes(tmp_path / "Synscapes", count=11, size=(48, 24))
    table = index_synscapes(root)
    assert table["image_id"].tolist() == [str(n) for n in range(1, 12)]  # 2 before 10
    assert table["image_path"][9] == (root / "img/rgb/10.png").as_posix()
    assert table["label_path"][9] == (root / "img/class/10.png").as_posix()
    assert set(table["label_encoding"]) == {CITYSCAPES_ID}
    assert index_source("synscapes", root).equals(table)
    ids = id_pattern(list(CITYSCAPES_IDS), 48, 24, shift=10)
    expected = np.vectorize(CITYSCAPES_IDS.get)(ids).astype(np.uint8)
    assert np.array_equal(read_label(table["label_path"][9], CITYSCAPES_ID), expected)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_class_dir", r"Synscapes: no img/class/ folder; expected the Synscapes layout"),
        ("missing_label", r"img/rgb/2.png: image without its label; expected .*img/class/2.png"),
        ("bad_value", r"img/class/3.png: label value 34 is out of range for cityscapes_id"),
    ],
)
def test_bad_synscapes_trees_fail_in_one_line(tmp_path, damage, message):
    root = write_synscapes(tmp_path / "Synscapes", count=3, size=(48, 24))
    if damage == "no_class_dir":
        for path in (root / "img/class").iterdir():
            path.unlink()
        (root / "img/class").rmdir()
    elif damage == "missing_label":
        (root / "img/class/2.png").unlink()
    else:
        save(root / "img/class/3.png", np.full((24, 48), 34, np.uint8))
    with pytest.raises(IntradaError, match=message) as info:
        check_pairs(index_synscapes(root), decode=False)
    assert "\n" not in str(info.value)


def test_the_dag_runs_on_synscapes_with_advent(tmp_path):
    datasets = tmp_path / "datasets"
    write_synscapes(datasets / "Synscapes", count=6, size=(96, 48))
    write_cityscapes(datasets / "cityscapes", {"train": 6, "val": 2}, size=(96, 48))
    params = tiny_params()
    params["data"].update(
        name="synscapes",
        source_root=str(datasets / "Synscapes"),
        **cityscapes_target(datasets / "cityscapes"),
        verify="header",
    )
    params["generate"] = {}
    assert params["inter"]["method"] == params["intra"]["method"] == "advent"
    run_pipeline(tmp_path / "project", params)
    project = tmp_path / "project"
    source = pd.read_parquet(project / "data/index/source.parquet")
    assert source["image_path"][0] == (datasets / "Synscapes/img/rgb/1.png").as_posix()
    _, meta = load_model(project / "models/intra/model.pt", dataset_classes("synscapes"))
    assert meta["params"]["intra"]["method"] == "advent" and len(meta["class_names"]) == 19
    report = json.loads((project / "metrics/eval.json").read_text())
    assert len(report["intra"]["IoU"]) == 19 and report["intra"]["mIoU"] is not None
