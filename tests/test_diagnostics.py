from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from intrada.artifacts import LabelShards
from intrada.classes import dataset_classes
from intrada.diagnostics import average_ranks, image_confusion, spearman, split_report
from intrada.io import write_label_png

CLASSES = dataset_classes("synthetic")
ROAD, SKY, CAR = (CLASSES.train_ids[CLASSES.names.index(n)] for n in ("road", "sky", "car"))


def test_tied_values_share_their_mean_rank():
    assert average_ranks(np.array([0.3, 0.1, 0.3, 0.2])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_spearman_against_hand_computed_values():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([9, 4, 1, 0])) == pytest.approx(-1.0)
    # ranks x = 1 2 3 4, y = 1 3 2 4: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 12 / 60
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 5, 2, 9])) == pytest.approx(0.8)
    assert np.isnan(spearman(np.array([1, 2, 3]), np.array([5, 5, 5])))


def write(path, rows):
    write_label_png(path, np.array(rows, np.uint8))
    return path.name


def test_image_confusion_skips_unlabelled_pseudo_label_pixels():
    truth = np.array([[ROAD, ROAD], [SKY, 255]], np.uint8)
    pred = np.array([[ROAD, 255], [ROAD, SKY]], np.uint8)
    cm = image_confusion(pred, truth, CLASSES)
    road, sky = CLASSES.names.index("road"), CLASSES.names.index("sky")
    assert cm.sum() == 2 and cm[road, road] == 1 and cm[sky, road] == 1


def test_split_report_on_hand_made_labels(tmp_path):
    # Three images of 1 x 4 pixels. Image a is all right, b half right, c all wrong.
    truth = {i: write(tmp_path / f"gt_{i}.png", [[ROAD, ROAD, SKY, SKY]]) for i in "abc"}
    preds = {
        "a": write(tmp_path / "pr_a.png", [[ROAD, ROAD, SKY, SKY]]),
        "b": write(tmp_path / "pr_b.png", [[ROAD, SKY, SKY, ROAD]]),
        "c": write(tmp_path / "pr_c.png", [[CAR, CAR, CAR, CAR]]),
    }
    pseudo_a = write(tmp_path / "ps_a.png", [[ROAD, 255, 255, SKY]])
    pseudo_b = write(tmp_path / "ps_b.png", [[ROAD, SKY, 255, 255]])

    def split(ids, scores):
        return pd.DataFrame(
            {"image_id": ids, "score": scores, "prediction_path": [preds[i] for i in ids]}
        )

    report = split_report(
        easy=split(["a", "b"], [0.1, 0.2]),
        hard=split(["c"], [0.9]),
        truth=pd.DataFrame({"image_id": list("abc"), "label_path": [truth[i] for i in "abc"]}),
        pseudo=pd.DataFrame({"image_id": ["a", "b"], "label_path": [pseudo_a, pseudo_b]}),
        classes=CLASSES,
        root=tmp_path,
    )
    # Easy: road TP 3, FP 1, FN 1 -> 3/5; sky the same -> mIoU 60 %.
    assert report["inter_easy_mIoU"] == pytest.approx(60.0)
    # Hard: road and sky never predicted (IoU 0), car predicted but absent (IoU 0).
    assert report["inter_hard_mIoU"] == pytest.approx(0.0)
    # Errors 0, 0.5, 1 rise with scores 0.1, 0.2, 0.9.
    assert report["score_error_spearman"] == pytest.approx(1.0)
    # Pseudo-labels: 4 labelled pixels of 8, 3 right.
    assert report["pseudo_label_accuracy"] == pytest.approx(75.0)
    assert report["pseudo_label_coverage"] == pytest.approx(50.0)


def test_split_report_without_a_hard_split_reports_none(tmp_path):
    truth = write(tmp_path / "gt.png", [[ROAD, SKY]])
    easy = pd.DataFrame(
        {"image_id": ["a", "b"], "score": [0.1, 0.2], "prediction_path": [truth] * 2}
    )
    hard = easy.iloc[:0]
    report = split_report(
        easy,
        hard,
        pd.DataFrame({"image_id": ["a", "b"], "label_path": [truth] * 2}),
        pd.DataFrame({"image_id": ["a", "b"], "label_path": [truth] * 2}),
        CLASSES,
        root=tmp_path,
    )
    assert report["inter_hard_mIoU"] is None and report["inter_easy_mIoU"] == 100.0
    assert report["pseudo_label_accuracy"] == 100.0


def test_split_report_reads_sharded_predictions_and_pseudo_labels_alike(tmp_path):
    rows = {
        "a": [[ROAD, ROAD, SKY, SKY]],
        "b": [[ROAD, SKY, SKY, ROAD]],
        "c": [[CAR, CAR, CAR, SKY]],
    }
    truth = {i: write(tmp_path / f"gt_{i}.png", [[ROAD, ROAD, SKY, SKY]]) for i in "abc"}
    files = {i: write(tmp_path / f"pr_{i}.png", r) for i, r in rows.items()}
    shards = LabelShards(tmp_path / "preds", Path("preds"), 2, "prediction")
    for position, (image_id, r) in enumerate(rows.items()):
        shards.add(position, image_id, np.array(r, np.uint8))
    shards.close()
    sharded = pd.DataFrame({"image_id": list("abc"), **shards.columns(list("abc"))})
    assert sharded["prediction_path"].nunique() == 2
    truth_table = pd.DataFrame({"image_id": list("abc"), "label_path": [truth[i] for i in "abc"]})
    plain = pd.DataFrame({"image_id": list("abc"), "prediction_path": [files[i] for i in "abc"]})
    reports = []
    for table in (plain, sharded):
        table = table.assign(score=[0.1, 0.2, 0.9])
        pseudo = table.iloc[:2].rename(
            columns={"prediction_path": "label_path", "prediction_member": "label_member"}
        )
        reports.append(
            split_report(table.iloc[:2], table.iloc[2:], truth_table, pseudo, CLASSES, tmp_path)
        )
    assert reports[0] == reports[1]
    assert reports[1]["inter_easy_mIoU"] == pytest.approx(60.0)
