import numpy as np
import torch

from intrada.classes import dataset_classes
from intrada.pseudo_labels import label_from_probs

CLASSES = dataset_classes("synthetic")


def test_pixels_below_the_confidence_threshold_become_ignore():
    # Two pixels over 8 classes: one sure of channel 0 (0.9), one unsure of channel 5 (0.4).
    prob = torch.full((1, 8, 1, 2), 0.0)
    prob[0, :, 0, 0] = torch.tensor([0.9] + [0.1 / 7] * 7)
    prob[0, :, 0, 1] = torch.tensor([0.1] * 5 + [0.4] + [0.1] * 2)
    road, sky = CLASSES.train_ids[0], CLASSES.train_ids[5]
    assert label_from_probs(prob, CLASSES, 0.0).tolist() == [[[road, sky]]]
    assert label_from_probs(prob, CLASSES, 0.5).tolist() == [[[road, 255]]]
    assert label_from_probs(prob, CLASSES, 0.95).tolist() == [[[255, 255]]]
    assert label_from_probs(prob, CLASSES, 0.5).dtype == np.uint8
