"""Parity with the released AdvEnt / IntraDA training loop.

`ReleasedLoop` restates, from the papers and the released code's structure (not by
calling intrada), what one iteration of the released loop does to DeepLab-v2 and its
two discriminators. It runs on the released networks restated layer by layer in
`tests/released.py` (DeepLab-v2 ResNet-101 multi-level, the discriminator), which
start from our networks' initial weights through a name mapping written there: a
layer missing, renamed or reshaped on our side fails the copy, and a change that
moves no tensor (a dilation, a stride, an activation's slope) fails the comparison.

1. zero every gradient; poly learning rates (backbone lr, classifiers 10 lr, both
   discriminators lr_d); discriminators frozen;
2. source forward in train mode (BatchNorm normalises with the batch's own statistics
   and updates its running statistics; its affine parameters never train) on BGR
   images in [0, 255] minus the Caffe mean, both heads upsampled bilinearly with
   align_corners=True to the input, CE(main) + 0.1 CE(aux), backward;
3. target forward, upsampled the same way; each discriminator, fed the self-information
   map of the softmax, is asked to say "source" (0): BCE weighted 1e-3 (main) and 2e-4
   (aux), backward;
4. discriminators unfrozen; each sees the detached source maps against label 0, loss / 2,
   backward (aux, then main), then the detached target maps against label 1, loss / 2,
   backward;
5. SGD step of the segmentation network, Adam step of the auxiliary discriminator, Adam
   step of the main one (two optimisers, betas (0.9, 0.99), PyTorch 0.4.1's Adam
   arithmetic: eps added before the bias correction).

The SGD step is that of the PyTorch of the released code's time, applied to its lists:
the 1x list names a backbone tensor once per module enclosing it below [conv1, bn1,
layer1 .. layer4]; for every entry of the list in turn, weight decay is added into the
tensor's gradient in place, the momentum buffer becomes momentum * buffer + gradient
(the gradient itself the first time) and the tensor moves by -lr * buffer.

Our `AdaptationStep`, with the switches at the released values (batchnorm: released,
align_corners: true, param_listing: released, adam: released, fp32), must change every
parameter by the same update over two iterations (the second one exercises the momentum
buffers), and the BatchNorm running statistics alike. Flipping any one switch, changing
our networks' architecture, or reordering the released loop, must break the parity
(`test_each_switch_is_detected`). Measured largest relative update difference of each
mutation, one CPU run (parity itself: 3e-7; threshold 1e-3):

| mutation | max relative difference |
| --- | --- |
| batchnorm: frozen | inf (BatchNorm step counters: ours kept, released counted) |
| batchnorm: train | inf (BatchNorm's affine parameters: ours moved, released frozen) |
| align_corners: false | 1.34 |
| param_listing: unique | 1.02 |
| adam: current (PyTorch >= 1.3's Adam for the discriminators) | 0.10 |
| architecture: our discriminator's LeakyReLU slope 0.1 | 1.12 |
| architecture: our layer4 dilated by 2, not 4 | 1.73 |
| reference: discriminators stepped before the adversarial pass | 0.11 |
| reference: PyTorch 2's SGD given the duplicated lists | 1.47 |
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tests import parity
from tests.parity import NUM_CLASSES, TOLERANCE
from tests.released import (
    Adam041,
    DeepLabMulti,
    Discriminator,
    relative_differences,
    released_outputs,
    released_sgd_step,
)

# schedule_iterations: so that the poly decay moves the second iteration's rates.
SWITCHES = parity.released_settings("advent", iterations=2, schedule_iterations=10)


# --- the restatement -------------------------------------------------------------------


def self_information(prob):
    return -prob * torch.log2(prob + 1e-30) / math.log2(prob.shape[1])


def bce(logits, label):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(label)))


class ReleasedLoop:
    """The released AdvEnt loop on the restated networks (`tests/released.py`)."""

    def __init__(self, model, d_main, d_aux, hp, discriminators_first=False, torch2_sgd=False):
        self.model, self.d_main, self.d_aux, self.hp = model, d_main, d_aux, hp
        self.discriminators_first = discriminators_first  # a mutation: wrong order
        model.train()
        self.lists = model.lr_lists()
        self.buffers: dict[int, torch.Tensor] = {}
        # A mutation: PyTorch 2's SGD handed the duplicated lists.
        self.torch2_sgd = (
            torch.optim.SGD(
                [{"params": lst} for lst in self.lists],
                lr=hp.lr,
                momentum=hp.momentum,
                weight_decay=hp.weight_decay,
                foreach=False,
            )
            if torch2_sgd
            else None
        )
        self.opt_d_aux = Adam041(d_aux.parameters(), lr=hp.lr_disc, betas=(0.9, 0.99))
        self.opt_d_main = Adam041(d_main.parameters(), lr=hp.lr_disc, betas=(0.9, 0.99))

    def poly(self, base, it):
        return base * (1 - it / self.hp.schedule_iterations) ** self.hp.poly_power

    def train_discriminators(self, maps, label):
        for disc, pred in maps:
            (bce(disc(self_information(F.softmax(pred.detach(), dim=1))), label) / 2).backward()

    def iteration(self, it, src, trg):
        hp, model = self.hp, self.model
        for lst in self.lists:
            for p in lst:
                p.grad = None
        self.opt_d_aux.zero_grad()
        self.opt_d_main.zero_grad()
        lr = self.poly(hp.lr, it)
        for opt in (self.opt_d_aux, self.opt_d_main):
            opt.lr = self.poly(hp.lr_disc, it)
        for p in [*self.d_aux.parameters(), *self.d_main.parameters()]:
            p.requires_grad = False

        src_aux, src_main = released_outputs(model, src["image"])
        seg = F.cross_entropy(src_main, src["label"], ignore_index=255)
        seg_aux = F.cross_entropy(src_aux, src["label"], ignore_index=255)
        (seg + hp.lambda_seg_aux * seg_aux).backward()

        trg_aux, trg_main = released_outputs(model, trg["image"])
        if self.discriminators_first:
            self.discriminator_passes(src_aux, src_main, trg_aux, trg_main)
            self.opt_d_aux.step()
            self.opt_d_main.step()
            for p in [*self.d_aux.parameters(), *self.d_main.parameters()]:
                p.requires_grad = False
        adv_main = bce(self.d_main(self_information(F.softmax(trg_main, dim=1))), 0)
        adv_aux = bce(self.d_aux(self_information(F.softmax(trg_aux, dim=1))), 0)
        (hp.lambda_adv_main * adv_main + hp.lambda_adv_aux * adv_aux).backward()

        if not self.discriminators_first:
            self.discriminator_passes(src_aux, src_main, trg_aux, trg_main)
        if self.torch2_sgd is not None:
            for group, mult in zip(self.torch2_sgd.param_groups, (1, 10), strict=True):
                group["lr"] = lr * mult
            self.torch2_sgd.step()
        else:
            released_sgd_step(self.lists, [lr, 10 * lr], self.buffers, hp.momentum, hp.weight_decay)
        if not self.discriminators_first:
            self.opt_d_aux.step()
            self.opt_d_main.step()

    def discriminator_passes(self, src_aux, src_main, trg_aux, trg_main):
        for p in [*self.d_aux.parameters(), *self.d_main.parameters()]:
            p.requires_grad = True
        self.train_discriminators([(self.d_aux, src_aux), (self.d_main, src_main)], 0)
        self.train_discriminators([(self.d_aux, trg_aux), (self.d_main, trg_main)], 1)


# --- the comparison --------------------------------------------------------------------


@pytest.fixture(scope="module")
def start():
    """The network (ours, DeepLab-v2 in the Caffe file's geometry, random weights) and
    discriminators, before any step."""
    return parity.start_networks(SWITCHES)


@pytest.fixture(scope="module")
def restated(start):
    """The released networks, restated, holding our initial weights; and the name
    mappings (ours -> theirs) the copy checked."""
    return parity.restate(
        start, (DeepLabMulti(NUM_CLASSES), Discriminator(NUM_CLASSES), Discriminator(NUM_CLASSES))
    )


def run_released(restated, **mutation):
    nets, names = restated
    model, d_main, d_aux = (copy.deepcopy(m) for m in nets)
    loop = ReleasedLoop(model, d_main, d_aux, SWITCHES, **mutation)
    for it, (src, trg) in enumerate(parity.batches(SWITCHES)):
        loop.iteration(it, src, trg)
    return parity.released_state((model, d_main, d_aux), names)


@pytest.fixture(scope="module")
def released(restated):
    return run_released(restated)


def ours(start, cfg=SWITCHES, align_corners=True, tamper=None):
    return parity.run_ours(start, cfg, align_corners, tamper)[0]


@pytest.fixture(scope="module")
def ours_released(start):
    return ours(start)


def test_one_adaptation_step_updates_as_the_released_loop(start, released, ours_released):
    before = parity.state(*start)
    differences = relative_differences(before, ours_released, released)
    worst = max(differences, key=differences.get)
    assert differences[worst] < TOLERANCE, (worst, differences[worst])
    # Every trainable tensor moved, every frozen one stayed (BatchNorm's affine
    # parameters), and the running statistics drifted with both domains' forwards.
    model = start[0]
    trainable = {f"G.{k}" for k, p in model.named_parameters() if p.requires_grad}
    frozen = {f"G.{k}" for k, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".bn" in k or "downsample.1" in k for k in frozen)
    for key in before:
        moved = not torch.equal(before[key], released[key])
        if key in frozen:
            assert not moved, key
        elif key in trainable or key.startswith("D_") or "running_" in key:
            assert moved, key


def test_the_restatement_holds_every_tensor_of_ours_under_its_released_name(restated):
    nets, names = restated
    # conv1, bn1 (4 tensors and the step counter), 33 blocks, 4 shortcut projections,
    # 8 ASPP convolutions: every one mapped, none left over (copy_weights checks both).
    assert names[0]["backbone.layer2.0.downsample.0.weight"] == "layer2.0.downsample.0.weight"
    assert names[0]["aux_classifier.branches.3.bias"] == "layer5.conv2d_list.3.bias"
    assert names[0]["main_classifier.branches.0.weight"] == "layer6.conv2d_list.0.weight"
    assert names[1]["net.8.weight"] == "classifier.weight"
    assert len(names[0]) == len(nets[0].state_dict())


def layer4_dilation(value):
    def tamper(model, step):
        for block in model.backbone.layer4:
            block.conv2.dilation = block.conv2.padding = (value, value)

    return tamper


def mutated(start, name):
    """Our step with one switch flipped away from the released value, or our networks
    changed."""
    if name == "align_corners: false":
        return ours(start, align_corners=False)
    if name == "architecture: discriminator LeakyReLU slope 0.1":
        return ours(start, tamper=parity.slope(0.1))
    if name == "architecture: layer4 dilated by 2, not 4":
        return ours(start, tamper=layer4_dilation(2))
    key, value = name.split(": ")
    return ours(start, dataclasses.replace(SWITCHES, **{key: value}))


MUTATIONS = [
    "batchnorm: frozen",
    "batchnorm: train",
    "align_corners: false",
    "param_listing: unique",
    "adam: current",
    "architecture: discriminator LeakyReLU slope 0.1",
    "architecture: layer4 dilated by 2, not 4",
    "reference: discriminators stepped before the adversarial pass",
    "reference: PyTorch 2's SGD given the duplicated lists",
]


# PyTorch 2 warns that duplicated parameters will become an error: the mutation's point.
@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_switch_is_detected(start, restated, released, ours_released, mutation):
    before = parity.state(*start)
    if mutation.startswith("reference: "):
        # The restatement changed instead, our step as released: the comparison must
        # notice a change of order or of optimiser arithmetic too.
        after_ref = run_released(
            restated,
            discriminators_first="discriminators" in mutation,
            torch2_sgd="SGD" in mutation,
        )
        differences = relative_differences(before, ours_released, after_ref)
    else:
        differences = relative_differences(before, mutated(start, mutation), released)
    assert max(differences.values()) > 100 * TOLERANCE
