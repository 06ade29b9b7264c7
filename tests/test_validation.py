"""Validation during training: it changes nothing in training, and `select: best_val`
keeps the best snapshot, across a resumed run too."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.data import Dataset

from intrada.config import get
from intrada.models import build_model
from intrada.resume import Checkpoints
from intrada.selection import TargetProbe, pick
from intrada.training import train
from intrada.validation import Selection, snapshot_report, validation_miou
from tests.conftest import tiny_params

NUM_CLASSES = 8


class InMemorySet(Dataset):
    """Random images (and labels) addressed by (index, flip), as SegmentationSet."""

    def __init__(self, size: int, seed: int, labelled: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(size, 3, 16, 32, generator=g)
        self.labels = torch.randint(0, NUM_CLASSES, (size, 16, 32), generator=g)
        self.labelled, self.num_classes = labelled, NUM_CLASSES

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        index, flip = item
        sample = {"image": self.images[index], "index": torch.tensor(index)}
        if self.labelled:
            sample["label"] = self.labels[index]
        if flip:
            sample = {k: v.flip(-1) if v.ndim >= 2 else v for k, v in sample.items()}
        return sample


SOURCE, TARGET, VAL = InMemorySet(8, 0), InMemorySet(8, 1, labelled=False), InMemorySet(4, 2)


def cfg(**changes):
    base = get(tiny_params(), "inter")
    settings = {
        "init": "scratch",
        "batchnorm": "train",
        "iterations": 6,
        "schedule_iterations": 100,  # the rates do not depend on `iterations`
        "batch_size": 2,
        "disc_channels": (4, 8),
        "log_every": 2,
        "checkpoint_every": 2,
        "eval_every": 2,
        "select": "last",  # the default's inter infomax needs a probe, which most runs here lack
    }
    return dataclasses.replace(base, **{**settings, **changes})


def run(settings, **kwargs):
    torch.manual_seed(0)
    model = build_model("small", NUM_CLASSES, width=4)
    selection = train(model, SOURCE, TARGET, settings, seed=0, run_key=2, **kwargs)
    return model, selection


def same_weights(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("batchnorm", ["train", "frozen", "released"])
def test_validation_changes_nothing_in_training(batchnorm):
    # Running statistics included: validation runs in eval mode and does not update them.
    init = "scratch" if batchnorm != "frozen" else "source_only"
    settings = cfg(batchnorm=batchnorm, init=init)
    validated, selection = run(settings, val_set=VAL)
    plain, unvalidated = run(dataclasses.replace(settings, eval_every=0), val_set=VAL)
    assert same_weights(validated, plain)
    assert [i for i, _ in selection.curve] == [2, 4, 6] and unvalidated.curve == []
    assert all(0 <= m <= 100 for _, m in selection.curve)


def scripted(monkeypatch, values):
    """Validation returns `values` in turn (so that the best iteration is known)."""
    values = iter(values)
    monkeypatch.setattr("intrada.training.validation_miou", lambda *args: next(values))


def test_best_val_ends_with_the_best_iterations_weights(monkeypatch):
    scripted(monkeypatch, [50.0, 70.0, 60.0])
    best, selection = run(cfg(select="best_val"), val_set=VAL)
    assert (selection.best_iteration, selection.best_miou) == (4, 70.0)
    # The first 4 iterations of the same run: the same weights.
    scripted(monkeypatch, [50.0, 70.0])
    four, _ = run(cfg(iterations=4), val_set=VAL)
    assert same_weights(best, four)
    scripted(monkeypatch, [50.0, 70.0, 60.0])
    last, _ = run(cfg(), val_set=VAL)
    assert not same_weights(best, last)
    summary = selection.summary(6)
    assert summary["curve"] == [[2, 50.0], [4, 70.0], [6, 60.0]]
    assert (summary["selected_iteration"], summary["last_mIoU"]) == (4, 60.0)


class Interrupt(Exception):
    pass


def test_a_resumed_run_keeps_the_best_snapshot_so_far(monkeypatch, tmp_path):
    scripted(monkeypatch, [50.0, 70.0, 60.0])
    whole, _ = run(cfg(select="best_val"), val_set=VAL)

    checkpoints = Checkpoints(tmp_path, 2, key="run")
    scripted(monkeypatch, [50.0, 70.0, 60.0])

    def stop_at_six(iteration, miou, criteria=None):
        if iteration == 6:
            raise Interrupt  # killed after the checkpoint of iteration 4

    with pytest.raises(Interrupt):
        run(cfg(select="best_val"), val_set=VAL, checkpoints=checkpoints, on_val=stop_at_six)
    scripted(monkeypatch, [60.0])  # only iteration 6 is validated again
    replayed = []
    resumed, selection = run(
        cfg(select="best_val"),
        val_set=VAL,
        checkpoints=checkpoints,
        on_val=lambda i, m, c=None: replayed.append((i, m)),
    )
    assert replayed == [(2, 50.0), (4, 70.0), (6, 60.0)]  # the curve replayed, then new
    assert selection.best_iteration == 4 and same_weights(resumed, whole)


def test_snapshot_report_names_what_was_selected_on_the_evaluation_set():
    selection = Selection("last", 2)
    model = build_model("small", NUM_CLASSES, width=4)
    for iteration, miou in ((2, 50.0), (4, 70.0), (6, 60.0)):
        selection.record(iteration, miou, model)
    # The evaluate stage measured 60.1 on the file's snapshot (the last iteration).
    assert snapshot_report(selection.summary(6), 60.1) == {
        "mIoU_last": 60.1,
        "mIoU_best_val_selected_on_val": 70.0,
        "best_val_iteration": 4,
        "selected_iteration": 6,
        "select": "last",
        "mIoU_selected_on_val": False,
    }
    best = Selection("best_val", 2, curve=selection.curve, best_iteration=4, best_miou=70.0)
    assert snapshot_report(best.summary(6), 70.2)["mIoU_best_val_selected_on_val"] == 70.2
    assert snapshot_report(best.summary(6), 70.2)["mIoU_last"] == 60.0
    assert snapshot_report(best.summary(6), 70.2)["mIoU_selected_on_val"] is True
    assert snapshot_report(Selection("last", 0).summary(6), 60.1) == {}


def test_validation_leaves_the_random_stream_and_running_statistics_alone():
    # A DataLoader iterator draws its seed from the global RNG: validation must not.
    model = build_model("small", NUM_CLASSES, width=4).train()
    rng, stats = torch.get_rng_state(), {k: v.clone() for k, v in model.state_dict().items()}
    validation_miou(model, VAL, 2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())


def test_a_label_free_criterion_keeps_its_pick_and_reports_every_pick():
    """select: entropy keeps the lowest-entropy snapshot's weights, not the best on val;
    the summary and eval.json give each criterion's pick with its val mIoU."""
    selection = Selection("entropy", 2)
    model = build_model("small", NUM_CLASSES, width=4)
    weights = {}
    points = (
        (2, 50.0, {"entropy": 0.30, "infomax": 0.40, "snd": 0.10}),
        (4, 70.0, {"entropy": 0.25, "infomax": 0.30, "snd": 0.20}),
        (6, 60.0, {"entropy": 0.20, "infomax": 0.35, "snd": 0.15}),
    )
    for iteration, miou, criteria in points:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(iteration)
        weights[iteration] = {k: v.clone() for k, v in model.state_dict().items()}
        selection.record(iteration, miou, model, criteria)
    assert selection.selected_iteration() == 6
    assert all(torch.equal(selection.best_state[k], v) for k, v in weights[6].items())
    summary = selection.summary(6)
    assert summary["picks"] == {
        "entropy": {"iteration": 6, "mIoU": 60.0},
        "infomax": {"iteration": 2, "mIoU": 50.0},
        "snd": {"iteration": 4, "mIoU": 70.0},
    }
    report = snapshot_report(summary, 60.3)
    assert report["select"] == "entropy" and report["mIoU_selected_on_val"] is False
    assert report["label_free_picks"]["entropy"] == {"iteration": 6, "mIoU": 60.3}
    # A checkpoint round trip keeps the criteria curve.
    resumed = Selection("entropy", 2)
    resumed.restore(selection.state())
    assert resumed.summary(6) == summary


def test_training_with_a_target_probe_keeps_the_criterion_pick_and_changes_nothing_else():
    """A probe computes the label-free criteria at every validation point without
    touching training; select: snd ends on the SND pick, equal to retraining to it."""
    probe = TargetProbe(TARGET, [0, 3, 5, 7], 2)
    plain, _ = run(cfg(), val_set=VAL)
    probed, selection = run(cfg(), val_set=VAL, probe=probe)
    assert same_weights(plain, probed)  # the probe changes nothing in training
    assert [i for i, _ in selection.criteria] == [2, 4, 6]
    assert set(selection.criteria[0][1]) == {"entropy", "infomax", "snd"}
    picked = pick(selection.criteria, "snd")
    chosen, _ = run(cfg(select="snd"), val_set=VAL, probe=probe)
    shortened, _ = run(cfg(iterations=picked), val_set=VAL)
    assert same_weights(chosen, shortened)
    with pytest.raises(ValueError, match="needs a target probe"):
        run(cfg(select="snd"), val_set=VAL)
