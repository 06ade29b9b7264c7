"""Model files: weights plus everything needed to know what produced them.

A model file is a `torch.save`d dict of plain types, loadable with `weights_only=True`:
`state_dict`, and `meta` = format, architecture and its config, class names and train
ids, the producing stage, the params it was trained with (and their hash), what it was
initialised from, the git commit of the pipeline code and library versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrada import __version__, faults
from intrada.classes import ClassSet
from intrada.errors import IntradaError, load_failure
from intrada.io import atomic_path, save_torch
from intrada.models import build_model

MODEL_FORMAT = "intrada-model/1"
# The pipeline's code: a model records the last commit that changed it.
CODE_PATHS = ("intrada", "stages", "dvc.yaml")


def git_revision(cwd: str | Path = ".") -> dict[str, Any]:
    """The last commit that changed the pipeline code, and whether that code has
    uncommitted edits (None outside git).

    Not HEAD: commits of results or docs do not change what a model was trained with,
    and recording HEAD would make identical weights hash differently after each one.
    """

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("log", "-1", "--format=%H", "--", *CODE_PATHS)
    if not commit:
        return {"commit": None, "code_modified": None}
    changes = git("status", "--porcelain", "--", *CODE_PATHS)
    return {"commit": commit, "code_modified": bool(changes)}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "intrada": __version__}
    for package in ("torch", "torchvision", "numpy", "pandas", "dvc"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def model_meta(
    *,
    arch: str,
    arch_config: dict[str, Any],
    classes: ClassSet,
    stage: str,
    params: dict[str, Any],
    init_from: str | None,
) -> dict[str, Any]:
    """The provenance block stored beside a model's weights."""
    return {
        "format": MODEL_FORMAT,
        "arch": arch,
        "arch_config": dict(arch_config),
        "class_names": list(classes.names),
        "train_ids": list(classes.train_ids),
        "stage": stage,
        "params": params,
        "params_sha256": params_hash(params),
        "init_from": init_from,
        "git": git_revision(),
        "versions": library_versions(),
    }


def save_model(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights and provenance atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_torch({"state_dict": state, "meta": meta}, tmp)
        faults.point("model", tmp)


def read_weights(path: str | Path, expected: str) -> Any:
    """What a weights file holds, loaded safely (`weights_only`), or a one-line error
    naming the file and saying what was `expected`."""
    path = Path(path)
    if not path.is_file():
        raise IntradaError(f"{path}: model file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise IntradaError(
            f"{path}: not a readable model file ({load_failure(exc)}); {expected}"
        ) from exc


def is_model_file(blob: Any) -> bool:
    """Whether a loaded file is a model file written by this pipeline."""
    return isinstance(blob, dict) and (blob.get("meta") or {}).get("format") == MODEL_FORMAT


def load_model(path: str | Path, classes: ClassSet | None = None) -> tuple[nn.Module, dict]:
    """A model rebuilt from its file; `classes`, if given, must match the file's."""
    blob = read_weights(
        path, "expected a model written by the pipeline (tensors and plain types only)"
    )
    return model_from_blob(path, blob, classes)


def model_from_blob(
    path: str | Path, blob: Any, classes: ClassSet | None = None
) -> tuple[nn.Module, dict]:
    """The model of a loaded model file (`load_model`)."""
    if not is_model_file(blob):
        raise IntradaError(f"{path}: not an intrada model file; expected format {MODEL_FORMAT}")
    meta = blob["meta"]
    if classes is not None and tuple(meta["class_names"]) != classes.names:
        raise IntradaError(
            f"{path}: model predicts classes {meta['class_names']}; expected {list(classes.names)}"
        )
    model = build_model(meta["arch"], len(meta["class_names"]), **meta["arch_config"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise IntradaError(
            f"{path}: weights do not fit architecture {meta['arch']} ({first})"
        ) from None
    return model, meta
