"""Validation on a labelled set: the confusion matrix and mIoU of a model, and the
choice of the snapshot a training stage keeps.

Training validates on target-val every `eval_every` iterations (and at its last one),
logs the curve, and keeps either the last iteration (`select: last`) or the best
iteration on target-val (`select: best_val`, as the released code does: selected on the
evaluation set itself, so its number is optimistic). `evaluate_confusion` is the same
computation the evaluate stage runs, so the last point of a curve is the evaluate stage's
mIoU of that snapshot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from intrada.compute import CPU, Compute, sum_across
from intrada.data import SegmentationSet, in_batches, loader
from intrada.inference import predict_probs, top_class
from intrada.metrics import confusion_matrix, iou_per_class, mean_iou, percent
from intrada.progress import progress
from intrada.selection import CRITERIA, pick

# Which snapshot a training stage keeps: the last, the best on target-val (selected on
# the evaluation set itself), or the best by a label-free criterion on target-train
# (`intrada.selection`).
SELECT = ("last", "best_val", *CRITERIA)


def evaluate_confusion(
    model: nn.Module,
    dataset: SegmentationSet,
    batch_size: int,
    compute: Compute = CPU,
    show_progress: bool = True,
) -> np.ndarray:
    """The (C, C) confusion matrix of `model` over every labelled pixel of `dataset`,
    with predictions upsampled to each label's resolution (`predict_probs`).

    With several processes each takes every `world`-th image and the counts are summed
    over all processes: every process returns the whole set's matrix."""
    num_classes = dataset.num_classes
    cm = np.zeros((num_classes, num_classes), np.int64)
    batches = in_batches(list(range(compute.rank, len(dataset), compute.world)), batch_size)
    data = loader(dataset, batches, compute.num_workers, pin_memory=compute.cuda)
    if show_progress:
        data = progress(data, len(batches), "evaluate", compute)
    for batch in data:
        labels = batch["label"]
        if isinstance(labels, list):  # labels of several sizes (`data.collate`): one by one
            for image, label in zip(batch["image"], labels, strict=True):
                pred = top_class(predict_probs(model, image[None], tuple(label.shape), compute))
                cm += confusion_matrix(label[None].numpy(), pred.numpy(), num_classes)
            continue
        pred = top_class(predict_probs(model, batch["image"], tuple(labels.shape[-2:]), compute))
        cm += confusion_matrix(labels.numpy(), pred.numpy(), num_classes)
    return sum_across(cm, compute)


def validation_miou(
    model: nn.Module, dataset: SegmentationSet, batch_size: int, compute: Compute = CPU
) -> float | None:
    """mIoU (%, rounded as in metrics/eval.json) of `model` on `dataset`; None if no
    class has an IoU. Leaves the model in eval mode and the global RNG as it found it
    (creating a DataLoader iterator draws a seed from it)."""
    # Only the main process validates during training (the others wait): the whole set
    # on this one process.
    alone = dataclasses.replace(compute, rank=0, world=1, group_of_one=False)
    with torch.random.fork_rng(devices=[]):
        cm = evaluate_confusion(model, dataset, batch_size, alone, show_progress=False)
    return percent(mean_iou(iou_per_class(cm)))


@dataclass
class Selection:
    """The validation curves of a run and the snapshot it keeps.

    At each validation point it records the target-val mIoU (None without a labelled
    val set) and the label-free criteria of the target-train probe (None without one).
    The best iteration on val is the first with the highest mIoU; a criterion's pick is
    the first with its best value (`selection.pick`). With `select` other than `last`,
    the weights of the selected snapshot so far are kept (one copy on the CPU, the only
    extra snapshot) to be written instead of the last iteration's.
    """

    select: str
    every: int
    curve: list[tuple[int, float | None]] = field(default_factory=list)
    criteria: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    best_iteration: int | None = None
    best_miou: float | None = None
    best_state: dict[str, torch.Tensor] | None = None

    def due(self, iteration: int, total: int) -> bool:
        return self.every > 0 and (iteration % self.every == 0 or iteration == total)

    def record(
        self,
        iteration: int,
        miou: float | None,
        model: nn.Module,
        criteria: dict[str, float] | None = None,
    ) -> None:
        self.curve.append((iteration, miou))
        if criteria is not None:
            self.criteria.append((iteration, dict(criteria)))
        if miou is not None and (self.best_miou is None or miou > self.best_miou):
            self.best_iteration, self.best_miou = iteration, miou
        if self.select != "last" and self.selected_iteration() == iteration:
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }

    def selected_iteration(self) -> int | None:
        """The snapshot `select` picks so far (None: none yet, or `last`)."""
        if self.select == "best_val":
            return self.best_iteration
        if self.select in CRITERIA:
            return pick(self.criteria, self.select)
        return None

    def state(self) -> dict[str, Any]:
        """For a resumable checkpoint (plain types and tensors)."""
        return {
            "curve": [[i, m] for i, m in self.curve],
            "criteria": [[i, dict(c)] for i, c in self.criteria],
            "best_iteration": self.best_iteration,
            "best_miou": self.best_miou,
            "best_state": self.best_state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.curve = [(int(i), m) for i, m in state["curve"]]
        self.criteria = [(int(i), dict(c)) for i, c in state.get("criteria", [])]
        self.best_iteration, self.best_miou = state["best_iteration"], state["best_miou"]
        self.best_state = state["best_state"]

    def picks(self) -> dict[str, dict[str, Any]]:
        """Each label-free criterion's pick: its iteration and that snapshot's val mIoU
        (None without labels)."""
        mious = dict(self.curve)
        out = {}
        for name in CRITERIA:
            iteration = pick(self.criteria, name)
            if iteration is not None:
                out[name] = {"iteration": iteration, "mIoU": mious.get(iteration)}
        return out

    def summary(self, last_iteration: int) -> dict[str, Any]:
        """What the model file records: the curves, the best, picked and last
        iterations, and which one the file holds."""
        selected = self.selected_iteration() or last_iteration
        return {
            "every": self.every,
            "curve": [[i, m] for i, m in self.curve],
            "criteria": [[i, dict(c)] for i, c in self.criteria],
            "last_iteration": last_iteration,
            "last_mIoU": self.curve[-1][1] if self.curve else None,
            "best_iteration": self.best_iteration,
            "best_mIoU": self.best_miou,
            "picks": self.picks(),
            "select": self.select,
            "selected_iteration": selected,
        }


def snapshot_report(summary: dict[str, Any] | None, measured: float | None) -> dict[str, Any]:
    """metrics/eval.json keys on a model's snapshots, from its file's validation summary
    (`Selection.summary`) and the mIoU the evaluate stage `measured` on the snapshot the
    file holds:

    - `mIoU_last`: the last iteration's mIoU;
    - `mIoU_best_val_selected_on_val` and `best_val_iteration`: the best iteration on
      target-val, chosen on the very set it is measured on (optimistic; the released
      code's way of reporting, comparable with the published tables);
    - `selected_iteration`: the iteration the model file holds (what `mIoU` measures),
      `select` how it was chosen, and `mIoU_selected_on_val` whether that choice looked
      at target-val itself (`select: best_val`: `mIoU` is then optimistic);
    - `label_free_picks`: each label-free criterion's iteration and that snapshot's mIoU
      (`intrada.selection`), when the run computed them.

    The snapshot the file holds is reported with the evaluate stage's own measurement,
    the other one with its validation during training (the same computation). Empty
    for a model trained without validation.
    """
    if not summary or not summary.get("curve"):
        return {}
    selected = summary["selected_iteration"]

    def miou_at(iteration: int, logged: float | None) -> float | None:
        return measured if iteration == selected else logged

    report = {
        "mIoU_last": miou_at(summary["last_iteration"], summary["last_mIoU"]),
        "mIoU_best_val_selected_on_val": miou_at(summary["best_iteration"], summary["best_mIoU"]),
        "best_val_iteration": summary["best_iteration"],
        "selected_iteration": selected,
        "select": summary.get("select", "last"),
        "mIoU_selected_on_val": summary.get("select") == "best_val",
    }
    picks = summary.get("picks") or {}
    if picks:
        report["label_free_picks"] = {
            name: {"iteration": p["iteration"], "mIoU": miou_at(p["iteration"], p["mIoU"])}
            for name, p in picks.items()
        }
    return report
