import numpy as np
import pandas as pd
import pytest
import torch

from intrada.classes import dataset_classes
from intrada.data import EndlessBatches, SegmentationSet, in_order, load_index
from intrada.errors import IntradaError
from intrada.io import write_label_png, write_rgb_png


def test_batches_visit_every_image_once_per_epoch():
    sampler = EndlessBatches(size=5, batch_size=2, seed=0, stream=(1,), hflip=False, stop=5)
    flat = [i for batch in sampler for i, _ in batch]
    assert sorted(flat[:5]) == [0, 1, 2, 3, 4]  # epoch 0, then epoch 1 continues
    assert sorted(flat[5:10]) == [0, 1, 2, 3, 4]


def test_batch_k_is_the_same_whether_training_starts_at_zero_or_at_k():
    full = list(EndlessBatches(7, 3, seed=4, stream=(2,), hflip=True, stop=10))
    resumed = list(EndlessBatches(7, 3, seed=4, stream=(2,), hflip=True, start=6, stop=10))
    assert resumed == full[6:]
    other_seed = list(EndlessBatches(7, 3, seed=5, stream=(2,), hflip=True, stop=10))
    assert other_seed != full
    other_stream = list(EndlessBatches(7, 3, seed=4, stream=(3,), hflip=True, stop=10))
    assert other_stream != full


def test_no_flips_unless_asked():
    batches = list(EndlessBatches(4, 4, seed=0, stream=(1,), hflip=False, stop=3))
    assert not any(flip for batch in batches for _, flip in batch)


def test_in_order_covers_a_set_once():
    assert in_order(5, 2) == [[(0, False), (1, False)], [(2, False), (3, False)], [(4, False)]]


def make_labelled_set(tmp_path, label, keep_decoded=False):
    image = np.zeros((*label.shape, 3), np.uint8)
    image[:, 0] = 255  # a bright first column shows where flips put it
    write_rgb_png(tmp_path / "a.png", image)
    write_label_png(tmp_path / "a_label.png", label)
    table = pd.DataFrame(
        {"image_id": ["a"], "image_path": ["a.png"], "label_path": ["a_label.png"]}
    )
    return SegmentationSet(
        table, dataset_classes("synthetic"), tmp_path, labelled=True, keep_decoded=keep_decoded
    )


def test_labels_become_class_channels_with_ignore_kept(tmp_path):
    # train ids: road 0, sky 10, car 13, ignore 255, and 4 (fence: not a benchmark class)
    label = np.array([[0, 10, 13], [255, 4, 0]], np.uint8)
    sample = make_labelled_set(tmp_path, label)[(0, False)]
    # synthetic channels: road 0, sidewalk 1, building 2, pole 3, vegetation 4, sky 5, ...
    assert sample["label"].tolist() == [[0, 5, 7], [255, 255, 0]]
    assert sample["image"].dtype == torch.float32 and float(sample["image"].max()) == 1.0


def test_flip_mirrors_image_and_label_together(tmp_path):
    label = np.array([[0, 10, 13]], np.uint8)
    dataset = make_labelled_set(tmp_path, label)
    flipped = dataset[(0, True)]
    assert flipped["label"].tolist() == [[7, 5, 0]]
    assert float(flipped["image"][0, 0, -1]) == 1.0 and float(flipped["image"][0, 0, 0]) == 0.0


def test_a_set_kept_decoded_gives_the_same_samples_without_reading_again(tmp_path):
    label = np.array([[0, 10, 13], [255, 4, 0]], np.uint8)
    kept = make_labelled_set(tmp_path, label, keep_decoded=True)
    first = {flip: kept[(0, flip)] for flip in (False, True)}
    read = make_labelled_set(tmp_path, label)
    (tmp_path / "a.png").unlink()  # the kept set no longer needs its files
    (tmp_path / "a_label.png").unlink()
    for flip in (False, True):
        again = kept[(0, flip)]
        assert torch.equal(again["image"], first[flip]["image"])
        assert torch.equal(again["label"], first[flip]["label"])
    again["image"].zero_()  # a caller's sample is its own copy
    assert torch.equal(kept[(0, False)]["image"], first[False]["image"])
    with pytest.raises(IntradaError, match="a.png"):
        read[(0, False)]


def test_a_set_too_large_to_keep_is_read_from_disk_each_time(tmp_path, monkeypatch):
    monkeypatch.setattr("intrada.data.KEEP_DECODED_BYTES", 8)
    dataset = make_labelled_set(tmp_path, np.zeros((2, 3), np.uint8), keep_decoded=True)
    dataset[(0, False)]
    assert dataset.decoded is None
    (tmp_path / "a.png").unlink()
    with pytest.raises(IntradaError, match="a.png"):
        dataset[(0, False)]


def test_label_of_another_size_is_named(tmp_path):
    dataset = make_labelled_set(tmp_path, np.zeros((2, 3), np.uint8))
    write_label_png(tmp_path / "a_label.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(IntradaError, match="a_label.png: label size"):
        dataset[(0, False)]


def test_index_without_needed_columns_is_refused(tmp_path):
    pd.DataFrame({"image_id": ["a"], "image_path": ["a.png"]}).to_parquet(tmp_path / "i.parquet")
    with pytest.raises(IntradaError, match=r"i.parquet: missing columns \['label_path'\]"):
        load_index(tmp_path / "i.parquet", labelled=True)
    with pytest.raises(IntradaError, match="file not found"):
        load_index(tmp_path / "missing.parquet", labelled=False)
