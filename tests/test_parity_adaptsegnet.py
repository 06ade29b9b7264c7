"""Parity with the released AdaptSegNet training loop (`method: adaptsegnet`).

`ReleasedAdaptSegNet` restates, from the released `train_gta2cityscapes_multi.py` (its
PyTorch 0.4 version, and the first version's `--gan LS`) and not by calling intrada,
one iteration of AdaptSegNet's multi-level output-space adaptation, on the released
networks restated layer by layer in `tests/released.py` (DeepLab-v2 ResNet-101
multi-level whose ASPP classifiers sum their first two branches, as the released
`Classifier_Module` returns inside its loop; the discriminator):

1. zero every gradient; poly learning rates (backbone lr, classifiers 10 lr, both
   discriminators lr_d, over the schedule's length); discriminators frozen;
2. source forward (train mode, BatchNorm affine frozen) on BGR images minus the Caffe
   mean, both heads upsampled bilinearly with align_corners=True, CE(main) + 0.1 CE(aux)
   (its `--lambda-seg`), backward;
3. target forward, upsampled alike; D1 sees softmax(aux), D2 softmax(main) (the maps
   themselves: output space, not their entropy); each is asked to say "source" (0):
   BCE on the logits (`--gan LS`: mean squared error of the raw outputs), weighted
   2e-4 (aux) and 1e-3 (main), backward;
4. discriminators unfrozen; D1 then D2 see the detached source softmax maps against
   label 0, each loss / 2, backward; then the detached target maps against label 1,
   each loss / 2, backward;
5. SGD step of the network (PyTorch 0.4's SGD over its lists, as in test_parity), Adam
   step of D1, of D2 (betas (0.9, 0.99), PyTorch 0.4.1's arithmetic).

Our `AdaptationStep` with `method: adaptsegnet` and the released switches must change
every tensor by the same update over two iterations, for both GAN objectives, and log
the same losses. Each mutation below must break it. Measured largest relative
difference (updates | logged losses) of each, one CPU run (parity: 1.2e-6 | 4e-8 for
both objectives; threshold 1e-3 on the larger of the two):

| mutation | updates | losses |
| --- | --- | --- |
| discriminators fed entropy, not softmax (method: advent) | 1.71 | 4.0e-3 |
| reference: discriminator losses not halved | 0.17 | 0.50 |
| reference: domain labels swapped (source 1, target 0) | 1.99 | 1.3e-2 |
| gan: ls against the vanilla loop | 2.06 | 1.0 |
| reference: the LS loop against our vanilla | 1.97 | 2.4e4 |
| adversarial weights swapped (main 2e-4, aux 1e-3) | 3.9e-2 | 5.8e-5 |
| lambda_seg_aux: 0.2 | 0.87 | 0.97 |
| architecture: our discriminator's LeakyReLU slope 0.1 | 1.27 | 1.6e-3 |
| architecture: our ASPP sums all four branches | inf (branches 2, 3 move) | 2.77 |
| adam: current (PyTorch >= 1.3's Adam) | 0.15 | 1.1e-4 |
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tests import parity
from tests.parity import NUM_CLASSES, TOLERANCE
from tests.released import (
    Adam041,
    DeepLabMulti,
    Discriminator,
    loss_differences,
    relative_differences,
    released_outputs,
    released_sgd_step,
)

# schedule_iterations: so that the poly decay moves the second iteration's rates.
SWITCHES = parity.released_settings("adaptsegnet", iterations=2, schedule_iterations=10)


# --- the restatement -------------------------------------------------------------------


class ReleasedAdaptSegNet:
    """The released AdaptSegNet loop on the restated networks. The keyword arguments
    are mutations: `halve` (each discriminator loss / 2), `labels` (source, target)."""

    def __init__(self, model, d1, d2, hp, gan, halve=True, labels=(0, 1)):
        self.model, self.d1, self.d2, self.hp = model, d1, d2, hp
        self.halve, (self.source_label, self.target_label) = halve, labels
        if gan == "vanilla":
            self.objective = F.binary_cross_entropy_with_logits
        else:  # `--gan LS`: MSELoss on the raw outputs
            self.objective = F.mse_loss
        model.train()
        self.lists = model.lr_lists()
        self.buffers: dict[int, torch.Tensor] = {}
        self.opt_d1 = Adam041(d1.parameters(), lr=hp.lr_disc, betas=(0.9, 0.99))
        self.opt_d2 = Adam041(d2.parameters(), lr=hp.lr_disc, betas=(0.9, 0.99))

    def poly(self, base, it):
        return base * (1 - it / self.hp.schedule_iterations) ** self.hp.poly_power

    def loss(self, d_out, label):
        return self.objective(d_out, torch.full_like(d_out, float(label)))

    def iteration(self, it, src, trg) -> dict[str, float]:
        hp, model, d1, d2 = self.hp, self.model, self.d1, self.d2
        for lst in self.lists:
            for p in lst:
                p.grad = None
        lr = self.poly(hp.lr, it)
        self.opt_d1.zero_grad()
        self.opt_d2.zero_grad()
        self.opt_d1.lr = self.opt_d2.lr = self.poly(hp.lr_disc, it)

        for p in [*d1.parameters(), *d2.parameters()]:
            p.requires_grad = False
        pred1, pred2 = released_outputs(model, src["image"])
        seg1 = F.cross_entropy(pred1, src["label"], ignore_index=255)
        seg2 = F.cross_entropy(pred2, src["label"], ignore_index=255)
        (seg2 + hp.lambda_seg_aux * seg1).backward()

        pred_t1, pred_t2 = released_outputs(model, trg["image"])
        adv1 = self.loss(d1(F.softmax(pred_t1, dim=1)), self.source_label)
        adv2 = self.loss(d2(F.softmax(pred_t2, dim=1)), self.source_label)
        (hp.lambda_adv_aux * adv1 + hp.lambda_adv_main * adv2).backward()

        for p in [*d1.parameters(), *d2.parameters()]:
            p.requires_grad = True
        scale = 0.5 if self.halve else 1.0
        loss_d = {"loss_d_aux": 0.0, "loss_d_main": 0.0}
        for pair, label in (
            ((pred1, pred2), self.source_label),
            ((pred_t1, pred_t2), self.target_label),
        ):
            for key, disc, pred in (("loss_d_aux", d1, pair[0]), ("loss_d_main", d2, pair[1])):
                loss = self.loss(disc(F.softmax(pred.detach(), dim=1)), label) * scale
                loss.backward()
                loss_d[key] += loss.item()

        released_sgd_step(self.lists, [lr, 10 * lr], self.buffers, hp.momentum, hp.weight_decay)
        self.opt_d1.step()
        self.opt_d2.step()
        return {
            "loss_seg_src_main": seg2.item(),
            "loss_seg_src_aux": seg1.item(),
            "loss_adv_trg_main": adv2.item(),
            "loss_adv_trg_aux": adv1.item(),
            **loss_d,
        }


# --- the comparison --------------------------------------------------------------------


@pytest.fixture(scope="module")
def start():
    """Our network (DeepLab-v2, Caffe geometry, AdaptSegNet's two-branch ASPP, random
    weights) and discriminators, before any step."""
    return parity.start_networks(SWITCHES, aspp_branches=2)


@pytest.fixture(scope="module")
def restated(start):
    """The released networks (D2 judges the main head, D1 the auxiliary one), restated,
    holding our initial weights; and the name mappings (ours -> theirs)."""
    nets = (
        DeepLabMulti(NUM_CLASSES, summed=2),
        Discriminator(NUM_CLASSES),
        Discriminator(NUM_CLASSES),
    )
    return parity.restate(start, nets)


def run_released(restated, gan="vanilla", **mutation):
    """(every tensor under our names, logged losses per iteration)."""
    (model, d2, d1), names = (copy.deepcopy(m) for m in restated[0]), restated[1]
    loop = ReleasedAdaptSegNet(model, d1, d2, SWITCHES, gan, **mutation)
    logged = [
        loop.iteration(it, src, trg) for it, (src, trg) in enumerate(parity.batches(SWITCHES))
    ]
    return parity.released_state((model, d2, d1), names), logged


@pytest.fixture(scope="module")
def released(restated):
    return {gan: run_released(restated, gan) for gan in ("vanilla", "ls")}


@pytest.fixture(scope="module")
def ours(start):
    return {
        gan: parity.run_ours(start, dataclasses.replace(SWITCHES, gan=gan))
        for gan in ("vanilla", "ls")
    }


def differences(start, ours_run, released_run) -> tuple[float, float]:
    """(largest relative update difference, largest relative logged-loss difference)."""
    updates = relative_differences(parity.state(*start), ours_run[0], released_run[0])
    losses = loss_differences(ours_run[1], released_run[1])
    return max(updates.values()), max(losses.values())


@pytest.mark.parametrize("gan", ["vanilla", "ls"])
def test_adaptsegnet_updates_and_losses_as_the_released_loop(start, released, ours, gan):
    updates, losses = differences(start, ours[gan], released[gan])
    assert updates < TOLERANCE and losses < TOLERANCE, (updates, losses)
    # Every trainable tensor moved, the frozen ones stayed: BatchNorm's affine
    # parameters, and the ASPP branches the released classifier never adds (2 and 3).
    before, after = parity.state(*start), released[gan][0]
    model = start[0]
    frozen = {f"G.{k}" for k, p in model.named_parameters() if not p.requires_grad}
    assert "G.main_classifier.branches.3.weight" in frozen
    assert "G.aux_classifier.branches.2.bias" in frozen
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == (key not in frozen), key


MUTATIONS = [
    "discriminators fed entropy, not softmax (method: advent)",
    "reference: discriminator losses not halved",
    "reference: domain labels swapped (source 1, target 0)",
    "gan: ls against the vanilla loop",
    "reference: the LS loop against our vanilla",
    "adversarial weights swapped (main 2e-4, aux 1e-3)",
    "lambda_seg_aux: 0.2",
    "architecture: discriminator LeakyReLU slope 0.1",
    "architecture: ASPP sums all four branches",
    "adam: current (PyTorch >= 1.3's Adam)",
]


def mutated_run(start, restated, mutation):
    """(our run, released run) for one mutation."""
    if mutation == "reference: discriminator losses not halved":
        return None, run_released(restated, halve=False)
    if mutation.startswith("reference: domain labels swapped"):
        return None, run_released(restated, labels=(1, 0))
    if mutation.startswith("discriminators fed entropy"):
        return parity.run_ours(start, dataclasses.replace(SWITCHES, method="advent")), None
    if mutation.startswith("adversarial weights swapped"):
        cfg = dataclasses.replace(SWITCHES, lambda_adv_main=2e-4, lambda_adv_aux=1e-3)
        return parity.run_ours(start, cfg), None
    if mutation == "lambda_seg_aux: 0.2":
        return parity.run_ours(start, dataclasses.replace(SWITCHES, lambda_seg_aux=0.2)), None
    if mutation.startswith("architecture: discriminator"):
        return parity.run_ours(start, SWITCHES, tamper=parity.slope(0.1)), None
    if mutation.startswith("architecture: ASPP"):
        model = copy.deepcopy(start[0])
        for head in (model.aux_classifier, model.main_classifier):
            head.summed = 4
            head.requires_grad_(True)
        return parity.run_ours((model, *start[1:]), SWITCHES), None
    if mutation.startswith("adam: current"):
        return parity.run_ours(start, dataclasses.replace(SWITCHES, adam="current")), None
    raise ValueError(mutation)


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_mutation_is_detected(start, restated, released, ours, mutation):
    if mutation == "gan: ls against the vanilla loop":
        pair = ours["ls"], released["vanilla"]
    elif mutation == "reference: the LS loop against our vanilla":
        pair = ours["vanilla"], released["ls"]
    else:
        ours_run, released_run = mutated_run(start, restated, mutation)
        pair = ours_run or ours["vanilla"], released_run or released["vanilla"]
    updates, losses = differences(start, *pair)
    assert max(updates, losses) > 100 * TOLERANCE
