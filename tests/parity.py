"""What the parity tests (`test_parity.py`, `test_parity_adaptsegnet.py`) share: the
released code's settings as our `TrainParams`, the random batches both sides train on,
our networks and step on the project's side, and the bookkeeping that compares tensors.

The restatements of the released code stay apart from this: the networks and optimisers
in `tests/released.py` (which never imports intrada), each training loop in its test.
This module is the project's side of the comparison, so it may import intrada.
"""

from __future__ import annotations

import copy

import torch

from intrada.config import TrainParams
from intrada.models import DeepLabV2
from intrada.training import AdaptationStep, set_batchnorm
from tests.released import copy_weights, deeplab_name, discriminator_name

NUM_CLASSES = 2
HEIGHT, WIDTH = 33, 65  # odd sizes: align_corners changes every upsampled value
TOLERANCE = 1e-5


def released_settings(method: str, iterations: int, **overrides) -> TrainParams:
    """The released AdvEnt / AdaptSegNet training settings as our `TrainParams`: SGD at
    lr 2.5e-4 (momentum 0.9, weight decay 5e-4, poly power 0.9), batch 1, CE(main) +
    0.1 CE(aux), discriminators of 64 .. 512 channels trained by Adam at 1e-4,
    adversarial weights 1e-3 (main) and 2e-4 (aux), AdaptSegNet's default `--gan
    Vanilla` (ignored by other methods), and every switch at the released code's value
    (adam, batchnorm, param_listing: released); no flips, validation or probe.
    `overrides`: the fields a caller changes (schedule_iterations, a switch, ...)."""
    fields = dict(
        method=method,
        gan="vanilla",
        init="pretrained",
        iterations=iterations,
        batch_size=1,
        optimizer="sgd",
        lr=2.5e-4,
        momentum=0.9,
        weight_decay=5e-4,
        poly_power=0.9,
        lambda_seg_aux=0.1,
        lambda_seg=1.0,
        adam="released",
        batchnorm="released",
        param_listing="released",
        hflip=False,
        log_every=1,
        eval_every=0,
        select="last",
        probe_images=0,
        lr_disc=1e-4,
        lambda_adv_main=1e-3,
        lambda_adv_aux=2e-4,
        disc_channels=(64, 128, 256, 512),
    )
    return TrainParams(**(fields | overrides))


def batches(cfg: TrainParams) -> list[tuple[dict, dict]]:
    """`cfg.iterations` (source, target) batches of one random image each; the source
    labels ignore their first three rows."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(cfg.iterations):
        label = torch.randint(0, NUM_CLASSES, (1, HEIGHT, WIDTH), generator=g)
        label[:, :3] = 255  # ignored pixels
        src = {"image": torch.rand(1, 3, HEIGHT, WIDTH, generator=g), "label": label}
        out.append((src, {"image": torch.rand(1, 3, HEIGHT, WIDTH, generator=g)}))
    return out


def start_networks(cfg: TrainParams, aspp_branches: int = 4):
    """Our network (DeepLab-v2 in the Caffe file's geometry, random weights) and
    discriminators, before any step."""
    torch.manual_seed(0)
    model = DeepLabV2(
        NUM_CLASSES, weights_format="deeplab", align_corners=True, aspp_branches=aspp_branches
    )
    torch.manual_seed(1)
    set_batchnorm(model, "released")
    step = AdaptationStep(model, cfg, NUM_CLASSES)  # seeds the discriminators
    return model, step.discs.main, step.discs.aux


def restate(start, nets):
    """`nets`, the released (network, main discriminator, auxiliary discriminator)
    restated, loaded with our initial weights `start`; and the name mappings (ours ->
    theirs) the copy checked."""
    names = [
        copy_weights(ours, theirs, name)
        for ours, theirs, name in zip(
            start, nets, (deeplab_name, discriminator_name, discriminator_name), strict=True
        )
    ]
    return nets, names


def state(model, d_main, d_aux):
    """Every tensor of our networks, under our names."""
    tensors = {f"G.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"D_main.{k}": v for k, v in d_main.state_dict().items()}
    tensors |= {f"D_aux.{k}": v for k, v in d_aux.state_dict().items()}
    return {k: v.detach().clone() for k, v in tensors.items()}


def released_state(nets, names):
    """Every tensor of the restated (network, main discriminator, auxiliary
    discriminator), under our names (`names`: ours -> theirs)."""
    out = {}
    for prefix, net, mapping in zip(("G", "D_main", "D_aux"), nets, names, strict=True):
        theirs = net.state_dict()
        out |= {f"{prefix}.{k}": theirs[v].detach().clone() for k, v in mapping.items()}
    return out


def run_ours(start, cfg: TrainParams, align_corners=True, tamper=None):
    """(every tensor of ours after our `AdaptationStep` trained `batches` from `start`,
    the losses it logged per iteration); `tamper(model, step)` changes our networks
    first."""
    model, d_main, d_aux = (copy.deepcopy(m) for m in start)
    model.align_corners = align_corners
    set_batchnorm(model, cfg.batchnorm)
    step = AdaptationStep(model, cfg, NUM_CLASSES)
    step.discs.main.load_state_dict(d_main.state_dict())
    step.discs.aux.load_state_dict(d_aux.state_dict())
    if tamper is not None:
        tamper(model, step)
    logged = []
    for it, (src, trg) in enumerate(batches(cfg)):
        step.set_iteration(it)
        logged.append(step(src, trg))
    return state(model, step.discs.main, step.discs.aux), logged


def slope(value):
    """A tamper: our discriminators' LeakyReLU slope set to `value`."""

    def tamper(model, step):
        for disc in (step.discs.main, step.discs.aux):
            for module in disc.modules():
                if isinstance(module, torch.nn.LeakyReLU):
                    module.negative_slope = value

    return tamper
