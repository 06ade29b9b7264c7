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

from intrada.classes import dataset_classes
from intrada.errors import IntradaError

PARAMS_FILE = "params.yaml"


class ParamsError(IntradaError):
    """A params.yaml value that is missing, unknown, mistyped or out of range."""


def _fail(key: str, value: Any, expected: str) -> typing.NoReturn:
    raise ParamsError(f"{PARAMS_FILE}: {key} = {value!r} is invalid: expected {expected}")


# --- sections -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataParams:
    """The dataset. `synthetic` is the embedded procedural benchmark (no download)."""

    name: Literal["synthetic"]
    height: int  # image height in pixels
    width: int  # image width in pixels
    num_source: int  # labelled source images
    num_target_train: int  # unlabelled target images (adapted on, then ranked)
    num_target_val: int  # labelled target images for evaluation
    severity_alpha: float  # target nuisance severity ~ Beta(alpha, beta) in [0, 1]
    severity_beta: float

    def check(self, key: str) -> None:
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
class ModelParams:
    """The segmentation network (main and auxiliary heads)."""

    name: Literal["small"]
    width: int  # base channel count of the small network

    def check(self, key: str) -> None:
        _positive(f"{key}.width", self.width)


METHODS = ("source_only", "advent", "minent")
# Which earlier model each training section may start from.
ALLOWED_INIT = {
    "source_only": ("scratch",),
    "inter": ("scratch", "source_only"),
    "intra": ("scratch", "source_only", "inter"),
}


@dataclass(frozen=True)
class TrainParams:
    """One training step: source-only, inter-domain or intra-domain adaptation.

    `method` picks the target-side loss: none (`source_only`), the entropy-map
    discriminator (`advent`) or direct entropy minimisation (`minent`). The keys of the
    method in use are required; the others may stay in the file and are ignored.
    """

    method: Literal["source_only", "advent", "minent"]
    init: Literal["scratch", "source_only", "inter"]
    iterations: int
    batch_size: int
    optimizer: Literal["sgd", "adam"]
    lr: float
    momentum: float  # SGD momentum (Adam uses it as beta1)
    weight_decay: float
    poly_power: float  # lr * (1 - it / iterations) ** poly_power
    lambda_seg_aux: float  # weight of the auxiliary head's cross-entropy
    freeze_bn: bool  # BatchNorm layers keep their running statistics and affine params
    hflip: bool  # random horizontal flips of training images
    log_every: int  # iterations between logged loss values
    lr_disc: float | None = None  # advent: discriminator Adam lr
    lambda_adv_main: float | None = None  # advent: adversarial weight, main head
    lambda_adv_aux: float | None = None  # advent: adversarial weight, aux head
    disc_channels: tuple[int, ...] | None = None  # advent: discriminator conv widths
    lambda_ent_main: float | None = None  # minent: entropy weight, main head
    lambda_ent_aux: float | None = None  # minent: entropy weight, aux head

    def check(self, key: str) -> None:
        allowed = ALLOWED_INIT[key]
        if self.init not in allowed:
            _fail(f"{key}.init", self.init, "one of " + ", ".join(allowed))
        if key == "source_only" and self.method != "source_only":
            _fail(f"{key}.method", self.method, "source_only (this step sees no target)")
        if self.freeze_bn and self.init == "scratch":
            _fail(
                f"{key}.freeze_bn",
                True,
                "false when init is scratch (BatchNorm would keep its initial statistics)",
            )
        for name in ("iterations", "batch_size", "lr", "log_every"):
            _positive(f"{key}.{name}", getattr(self, name))
        if not 0 <= self.momentum < 1:
            _fail(f"{key}.momentum", self.momentum, "a number in [0, 1)")
        for name in ("weight_decay", "poly_power", "lambda_seg_aux"):
            _non_negative(f"{key}.{name}", getattr(self, name))
        needed = {
            "source_only": (),
            "advent": ("lr_disc", "lambda_adv_main", "lambda_adv_aux", "disc_channels"),
            "minent": ("lambda_ent_main", "lambda_ent_aux"),
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

    def check(self, key: str) -> None:
        _positive(f"{key}.batch_size", self.batch_size)
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

    def check(self, key: str) -> None:
        _positive(f"{key}.batch_size", self.batch_size)
        if not 0 <= self.confidence_threshold < 1:
            _fail(
                f"{key}.confidence_threshold",
                self.confidence_threshold,
                "a number in [0, 1): 0 keeps every pixel, as the paper does",
            )


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluation on target-val."""

    batch_size: int
    num_panels: int  # val images drawn as image | truth | inter | intra | entropy panels

    def check(self, key: str) -> None:
        _positive(f"{key}.batch_size", self.batch_size)
        _non_negative(f"{key}.num_panels", self.num_panels)


# Top-level keys of params.yaml and what each holds.
SCHEMA: dict[str, Any] = {
    "seed": int,
    "lambda": float,
    "data": DataParams,
    "model": ModelParams,
    "source_only": TrainParams,
    "inter": TrainParams,
    "intra": TrainParams,
    "inference": InferenceParams,
    "pseudo_labels": PseudoLabelParams,
    "evaluate": EvaluateParams,
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


def check_all(raw: dict[str, Any]) -> None:
    """Validate every key of params.yaml, and the checks that span sections."""
    for name in SCHEMA:
        get(raw, name)
    data = get(raw, "data")
    check_split_sizes(data.num_target_train, get(raw, "lambda"))
    check_class_names(get(raw, "inference").rare_classes, data.name, "inference.rare_classes")
    for name in ("inter", "intra"):
        train = get(raw, name)
        if train.method == "advent":
            check_discriminator_depth(train.disc_channels, data.height, data.width, name)


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


def check_class_names(names: tuple[str, ...], dataset: str, key: str) -> None:
    """Every name must be a class of the dataset in use."""
    known = dataset_classes(dataset).names
    unknown = [n for n in names if n not in known]
    if unknown:
        _fail(key, list(names), f"class names of dataset {dataset}: {', '.join(known)}")


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


def _parse_dataclass(cls: type, raw: Any, key: str) -> Any:
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
