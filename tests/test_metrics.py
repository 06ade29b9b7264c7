import math

import numpy as np
import pytest

from intrada.metrics import confusion_matrix, iou_per_class, mean_iou


def test_confusion_matrix_counts_truth_rows_and_ignores_255():
    truth = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    cm = confusion_matrix(truth, pred, 3)
    expected = np.array(
        [
            [1, 1, 0],  # truth 0: once 0, once 1
            [0, 1, 1],  # truth 1: once 1, once 2
            [0, 0, 1],
        ]
    )  # truth 2: once 2; the 255 pixel is not counted
    assert cm.tolist() == expected.tolist()


def test_iou_from_a_two_by_two_confusion_matrix():
    # class 0: TP 3, FN 1, FP 2 -> 3 / 6; class 1: TP 4, FN 2, FP 1 -> 4 / 7
    cm = np.array([[3, 1], [2, 4]])
    iou = iou_per_class(cm)
    assert iou.tolist() == pytest.approx([0.5, 4 / 7])
    assert mean_iou(iou) == pytest.approx((0.5 + 4 / 7) / 2)


def test_absent_class_never_predicted_has_no_iou_and_is_left_out_of_the_mean():
    cm = np.array([[2, 0, 0], [0, 0, 0], [1, 0, 1]])  # class 1: absent and never predicted
    iou = iou_per_class(cm)
    assert math.isnan(iou[1])
    assert iou[0] == pytest.approx(2 / 3) and iou[2] == pytest.approx(1 / 2)
    assert mean_iou(iou) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_absent_class_that_is_predicted_scores_zero():
    cm = np.array([[2, 1], [0, 0]])  # class 1 never in the truth but predicted once
    iou = iou_per_class(cm)
    assert iou.tolist() == pytest.approx([2 / 3, 0.0])
    assert mean_iou(iou) == pytest.approx(1 / 3)


def test_mean_of_no_classes_is_nan():
    assert math.isnan(mean_iou(np.array([np.nan, np.nan])))


def test_out_of_range_classes_are_refused():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 3]), np.array([0, 0]), 3)
