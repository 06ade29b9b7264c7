"""Why the method works (or not): does the entropy ranking separate easy images from
hard ones, and how good are the pseudo-labels? Computed against target-train's held-back
ground truth, which no training stage reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from intrada.classes import IGNORE_INDEX, TRAIN_ID, ClassSet
from intrada.data import resize_label
from intrada.io import read_label, read_label_png
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


def image_confusions(
    predictions: list[Path],
    truths: list[Path],
    classes: ClassSet,
    truth_encodings: list[str] | None = None,
) -> list[np.ndarray]:
    """One (C, C) confusion matrix per image from a train-id label PNG (prediction) and a
    ground-truth label file (train ids unless `truth_encodings` says otherwise); truth 255
    ignored. Predicted 255 (a pseudo-label below its threshold) is not counted either.
    A prediction smaller than its truth is upsampled to it (nearest), as in evaluation."""
    lut = classes.train_id_to_channel()
    encodings = truth_encodings or [TRAIN_ID] * len(truths)
    matrices = []
    for pred_path, truth_path, encoding in zip(predictions, truths, encodings, strict=True):
        truth = lut[read_label(truth_path, encoding)]
        pred = read_label_png(pred_path)
        pred = lut[resize_label(pred, (truth.shape[1], truth.shape[0]))]
        unlabelled = pred == IGNORE_INDEX
        truth[unlabelled], pred[unlabelled] = IGNORE_INDEX, 0  # pixel left out either way
        matrices.append(confusion_matrix(truth, pred, len(classes)))
    return matrices


def pixel_error(cm: np.ndarray) -> float:
    """Share of counted pixels labelled wrong; NaN for an image with none counted."""
    total = cm.sum()
    return float(1.0 - np.trace(cm) / total) if total else float("nan")


def split_report(
    easy: pd.DataFrame,
    hard: pd.DataFrame,
    truth: pd.DataFrame,
    pseudo: pd.DataFrame,
    classes: ClassSet,
    root: Path = Path("."),
) -> dict:
    """The inter model's mIoU on the easy and on the hard split, Spearman(score, per-image
    pixel error) over all ranked images, and the pseudo-labels' pixel accuracy and coverage
    on the easy split; percentages, None where undefined (an empty hard split).

    `easy` / `hard`: split tables (`image_id`, `score`, `prediction_path`); `truth`:
    target-train's ground-truth index (`image_id`, `label_path`, optionally
    `label_encoding`); `pseudo`: the pseudo-label
    index (`image_id`, `label_path`).
    """
    truth_path = dict(zip(truth["image_id"], truth["label_path"], strict=True))
    encodings = truth.get("label_encoding", pd.Series([TRAIN_ID] * len(truth)))
    truth_encoding = dict(zip(truth["image_id"], encodings, strict=True))

    def confusions(table: pd.DataFrame, column: str) -> list[np.ndarray]:
        return image_confusions(
            [root / p for p in table[column]],
            [root / truth_path[i] for i in table["image_id"]],
            classes,
            [truth_encoding[i] for i in table["image_id"]],
        )

    def split_miou(cms: list[np.ndarray]) -> float | None:
        return percent(mean_iou(iou_per_class(sum(cms)))) if cms else None

    easy_cms, hard_cms = confusions(easy, "prediction_path"), confusions(hard, "prediction_path")
    ranked = pd.concat([easy, hard], ignore_index=True)
    errors = np.array([pixel_error(cm) for cm in easy_cms + hard_cms])
    pseudo_cm = sum(confusions(pseudo, "label_path"))
    labelled_pixels = pseudo_cm.sum()
    all_pixels = sum(cm.sum() for cm in easy_cms)
    return {
        "inter_easy_mIoU": split_miou(easy_cms),
        "inter_hard_mIoU": split_miou(hard_cms),
        "score_error_spearman": round(spearman(ranked["score"].to_numpy(), errors), 4),
        "pseudo_label_accuracy": percent(np.trace(pseudo_cm) / labelled_pixels),
        "pseudo_label_coverage": percent(labelled_pixels / all_pixels),
    }
