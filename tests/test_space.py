"""Space before work: the estimates, and stages that stop in one line, before any work
(or after their first shard), when the free space cannot hold what they will write."""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import types
from pathlib import Path

import pytest
import torch

import intrada.runs
from intrada.checkpoint import load_model
from intrada.config import get, read_params
from intrada.models import EntropyDiscriminator
from intrada.selection import CRITERIA
from intrada.space import (
    FILE_BYTES,
    MEMBER_BYTES,
    TENSOR_RECORD_BYTES,
    InsufficientSpace,
    checkpoint_bytes,
    discriminator_params,
    png_member_bytes,
    saved_bytes,
    stored_pixels,
    tensors_bytes,
    training_plan,
)
from tests.conftest import tiny_params
from tests.pipeline import run_pipeline, run_stage, tree_digest

KIB = 1024


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The tiny pipeline run once, in-process."""
    directory = tmp_path_factory.mktemp("space")
    run_pipeline(directory, tiny_params())
    return directory


def free_of(*values: int):
    """A `shutil.disk_usage` whose free space is `values[0]` at the first call, then
    `values[1]`, ... (the last one from then on)."""
    calls = []

    def disk_usage(path):
        calls.append(path)
        free = values[min(len(calls), len(values)) - 1]
        return types.SimpleNamespace(total=1 << 40, used=(1 << 40) - free, free=free)

    return disk_usage


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def test_per_image_estimates_are_pixels_times_bytes_per_pixel_plus_a_member():
    assert stored_pixels(512, 1024, 2) == 256 * 512
    assert stored_pixels(5, 7, 2) == 3 * 4  # partial cells at the edges count
    assert png_member_bytes("map", 256 * 512) == 256 * 512 + MEMBER_BYTES  # 1 byte per pixel
    assert png_member_bytes("label", 512 * 1024) == math.ceil(0.15 * 512 * 1024) + MEMBER_BYTES


def test_the_smoke_runs_bytes_per_image_are_below_the_estimates():
    # README, "Smoke run at the datasets' sizes": the largest of GTA5 / SYNTHIA per image.
    assert png_member_bytes("map", stored_pixels(512, 1024, 2)) > 72.5 * KIB
    assert png_member_bytes("label", 512 * 1024) > 34.3 * KIB  # predictions
    assert png_member_bytes("label", 512 * 1024) > 33.8 * KIB  # pseudo-labels


def test_discriminator_parameters_are_those_of_the_network():
    for classes, channels in ((19, (64, 128, 256, 512)), (5, (16, 32, 64))):
        disc = EntropyDiscriminator(classes, channels)
        tensors = list(disc.parameters())
        assert discriminator_params(classes, channels) == (
            sum(t.numel() for t in tensors),
            len(tensors),
        )


def test_a_checkpoint_counts_the_network_optimiser_discriminators_and_best_snapshot():
    model, params, discs = (1000, 10), (800, 8), (400, 4)
    assert checkpoint_bytes(model, params, "none") == saved_bytes(1000, 10)
    assert checkpoint_bytes(model, params, "sgd") == saved_bytes(1800, 18)
    assert checkpoint_bytes(model, params, "adam") == saved_bytes(1000 + 1600 + 64, 10 + 24)
    assert checkpoint_bytes(model, params, "sgd", discs) == saved_bytes(1800 + 1200 + 32, 18 + 16)
    assert checkpoint_bytes(model, params, "sgd", best_snapshot=True) == saved_bytes(2800, 28)
    assert saved_bytes(1000, 10) == 1000 + 10 * TENSOR_RECORD_BYTES + FILE_BYTES


def test_training_estimates_bound_the_files_training_wrote(project):
    """The tensor data counted is all in the files (estimate less its overhead allowance
    <= the file), and the allowance covers the rest (file <= estimate)."""
    raw = read_params(project / "params.yaml")
    for stage in ("source_only", "inter", "intra"):
        model, meta = load_model(project / "models" / stage / "model.pt")
        cfg = get(raw, stage)
        plan = training_plan(
            model, cfg, len(meta["class_names"]), Path("model.pt"), Path("checkpoints")
        )
        model_need, checkpoint_need = plan.needs
        saved = torch.load(
            project / "checkpoints" / stage / "last.pt", weights_only=True, map_location="cpu"
        )
        for need, path, count in (
            (model_need.each, project / "models" / stage / "model.pt", len(model.state_dict())),
            (checkpoint_need.each / 2, project / "checkpoints" / stage / "last.pt", None),
        ):
            if count is None:  # tensors in the checkpoint
                count = sum(1 for _ in tensors_in(saved))
            size = path.stat().st_size
            allowance = FILE_BYTES + TENSOR_RECORD_BYTES * count
            assert need - allowance <= size <= need, (stage, path.name, need, size)


def test_training_estimates_count_what_each_method_and_select_keeps(project):
    """AdaptSegNet's checkpoint holds the same two discriminators and Adam states as
    AdvEnt's, and every select but `last` keeps one more network (`Selection.best_state`)
    in it: the estimates say so."""
    raw = read_params(project / "params.yaml")
    model, meta = load_model(project / "models" / "inter" / "model.pt")
    cfg = get(raw, "inter")
    assert cfg.method == "advent"

    def checkpoint(**changes) -> int:
        plan = training_plan(
            model,
            dataclasses.replace(cfg, **changes),
            len(meta["class_names"]),
            Path("model.pt"),
            Path("checkpoints"),
        )
        return plan.needs[1].each

    last = checkpoint(select="last")
    assert checkpoint(method="adaptsegnet", gan="ls", select="last") == last
    assert checkpoint(method="minent", select="last") < last  # no discriminators
    kept = {select: checkpoint(select=select) for select in ("best_val", *CRITERIA)}
    network = saved_bytes(*tensors_bytes(model.state_dict().values())) - FILE_BYTES
    assert set(kept.values()) == {last + 2 * network}  # the need counts it twice


def tensors_in(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors_in(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from tensors_in(value)


MESSAGE = re.compile(
    r"(?P<paths>[^:]+): not enough free space on /\S*: (?P<free>[\d.]+ \w+) free, about "
    r"[\d.]+ \w+ to write \((?P<needs>.+)\) and a 20% margin; free some space, then re-run"
)


def test_scoring_stops_before_any_work_when_the_disk_cannot_hold_its_maps(project, monkeypatch):
    entropy = project / "data/entropy"
    before = tree_digest(project, ("data/entropy",))
    import stages.score_entropy as stage

    monkeypatch.setattr(shutil, "disk_usage", free_of(10 * KIB))
    monkeypatch.setattr(stage, "load_model", lambda *a: pytest.fail("work started"))
    with pytest.raises(InsufficientSpace) as info:
        run_stage("score_entropy", project)
    match = MESSAGE.fullmatch(str(info.value))
    assert match, info.value
    assert match["paths"] == "data/entropy/maps, data/entropy/predictions"
    # 10 images of 64x32: maps 2048 + 512 bytes, predictions ceil(0.15 * 2048) + 512 = 820.
    assert match["needs"] == (
        "data/entropy/maps 25.0 KiB (10 maps x 2.5 KiB, estimated); "
        "data/entropy/predictions 8.0 KiB (10 predictions x 820 B, estimated)"
    )
    assert tree_digest(project, ("data/entropy",)) == before and temps(entropy) == []


def test_scoring_stops_after_its_first_shard_when_the_rest_no_longer_fits(project, monkeypatch):
    """Space taken by something else meanwhile: the check on the first shard written,
    at the bytes per image measured on it, stops the stage; nothing is written."""
    entropy = project / "data/entropy"
    before = tree_digest(project, ("data/entropy",))
    monkeypatch.setattr(shutil, "disk_usage", free_of(1 << 30, 3 * KIB))
    with pytest.raises(InsufficientSpace) as info:
        run_stage("score_entropy", project)
    match = MESSAGE.fullmatch(str(info.value))
    assert match, info.value
    # Maps: 4 of 10 written in the first shard (of 4), 6 left at the size measured.
    assert re.search(
        r"data/entropy/maps \S+ \S+ \(6 maps x \S+ \S+, measured on its first", str(info.value)
    )
    assert tree_digest(project, ("data/entropy",)) == before and temps(entropy) == []


def test_pseudo_labels_stop_before_any_work_when_the_disk_cannot_hold_them(project, monkeypatch):
    before = tree_digest(project, ("data/pseudo_labels",))
    import stages.pseudo_labels as stage

    monkeypatch.setattr(shutil, "disk_usage", free_of(2 * KIB))
    monkeypatch.setattr(stage, "load_model", lambda *a: pytest.fail("work started"))
    with pytest.raises(InsufficientSpace) as info:
        run_stage("pseudo_labels", project)
    match = MESSAGE.fullmatch(str(info.value))
    assert match and match["paths"] == "data/pseudo_labels", info.value
    assert match["needs"] == "data/pseudo_labels 4.8 KiB (6 labels x 820 B, estimated)"
    assert tree_digest(project, ("data/pseudo_labels",)) == before


@pytest.mark.parametrize("stage", ["source_only", "inter"])
def test_training_stops_before_training_when_its_model_and_checkpoints_do_not_fit(
    project, monkeypatch, stage
):
    before = tree_digest(project, ("models", "checkpoints", "dvclive"))
    monkeypatch.setattr(shutil, "disk_usage", free_of(100 * KIB))
    monkeypatch.setattr(intrada.runs, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(InsufficientSpace) as info:
        run_stage(f"train_{stage}", project)
    match = MESSAGE.fullmatch(str(info.value))
    assert match, info.value
    assert match["paths"] == f"models/{stage}/model.pt, checkpoints/{stage}"
    assert "(model file, estimated)" in match["needs"]
    assert "(checkpoint, new and old, estimated)" in match["needs"]
    assert tree_digest(project, ("models", "checkpoints", "dvclive")) == before
