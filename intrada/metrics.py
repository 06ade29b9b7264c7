"""Segmentation metrics: confusion matrix, per-class IoU and mIoU.

A class that is absent from the ground truth *and* never predicted has no IoU
(0 / 0 = NaN) and is left out of the mean; if it is predicted somewhere while absent,
its IoU is 0. This is the convention of the reference code (`nanmean`).
"""

from __future__ import annotations

import numpy as np

from intrada.classes import IGNORE_INDEX


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; truth 255 ignored."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = truth != IGNORE_INDEX
    if (truth[keep] >= num_classes).any() or (truth[keep] < 0).any():
        raise ValueError(f"ground truth holds classes outside 0..{num_classes - 1}")
    if (pred[keep] >= num_classes).any() or (pred[keep] < 0).any():
        raise ValueError(f"predictions hold classes outside 0..{num_classes - 1}")
    flat = truth[keep] * num_classes + pred[keep]
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN where the class is neither present nor predicted."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(iou: np.ndarray) -> float:
    """Mean over the classes that have an IoU; NaN if none has."""
    iou = np.asarray(iou, dtype=np.float64)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def percent(value: float) -> float | None:
    """A fraction as a percentage rounded for reports; None (JSON null) for NaN."""
    return None if np.isnan(value) else round(100.0 * float(value), 4)
