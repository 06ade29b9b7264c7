"""Real dataset layouts on fixture trees: indexing, id mapping, resizing, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from intrada.classes import (
    CITYSCAPES_ID,
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


def test_decoding_pass_finds_a_truncated_file_the_header_pass_misses(tmp_path):
    table = index_gta5(write_gta5(tmp_path / "GTA5"))
    path = tmp_path / "GTA5/images/00001.png"
    save(path, rgb(96, 48, seed=0))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    check_pairs(table, decode=False)  # the header is intact
    with pytest.raises(IntradaError, match=r"images/00001.png: unreadable image"):
        check_pairs(table, decode=True)


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


def test_decoding_pass_finds_out_of_range_label_values(tmp_path):
    table = index_gta5(write_gta5(tmp_path / "GTA5"))
    label = np.full((48, 96), 200, np.uint8)
    save(tmp_path / "GTA5/labels/00002.png", label)
    check_pairs(table, decode=False)  # headers cannot tell
    with pytest.raises(IntradaError, match=r"labels/00002.png: label value 200 is out of range"):
        check_pairs(table, decode=True)


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
