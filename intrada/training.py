"""Training: one adaptation step serves source-only, AdvEnt, MinEnt and AdaptSegNet
training, for inter- and intra-domain adaptation alike; only the data fed to it differ.

The "source-like" side carries labels (source labels, or pseudo-labels of the easy
split); the target side carries none (target-train, or the hard split).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from intrada import faults
from intrada.classes import IGNORE_INDEX
from intrada.compute import CPU, Compute, mean_across
from intrada.config import ADVERSARIAL_METHODS, TrainParams
from intrada.data import EndlessBatches, SegmentationSet, loader
from intrada.entropy import self_information
from intrada.errors import IntradaError
from intrada.losses import (
    SOURCE_LABEL,
    TARGET_LABEL,
    adversarial_loss,
    entropy_loss,
    least_squares_loss,
    segmentation_loss,
)
from intrada.models import EntropyDiscriminator, upsample
from intrada.resume import Checkpoints
from intrada.selection import CRITERIA, TargetProbe
from intrada.validation import Selection, validation_miou

log = logging.getLogger(__name__)

# Sampler streams: source-like and target batches follow independent orders.
SOURCE_STREAM, TARGET_STREAM = 1, 2
# AdvEnt's and AdaptSegNet's discriminator optimiser: Adam with beta2 = 0.99.
DISC_BETAS = (0.9, 0.99)
ADAM_EPS = 1e-8  # PyTorch's default, then and now


class Diverged(IntradaError):
    """Training met a non-finite loss, or non-finite weights after a step (a non-finite
    gradient), at `iteration`: nothing of that state may be written."""

    def __init__(self, iteration: int, total: int, what: str, lr: float):
        self.iteration, self.total, self.what, self.lr = iteration, total, what, lr
        super().__init__(
            f"{what} at iteration {iteration} of {total} (lr {lr:.3g}): training diverged"
        )


def non_finite_loss(losses: dict[str, float]) -> str | None:
    """`<loss name> = <value>` of the first non-finite loss, or None. The losses are
    Python floats already (the step's `.item()` calls): no extra device work."""
    for name, value in losses.items():
        if not math.isfinite(value):
            return f"{name} = {value}"
    return None


def agree_on_divergence(found: str | None, compute: Compute) -> str | None:
    """Under DDP, every process stops when any one diverged (one all-reduce of a flag):
    a process left training alone would wait forever in the next collective."""
    if not compute.distributed:
        return found
    flag = torch.tensor([0.0 if found is None else 1.0], device=compute.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() == 0.0:
        return None
    return found or "a non-finite value on another process"


def non_finite_weights(model: nn.Module) -> str | None:
    """`weights <name> = nan` of the first non-finite parameter or buffer, or None.
    Checked before a checkpoint or model file is written (a pass over the weights: every
    `checkpoint_every` iterations, not every step), so that a non-finite gradient with
    finite losses is never saved either."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"weights {name} = {tensor[~torch.isfinite(tensor)].flatten()[0].item()}"
    return None


def poly_lr(base_lr: float, it: int, total: int, power: float) -> float:
    """DeepLab's "poly" schedule: base_lr * (1 - it / total) ** power."""
    return base_lr * (1.0 - it / total) ** power


BATCHNORM_MODES = ("train", "frozen", "released")


def set_batchnorm(model: nn.Module, mode: str) -> None:
    """Put `model` in training mode with its BatchNorm layers as `mode` says:

    - `train`: batch statistics, affine parameters trained, running statistics updated;
    - `frozen`: eval mode (running statistics used and kept), affine parameters frozen;
    - `released`: the released AdvEnt / IntraDA code's behaviour: train mode (each batch
      normalised with its own statistics, batch-1 images with their own), affine
      parameters frozen, running statistics updated by every forward, source and target
      alike (momentum 0.1); evaluation then uses those drifted statistics.

    Idempotent: training calls it again after each validation (which runs in eval mode).
    Under DDP each process normalises its own images (no SyncBatchNorm: the released code
    normalises each batch-1 image alone) and DDP broadcasts rank 0's running statistics
    at every forward, so the model file holds rank 0's.
    """
    if mode not in BATCHNORM_MODES:
        raise ValueError(f"unknown batchnorm mode {mode!r}; expected one of {BATCHNORM_MODES}")
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if mode == "frozen":
                module.eval()
            for p in module.parameters():
                p.requires_grad_(mode == "train")


class ListedSGD(torch.optim.Optimizer):
    """SGD with momentum over parameter lists that may name a tensor several times: each
    listing is one momentum update, applied in turn, as the released DeepLab-v2 code got
    from `torch.optim.SGD` of its time (PyTorch 0.4.1 to 1.4) when it listed backbone
    tensors once per enclosing module.

    For a tensor p listed k times, with gradient g, one step is, k times over:
    d += weight_decay * p (d starts as g and keeps what was added: those PyTorch
    versions added weight decay into the gradient in place), buf = momentum * buf + d
    (buf = d the first time), p -= lr * buf. Listed once, this is plain SGD.

    Written out instead of handing the duplicated lists to `torch.optim.SGD`, which on
    PyTorch 2 warns that duplicates will become an error, gives every duplicate of the
    first step a fresh buffer, does not accumulate weight decay, and computes something
    else again in its multi-tensor (CUDA default) path.
    """

    def __init__(self, groups: list[dict], lr: float, momentum: float, weight_decay: float):
        collapsed = []
        for group in groups:
            unique: dict[int, nn.Parameter] = {}
            repeats: dict[int, int] = {}
            for p in group["params"]:
                unique.setdefault(id(p), p)
                repeats[id(p)] = repeats.get(id(p), 0) + 1
            collapsed.append(
                {**group, "params": list(unique.values()), "repeats": list(repeats.values())}
            )
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(collapsed, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            for p, repeats in zip(group["params"], group["repeats"], strict=True):
                if p.grad is None:
                    continue
                d_p = p.grad.clone()
                state = self.state[p]
                for _ in range(repeats):
                    if decay != 0:
                        d_p.add_(p, alpha=decay)
                    if momentum != 0:
                        buf = state.get("momentum_buffer")
                        if buf is None:
                            buf = state["momentum_buffer"] = d_p.clone()
                        else:
                            buf.mul_(momentum).add_(d_p)
                        p.add_(buf, alpha=-lr)
                    else:
                        p.add_(d_p, alpha=-lr)
        return None


class ReleasedAdam(torch.optim.Optimizer):
    """Adam as PyTorch computed it before 1.3 (0.4.1 and the 0.2-0.4 versions the
    released AdvEnt, AdaptSegNet and IntraDA code ran on).

    With gradient g (plus weight_decay * p, added into it as L2), step t, m and v the
    running first and second moments (m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2):

        p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

    eps is added to sqrt(v) *before* the bias correction, so it acts as
    eps / sqrt(1 - b2^t) against the bias-corrected sqrt(v_hat): 10x eps at the first
    step with b2 = 0.99, fading over a few hundred steps. PyTorch >= 1.3 (`torch.optim.
    Adam`) computes lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). The two agree
    where sqrt(v_hat) >> eps and differ for tensors with tiny gradients.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = ADAM_EPS,
        weight_decay: float = 0.0,
    ):
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = exp_avg_sq.sqrt().add_(eps)
                step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return None


def adam(
    params, cfg: TrainParams, lr: float, betas: tuple[float, float], weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """An Adam optimiser with the arithmetic `cfg.adam` names."""
    if cfg.adam == "released":
        return ReleasedAdam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)


def make_optimizer(model: nn.Module, cfg: TrainParams) -> torch.optim.Optimizer:
    """SGD or Adam (its arithmetic as `cfg.adam` says) over the model's parameter
    groups (listed as `cfg.param_listing` says), each with its lr multiplier."""
    groups = [
        {"params": [p for p in params if p.requires_grad], "lr": cfg.lr * mult, "lr_mult": mult}
        for params, mult in model.param_groups(cfg.param_listing)
    ]
    if cfg.param_listing == "released":
        return ListedSGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return adam(groups, cfg, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


@dataclass
class Discriminators:
    """The two discriminators (main and auxiliary head) of AdvEnt or AdaptSegNet and
    their optimiser (one Adam over both: Adam updates each tensor on its own, so this
    equals the released code's two optimisers).

    Under DDP, `train_main` / `train_aux` are the synchronised wrappers used to train
    them; the segmentation network's adversarial term calls the bare modules (frozen
    then), so only the discriminators' own step averages their gradients.
    """

    main: EntropyDiscriminator
    aux: EntropyDiscriminator
    optimizer: torch.optim.Optimizer
    train_main: nn.Module
    train_aux: nn.Module

    @classmethod
    def create(cls, num_classes: int, cfg: TrainParams, compute: Compute) -> Discriminators:
        main = compute.module(EntropyDiscriminator(num_classes, cfg.disc_channels))
        aux = compute.module(EntropyDiscriminator(num_classes, cfg.disc_channels))
        params = list(main.parameters()) + list(aux.parameters())
        optimizer = adam(params, cfg, lr=cfg.lr_disc, betas=DISC_BETAS)
        return cls(
            main, aux, optimizer, _ddp(DomainPair(main), compute), _ddp(DomainPair(aux), compute)
        )

    def requires_grad(self, flag: bool) -> None:
        for p in list(self.main.parameters()) + list(self.aux.parameters()):
            p.requires_grad_(flag)


class DomainPair(nn.Module):
    """A discriminator applied to a source and a target map in one forward (one DDP
    forward per backward; the two maps may differ in size)."""

    def __init__(self, disc: nn.Module):
        super().__init__()
        self.disc = disc

    def forward(self, map_src: torch.Tensor, map_trg: torch.Tensor):
        return self.disc(map_src), self.disc(map_trg)


def _ddp(module: nn.Module, compute: Compute) -> nn.Module:
    """The module wrapped for DDP when several processes train; itself otherwise."""
    if not compute.distributed:
        return module
    ids = [compute.device.index] if compute.cuda else None
    return DistributedDataParallel(module, device_ids=ids)


class AdaptationStep:
    """One optimisation step of the segmentation network (and discriminators).

    1. Source-like batch: `lambda_seg` times (cross-entropy on the main head plus
       `lambda_seg_aux` times the auxiliary head's). With `lambda_seg` 0 the batch still
       runs forward (the discriminators see its maps) but without a graph.
    2. Target batch: softmax maps P of both heads. advent asks the frozen discriminators
       to call their self-information maps I "source", adaptsegnet asks the same of P
       itself (output-space adaptation), minent minimises their entropy.
    3. advent / adaptsegnet: the discriminators learn source maps = 0, target maps = 1,
       each domain's loss halved (BCE, or with adaptsegnet's `gan: ls` the mean squared
       error of the raw outputs), reusing the maps computed above (detached) instead of
       running the network again.

    Network forwards run under `compute.autocast()`; their outputs are cast to fp32
    before softmax, entropy and every loss.
    """

    def __init__(
        self, model: nn.Module, cfg: TrainParams, num_classes: int, compute: Compute = CPU
    ):
        self.model, self.cfg, self.compute = model, cfg, compute
        # Frozen parameters (BatchNorm) must be frozen before DDP sees the model.
        self.net = compute.compiled(_ddp(model, compute))
        self.optimizer = make_optimizer(model, cfg)
        self.discs = (
            Discriminators.create(num_classes, cfg, compute)
            if cfg.method in ADVERSARIAL_METHODS
            else None
        )

    def set_iteration(self, it: int) -> None:
        total = self.cfg.schedule_iterations or self.cfg.iterations
        set_lr(self.optimizer, poly_lr(self.cfg.lr, it, total, self.cfg.poly_power))
        if self.discs is not None:
            set_lr(self.discs.optimizer, poly_lr(self.cfg.lr_disc, it, total, self.cfg.poly_power))

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(aux, main) class scores in fp32 at the images' size."""
        images = self.compute.images(images)
        with self.compute.autocast():
            outputs = self.net(images)
        size = tuple(images.shape[-2:])
        return tuple(upsample(p.float(), size, self.model.align_corners) for p in outputs)

    def _discriminate(self, disc: nn.Module, maps: torch.Tensor) -> torch.Tensor:
        with self.compute.autocast():
            return disc(maps).float()

    def _disc_input(self, prob: torch.Tensor) -> torch.Tensor:
        """What the discriminators see of a softmax map: its self-information (advent)
        or the map itself (adaptsegnet)."""
        return self_information(prob) if self.cfg.method == "advent" else prob

    def _gan_loss(self, d_out: torch.Tensor, label: float) -> torch.Tensor:
        """The GAN objective for one domain label: BCE on the logits, or (adaptsegnet's
        `gan: ls`) the mean squared error of the raw outputs, for the discriminators'
        loss and the network's adversarial term alike, as AdaptSegNet's `--gan LS`."""
        if self.cfg.method == "adaptsegnet" and self.cfg.gan == "ls":
            return least_squares_loss(d_out, label)
        return adversarial_loss(d_out, label)

    def _segmentation_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the labelled pixels. Across processes the mean is taken
        over all processes' labelled pixels (DDP then averages the gradients), so N
        processes step as one process with their batches together would."""
        if not self.compute.distributed:
            return segmentation_loss(logits, labels)
        total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        count = (labels != IGNORE_INDEX).sum().to(torch.float64)
        dist.all_reduce(count)
        return total * self.compute.world / count.clamp(min=1).to(total.dtype)

    def __call__(self, src: dict, trg: dict | None) -> dict[str, float]:
        cfg, losses = self.cfg, {}
        self.optimizer.zero_grad(set_to_none=True)
        if self.discs is not None:
            self.discs.requires_grad(False)

        labels = src["label"].to(self.compute.device, non_blocking=True)
        # lambda_seg = 0: no graph, no backward (the maps still feed the discriminators).
        with torch.set_grad_enabled(cfg.lambda_seg > 0):
            pred_src_aux, pred_src_main = self._forward(src["image"])
            loss_seg_src_main = self._segmentation_loss(pred_src_main, labels)
            loss_seg_src_aux = self._segmentation_loss(pred_src_aux, labels)
        if cfg.lambda_seg > 0:
            # Backward per domain, as the reference code does: frees the source graph first.
            (
                cfg.lambda_seg * (loss_seg_src_main + cfg.lambda_seg_aux * loss_seg_src_aux)
            ).backward()
        losses["loss_seg_src_main"] = loss_seg_src_main.item()
        losses["loss_seg_src_aux"] = loss_seg_src_aux.item()

        if cfg.method != "source_only":
            pred_trg_aux, pred_trg_main = self._forward(trg["image"])
            prob_trg_main = F.softmax(pred_trg_main, dim=1)
            prob_trg_aux = F.softmax(pred_trg_aux, dim=1)
            if self.discs is not None:
                map_trg_main = self._disc_input(prob_trg_main)
                map_trg_aux = self._disc_input(prob_trg_aux)
                loss_adv_trg_main = self._gan_loss(
                    self._discriminate(self.discs.main, map_trg_main), SOURCE_LABEL
                )
                loss_adv_trg_aux = self._gan_loss(
                    self._discriminate(self.discs.aux, map_trg_aux), SOURCE_LABEL
                )
                (
                    cfg.lambda_adv_main * loss_adv_trg_main + cfg.lambda_adv_aux * loss_adv_trg_aux
                ).backward()
                losses["loss_adv_trg_main"] = loss_adv_trg_main.item()
                losses["loss_adv_trg_aux"] = loss_adv_trg_aux.item()
            else:
                loss_ent_trg_main = entropy_loss(prob_trg_main)
                loss_ent_trg_aux = entropy_loss(prob_trg_aux)
                (
                    cfg.lambda_ent_main * loss_ent_trg_main + cfg.lambda_ent_aux * loss_ent_trg_aux
                ).backward()
                losses["loss_ent_trg_main"] = loss_ent_trg_main.item()
                losses["loss_ent_trg_aux"] = loss_ent_trg_aux.item()
        self.optimizer.step()

        if self.discs is not None:
            losses.update(
                self._discriminator_step(
                    pred_src_main.detach(),
                    pred_src_aux.detach(),
                    map_trg_main.detach(),
                    map_trg_aux.detach(),
                )
            )
        return losses

    def _discriminator_step(self, pred_src_main, pred_src_aux, map_trg_main, map_trg_aux):
        discs = self.discs
        discs.requires_grad(True)
        discs.optimizer.zero_grad(set_to_none=True)
        map_src_main = self._disc_input(F.softmax(pred_src_main, dim=1))
        map_src_aux = self._disc_input(F.softmax(pred_src_aux, dim=1))
        loss_d_main = self._domain_loss(discs.train_main, map_src_main, map_trg_main)
        loss_d_aux = self._domain_loss(discs.train_aux, map_src_aux, map_trg_aux)
        (loss_d_main + loss_d_aux).backward()
        discs.optimizer.step()
        return {"loss_d_main": loss_d_main.item(), "loss_d_aux": loss_d_aux.item()}

    def _domain_loss(self, pair: nn.Module, map_src: torch.Tensor, map_trg: torch.Tensor):
        """(loss(D(source), 0) + loss(D(target), 1)) / 2, loss = the GAN objective."""
        with self.compute.autocast():
            out_src, out_trg = pair(map_src, map_trg)
        return (
            self._gan_loss(out_src.float(), SOURCE_LABEL)
            + self._gan_loss(out_trg.float(), TARGET_LABEL)
        ) / 2


def train(
    model: nn.Module,
    source: SegmentationSet,
    target: SegmentationSet | None,
    cfg: TrainParams,
    seed: int,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    run_key: int = 0,
    compute: Compute = CPU,
    checkpoints: Checkpoints | None = None,
    val_set: SegmentationSet | None = None,
    on_val: Callable[[int, float | None, dict[str, float] | None], None] | None = None,
    probe: TargetProbe | None = None,
) -> Selection:
    """Train `model` in place for `cfg.iterations` steps; returns its validation record.

    `on_log(iteration, mean_losses)` is called every `cfg.log_every` iterations and at
    the end, with the losses averaged since the previous call (and over processes) and
    the learning rate; only the main process calls it. `run_key` tells successive runs
    with one seed apart, so that (say) inter training does not replay the source-only
    run's batch order. With several processes each trains on its share of every step's
    batches (`EndlessBatches`), `cfg.batch_size` images per process.

    With `val_set` and/or `probe` (unlabelled target-train images), the main process
    validates every `cfg.eval_every` iterations and at the last one (the others wait):
    the mIoU on `val_set` and the probe's label-free criteria (`intrada.selection`), then
    `on_val(iteration, mIoU, criteria)` (None for what it lacks). Validation changes
    nothing in training: it runs in eval mode without gradients, restores the BatchNorm
    mode after, and leaves the RNG as it was. With `cfg.select` other than last the
    model ends with the weights of the snapshot it selects (best on `val_set`, or best
    by a criterion) instead of the last.

    With `checkpoints`, an unfinished checkpoint of the same run is resumed from (its
    logged curves are replayed through `on_log` and `on_val` first, and the best
    snapshot so far comes back with it) and a new one is written when due; the result
    is bit-identical on the CPU to a run that was never interrupted.

    A non-finite loss stops training at that iteration (every process, under DDP), and
    non-finite weights at the next checkpoint or at the end: `Diverged` is raised before
    anything of that state is written, so the last checkpoint written stays as it was.
    """
    if cfg.method != "source_only" and target is None:
        raise ValueError(f"method {cfg.method} needs a target set")
    if cfg.select == "best_val" and (val_set is None or cfg.eval_every == 0):
        raise ValueError("select = best_val needs a validation set and eval_every > 0")
    if cfg.select in CRITERIA and (probe is None or cfg.eval_every == 0):
        raise ValueError(f"select = {cfg.select} needs a target probe and eval_every > 0")
    model = compute.module(model)
    set_batchnorm(model, cfg.batchnorm)
    # Discriminator initialisation: a seed derived from both, so no two (seed, run) collide.
    torch.manual_seed(int(np.random.SeedSequence([seed, run_key]).generate_state(1)[0]))
    step = AdaptationStep(model, cfg, source.num_classes, compute)
    validates = val_set is not None or probe is not None
    selection = Selection(cfg.select, cfg.eval_every if validates else 0)
    start, window, history = 0, {}, []
    resumed = checkpoints.load() if checkpoints is not None else None
    if resumed is not None:
        start, window, history = restore(step, resumed, selection)
        if compute.main and on_log is not None:
            for iteration, means in history:
                on_log(iteration, means)
        if compute.main and on_val is not None:
            criteria = dict(selection.criteria)
            for iteration, miou in selection.curve:
                on_val(iteration, miou, criteria.get(iteration))

    def batches(dataset, stream):
        sampler = EndlessBatches(
            len(dataset),
            cfg.batch_size,
            seed,
            (run_key, stream),
            cfg.hflip,
            start=start,
            stop=cfg.iterations,
            rank=compute.rank,
            world=compute.world,
        )
        return iter(loader(dataset, sampler, compute.num_workers, pin_memory=compute.cuda))

    src_iter = batches(source, SOURCE_STREAM)
    trg_iter = batches(target, TARGET_STREAM) if cfg.method != "source_only" else None
    if resumed is not None:
        # After the loaders: each draws its base seed from this stream when its iterator
        # is made, as the interrupted run's did before it saved the state. Restored
        # earlier, the stream would run those draws ahead and every later checkpoint
        # would hold another RNG state than the uninterrupted run's.
        torch.set_rng_state(resumed["torch_rng"])
    bar = tqdm(
        range(start, cfg.iterations),
        desc="train",
        unit="it",
        file=sys.stderr,
        disable=None if compute.main else True,
        dynamic_ncols=True,
    )
    for it in bar:
        step.set_iteration(it)
        losses = step(next(src_iter), next(trg_iter) if trg_iter is not None else None)
        diverged = agree_on_divergence(non_finite_loss(losses), compute)
        if diverged is not None:
            raise Diverged(it + 1, cfg.iterations, diverged, step.optimizer.param_groups[0]["lr"])
        for key, value in losses.items():
            window.setdefault(key, []).append(value)
        last = it + 1 == cfg.iterations
        if (it + 1) % cfg.log_every == 0 or last:
            means = mean_across({k: sum(v) / len(v) for k, v in window.items()}, compute)
            means["lr"] = step.optimizer.param_groups[0]["lr"]
            window.clear()
            history.append((it + 1, means))
            if compute.main:
                bar.set_postfix(seg=f"{means['loss_seg_src_main']:.3f}")
                if not sys.stderr.isatty():
                    log.info(
                        "iteration %d/%d %s",
                        it + 1,
                        cfg.iterations,
                        " ".join(f"{k}={v:.4g}" for k, v in means.items()),
                    )
                if on_log is not None:
                    on_log(it + 1, means)
        if selection.due(it + 1, cfg.iterations):
            if compute.main:
                miou = criteria = None
                if val_set is not None:
                    miou = validation_miou(model, val_set, cfg.batch_size, compute)
                if probe is not None:
                    criteria = probe.criteria(model, compute)
                set_batchnorm(model, cfg.batchnorm)  # validation ran in eval mode
                selection.record(it + 1, miou, model, criteria)
                log.info(
                    "iteration %d/%d val mIoU %s%s",
                    it + 1,
                    cfg.iterations,
                    miou,
                    "".join(f" {k} {v:.5f}" for k, v in (criteria or {}).items()),
                )
                if on_val is not None:
                    on_val(it + 1, miou, criteria)
            if compute.distributed:
                dist.barrier()  # the other processes wait for the main one's validation
        if (checkpoints is not None and checkpoints.due(it + 1, cfg.iterations)) or last:
            bad_weights = agree_on_divergence(non_finite_weights(model), compute)
            if bad_weights is not None:
                lr = step.optimizer.param_groups[0]["lr"]
                raise Diverged(it + 1, cfg.iterations, bad_weights, lr)
        if checkpoints is not None and compute.main and checkpoints.due(it + 1, cfg.iterations):
            checkpoints.save(snapshot(step, it + 1, window, history, selection), complete=last)
            if not last:
                faults.point("trained", checkpoints.path)
    if cfg.select != "last" and compute.main and selection.best_state is not None:
        model.load_state_dict(selection.best_state)
    model.cpu()
    return selection


def snapshot(
    step: AdaptationStep, iteration: int, window: dict, history: list, selection: Selection
) -> dict:
    """Everything the rest of a run depends on, as plain types and tensors (with
    `select: best_val`, the best snapshot so far too)."""
    state = {
        "iteration": iteration,
        "model": step.model.state_dict(),
        "optimizer": step.optimizer.state_dict(),
        "window": {k: list(v) for k, v in window.items()},
        "history": [[i, dict(m)] for i, m in history],
        "validation": selection.state(),
        "torch_rng": torch.get_rng_state(),
    }
    if step.discs is not None:
        state["disc_main"] = step.discs.main.state_dict()
        state["disc_aux"] = step.discs.aux.state_dict()
        state["disc_optimizer"] = step.discs.optimizer.state_dict()
    return state


def restore(step: AdaptationStep, state: dict, selection: Selection) -> tuple[int, dict, list]:
    """Load a snapshot into `step` and `selection`; returns (iteration, loss window,
    logged history). The RNG state is the caller's to restore (`train`: after its data
    loaders are made)."""
    step.model.load_state_dict(state["model"])
    selection.restore(state["validation"])
    step.optimizer.load_state_dict(state["optimizer"])
    if step.discs is not None:
        step.discs.main.load_state_dict(state["disc_main"])
        step.discs.aux.load_state_dict(state["disc_aux"])
        step.discs.optimizer.load_state_dict(state["disc_optimizer"])
    window = {k: list(v) for k, v in state["window"].items()}
    history = [(int(i), dict(m)) for i, m in state["history"]]
    return int(state["iteration"]), window, history
