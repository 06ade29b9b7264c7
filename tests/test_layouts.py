"""Real dataset layouts on fixture trees: indexing, id mapping, resizing, validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from intrada.classes import (
    CITYSCAPES_ID,
    CITYSCAPES_LABELS,
    SYNTHIA_ID,
    dataset_classes,
    evaluation_subsets,
    label_lut,
)
from intrada.data import SegmentationSet
from intrada.errors import IntradaError
from intrada.evaluation import iou_report
from intrada.io import read_label
from intrada.layouts import check_pairs, index_cityscapes, index_gta5, index_source, index_synthia
from tests.conftest import REPO
from tests.real_layouts import (
    CITYSCAPES_IDS,
    SYNTHIA_IDS,
    id_pattern,
    rgb,
    save,
    write_cityscapes,
    write_gta5,
    write_synthia,
)


def expected_train_ids(table: dict[int, int], width: int, height: int, shift: int) -> np.ndarray:
    ids = id_pattern(list(table), width, height, shift)
    return np.vectorize(table.get)(ids).astype(np.uint8)


def test_gta5_index_pairs_images_with_labels_and_maps_ids(tmp_path):
    root = write_gta5(tmp_path / "GTA5")
    table = index_gta5(root)
    assert list(table.columns) == ["image_id", "image_path", "label_path", "label_encoding"]
    assert table["image_id"].tolist() == ["00001", "00002", "00003"]
    assert table["image_path"][1] == (root / "images/00002.png").as_posix()
    assert table["label_path"][1] == (root / "labels/00002.png").as_posix()
    assert set(table["label_encoding"]) == {CITYSCAPES_ID}
    train_ids = read_label(table["label_path"][1], CITYSCAPES_ID)
    assert np.array_equal(train_ids, expected_train_ids(CITYSCAPES_IDS, 96, 48, shift=1))


def test_cityscapes_id_table_comes_from_torchvision():
    lut = label_lut(CITYSCAPES_ID)
    # Spot checks against the published table; everything without a train id is 255.
    assert [lut[i] for i in (7, 8, 11, 24, 26, 33)] == [0, 1, 2, 11, 13, 18]
    assert [lut[i] for i in (0, 1, 6, 9, 29, 30)] == [255] * 6
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))


def test_the_cityscapes_table_is_torchvisions_and_stages_start_without_it():
    from torchvision.datasets import Cityscapes

    assert (
        tuple((c.name, c.id, c.train_id, tuple(c.color)) for c in Cityscapes.classes)
        == CITYSCAPES_LABELS
    )
    # A stage that needs the table but no DeepLab-v2 starts without torchvision, whose
    # import pulls in torch._dynamo: seconds at the start of every stage.
    code = (
        "import sys, stages.evaluate; from intrada.classes import dataset_classes, label_lut; "
        f"dataset_classes('gta5'), label_lut({CITYSCAPES_ID!r}); "
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"


def test_synthia_first_channel_of_16_bit_labels_maps_to_16_classes(tmp_path):
    root = write_synthia(tmp_path / "SYNTHIA")
    table = index_synthia(root)
    assert table["image_id"].tolist() == ["0000000", "0000001"]
    assert table["label_path"][0] == (root / "GT/LABELS/0000000.png").as_posix()
    assert set(table["label_encoding"]) == {SYNTHIA_ID}
    train_ids = read_label(table["label_path"][1], SYNTHIA_ID)
    assert np.array_equal(train_ids, expected_train_ids(SYNTHIA_IDS, 96, 48, shift=1))
    classes = dataset_classes("synthia")
    assert len(classes) == 16
    assert not {"terrain", "truck", "train"} & set(classes.names)
    assert index_source("synthia", root).equals(table)


def test_synthia_reports_a_13_class_miou_without_wall_fence_and_pole():
    classes = dataset_classes("synthia")
    (subset,) = evaluation_subsets("synthia").values()
    assert len(subset) == 13 and not {"wall", "fence", "pole"} & set(subset)
    cm = np.eye(16, dtype=np.int64) * 10
    # wall -> fence -> pole -> wall: IoU 0 for those three, 1 for the 13 others.
    cycle = [classes.names.index(n) for n in ("wall", "fence", "pole")]
    for k, wrong in zip(cycle, cycle[1:] + cycle[:1], strict=True):
        cm[k, k], cm[k, wrong] = 0, 10
    report = iou_report(cm, classes, evaluation_subsets("synthia"))
    assert report["mIoU_13"] == 100.0
    assert report["mIoU"] == pytest.approx(100 * 13 / 16, abs=0.01)


def test_cityscapes_index_reads_every_city_of_a_split(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes")
    train, val = index_cityscapes(root, "train"), index_cityscapes(root, "val")
    assert len(train) == 4 and len(val) == 2
    assert train["image_id"].tolist()[:2] == ["aachen_000000_000019", "aachen_000002_000019"]
    assert (
        val["label_path"][0]
        == (root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png").as_posix()
    )


def test_resizing_images_bicubic_and_labels_nearest(tmp_path):
    root = write_gta5(tmp_path / "GTA5", count=1, size=(96, 48))
    table = index_gta5(root)
    classes = dataset_classes("gta5")
    sample = SegmentationSet(table, classes, tmp_path, labelled=True, size=(48, 24))[(0, False)]
    assert sample["image"].shape == (3, 24, 48)
    full = expected_train_ids(CITYSCAPES_IDS, 96, 48, shift=0)
    # Nearest neighbour at pixel centres: columns 1, 3, 5... of the full label, no blends.
    assert torch.equal(sample["label"][0], torch.from_numpy(full[0, 1::2].astype(np.int64)))
    kept = SegmentationSet(
        table, classes, tmp_path, labelled=True, size=(48, 24), resize_labels=False
    )[(0, False)]
    assert kept["image"].shape == (3, 24, 48) and kept["label"].shape == (48, 96)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_root", r"GTA5: dataset root not found; expected a folder in the GTA5 layout"),
        ("no_labels_dir", r"GTA5: no labels/ folder; expected the GTA5 layout"),
        ("no_images", r"GTA5: no images found; expected the GTA5 layout"),
        ("missing_label", r"images/00002.png: image without its label; expected .*labels/00002"),
    ],
)
def test_bad_trees_fail_at_indexing_with_one_line(tmp_path, damage, message):
    root = tmp_path / "GTA5"
    if damage != "no_root":
        write_gta5(root)
    if damage == "no_labels_dir":
        for path in (root / "labels").iterdir():
            path.unlink()
        (root / "labels").rmdir()
    elif damage == "no_images":
        for path in (root / "images").iterdir():
            path.unlink()
    elif damage == "missing_label":
        (root / "labels/00002.png").unlink()
    with pytest.raises(IntradaError, match=message) as info:
        index_gta5(root)
    assert "\n" not in str(info.value)


def test_cityscapes_in_the_wrong_layout_is_named(tmp_path):
    write_gta5(tmp_path / "cityscapes")  # a GTA5 tree where Cityscapes was expected
    with pytest.raises(
        IntradaError, match=r"no leftImg8bit/train/ folder; expected the Cityscapes"
    ):
        index_cityscapes(tmp_path / "cityscapes", "train")


@pytest.mark.parametrize("decode", [False, True])
def test_validation_pass_names_a_label_of_another_size(tmp_path, decode):
    table = index_gta5(write_gta5(tmp_path / "GTA5"))
    save(tmp_path / "GTA5/labels/00003.png", np.zeros((40, 96), np.uint8))
    with pytest.raises(
        IntradaError, match=r"labels/00003.png: label is 96x40 but its image .* 96x48"
    ):
        check_pairs(table, decode)
    kept, mismatched = check_pairs(table, decode, size_mismatch="drop")
    assert kept["image_id"].tolist() == ["00001", "00002"] and mismatched == 1
    kept, mismatched = check_pairs(table, decode, size_mismatch="resize")
    assert kept["image_id"].tolist() == ["00001", "00002", "00003"] and mismatched == 1


def test_validation_pass_names_a_corrupt_file(tmp_path):
    table = index_gta5(write_gta5(tmp_path / "GTA5"))
    (tmp_path / "GTA5/images/00002.png").write_bytes(b"not a png at all")
    with pytest.raises(IntradaError, match=r"images/00002.png: unreadable image") as info:
        check_pairs(table, decode=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize("damage", ["truncated", "bit_flip"])
def test_both_passes_find_a_truncated_or_corrupted_image(tmp_path, decode, damage):
    # The header pass checks every PNG chunk's checksum: an intact header is not enough.
    table = index_gta5(write_gta5(tmp_path / "GTA5"))
    path = tmp_path / "GTA5/images/00001.png"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntradaError, match=r"images/00001.png: unreadable image") as info:
        check_pairs(table, decode=decode)
    assert "\n" not in str(info.value)


def test_an_rgb_label_is_refused(tmp_path):
    table = index_gta5(write_gta5(tmp_path / "GTA5"))
    save(tmp_path / "GTA5/labels/00001.png", rgb(96, 48, seed=1))
    with pytest.raises(IntradaError, match=r"labels/00001.png: label mode RGB; expected 8-bit"):
        check_pairs(table, decode=False)


@pytest.mark.parametrize(
    ("encoding", "value", "message"),
    [
        (
            CITYSCAPES_ID,
            34,
            r"label value 34 is out of range for cityscapes_id labels; expected 0-33",
        ),
        (
            "train_id",
            19,
            r"label value 19 is out of range for train_id labels; expected 0-18 or 255",
        ),
    ],
)
def test_label_values_out_of_range_are_refused(tmp_path, encoding, value, message):
    label = np.zeros((4, 6), np.uint8)
    label[1, 2] = value
    path = save(tmp_path / "label.png", label)
    with pytest.raises(IntradaError, match=message) as info:
        read_label(path, encoding)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    label[1, 2] = 255 if encoding == "train_id" else 33
    save(path, label)
    read_label(path, encoding)  # the top of the range is fine


def test_synthia_ids_out_of_range_are_refused(tmp_path):
    from tests.real_layouts import write_synthia_label

    path = write_synthia_label(tmp_path / "0000000.png", np.full((4, 6), 23, np.uint16))
    with pytest.raises(IntradaError, match=r"label value 23 is out of range for synthia_id"):
        read_label(path, SYNTHIA_ID)


@pytest.mark.parametrize("decode", [False, True])
def test_both_passes_decode_labels_and_find_out_of_range_values(tmp_path, decode):
    table = index_gta5(write_gta5(tmp_path / "GTA5"))
    label = np.full((48, 96), 200, np.uint8)
    save(tmp_path / "GTA5/labels/00002.png", label)
    with pytest.raises(IntradaError, match=r"labels/00002.png: label value 200 is out of range"):
        check_pairs(table, decode=decode)


def test_processes_find_the_first_bad_file_in_table_order(tmp_path):
    table = index_gta5(write_gta5(tmp_path / "GTA5", count=20, size=(32, 16)))
    for name in ("00007.png", "00015.png"):
        save(tmp_path / "GTA5/labels" / name, np.full((16, 32), 40, np.uint8))
    with pytest.raises(IntradaError, match=r"labels/00007.png: label value 40"):
        check_pairs(table, decode=False, workers=2)
    save(tmp_path / "GTA5/labels/00007.png", np.zeros((8, 32), np.uint8))
    save(tmp_path / "GTA5/labels/00015.png", np.zeros((16, 32), np.uint8))
    kept, mismatched = check_pairs(table, decode=False, size_mismatch="drop", workers=2)
    assert mismatched == 1 and "00007" not in kept["image_id"].tolist() and len(kept) == 19


def test_resized_pairs_of_mismatched_sizes_train_at_the_source_size(tmp_path):
    # size_mismatch: resize keeps the pair; image (bicubic) and label (nearest) are each
    # resized to the training size, as the released code does with GTA5.
    table = index_gta5(write_gta5(tmp_path / "GTA5"))
    save(tmp_path / "GTA5/labels/00003.png", np.zeros((40, 96), np.uint8))
    kept, mismatched = check_pairs(table, decode=True, size_mismatch="resize")
    assert mismatched == 1
    dataset = SegmentationSet(kept, dataset_classes("gta5"), Path("."), True, size=(64, 32))
    sample = dataset[(2, False)]
    assert sample["image"].shape == (3, 32, 64) and sample["label"].shape == (32, 64)


# --- index_data with a profile's settings ----------------------------------------------


def profile_project(tmp_path: Path, profile: str = "gta5_cityscapes") -> tuple[Path, dict]:
    """A project folder whose params are the profile's (verify: header, size_mismatch:
    resize, 4 processes reading), pointed at small fixture trees in the real layouts."""
    import yaml

    from tests.conftest import write_params

    params = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
    trees = tmp_path / "trees"
    write_gta5(trees / "GTA5", count=4)
    write_cityscapes(trees / "cityscapes", {"train": 3, "val": 2}, size=(96, 48))
    params["data"].update(source_root=str(trees / "GTA5"), target_root=str(trees / "cityscapes"))
    params["compute"]["device"] = "cpu"  # the profiles insist on CUDA
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, params)
    return project, params


def cityscapes_file(root: Path, split: str, kind: str) -> Path:
    suffix = "_leftImg8bit.png" if kind == "image" else "_gtFine_labelIds.png"
    folder = "leftImg8bit" if kind == "image" else "gtFine"
    return sorted((root / folder / split).rglob(f"*{suffix}"))[-1]


@pytest.mark.parametrize("where", ["source", "train", "val"])
@pytest.mark.parametrize("kind", ["image", "label"])
def test_index_data_stops_on_a_bad_file_anywhere_with_one_line(tmp_path, where, kind):
    # With the profile's settings: an unreadable (truncated) image, or a label value
    # outside its encoding, in any of the three sets.
    from tests.pipeline import run_stage

    project, params = profile_project(tmp_path)
    trees = Path(params["data"]["source_root"]).parent
    if where == "source":
        bad = trees / "GTA5" / ("images" if kind == "image" else "labels") / "00003.png"
    else:
        bad = cityscapes_file(trees / "cityscapes", where, kind)
    if kind == "image":
        bad.write_bytes(bad.read_bytes()[:-40])  # the header intact, the end cut off
        expected = "unreadable image"
    else:
        label = np.array(Image.open(bad))
        label[2, 3] = 34  # Cityscapes label ids run 0-33
        save(bad, label)
        expected = "label value 34 is out of range for cityscapes_id labels"
    with pytest.raises(IntradaError) as info:
        run_stage("index_data", project)
    message = str(info.value)
    assert message.startswith(f"{bad}: {expected}") and "\n" not in message
    assert not (project / "data/index").exists()


@pytest.mark.parametrize("policy, kept", [("stop", None), ("drop", 3), ("resize", 4)])
def test_index_data_counts_size_mismatches_under_each_policy(tmp_path, caplog, policy, kept):
    import logging

    from tests.conftest import write_params
    from tests.pipeline import run_stage

    project, params = profile_project(tmp_path)
    label = Path(params["data"]["source_root"]) / "labels/00002.png"
    save(label, np.zeros((40, 96), np.uint8))
    params["data"]["size_mismatch"] = policy
    params["compute"]["num_workers"] = 0  # the policy, not the processes, is tested here
    write_params(project, params)
    if policy == "stop":
        with pytest.raises(IntradaError, match=r"labels/00002.png: label is 96x40 but its image"):
            run_stage("index_data", project)
        return
    with caplog.at_level(logging.INFO, logger="index_data"):
        run_stage("index_data", project)
    assert (
        f"1 source pairs whose label size differs from the image (data.size_mismatch: {policy})"
        in (caplog.text)
    )
    assert len(pd.read_parquet(project / "data/index/source.parquet")) == kept
