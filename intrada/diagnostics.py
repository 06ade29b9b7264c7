"""Why the method works (or not): does the entropy ranking separate easy images from
hard ones, and how good are the pseudo-labels? Computed against target-train's held-back
ground truth, which no training stage reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from intrada.artifacts import read_label_member
from intrada.classes import IGNORE_INDEX, TRAIN_ID, ClassSet
from intrada.compute import CPU, Compute, sum_across
from intrada.data import resize_label
from intrada.io import read_label
from intrada.metrics import confusion_matrix, iou_per_class, mean_iou, percent


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values`; tied values share the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start of each run of equal values, and each run's mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks. NaN when
    either side is constant (its rank has no spread)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denominator = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def image_confusion(prediction: np.ndarray, truth: np.ndarray, classes: ClassSet) -> np.ndarray:
    """The (C, C) confusion matrix of one image: a predicted train-id map (a prediction
    or a pseudo-label) against its ground truth in train ids; truth 255 ignored.
    Predicted 255 (a pseudo-label below its threshold) is not counted either. A
    prediction smaller than its truth is upsampled to it (nearest), as in evaluation."""
    lut = classes.train_id_to_channel()
    truth = lut[truth]
    pred = lut[resize_label(prediction, (truth.shape[1], truth.shape[0]))]
    unlabelled = pred == IGNORE_INDEX
    truth[unlabelled], pred[unlabelled] = IGNORE_INDEX, 0  # pixel left out either way
    return confusion_matrix(truth, pred, len(classes))


def pixel_error(cm: np.ndarray) -> float:
    """Share of counted pixels labelled wrong; NaN for an image with none counted."""
    total = cm.sum()
    return float(1.0 - np.trace(cm) / total) if total else float("nan")


# The keys of `split_report`.
DIAGNOSTICS = (
    "inter_easy_mIoU",
    "inter_hard_mIoU",
    "score_error_spearman",
    "pseudo_label_accuracy",
    "pseudo_label_coverage",
)


def split_report(
    easy: pd.DataFrame,
    hard: pd.DataFrame,
    truth: pd.DataFrame,
    pseudo: pd.DataFrame,
    classes: ClassSet,
    root: Path = Path("."),
    compute: Compute = CPU,
) -> dict:
    """The inter model's mIoU on the easy and on the hard split, Spearman(score, per-image
    pixel error) over all ranked images, and the pseudo-labels' pixel accuracy and coverage
    on the easy split; percentages, None where undefined (an empty hard split).

    `easy` / `hard`: split tables (`image_id`, `score`, `prediction_path` and, for
    sharded predictions, `prediction_member`); `truth`: target-train's ground-truth
    index (`image_id`, `label_path`, optionally `label_encoding`); `pseudo`: the
    pseudo-label index (`image_id`, `label_path`, `label_member`). Maps are read through
    `intrada.artifacts`, so either layout works. With several processes each reads every
    `world`-th image and the counts are summed: every process returns the same report.
    """
    truth_path = dict(zip(truth["image_id"], truth["label_path"], strict=True))
    encodings = truth.get("label_encoding", pd.Series([TRAIN_ID] * len(truth)))
    truth_encoding = dict(zip(truth["image_id"], encodings, strict=True))
    ranked = pd.concat([easy, hard], ignore_index=True)

    def confusion(row: pd.Series, kind: str) -> np.ndarray:
        image_id = row["image_id"]
        prediction = read_label_member(root / row[f"{kind}_path"], row.get(f"{kind}_member"))
        label = read_label(root / truth_path[image_id], truth_encoding[image_id], classes=classes)
        return image_confusion(prediction, label, classes)

    num = len(classes)
    # Per image: its pixel error (NaN-free zeros where another process owns it); per
    # split: the summed confusion matrices.
    errors = np.zeros(len(ranked), np.float64)
    sums = np.zeros((3, num, num), np.int64)  # easy, hard, pseudo-labels
    for position in range(compute.rank, len(ranked), compute.world):
        cm = confusion(ranked.iloc[position], "prediction")
        errors[position] = pixel_error(cm)
        sums[0 if position < len(easy) else 1] += cm
    for position in range(compute.rank, len(pseudo), compute.world):
        sums[2] += confusion(pseudo.iloc[position], "label")
    errors, sums = sum_across(errors, compute), sum_across(sums, compute)
    easy_cm, hard_cm, pseudo_cm = sums

    def split_miou(table: pd.DataFrame, cm: np.ndarray) -> float | None:
        return percent(mean_iou(iou_per_class(cm))) if len(table) else None

    labelled_pixels = pseudo_cm.sum()
    return {
        "inter_easy_mIoU": split_miou(easy, easy_cm),
        "inter_hard_mIoU": split_miou(hard, hard_cm),
        "score_error_spearman": round(spearman(ranked["score"].to_numpy(), errors), 4),
        "pseudo_label_accuracy": percent(np.trace(pseudo_cm) / labelled_pixels),
        "pseudo_label_coverage": percent(labelled_pixels / easy_cm.sum()),
    }
