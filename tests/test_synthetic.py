import hashlib

import numpy as np
import pandas as pd

from intrada.classes import dataset_classes
from intrada.config import DataParams
from intrada.synthetic import generate_image, write_benchmark


def test_same_seed_gives_identical_images_and_another_seed_differs():
    a = generate_image(0, "target_train", 3, 32, 64)
    b = generate_image(0, "target_train", 3, 32, 64)
    c = generate_image(1, "target_train", 3, 32, 64)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2], strict=True))
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_labels_are_cityscapes_train_ids_of_the_benchmark_classes():
    allowed = set(dataset_classes("synthetic").train_ids) | {255}
    seen = set()
    for i in range(20):
        image, label, _ = generate_image(0, "source", i, 64, 128)
        assert image.shape == (64, 128, 3) and image.dtype == np.uint8
        assert label.shape == (64, 128) and label.dtype == np.uint8
        seen |= set(np.unique(label).tolist())
    assert seen <= allowed
    assert len(seen & set(dataset_classes("synthetic").train_ids)) >= 6


def test_source_and_target_look_different_and_target_severity_spreads():
    severities = [generate_image(0, "target_train", i, 32, 64)[2] for i in range(60)]
    assert min(severities) < 0.2 and max(severities) > 0.8  # easy and hard images
    assert generate_image(0, "source", 0, 32, 64)[2] == 0.0
    # Same layout stream, other look: the source is more saturated on average.
    sat = []
    for set_name in ("source", "target_train"):
        images = np.stack([generate_image(0, set_name, i, 32, 64)[0] for i in range(20)])
        sat.append(float((images.max(-1).astype(int) - images.min(-1)).mean()))
    assert sat[0] > sat[1] + 10


def test_write_benchmark_writes_files_and_index_tables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = DataParams(
        name="synthetic",
        height=32,
        width=64,
        num_source=3,
        num_target_train=4,
        num_target_val=2,
        severity_alpha=1.0,
        severity_beta=1.0,
    )
    from pathlib import Path

    dirs = [Path("data") / d for d in ("source", "target_train", "target_train_gt", "target_val")]
    write_benchmark(7, data, *dirs)
    source = pd.read_parquet("data/source/index.parquet")
    train = pd.read_parquet("data/target_train/index.parquet")
    gt = pd.read_parquet("data/target_train_gt/index.parquet")
    val = pd.read_parquet("data/target_val/index.parquet")
    assert list(source.columns) == ["image_id", "image_path", "label_path"]
    assert list(train.columns) == ["image_id", "image_path"]  # no labels beside training data
    assert list(gt.columns) == ["image_id", "label_path", "severity"]
    assert list(val.columns) == ["image_id", "image_path", "label_path", "severity"]
    assert (len(source), len(train), len(gt), len(val)) == (3, 4, 4, 2)
    assert all(gt["label_path"].str.startswith("data/target_train_gt/labels/"))
    for table in (source, train, val):
        assert all(Path(p).is_file() for p in table["image_path"])
    assert not list(Path("data").glob("**/*.tmp"))  # no temporary leftovers

    digest = hashlib.sha256(Path(train["image_path"][0]).read_bytes()).hexdigest()
    write_benchmark(7, data, *dirs)  # rewrite: byte-identical files
    assert hashlib.sha256(Path(train["image_path"][0]).read_bytes()).hexdigest() == digest
