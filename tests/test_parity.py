"""Parity with the released AdvEnt / IntraDA training loop.

`ReleasedLoop` restates, from the papers and the behaviour documented in the issue (not
from the released code), what one iteration of the released loop does to DeepLab-v2 and
its two discriminators:

1. zero every gradient; poly learning rates (backbone lr, classifiers 10 lr, both
   discriminators lr_d); discriminators frozen;
2. source forward in train mode (BatchNorm normalises with the batch's own statistics
   and updates its running statistics; its affine parameters never train), both heads
   upsampled bilinearly with align_corners=True to the input, CE(main) + 0.1 CE(aux),
   backward;
3. target forward, upsampled the same way; each discriminator, fed the self-information
   map of the softmax, is asked to say "source" (0): BCE weighted 1e-3 (main) and 2e-4
   (aux), backward;
4. discriminators unfrozen; each sees the detached source maps against label 0, loss / 2,
   backward (aux, then main), then the detached target maps against label 1, loss / 2,
   backward;
5. SGD step of the segmentation network, Adam step of the auxiliary discriminator, Adam
   step of the main one (two optimisers, betas (0.9, 0.99)).

The SGD step is that of the PyTorch of the released code's time, applied to its lists:
the 1x list names a backbone tensor once per module enclosing it below [conv1, bn1,
layer1 .. layer4]; for every entry of the list in turn, weight decay is added into the
tensor's gradient in place, the momentum buffer becomes momentum * buffer + gradient
(the gradient itself the first time) and the tensor moves by -lr * buffer.

Our `AdaptationStep`, with the switches at the released values (batchnorm: released,
align_corners: true, param_listing: released, fp32), must change every parameter by the
same update over two iterations (the second one exercises the momentum buffers), and
the BatchNorm running statistics alike. Flipping any one switch, or reordering the
released loop, must break the parity (`test_each_switch_is_detected`).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intrada.config import TrainParams
from intrada.models import DeepLabV2
from intrada.training import AdaptationStep, set_batchnorm

NUM_CLASSES = 2
HEIGHT, WIDTH = 33, 65  # odd sizes: align_corners changes every upsampled value
TOLERANCE = 1e-5
SWITCHES = TrainParams(
    method="advent",
    init="pretrained",
    iterations=2,
    schedule_iterations=10,  # so that the poly decay moves the second iteration's rates
    batch_size=1,
    optimizer="sgd",
    lr=2.5e-4,
    momentum=0.9,
    weight_decay=5e-4,
    poly_power=0.9,
    lambda_seg_aux=0.1,
    batchnorm="released",
    param_listing="released",
    hflip=False,
    log_every=1,
    eval_every=0,
    select="last",
    lr_disc=1e-4,
    lambda_adv_main=1e-3,
    lambda_adv_aux=2e-4,
    disc_channels=(64, 128, 256, 512),
)


def batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(SWITCHES.iterations):
        label = torch.randint(0, NUM_CLASSES, (1, HEIGHT, WIDTH), generator=g)
        label[:, :3] = 255  # ignored pixels
        src = {"image": torch.rand(1, 3, HEIGHT, WIDTH, generator=g), "label": label}
        out.append((src, {"image": torch.rand(1, 3, HEIGHT, WIDTH, generator=g)}))
    return out


# --- the restatement -------------------------------------------------------------------


def self_information(prob):
    return -prob * torch.log2(prob + 1e-30) / math.log2(prob.shape[1])


def bce(logits, label):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(label)))


class ReleasedLoop:
    def __init__(self, model, d_main, d_aux, hp, discriminators_first=False, torch2_sgd=False):
        self.model, self.d_main, self.d_aux, self.hp = model, d_main, d_aux, hp
        self.discriminators_first = discriminators_first  # a mutation: wrong order
        model.train()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for p in module.parameters():
                    p.requires_grad = False
        b = model.backbone
        self.lists = [
            [
                p
                for top in (b.conv1, b.bn1, b.layer1, b.layer2, b.layer3, b.layer4)
                for module in top.modules()
                for p in module.parameters()
                if p.requires_grad
            ],
            [*model.aux_classifier.parameters(), *model.main_classifier.parameters()],
        ]
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
        self.opt_d_aux = torch.optim.Adam(d_aux.parameters(), lr=hp.lr_disc, betas=(0.9, 0.99))
        self.opt_d_main = torch.optim.Adam(d_main.parameters(), lr=hp.lr_disc, betas=(0.9, 0.99))

    def up(self, x):
        return F.interpolate(x, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=True)

    def poly(self, base, it):
        return base * (1 - it / self.hp.schedule_iterations) ** self.hp.poly_power

    def sgd_step(self, lrs):
        """The SGD of PyTorch 0.4-1.4 over lists that may repeat a tensor."""
        hp = self.hp
        grads = {id(p): p.grad.clone() for lst in self.lists for p in lst if p.grad is not None}
        with torch.no_grad():
            for lst, lr in zip(self.lists, lrs, strict=True):
                for p in lst:
                    if id(p) not in grads:
                        continue
                    d_p = grads[id(p)]  # shared by every entry of p: modified in place
                    d_p.add_(p, alpha=hp.weight_decay)
                    if id(p) not in self.buffers:
                        self.buffers[id(p)] = d_p.clone()
                    else:
                        self.buffers[id(p)].mul_(hp.momentum).add_(d_p)
                    p.add_(self.buffers[id(p)], alpha=-lr)

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
            opt.param_groups[0]["lr"] = self.poly(hp.lr_disc, it)
        for p in [*self.d_aux.parameters(), *self.d_main.parameters()]:
            p.requires_grad = False

        src_aux, src_main = (self.up(x) for x in model(src["image"]))
        seg = F.cross_entropy(src_main, src["label"], ignore_index=255)
        seg_aux = F.cross_entropy(src_aux, src["label"], ignore_index=255)
        (seg + hp.lambda_seg_aux * seg_aux).backward()

        trg_aux, trg_main = (self.up(x) for x in model(trg["image"]))
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
            self.sgd_step([lr, 10 * lr])
        if not self.discriminators_first:
            self.opt_d_aux.step()
            self.opt_d_main.step()

    def discriminator_passes(self, src_aux, src_main, trg_aux, trg_main):
        for p in [*self.d_aux.parameters(), *self.d_main.parameters()]:
            p.requires_grad = True
        self.train_discriminators([(self.d_aux, src_aux), (self.d_main, src_main)], 0)
        self.train_discriminators([(self.d_aux, trg_aux), (self.d_main, trg_main)], 1)


# --- the comparison --------------------------------------------------------------------


def state(model, d_main, d_aux):
    tensors = {f"G.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"D_main.{k}": v for k, v in d_main.state_dict().items()}
    tensors |= {f"D_aux.{k}": v for k, v in d_aux.state_dict().items()}
    return {k: v.detach().clone() for k, v in tensors.items()}


def relative_differences(before, after_ours, after_ref) -> dict[str, float]:
    """Per tensor: |update_ours - update_ref| / |update_ref| (0 when both are 0)."""
    out = {}
    for key, start in before.items():
        if not start.is_floating_point():
            out[key] = 0.0 if torch.equal(after_ours[key], after_ref[key]) else float("inf")
            continue
        ours = (after_ours[key] - start).double()
        ref = (after_ref[key] - start).double()
        scale = ref.norm()
        diff = (ours - ref).norm()
        value = float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))
        out[key] = value if math.isfinite(value) else float("inf")  # NaN: as different as can be
    return out


@pytest.fixture(scope="module")
def start():
    """The network (ours, DeepLab-v2 in the Caffe file's geometry, random weights) and
    discriminators, before any step."""
    torch.manual_seed(0)
    model = DeepLabV2(NUM_CLASSES, weights_format="deeplab", align_corners=True)
    torch.manual_seed(1)
    set_batchnorm(model, "released")
    step = AdaptationStep(model, SWITCHES, NUM_CLASSES)  # seeds the discriminators
    return model, step.discs.main, step.discs.aux


@pytest.fixture(scope="module")
def released(start):
    model, d_main, d_aux = (copy.deepcopy(m) for m in start)
    loop = ReleasedLoop(model, d_main, d_aux, SWITCHES)
    for it, (src, trg) in enumerate(batches()):
        loop.iteration(it, src, trg)
    return state(model, d_main, d_aux)


def ours(start, cfg=SWITCHES, align_corners=True):
    model, d_main, d_aux = (copy.deepcopy(m) for m in start)
    model.align_corners = align_corners
    set_batchnorm(model, cfg.batchnorm)
    step = AdaptationStep(model, cfg, NUM_CLASSES)
    step.discs.main.load_state_dict(d_main.state_dict())
    step.discs.aux.load_state_dict(d_aux.state_dict())
    for it, (src, trg) in enumerate(batches()):
        step.set_iteration(it)
        step(src, trg)
    return state(model, step.discs.main, step.discs.aux)


@pytest.fixture(scope="module")
def ours_released(start):
    return ours(start)


def test_one_adaptation_step_updates_as_the_released_loop(start, released, ours_released):
    before = state(*start)
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


def mutated(start, name):
    """Our step with one switch flipped away from the released value."""
    if name == "align_corners: false":
        return ours(start, align_corners=False)
    key, value = name.split(": ")
    return ours(start, dataclasses.replace(SWITCHES, **{key: value}))


# PyTorch 2 warns that duplicated parameters will become an error: the mutation's point.
@pytest.mark.filterwarnings("ignore:optimizer contains a parameter group with duplicate")
@pytest.mark.parametrize(
    "mutation",
    [
        "batchnorm: frozen",
        "batchnorm: train",
        "align_corners: false",
        "param_listing: unique",
        "reference: discriminators stepped before the adversarial pass",
        "reference: PyTorch 2's SGD given the duplicated lists",
    ],
)
def test_each_switch_is_detected(start, released, ours_released, mutation):
    before = state(*start)
    if mutation.startswith("reference: "):
        # The restatement changed instead, our step as released: the comparison must
        # notice a change of order or of optimiser arithmetic too.
        model, d_main, d_aux = (copy.deepcopy(m) for m in start)
        loop = ReleasedLoop(
            model,
            d_main,
            d_aux,
            SWITCHES,
            discriminators_first="discriminators" in mutation,
            torch2_sgd="SGD" in mutation,
        )
        for it, (src, trg) in enumerate(batches()):
            loop.iteration(it, src, trg)
        differences = relative_differences(before, ours_released, state(model, d_main, d_aux))
    else:
        differences = relative_differences(before, mutated(start, mutation), released)
    assert max(differences.values()) > 100 * TOLERANCE
