import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from intrada import synthetic
from intrada.classes import dataset_classes
from intrada.config import SyntheticParams
from intrada.io import read_label, read_label_png, read_rgb
from intrada.layouts import index_cityscapes, index_gta5
from intrada.synthetic import generate_image, write_benchmark
from tests.pipeline import dvc_stages


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


def test_write_benchmark_writes_the_real_layouts_that_index_back(tmp_path):
    params = SyntheticParams(
        draw=7,
        height=32,
        width=64,
        num_source=3,
        num_target_train=4,
        num_target_val=2,
        severity_alpha=1.0,
        severity_beta=1.0,
    )
    out = tmp_path / "synthetic"
    write_benchmark(params.draw, params, out)
    source = index_gta5(out / "source")
    train, val = (index_cityscapes(out / "target", split) for split in ("train", "val"))
    assert (len(source), len(train), len(val)) == (3, 4, 2)
    assert source["image_id"].tolist() == ["000000", "000001", "000002"]
    assert train["image_id"][0] == "synth_000000_000000"
    # Stored as Cityscapes label ids; read back, the train ids generate_image drew.
    _, label, severity = generate_image(7, "target_val", 1, 32, 64)
    assert np.array_equal(read_label(val["label_path"][1], val["label_encoding"][1]), label)
    assert np.array_equal(
        read_rgb(val["image_path"][1]), generate_image(7, "target_val", 1, 32, 64)[0]
    )
    stored = read_label_png(val["label_path"][1])
    assert set(np.unique(stored)) - {0} <= {
        7,
        8,
        11,
        17,
        21,
        23,
        24,
        26,
    }  # label ids, not train ids
    severities = pd.read_parquet(out / "severity.parquet")
    assert len(severities) == 9 and severities["severity"].iloc[-1] == severity
    assert not list(tmp_path.glob("**/*.tmp"))  # no temporary leftovers

    digest = hashlib.sha256(Path(train["image_path"][0]).read_bytes()).hexdigest()
    write_benchmark(7, params, out)  # rewrite: byte-identical files
    assert hashlib.sha256(Path(train["image_path"][0]).read_bytes()).hexdigest() == digest


def test_processes_write_the_same_files_as_one(tmp_path, monkeypatch):
    """generate_data draws in one process per core: the files must not depend on it."""
    params = SyntheticParams(
        draw=3,
        height=32,
        width=64,
        num_source=5,
        num_target_train=4,
        num_target_val=3,
        severity_alpha=1.0,
        severity_beta=1.0,
    )
    monkeypatch.setattr(synthetic, "IMAGES_PER_JOB", 2)  # several jobs per set
    write_benchmark(params.draw, params, tmp_path / "one")
    write_benchmark(params.draw, params, tmp_path / "two", workers=2)
    one, two = (
        {
            p.relative_to(tmp_path / d).as_posix(): p.read_bytes()
            for p in (tmp_path / d).rglob("*")
            if p.is_file()
        }
        for d in ("one", "two")
    )
    assert len(one) == 2 * (5 + 4 + 3) + 1 and one == two


def test_the_draw_alone_decides_the_benchmark():
    """`generate.synthetic.draw` seeds the benchmark; training's `seed` is no input of
    generate_data, so a training seed can vary on one fixed benchmark."""
    (stage,) = [s for name, s in dvc_stages().items() if name.startswith("generate_data")]
    assert stage["params"] == ["generate.synthetic"]
    assert "--name synthetic" in stage["cmd"]
