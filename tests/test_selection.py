"""Label-free snapshot criteria against hand-computed arrays."""

import math

import pytest
import torch

from intrada.selection import (
    information_maximisation,
    mean_entropy,
    pick,
    probe_indices,
    soft_neighbourhood_density,
)


def pixels(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_mean_entropy_of_uniform_and_one_hot_pixels():
    assert mean_entropy(pixels([[0.25] * 4, [0.25] * 4])) == pytest.approx(1.0)
    assert mean_entropy(pixels([[1.0, 0.0], [0.0, 1.0]])) == 0.0
    # one uniform pixel and one one-hot pixel: the mean of 1 and 0
    assert mean_entropy(pixels([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx(0.5)


def test_information_maximisation_rewards_confident_and_diverse_predictions():
    # Confident and split evenly over both classes: H(mean) = 1, mean H = 0.
    assert information_maximisation(pixels([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.0)
    # Confident but always the same class (collapse): 0.
    assert information_maximisation(pixels([[1.0, 0.0], [1.0, 0.0]])) == 0.0
    # Uniform everywhere: H(mean) = mean H = 1.
    assert information_maximisation(pixels([[0.5, 0.5], [0.5, 0.5]])) == pytest.approx(0.0)
    # (0.25, 0.75) and (0.75, 0.25): H(mean) = 1, each H = 0.811278...
    value = information_maximisation(pixels([[0.25, 0.75], [0.75, 0.25]]))
    assert value == pytest.approx(1 - 0.8112781244591328)


def test_soft_neighbourhood_density_by_hand_at_temperature_one():
    # Pixels 1 and 2 agree, pixel 3 differs: cosines 1 (1-2) and 0 (1-3, 2-3). Pixel 1's
    # neighbours get softmax(1, 0); pixel 3's softmax(0, 0) (uniform: entropy ln 2).
    prob = pixels([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    near = math.e / (math.e + 1)
    h1 = -(near * math.log(near) + (1 - near) * math.log(1 - near))
    expected = (2 * h1 + math.log(2)) / (3 * math.log(2))  # normalised by log(N - 1)
    assert soft_neighbourhood_density(prob, temperature=1.0) == pytest.approx(expected)


def test_soft_neighbourhood_density_is_higher_for_denser_neighbourhoods():
    torch.manual_seed(0)
    # Two tight clusters of predictions against the same pixels scattered at random.
    centres = torch.eye(4)[torch.arange(64) % 2]
    tight = torch.softmax(10 * centres + 0.01 * torch.randn(64, 4), dim=1)
    scattered = torch.softmax(3 * torch.randn(64, 4), dim=1)
    assert soft_neighbourhood_density(tight) > soft_neighbourhood_density(scattered)
    with pytest.raises(ValueError, match="at least 3 pixels"):
        soft_neighbourhood_density(tight[:2])


def test_pick_takes_the_first_best_point_of_each_criterion():
    curve = [
        (100, {"entropy": 0.30, "infomax": 0.50, "snd": 0.20}),
        (200, {"entropy": 0.20, "infomax": 0.60, "snd": 0.10}),
        (300, {"entropy": 0.20, "infomax": 0.55, "snd": 0.25}),
    ]
    assert pick(curve, "entropy") == 200  # lowest; the first of the tie
    assert pick(curve, "infomax") == 200  # highest
    assert pick(curve, "snd") == 300
    assert pick([], "snd") is None


def test_probe_indices_spread_over_the_set():
    assert probe_indices(10, 3) == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5, 9 -> round half even
    assert probe_indices(3, 5) == [0, 1, 2]
