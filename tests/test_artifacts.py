"""Shards of per-image maps: layout, byte-identical files for any process count, the
reader API (both layouts), and shards opened once per process."""

from __future__ import annotations

import io
import os
import zipfile
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import intrada.artifacts as artifacts
from intrada.artifacts import (
    EntropyShards,
    LabelShards,
    ShardWriter,
    encode_png,
    owned_positions,
    read_entropy_map,
    read_label_member,
    read_map_member,
    read_prediction,
    read_pseudo_label,
)
from intrada.classes import dataset_classes
from intrada.data import SegmentationSet, in_order, loader
from intrada.errors import IntradaError
from intrada.io import write_label_png

IDS = [f"img_{i}" for i in range(5)]


def random_maps(count: int = 5, size=(6, 10), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *size), dtype=np.float32)


def write_maps(directory, maps, shard_size=2, positions=None, downsample=1):
    shards = EntropyShards(directory, directory, shard_size, downsample)
    for p in range(len(maps)) if positions is None else positions:
        shards.add(p, IDS[p], maps[p])
    shards.close()
    return shards


def test_shards_hold_n_images_each_in_table_order(tmp_path):
    shards = write_maps(tmp_path, random_maps())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-00000.zip",
        "shard-00001.zip",
        "shard-00002.zip",
    ]
    with zipfile.ZipFile(tmp_path / "shard-00001.zip") as shard:
        assert shard.namelist() == ["img_2.png", "img_3.png"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in shard.infolist())
    columns = shards.columns(IDS)
    assert columns["map_path"][4] == (tmp_path / "shard-00002.zip").as_posix()
    assert columns["map_member"] == [f"{i}.png" for i in IDS]


def test_entropy_maps_read_back_within_half_a_level(tmp_path):
    maps = random_maps()
    maps[0, 0, :3] = [0.0, 1.0, 0.5]
    shards = write_maps(tmp_path, maps)
    table = pd.DataFrame({"image_id": IDS, **shards.columns(IDS)})
    for i, image_id in enumerate(IDS):
        back = read_entropy_map(table, image_id)
        assert back.dtype == np.float32 and back.shape == (6, 10)
        assert np.abs(back - maps[i]).max() <= 0.5 / 255 + 1e-6
    assert read_entropy_map(table, IDS[0])[0, :3].tolist() == [0.0, 1.0, np.float32(128 / 255)]
    # The member is a viewable 8-bit greyscale PNG.
    with zipfile.ZipFile(tmp_path / "shard-00000.zip") as shard:
        image = Image.open(io.BytesIO(shard.read("img_0.png")))
        assert image.mode == "L" and image.size == (10, 6)


def test_reduced_maps_are_upsampled_to_their_full_size(tmp_path):
    maps = np.zeros((1, 6, 10), np.float32)
    maps[0, :, 5:] = 1.0  # left half certain, right half uniform
    write_maps(tmp_path, maps, shard_size=4, downsample=2)
    with zipfile.ZipFile(tmp_path / "shard-00000.zip") as shard:
        assert Image.open(io.BytesIO(shard.read("img_0.png"))).size == (5, 3)
    back = read_map_member(tmp_path / "shard-00000.zip", "img_0.png")
    assert back.shape == (6, 10)
    assert back[:, :3].max() == 0.0 and back[:, 7:].min() == 1.0  # away from the edge


def test_shard_files_do_not_depend_on_the_number_of_processes(tmp_path):
    maps = random_maps(5)
    write_maps(tmp_path / "one", maps)
    for rank in range(3):  # three processes write their shards into one folder
        write_maps(tmp_path / "three", maps, positions=owned_positions(5, 2, rank, 3))
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    three = {p.name: p.read_bytes() for p in (tmp_path / "three").iterdir()}
    assert one == three and len(one) == 3


def test_each_process_takes_whole_shards():
    assert owned_positions(10, 4, 0, 2) == [0, 1, 2, 3, 8, 9]
    assert owned_positions(10, 4, 1, 2) == [4, 5, 6, 7]
    assert owned_positions(3, 4, 1, 2) == []  # fewer shards than processes
    assert sorted(sum((owned_positions(10, 3, r, 4) for r in range(4)), [])) == list(range(10))


def test_a_shard_is_written_in_order_only(tmp_path):
    writer = ShardWriter(tmp_path, 2)
    writer.add(2, "a.png", b"x")
    with pytest.raises(ValueError, match="shard 0 after shard 1"):
        writer.add(0, "b.png", b"x")
    writer.close()


def test_labels_round_trip_and_encode_as_pillow_decodes(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.choice(np.array([0, 7, 255], np.uint8), size=(5, 6, 10))
    shards = LabelShards(tmp_path, tmp_path, 3, "label")
    for i, label in enumerate(labels):
        shards.add(i, IDS[i], label)
    shards.close()
    table = pd.DataFrame({"image_id": IDS, **shards.columns(IDS)})
    for i, image_id in enumerate(IDS):
        assert np.array_equal(read_pseudo_label(table, image_id), labels[i])
    one_row = np.arange(10, dtype=np.uint8)[None]
    for array in (one_row, labels[0]):
        for smooth in (False, True):
            decoded = np.array(Image.open(io.BytesIO(encode_png(array, smooth))))
            assert np.array_equal(decoded, array)


@pytest.mark.parametrize("deflate", ["isal", "zlib"])
def test_pngs_decode_to_the_same_pixels_with_either_deflate(monkeypatch, deflate):
    """ISA-L writes the pipeline's PNGs; a Python without isal falls back to zlib."""
    if deflate == "zlib":
        monkeypatch.setattr(artifacts, "_deflate", zlib.compress)
    else:
        pytest.importorskip("isal")
    rng = np.random.default_rng(2)
    smooth_map = np.clip(rng.gamma(0.3, 8, size=(64, 128)), 0, 255).astype(np.uint8)
    label = rng.choice(np.array([0, 7, 255], np.uint8), size=(64, 128))
    for array, smooth in ((smooth_map, True), (label, False)):
        decoded = np.array(Image.open(io.BytesIO(encode_png(array, smooth))))
        assert np.array_equal(decoded, array)


def test_the_readers_accept_the_one_file_per_image_layout(tmp_path):
    entropy = random_maps(1)[0]
    np.save(tmp_path / "a.npy", entropy.astype(np.float16))
    label = np.full((6, 10), 7, np.uint8)
    write_label_png(tmp_path / "a.png", label)
    table = pd.DataFrame({"image_id": ["a"], "map_path": ["a.npy"], "prediction_path": ["a.png"]})
    np.testing.assert_allclose(read_entropy_map(table, "a", tmp_path), entropy, atol=1e-3)
    assert np.array_equal(read_prediction(table, "a", tmp_path), label)
    table.to_parquet(tmp_path / "scores.parquet")  # or the table's path
    assert np.array_equal(read_prediction(tmp_path / "scores.parquet", "a", tmp_path), label)


def test_missing_members_files_and_ids_are_one_line_errors(tmp_path):
    write_maps(tmp_path, random_maps(), shard_size=5)
    with pytest.raises(IntradaError, match=r"shard-00000.zip: no member 'nope.png'"):
        read_label_member(tmp_path / "shard-00000.zip", "nope.png")
    with pytest.raises(IntradaError, match=r"shard-00009.zip: file not found"):
        read_label_member(tmp_path / "shard-00009.zip", "img_0.png")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(IntradaError, match=r"bad.zip: not a readable shard"):
        read_label_member(tmp_path / "bad.zip", "img_0.png")
    table = pd.DataFrame({"image_id": ["a"], "map_path": ["x"], "map_member": ["a.png"]})
    with pytest.raises(IntradaError, match=r"image_id 'b' is not in the table"):
        read_entropy_map(table, "b")


def test_a_replaced_shard_is_read_afresh(tmp_path):
    path = tmp_path / "shard-00000.zip"
    for value in (3, 5):
        folder = tmp_path / f"new_{value}"
        shards = LabelShards(folder, folder, 4, "label")
        shards.add(0, "a", np.full((2, 2), value, np.uint8))
        shards.close()
        os.replace(folder / "shard-00000.zip", path)  # what a re-run's rename does
        assert read_label_member(path, "a.png").max() == value


def pseudo_label_set(tmp_path, count=6, shard_size=3):
    classes = dataset_classes("synthetic")
    train_ids = np.array(classes.train_ids, np.uint8)
    rng = np.random.default_rng(0)
    ids = [f"im{i}" for i in range(count)]
    for image_id in ids:
        Image.fromarray(rng.integers(0, 255, (4, 6, 3), np.uint8)).save(
            tmp_path / f"{image_id}.png"
        )
    labels = rng.choice(train_ids, size=(count, 4, 6))
    shards = LabelShards(tmp_path / "labels", tmp_path / "labels", shard_size, "label")
    for i, label in enumerate(labels):
        shards.add(i, ids[i], label)
    shards.close()
    table = pd.DataFrame(
        {"image_id": ids, "image_path": [f"{i}.png" for i in ids], **shards.columns(ids)}
    )
    return SegmentationSet(table, classes, tmp_path, labelled=True), labels, classes


def test_training_reads_sharded_labels_opening_each_shard_once(tmp_path, monkeypatch):
    dataset, labels, classes = pseudo_label_set(tmp_path)
    opened = []
    real_zipfile = zipfile.ZipFile

    def counting(path, *args, **kwargs):
        opened.append(os.path.basename(path))
        return real_zipfile(path, *args, **kwargs)

    monkeypatch.setattr(artifacts, "_SHARDS", artifacts._OpenShards())
    monkeypatch.setattr(artifacts.zipfile, "ZipFile", counting)
    lut = torch.from_numpy(classes.train_id_to_channel())
    for _ in range(2):  # two epochs
        for i in (0, 4, 1, 5, 2, 3):
            sample = dataset[(i, False)]
            assert torch.equal(sample["label"], lut[torch.from_numpy(labels[i]).long()].long())
    assert sorted(opened) == ["shard-00000.zip", "shard-00001.zip"]
    # A forked DataLoader worker (another pid) opens its own handles: a file offset
    # shared with its parent would mix their reads.
    parent = os.getpid()
    monkeypatch.setattr(artifacts.os, "getpid", lambda: parent + 1)
    dataset[(0, False)]
    assert sorted(opened) == ["shard-00000.zip", "shard-00000.zip", "shard-00001.zip"]


def test_loader_workers_read_sharded_labels_as_the_main_process(tmp_path):
    dataset, _, _ = pseudo_label_set(tmp_path)
    dataset[(0, False)]  # the main process holds a shard open before the workers fork
    batches = in_order(len(dataset), 2)
    main = [b["label"] for b in loader(dataset, batches, num_workers=0)]
    workers = [b["label"] for b in loader(dataset, batches, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(main, workers, strict=True))
