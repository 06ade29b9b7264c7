import math

import pytest
import torch

from intrada.entropy import entropy_map, image_entropy, rare_class_normalised, self_information


def as_map(probs: list[float]) -> torch.Tensor:
    """A (1, C, 1, 1) softmax map from one pixel's probabilities."""
    return torch.tensor(probs, dtype=torch.float64).view(1, -1, 1, 1)


def test_uniform_softmax_has_normalised_entropy_one():
    for num_classes in (2, 8, 19):
        prob = as_map([1.0 / num_classes] * num_classes)
        assert entropy_map(prob).item() == pytest.approx(1.0, abs=1e-12)


def test_one_hot_softmax_has_entropy_zero():
    prob = as_map([0.0, 1.0, 0.0, 0.0])
    assert entropy_map(prob).item() == 0.0
    assert torch.all(self_information(prob) == 0.0)


def test_hand_computed_two_class_pixel():
    # H(0.25, 0.75) = -(0.25 log2 0.25 + 0.75 log2 0.75) / log2 2 = 0.811278...
    prob = as_map([0.25, 0.75])
    info = self_information(prob).flatten().tolist()
    assert info[0] == pytest.approx(0.5, abs=1e-12)  # -0.25 * log2(0.25) = 0.5
    assert info[1] == pytest.approx(-0.75 * math.log2(0.75))
    assert entropy_map(prob).item() == pytest.approx(0.8112781244591328)


def test_image_entropy_is_the_mean_of_the_map():
    # Two pixels: one uniform (entropy 1) and one one-hot (entropy 0) -> mean 0.5.
    prob = torch.tensor([[[[0.5, 1.0]], [[0.5, 0.0]]]], dtype=torch.float64)
    assert prob.shape == (1, 2, 1, 2)
    assert image_entropy(prob).tolist() == [pytest.approx(0.5, abs=1e-12)]


def test_rare_class_normaliser_lowers_the_score_of_images_showing_rare_classes():
    # score * ((K - r) / K + 0.5) with K = 2 rare classes
    assert rare_class_normalised(0.4, 0, 2) == pytest.approx(0.6)
    assert rare_class_normalised(0.4, 1, 2) == pytest.approx(0.4)
    assert rare_class_normalised(0.4, 2, 2) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        rare_class_normalised(0.4, 3, 2)


def test_in_place_entropy_map_equals_the_autograd_one_bit_for_bit():
    torch.manual_seed(0)
    prob = torch.softmax(torch.randn(3, 8, 5, 7) * 4, dim=1)
    prob[0, :, 0, 0] = torch.tensor([1.0] + [0.0] * 7)  # a one-hot pixel
    with_grad = prob.clone().requires_grad_(True)
    loss_map = entropy_map(with_grad)  # the MinEnt loss's path keeps its gradient
    assert loss_map.requires_grad
    scored = entropy_map(prob)  # scoring's path, in place
    assert torch.equal(scored, loss_map.detach())
    # ... and both are the channel sum of the self-information map the discriminators see
    torch.testing.assert_close(scored, self_information(prob).sum(dim=1), rtol=1e-6, atol=1e-7)
    assert scored[0, 0, 0] == 0.0
