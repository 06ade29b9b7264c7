"""Class-channel operations in the scores' memory format (`intrada.layout`): the same
values as PyTorch's over dim 1, in the layout the networks run in."""

import pytest
import torch
import torch.nn.functional as F

from intrada.layout import class_softmax, is_channels_last, pixel_cross_entropy

NHWC = torch.channels_last


def scores(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(2, 5, 3, 4, dtype=torch.float64) * 3


def test_channels_last_means_laid_out_nhwc_only():
    assert is_channels_last(scores().contiguous(memory_format=NHWC))
    assert not is_channels_last(scores())
    # One class or one pixel: both layouts at once, so the plain path serves it.
    assert not is_channels_last(torch.zeros(2, 1, 3, 4).contiguous(memory_format=NHWC))
    assert not is_channels_last(torch.zeros(2, 5, 1, 1).contiguous(memory_format=NHWC))
    assert not is_channels_last(torch.zeros(5, 3))


def test_class_softmax_is_the_softmax_over_classes_in_either_layout():
    # Hand-computed pixel: softmax(0, ln 3) = (1/4, 3/4).
    pixel = torch.tensor([0.0, 3.0], dtype=torch.float64).log_()  # (-inf, ln 3)
    pixel[0] = 0.0
    one = pixel.view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous(memory_format=NHWC)
    assert torch.allclose(class_softmax(one), torch.tensor([0.25, 0.75]).view(1, 2, 1, 1).double())
    x = scores()
    expected = F.softmax(x, dim=1)
    nchw, nhwc = class_softmax(x), class_softmax(x.contiguous(memory_format=NHWC))
    assert torch.equal(nchw, expected)
    torch.testing.assert_close(nhwc, expected, rtol=0, atol=1e-15)
    assert is_channels_last(nhwc)  # later element-wise ops and the discriminator stay NHWC
    assert nchw.is_contiguous()


def test_class_softmax_gradient_matches_pytorchs():
    x = scores(1)
    weights = torch.rand_like(x)
    a = x.clone().contiguous(memory_format=NHWC).requires_grad_(True)
    b = x.clone().requires_grad_(True)
    (class_softmax(a) * weights).sum().backward()
    (F.softmax(b, dim=1) * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pixel_cross_entropy_ignores_labels_and_matches_pytorchs(reduction):
    x = scores(2)
    labels = torch.randint(0, 5, (2, 3, 4))
    labels[0, 0] = 255
    expected = F.cross_entropy(x, labels, ignore_index=255, reduction=reduction)
    for layout in (torch.contiguous_format, NHWC):
        got = pixel_cross_entropy(x.contiguous(memory_format=layout), labels, 255, reduction)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # By hand: -log softmax at each labelled pixel's class, over the labelled pixels only.
    logp = torch.log_softmax(x, dim=1)
    kept = labels != 255
    picked = logp.gather(1, labels.clamp(max=4)[:, None])[:, 0][kept]
    by_hand = -picked.sum() if reduction == "sum" else -picked.mean()
    torch.testing.assert_close(expected, by_hand)


def test_pixel_cross_entropy_gradient_matches_pytorchs():
    x = scores(3)
    labels = torch.randint(0, 5, (2, 3, 4))
    a = x.clone().contiguous(memory_format=NHWC).requires_grad_(True)
    b = x.clone().requires_grad_(True)
    pixel_cross_entropy(a, labels, 255).backward()
    F.cross_entropy(b, labels, ignore_index=255).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-14)
