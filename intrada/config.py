"""Typed, validated params: one frozen dataclass per section of params.yaml.

Every key a stage uses must be written in params.yaml (no hidden defaults), so that
DVC tracks every value that shapes an artifact. Unknown keys, wrong types and
out-of-range values raise `ParamsError` with one line naming the key and what is allowed.
Library code never reads params.yaml: stages parse their sections here and pass the
objects on.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from intrada.classes import (
    CITYSCAPES_ID,
    TABLE_ENCODING,
    ClassSet,
    dataset_classes,
    read_class_table,
)
from intrada.errors import IntradaError

PARAMS_FILE = "params.yaml"


class ParamsError(IntradaError):
    """A params.yaml value that is missing, unknown, mistyped or out of range."""


def _fail(key: str, value: Any, expected: str) -> typing.NoReturn:
    raise ParamsError(f"{PARAMS_FILE}: {key} = {value!r} is invalid: expected {expected}")


def _queue_hint(path: Path) -> str:
    """Queued and --temp experiments run in a copy of the git-tracked files, without the
    git-ignored data/raw/ links: a relative path there finds nothing."""
    return "" if path.is_absolute() else "; queued experiments need an absolute path"


# --- sections -------------------------------------------------------------------------


# The embedded benchmark's folders: `generate_data` writes them, `index_data` reads them.
SYNTHETIC_ROOTS = {"source_root": "data/synthetic/source", "target_root": "data/synthetic/target"}
# A file key's value when there is no such file: dvc.yaml declares every such key as a
# dependency, and a dependency must exist. This is the stamp of check_params, which every
# stage already depends on and which stays constant while params are valid.
NO_FILE = "data/params.ok"
# The target's folders in the Cityscapes layout, under data.target_root.
CITYSCAPES_TARGET = {
    "target_train": "leftImg8bit/train",
    "target_train_labels": "gtFine/train",
    "target_val_images": "leftImg8bit/val",
    "target_val_labels": "gtFine/val",
}
TARGET_PATHS = tuple(CITYSCAPES_TARGET)


@dataclass(frozen=True)
class DataParams:
    """The datasets: a labelled source adapted to a target.

    `name` is the source dataset: `synthetic` (the embedded benchmark, which the pipeline
    generates under data/synthetic), `gta5`, `synthia` or `synscapes` (read in place from
    their roots). It picks the source layout and the built-in class table.

    The target is in the Cityscapes layout (`target_layout: cityscapes`, under
    `target_root`) or a folder tree of your own images (`folder`). Either way the four
    target keys name the folders stages read (dvc.yaml declares them as dependencies):
    for Cityscapes, the usual subfolders of `target_root`; for a folder, target-train's
    images, and optionally labels of target-train (ranking diagnostics only) and a
    labelled target-val (images and label PNGs matched by place and name), each `NO_FILE`
    when there is none.

    `classes` is `builtin` (the table of `name`; `class_table` is `NO_FILE`) or `table`
    (the class table file `class_table`, `intrada.classes.read_class_table`).
    """

    name: Literal["synthetic", "gta5", "synthia", "synscapes"]
    source_root: str  # folder of the source dataset (in its layout)
    target_layout: Literal["cityscapes", "folder"]
    target_root: str | None  # the Cityscapes root (leftImg8bit/, gtFine/); null for a folder
    target_train: str  # unlabelled target-train images
    target_train_labels: str  # their labels (diagnostics only), or NO_FILE
    target_val_images: str  # labelled target-val: images ...
    target_val_labels: str  # ... and their labels; both NO_FILE when there is none
    classes: Literal["builtin", "table"]
    class_table: str  # the class table file when classes is table; else NO_FILE
    source_size: tuple[int, ...]  # (width, height) source images are resized to
    target_size: tuple[int, ...]  # (width, height) target images are resized to
    # The validation pass (index_data): labels are always decoded; images are checked
    # for intact files (`header`: header and chunk checksums) or decoded (`decode`).
    verify: Literal["header", "decode"]
    # A source pair whose label size differs from its image: `stop` (an error naming the
    # file), `drop` (left out) or `resize` (kept: image and label are each resized to
    # source_size, as the released code does with GTA5).
    size_mismatch: Literal["stop", "drop", "resize"]

    @property
    def has_target_val(self) -> bool:
        """Whether there is a labelled target-val set (mIoU can be measured)."""
        return self.target_val_labels != NO_FILE

    @property
    def has_target_train_labels(self) -> bool:
        return self.target_train_labels != NO_FILE

    @property
    def target_label_set(self) -> str:
        """The class table's label set of the target's labels."""
        return "cityscapes" if self.target_layout == "cityscapes" else "target"

    def check(self, key: str, roots: tuple[str, ...] = ("source_root", "target_root")) -> None:
        """`roots`: the dataset folders that must exist (a command that reads only the
        target leaves out the source's)."""
        for name in ("source_size", "target_size"):
            size = getattr(self, name)
            if len(size) != 2 or min(size) < 16:
                _fail(f"{key}.{name}", list(size), "[width, height], each at least 16 pixels")
        if self.name == "synthetic":
            for name, expected in SYNTHETIC_ROOTS.items():
                if name in roots and getattr(self, name) != expected:
                    _fail(
                        f"{key}.{name}",
                        getattr(self, name),
                        f"{expected} for the synthetic benchmark (where generate_data writes it)",
                    )
            if self.target_layout != "cityscapes":
                _fail(
                    f"{key}.target_layout",
                    self.target_layout,
                    "cityscapes for the synthetic benchmark (generate_data writes that layout)",
                )
        else:
            source = Path(self.source_root)
            if "source_root" in roots and not source.is_dir():
                _fail(
                    f"{key}.source_root",
                    self.source_root,
                    f"an existing folder (the {self.name} root){_queue_hint(source)}",
                )
            if "target_root" in roots and self.target_layout == "cityscapes":
                target = Path(self.target_root or "")
                if self.target_root is None or not target.is_dir():
                    _fail(
                        f"{key}.target_root",
                        self.target_root,
                        f"an existing folder (the Cityscapes root){_queue_hint(target)}",
                    )
        if (self.target_val_images == NO_FILE) != (self.target_val_labels == NO_FILE):
            named = (
                "target_val_labels" if self.target_val_images == NO_FILE else "target_val_images"
            )
            _fail(
                f"{key}.{named}",
                getattr(self, named),
                f"{NO_FILE} like the other target_val key (a labelled target-val has both "
                "images and labels, or neither)",
            )
        if self.target_layout == "folder" and "target_root" in roots:
            self._check_folders(key)
        if self.classes == "builtin" and self.class_table != NO_FILE:
            _fail(
                f"{key}.class_table", self.class_table, f"{NO_FILE} when {key}.classes is builtin"
            )
        if self.classes == "table" and (
            self.class_table == NO_FILE or not Path(self.class_table).is_file()
        ):
            _fail(
                f"{key}.class_table",
                self.class_table,
                f"an existing class table file when {key}.classes is table"
                + _queue_hint(Path(self.class_table)),
            )

    def _check_folders(self, key: str) -> None:
        if self.target_root is not None:
            _fail(
                f"{key}.target_root",
                self.target_root,
                "null with target_layout folder (the folder layout names its folders in "
                "target_train, target_train_labels, target_val_images, target_val_labels)",
            )
        train = Path(self.target_train)
        if self.target_train == NO_FILE or not train.is_dir():
            _fail(
                f"{key}.target_train",
                self.target_train,
                f"an existing folder of images{_queue_hint(train)}",
            )
        for name in ("target_train_labels", "target_val_images", "target_val_labels"):
            value = getattr(self, name)
            if value != NO_FILE and not Path(value).is_dir():
                _fail(
                    f"{key}.{name}",
                    value,
                    f"an existing folder, or {NO_FILE} for none{_queue_hint(Path(value))}",
                )


@dataclass(frozen=True)
class SyntheticParams:
    """The embedded procedural benchmark (no download), generated by the pipeline.

    `draw` seeds the benchmark itself (its scenes, looks and severities), apart from the
    top-level `seed` that seeds training (initialisation, data order): a training seed
    can be varied on one fixed benchmark, or the benchmark redrawn."""

    draw: int  # which benchmark: the seed of its random scenes
    height: int  # image height in pixels
    width: int  # image width in pixels
    num_source: int  # labelled source images
    num_target_train: int  # unlabelled target images (adapted on, then ranked)
    num_target_val: int  # labelled target images for evaluation
    severity_alpha: float  # target nuisance severity ~ Beta(alpha, beta) in [0, 1]
    severity_beta: float

    def check(self, key: str) -> None:
        _non_negative(f"{key}.draw", self.draw)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < 16 or value % 8:
                _fail(f"{key}.{name}", value, "a multiple of 8, at least 16")
        for name in ("num_source", "num_target_val"):
            _positive(f"{key}.{name}", getattr(self, name))
        if self.num_target_train < 2:
            _fail(
                f"{key}.num_target_train",
                self.num_target_train,
                "an integer >= 2 (it is split into easy and hard)",
            )
        _positive(f"{key}.severity_alpha", self.severity_alpha)
        _positive(f"{key}.severity_beta", self.severity_beta)


@dataclass(frozen=True)
class GenerateParams:
    """Datasets the pipeline writes itself (`dvc.yaml` has one generate_data stage per
    entry): the synthetic benchmark, or none (`generate: {}`) for real datasets."""

    synthetic: SyntheticParams | None = None

    def check(self, key: str) -> None:
        pass


@dataclass(frozen=True)
class ModelParams:
    """The segmentation network (main and auxiliary heads).

    `small`: the CPU-friendly default (`width` base channels). `deeplabv2`: DeepLab-v2
    ResNet-101 as in the paper; `weights_format` says which ImageNet file it is built for
    (`torchvision` or the reference code's Caffe-converted `deeplab`), and `pretrained`
    names that local file, loaded by training sections whose `init` is `pretrained`.

    `align_corners` is how every bilinear upsampling of the network's class scores is
    done: training losses, entropy maps, scores, pseudo-labels, validation and
    evaluation (the released code uses true everywhere). It is part of the architecture
    stored in the model file, so every stage follows the model it loads.

    `aspp_branches` (deeplabv2 only) is how many of the four ASPP branches (dilations 6,
    12, 18, 24) each classifier sums: 4 is DeepLab-v2 as published and as the released
    AdvEnt / IntraDA code runs it; 2 is the released AdaptSegNet network, whose
    classifier returns after adding the second branch (an early `return` its authors
    acknowledged; the other two branches exist, untrained). Unset = 4. Architecture too.
    """

    name: Literal["small", "deeplabv2"]
    align_corners: bool
    # The local ImageNet weights file, or NO_FILE when no section starts from it. dvc.yaml
    # declares it as a dependency of every training stage, so that replacing the file in
    # place re-runs them (a path param alone would not notice).
    pretrained: str
    width: int | None = None
    weights_format: Literal["torchvision", "deeplab"] | None = None
    aspp_branches: int | None = None

    def check(self, key: str) -> None:
        needed = {"small": "width", "deeplabv2": "weights_format"}[self.name]
        if getattr(self, needed) is None:
            raise ParamsError(
                f"{PARAMS_FILE}: {key}.{needed} is missing: model {self.name} needs it"
            )
        if self.width is not None:
            _positive(f"{key}.width", self.width)
        if self.aspp_branches is not None:
            if self.name != "deeplabv2":
                _fail(
                    f"{key}.aspp_branches",
                    self.aspp_branches,
                    f"no value for model {self.name} (a DeepLab-v2 key; remove it)",
                )
            if not 1 <= self.aspp_branches <= 4:
                _fail(
                    f"{key}.aspp_branches",
                    self.aspp_branches,
                    "an integer from 1 to 4 (4: DeepLab-v2 / AdvEnt; 2: released AdaptSegNet)",
                )


METHODS = ("source_only", "advent", "minent", "adaptsegnet")
# Methods with discriminators (and their keys lr_disc, lambda_adv_*, disc_channels).
ADVERSARIAL_METHODS = ("advent", "adaptsegnet")
# Which earlier model each training section may start from.
# `pretrained` = the network with `model.pretrained` ImageNet weights in its backbone;
# `file` = the model file named by the section's `init_file` (a model this pipeline
# wrote, or a released AdvEnt / IntraDA network's state dict).
ALLOWED_INIT = {
    "source_only": ("scratch", "pretrained", "file"),
    "inter": ("scratch", "pretrained", "source_only", "file"),
    "intra": ("scratch", "pretrained", "source_only", "inter", "file"),
}
# `init_file` when `init` is not `file`, and `model.pretrained` when no section's `init`
# is `pretrained`. dvc.yaml declares both as dependencies of the training stages (so
# replacing a file re-runs them), and a dependency must exist: this is the stamp every
# training stage already depends on, constant while params are valid.
NO_INIT_FILE = NO_FILE


@dataclass(frozen=True)
class TrainParams:
    """One training step: source-only, inter-domain or intra-domain adaptation.

    `method` picks the target-side loss: none (`source_only`), the entropy-map
    discriminator (`advent`), direct entropy minimisation (`minent`) or the softmax-map
    discriminator of AdaptSegNet's output-space adaptation (`adaptsegnet`, with `gan`:
    its BCE or least-squares objective). The keys of the method in use are required;
    the others may stay in the file and are ignored.

    `lambda_seg` weighs the source-like side's whole segmentation loss (main head plus
    `lambda_seg_aux` times the auxiliary head): 1 as in the released code; 0 trains the
    target-side term alone (the intra step's adversarial term without the pseudo-labels'
    cross-entropy: the paper's "AdvEnt + intra-domain adaptation" row, as we read it).

    `adam` is the arithmetic of every Adam optimiser of the step (the discriminators',
    and the network's with `optimizer: adam`): `current` (PyTorch >= 1.3) or `released`
    (PyTorch 0.4.1's, the released code's: eps added to sqrt(v) before the bias
    correction; `training.ReleasedAdam`).
    """

    method: Literal["source_only", "advent", "minent", "adaptsegnet"]
    init: Literal["scratch", "pretrained", "source_only", "inter", "file"]
    iterations: int  # 0 only with init: file (the model is that file as it is)
    batch_size: int
    optimizer: Literal["sgd", "adam"]
    lr: float
    momentum: float  # SGD momentum (Adam uses it as beta1)
    weight_decay: float
    poly_power: float  # lr * (1 - it / iterations) ** poly_power
    lambda_seg_aux: float  # weight of the auxiliary head's cross-entropy
    # Weight of the source-like side's segmentation loss (main + lambda_seg_aux * aux):
    # 1 as released; 0 only with a target-side term (advent, minent, adaptsegnet).
    lambda_seg: float
    # Adam's arithmetic: `current` (PyTorch >= 1.3) or `released` (PyTorch 0.4.1's).
    adam: Literal["current", "released"]
    # BatchNorm during training: `train` (batch statistics, trained affine parameters,
    # running statistics updated), `frozen` (eval mode: running statistics and affine
    # parameters kept) or `released` (the released code: batch statistics, affine
    # parameters kept, running statistics updated by every forward of both domains).
    batchnorm: Literal["train", "frozen", "released"]
    # SGD's parameter lists: `unique` (each tensor once) or `released` (the backbone's
    # tensors once per enclosing module, so 1, 3 or 4 momentum updates per step; SGD only).
    param_listing: Literal["unique", "released"]
    hflip: bool  # random horizontal flips of training images
    log_every: int  # iterations between logged loss values
    # Iterations between validation points (and one at the last iteration); 0 = none.
    # Each computes the target-val mIoU (val/mIoU) and the probe's label-free criteria
    # (select/<criterion>); both curves are recorded in the model file.
    eval_every: int
    # Which snapshot the model file holds: `last` (the last iteration), `best_val` (the
    # best on target-val: selected on the evaluation set, as the released code does) or
    # the best by a label-free criterion on target-train: `entropy` (lowest mean
    # prediction entropy), `infomax` (highest information maximisation) or `snd`
    # (highest soft neighbourhood density; docs/method-study.md).
    select: Literal["last", "best_val", "entropy", "infomax", "snd"]
    # Target-train images the label-free criteria (`intrada.selection`: entropy, infomax,
    # snd) are computed on at every validation point; 0 = none. Needed by those selects.
    probe_images: int
    lr_disc: float | None = None  # advent, adaptsegnet: discriminator Adam lr
    lambda_adv_main: float | None = None  # advent, adaptsegnet: adversarial weight, main head
    lambda_adv_aux: float | None = None  # advent, adaptsegnet: adversarial weight, aux head
    disc_channels: tuple[int, ...] | None = None  # advent, adaptsegnet: discriminator widths
    # adaptsegnet: the GAN objective, `vanilla` (BCE on the logits) or `ls` (least
    # squares: mean squared error of the raw outputs to the labels, as its `--gan LS`).
    gan: Literal["vanilla", "ls"] | None = None
    lambda_ent_main: float | None = None  # minent: entropy weight, main head
    lambda_ent_aux: float | None = None  # minent: entropy weight, aux head
    # Iterations the poly schedule decays over, when longer than the run: AdvEnt decays
    # over 250k and stops at 120k. Unset = `iterations`.
    schedule_iterations: int | None = None
    # Iterations between resumable checkpoints (one is always written at the end).
    checkpoint_every: int | None = None
    # intra only: rounds of intra-domain adaptation (rank, split, pseudo-label, adapt),
    # each ranking with the previous round's model; 1 = the paper's one round. dvc.yaml
    # must hold the later rounds' stages: `python -m intrada.rounds` writes them.
    rounds: int | None = None
    # The model file to start from when init is file: one this pipeline wrote, or a
    # released AdvEnt / IntraDA DeepLab-v2 state dict (docs/released-models.md).
    # Otherwise NO_INIT_FILE (dvc.yaml declares it as a dependency either way).
    init_file: str | None = None

    def check(self, key: str) -> None:
        allowed = ALLOWED_INIT[key]
        if self.init not in allowed:
            _fail(f"{key}.init", self.init, "one of " + ", ".join(allowed))
        if self.init == "file" and self.init_file in (None, NO_INIT_FILE):
            _fail(
                f"{key}.init_file",
                self.init_file,
                f"the model file to start from when {key}.init is file",
            )
        if self.iterations == 0 and self.init != "file":
            _fail(
                f"{key}.iterations",
                0,
                f"a positive number; 0 only with {key}.init: file (the model is that file "
                "as it is)",
            )
        if (key == "intra") != (self.rounds is not None):
            if key == "intra":
                raise ParamsError(f"{PARAMS_FILE}: {key}.rounds is missing")
            _fail(f"{key}.rounds", self.rounds, "no rounds key: only the intra section has one")
        if self.rounds is not None and self.rounds < 1:
            _fail(f"{key}.rounds", self.rounds, "an integer >= 1 (1 = one intra round)")
        if key == "source_only" and self.method != "source_only":
            _fail(f"{key}.method", self.method, "source_only (this step sees no target)")
        if self.batchnorm == "frozen" and self.init == "scratch":
            _fail(
                f"{key}.batchnorm",
                self.batchnorm,
                "train or released when init is scratch (frozen BatchNorm would keep its "
                "initial statistics)",
            )
        if self.param_listing == "released" and self.optimizer != "sgd":
            _fail(
                f"{key}.param_listing",
                self.param_listing,
                f"unique with optimizer {self.optimizer} (the released listing is SGD's)",
            )
        _non_negative(f"{key}.eval_every", self.eval_every)
        _non_negative(f"{key}.probe_images", self.probe_images)
        if self.select in ("entropy", "infomax", "snd") and self.probe_images == 0:
            _fail(
                f"{key}.select",
                self.select,
                f"last or best_val when {key}.probe_images is 0 (no target-train probe to "
                "compute the label-free criterion on)",
            )
        if self.select != "last" and self.eval_every == 0:
            _fail(
                f"{key}.select",
                self.select,
                f"last when {key}.eval_every is 0 (no validation to select on)",
            )
        _non_negative(f"{key}.iterations", self.iterations)
        for name in ("batch_size", "lr", "log_every"):
            _positive(f"{key}.{name}", getattr(self, name))
        if not 0 <= self.momentum < 1:
            _fail(f"{key}.momentum", self.momentum, "a number in [0, 1)")
        for name in ("weight_decay", "poly_power", "lambda_seg_aux", "lambda_seg"):
            _non_negative(f"{key}.{name}", getattr(self, name))
        if self.lambda_seg == 0 and self.method == "source_only":
            _fail(
                f"{key}.lambda_seg",
                self.lambda_seg,
                "a positive number with method source_only (0 leaves no loss to train on)",
            )
        if self.checkpoint_every is not None:
            _positive(f"{key}.checkpoint_every", self.checkpoint_every)
        if self.schedule_iterations is not None and self.schedule_iterations < self.iterations:
            _fail(
                f"{key}.schedule_iterations",
                self.schedule_iterations,
                f"at least {key}.iterations ({self.iterations})",
            )
        needed = {
            "source_only": (),
            "advent": ("lr_disc", "lambda_adv_main", "lambda_adv_aux", "disc_channels"),
            "minent": ("lambda_ent_main", "lambda_ent_aux"),
            "adaptsegnet": ("lr_disc", "lambda_adv_main", "lambda_adv_aux", "disc_channels", "gan"),
        }[self.method]
        for name in needed:
            value = getattr(self, name)
            if value is None:
                raise ParamsError(
                    f"{PARAMS_FILE}: {key}.{name} is missing: method {self.method} needs it"
                )
        if self.lr_disc is not None:
            _positive(f"{key}.lr_disc", self.lr_disc)
        for name in ("lambda_adv_main", "lambda_adv_aux", "lambda_ent_main", "lambda_ent_aux"):
            if getattr(self, name) is not None:
                _non_negative(f"{key}.{name}", getattr(self, name))
        if self.disc_channels is not None and (
            not self.disc_channels or min(self.disc_channels) <= 0
        ):
            _fail(
                f"{key}.disc_channels",
                list(self.disc_channels),
                "a non-empty list of positive integers",
            )


@dataclass(frozen=True)
class InferenceParams:
    """Scoring target-train images with the inter model.

    With `normalize_entropy` an image's score is its mean entropy times
    ((K - r) / K + 0.5), where r of the K `rare_classes` appear in its prediction: the
    authors' normaliser, which ranks images showing rare classes as easier.
    """

    batch_size: int
    normalize_entropy: bool
    rare_classes: tuple[str, ...]  # class names of the dataset in use (K = their count)
    shard_size: int  # images per shard file of entropy maps and predictions
    map_downsample: int  # entropy maps stored at 1/N of the input size per side (1 = full)

    def check(self, key: str) -> None:
        _positive(f"{key}.batch_size", self.batch_size)
        _positive(f"{key}.shard_size", self.shard_size)
        _positive(f"{key}.map_downsample", self.map_downsample)
        if len(set(self.rare_classes)) != len(self.rare_classes):
            _fail(f"{key}.rare_classes", list(self.rare_classes), "class names without repeats")
        if self.normalize_entropy and not self.rare_classes:
            _fail(
                f"{key}.rare_classes",
                [],
                "at least one class name when normalize_entropy is true",
            )


@dataclass(frozen=True)
class PseudoLabelParams:
    """Pseudo-labels of the easy split: the inter model's argmax per pixel."""

    batch_size: int
    confidence_threshold: float  # pixels whose top softmax probability is below -> 255
    shard_size: int  # images per shard file of pseudo-labels

    def check(self, key: str) -> None:
        _positive(f"{key}.batch_size", self.batch_size)
        _positive(f"{key}.shard_size", self.shard_size)
        if not 0 <= self.confidence_threshold < 1:
            _fail(
                f"{key}.confidence_threshold",
                self.confidence_threshold,
                "a number in [0, 1): 0 keeps every pixel, as the paper does",
            )


@dataclass(frozen=True)
class ComputeParams:
    """Where the networks run. Results depend on device, precision and process count,
    not on `num_workers`."""

    device: Literal["auto", "cpu", "cuda"]  # auto: CUDA when PyTorch sees a GPU
    amp: bool  # bf16 autocast of network forwards on CUDA (losses, entropy in fp32)
    channels_last: bool  # NHWC memory format of images and networks (CPU and CUDA)
    compile: bool  # torch.compile the segmentation network in training (CPU and CUDA)
    num_workers: int  # DataLoader worker processes (0: load in the main process)
    nproc: int  # processes per network stage, launched with torchrun (DDP)

    def check(self, key: str) -> None:
        _non_negative(f"{key}.num_workers", self.num_workers)
        _positive(f"{key}.nproc", self.nproc)


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluation on target-val."""

    batch_size: int
    num_panels: int  # val images drawn as image | truth | inter | intra | entropy panels

    def check(self, key: str) -> None:
        _positive(f"{key}.batch_size", self.batch_size)
        _non_negative(f"{key}.num_panels", self.num_panels)


@dataclass(frozen=True)
class FiguresParams:
    """Pictures of the ranking and the errors (the `figures` stage)."""

    gallery_k: int  # the k easiest and the k hardest target-train images drawn
    tile_width: int  # thumbnail width in pixels; the height keeps the image's aspect
    score_bins: int  # bins of the score histogram

    def check(self, key: str) -> None:
        _non_negative(f"{key}.gallery_k", self.gallery_k)
        if self.tile_width < 16:
            _fail(f"{key}.tile_width", self.tile_width, "an integer of at least 16 (pixels)")
        _positive(f"{key}.score_bins", self.score_bins)


# Top-level keys of params.yaml and what each holds.
SCHEMA: dict[str, Any] = {
    "seed": int,
    "lambda": float,
    "data": DataParams,
    "generate": GenerateParams,
    "model": ModelParams,
    "source_only": TrainParams,
    "inter": TrainParams,
    "intra": TrainParams,
    "inference": InferenceParams,
    "pseudo_labels": PseudoLabelParams,
    "evaluate": EvaluateParams,
    "figures": FiguresParams,
    "compute": ComputeParams,
}


# --- loading --------------------------------------------------------------------------


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The raw mapping in a params file; unknown top-level keys are an error."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; expected the pipeline's params file") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    _reject_unknown(raw, SCHEMA, prefix="")
    return raw


def get(raw: dict[str, Any], name: str) -> Any:
    """Parse and check one top-level key of params.yaml (a value or a section object)."""
    if name not in raw:
        raise ParamsError(f"{PARAMS_FILE}: {name} is missing")
    hint = SCHEMA[name]
    if dataclasses.is_dataclass(hint):
        return _parse_dataclass(hint, raw[name], name)
    value = _coerce(raw[name], hint, name)
    if name == "lambda" and not 0 < value <= 1:
        _fail(
            "lambda",
            raw[name],
            "a number in (0, 1]: the fraction of images ranked easy "
            "(1 = self-training on every image)",
        )
    if name == "seed" and value < 0:
        _fail("seed", value, "an integer >= 0")
    return value


def get_target_data(raw: dict[str, Any]) -> DataParams:
    """The data section for a command that reads only the target dataset (evaluating a
    model file): checked like `get(raw, "data")`, but the source root need not exist."""
    if "data" not in raw:
        raise ParamsError(f"{PARAMS_FILE}: data is missing")
    data = _parse_dataclass(DataParams, raw["data"], "data", check=False)
    data.check("data", roots=("target_root",))
    return data


def check_all(raw: dict[str, Any]) -> None:
    """Validate every key of params.yaml, and the checks that span sections."""
    for name in SCHEMA:
        get(raw, name)
    data, generate, model = get(raw, "data"), get(raw, "generate"), get(raw, "model")
    if data.name == "synthetic":
        if generate.synthetic is None:
            raise ParamsError(
                f"{PARAMS_FILE}: generate.synthetic is missing: data.name synthetic is the "
                "benchmark the pipeline generates"
            )
        check_split_sizes(generate.synthetic.num_target_train, get(raw, "lambda"))
    elif generate.synthetic is not None:
        _fail(
            "generate",
            {"synthetic": "..."},
            f"{{}} when data.name is {data.name} (nothing to generate for a real dataset)",
        )
    check_target_paths(data)
    classes = class_set_of(data)
    check_class_names(get(raw, "inference").rare_classes, classes, "inference.rare_classes")
    check_pretrained_file(model)
    for name in ("source_only", "inter", "intra"):
        train = get(raw, name)
        if train.select == "best_val" and not data.has_target_val:
            _fail(
                f"{name}.select",
                train.select,
                f"last when there is no labelled target-val (data.target_val_labels is {NO_FILE})",
            )
        if train.init == "pretrained":
            check_pretrained(model, name)
        check_init_file(train, name)
        if train.method in ADVERSARIAL_METHODS:
            sizes = [data.target_size] + ([data.source_size] if name == "inter" else [])
            height, width = min(s[1] for s in sizes), min(s[0] for s in sizes)
            check_discriminator_depth(train.disc_channels, height, width, name)
    intra = get(raw, "intra")
    if get(raw, "lambda") == 1 and intra.lambda_seg == 0:
        # train_intra then runs self-training (source_only): no target side to train on.
        _fail(
            "intra.lambda_seg",
            0.0,
            "a positive number when lambda is 1 (self-training on the pseudo-labels alone)",
        )


def check_pretrained(model: ModelParams, section: str) -> None:
    """`init: pretrained` needs a network with an ImageNet loader and its weights file."""
    if model.name != "deeplabv2":
        _fail(
            f"{section}.init",
            "pretrained",
            f"scratch or an earlier model: {model.name} has no ImageNet weights",
        )
    if model.pretrained == NO_FILE:
        _fail(
            "model.pretrained",
            model.pretrained,
            f"a local ImageNet ResNet-101 weights file: {section}.init is pretrained",
        )
    if not Path(model.pretrained).is_file():
        _fail(
            "model.pretrained",
            model.pretrained,
            "an existing ImageNet ResNet-101 weights file" + _queue_hint(Path(model.pretrained)),
        )


def check_pretrained_file(model: ModelParams) -> None:
    """`model.pretrained` is a dependency of the training stages: it must exist even when
    no section uses it (the params stamp stands for "no file")."""
    if model.pretrained != NO_FILE and not Path(model.pretrained).is_file():
        _fail(
            "model.pretrained",
            model.pretrained,
            f"an existing file (a dependency of the training stages) or {NO_FILE} when no "
            "section's init is pretrained" + _queue_hint(Path(model.pretrained)),
        )


def check_init_file(train: TrainParams, section: str) -> None:
    """`init_file` is a dependency of the section's training stage: it must exist (the
    params stamp, written by check_params itself, stands for "no file")."""
    if train.init_file is None or train.init_file == NO_INIT_FILE:
        return
    if not Path(train.init_file).is_file():
        expected = (
            "an existing model file (a model this pipeline wrote, or a released DeepLab-v2 "
            "state dict)"
            if train.init == "file"
            else f"an existing file (a dependency of the stage) or {NO_INIT_FILE} when "
            f"{section}.init is not file"
        )
        _fail(f"{section}.init_file", train.init_file, expected)


def check_split_sizes(num_images: int, lam: float) -> None:
    """easy = the first int(num_images * lambda) images. Both splits must be non-empty,
    except at lambda = 1, the self-training control, where every image is easy."""
    num_easy = int(num_images * lam)
    if num_easy == 0 or (num_easy == num_images and lam < 1):
        _fail(
            "lambda",
            lam,
            f"a fraction that leaves both splits non-empty for "
            f"{num_images} target images (easy = int(N * lambda) = {num_easy})",
        )


def check_class_names(names: tuple[str, ...], classes: ClassSet, key: str) -> None:
    """Every name must be a class of the class set in use."""
    unknown = [n for n in names if n not in classes.names]
    if unknown:
        origin = "the class set"
        if classes.table is not None:
            builtin = classes.table.builtin
            origin = classes.table.origin if builtin else f"the class table {classes.table.origin}"
        _fail(key, list(names), f"class names of {origin}: {', '.join(classes.names)}")


def check_target_paths(data: DataParams) -> None:
    """The target's folders follow its layout: the Cityscapes subfolders of target_root
    (the synthetic benchmark's too), or folders of which none holds another (an image
    of target-val under target-train would be adapted on; labels under an image folder
    would be taken for images)."""
    if data.target_layout == "cityscapes":
        expected = {name: f"{data.target_root}/{sub}" for name, sub in CITYSCAPES_TARGET.items()}
        wrong = [n for n, path in expected.items() if Path(getattr(data, n)) != Path(path)]
        if wrong:
            # All of them in one line: a new target_root moves the four folders.
            _fail(
                f"data.{wrong[0]}",
                getattr(data, wrong[0]),
                f"{expected[wrong[0]]}, the Cityscapes layout under data.target_root (set "
                + " ".join(f"data.{n}={expected[n]}" for n in wrong)
                + ")",
            )
        return
    folders = {n: Path(getattr(data, n)).resolve() for n in TARGET_PATHS}
    folders = {n: p for n, p in folders.items() if getattr(data, n) != NO_FILE}
    for name, path in folders.items():
        for other, other_path in folders.items():
            if other != name and (path == other_path or other_path in path.parents):
                _fail(
                    f"data.{name}",
                    getattr(data, name),
                    f"a folder outside data.{other} ({getattr(data, other)}): each target "
                    "folder is read as a whole",
                )


def class_set_of(data: DataParams) -> ClassSet:
    """The classes of a run: the built-in table of the source dataset, or the class table
    file, which must list the source's values of every class and, when the run reads
    target labels, the target's."""
    if data.classes == "builtin":
        return dataset_classes(data.name)
    table = read_class_table(data.class_table)
    table.require(data.name, every_class=True)
    if data.has_target_val or data.has_target_train_labels:
        table.require(data.target_label_set, every_class=False)
    return ClassSet.from_table(table)


def label_encodings(data: DataParams) -> tuple[str | None, str]:
    """How the source's and the target's label files are read (`intrada.classes`): the
    layouts' own encodings with the built-in tables (the source's None: its layout's;
    a folder target's labels in Cityscapes label ids, as gtFine's), else the class
    table's label sets."""
    if data.classes == "builtin":
        return None, CITYSCAPES_ID
    return f"{TABLE_ENCODING}{data.name}", f"{TABLE_ENCODING}{data.target_label_set}"


def check_discriminator_depth(channels: tuple[int, ...], height: int, width: int, key: str) -> None:
    """Each of the len(channels) + 1 stride-2 convolutions halves the map: the image
    must leave at least one cell."""
    needed = 2 ** (len(channels) + 1)
    if min(height, width) < needed:
        most = int(math.log2(min(height, width))) - 1
        _fail(
            f"{key}.disc_channels",
            list(channels),
            f"at most {most} widths for {height}x{width} images "
            f"({len(channels)} need sides of at least {needed} pixels)",
        )


def as_dict(obj: Any) -> Any:
    """A params object as plain YAML/JSON types (for provenance); unset optional keys
    (None) are left out, as they were in params.yaml."""
    if dataclasses.is_dataclass(obj):
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {k: as_dict(v) for k, v in values.items() if v is not None}
    if isinstance(obj, tuple):
        return [as_dict(v) for v in obj]
    return obj


# --- parsing helpers ------------------------------------------------------------------


def _reject_unknown(raw: dict, allowed: typing.Iterable[str], prefix: str) -> None:
    allowed = list(allowed)
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {prefix}{close[0]!s}?)" if close else ""
            raise ParamsError(
                f"{PARAMS_FILE}: unknown key {prefix}{key}{hint}; "
                f"expected one of: {', '.join(allowed)}"
            )


def _parse_dataclass(cls: type, raw: Any, key: str, check: bool = True) -> Any:
    if not isinstance(raw, dict):
        _fail(key, raw, "a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(raw, fields, prefix=f"{key}.")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], f"{key}.{name}")
        elif field.default is dataclasses.MISSING:
            raise ParamsError(f"{PARAMS_FILE}: {key}.{name} is missing")
    obj = cls(**values)
    if check:
        obj.check(key)
    return obj


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        if value not in args:
            _fail(key, value, "one of " + ", ".join(map(str, args)))
        return value
    if origin is tuple:
        if not isinstance(value, list):
            _fail(key, value, "a list")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            _fail(key, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(key, value, "an integer")
        return value
    if hint is float:
        # YAML 1.1 (PyYAML) reads `1e-4` as a string while DVC (YAML 1.2) writes it so.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                _fail(key, value, "a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, value, "a number")
        if not math.isfinite(value):
            _fail(key, value, "a finite number")
        return float(value)
    if dataclasses.is_dataclass(hint):
        return _parse_dataclass(hint, value, key)
    if hint is str:
        if not isinstance(value, str):
            _fail(key, value, "a string")
        return value
    raise TypeError(f"unsupported params type {hint!r} for {key}")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        _fail(key, value, "a positive number")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        _fail(key, value, "a number >= 0")
