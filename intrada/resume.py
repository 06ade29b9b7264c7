"""Training checkpoints: resume an interrupted run where it stopped, bit for bit.

A training stage writes `<checkpoint dir>/last.pt` every `checkpoint_every` iterations
and at the end (atomically: a kill during the write leaves the previous one). It holds
everything the rest of the run depends on: the network, the discriminators, both
optimisers, the iteration reached (which fixes the learning rate and, through
`EndlessBatches`, the data order), the losses not yet logged, the curves logged so far
(replayed into dvclive) and the RNG state.

A checkpoint is resumed from only when it is unfinished and its *run key* matches: a
hash of the params the stage declares, its start model, the index tables it reads and
the commit of the pipeline code. A checkpoint made with anything else is ignored (the
run starts over and overwrites it); with uncommitted code changes nothing is resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from intrada import faults
from intrada.checkpoint import git_revision
from intrada.io import atomic_path, save_torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "intrada-checkpoint/1"
FILE_NAME = "last.pt"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_key(params: dict[str, Any], inputs: list[Path | None]) -> str | None:
    """The identity of a training run, or None when it cannot be pinned down (pipeline
    code with uncommitted changes): such runs never resume."""
    code = git_revision()
    if code["code_modified"]:
        return None
    described = {
        "params": params,
        "inputs": {str(p): file_sha256(p) for p in inputs if p is not None},
        "code": code["commit"],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def interned(obj: Any) -> Any:
    """`obj` with every string in it interned, as the code's own names are. Pickle writes
    a string once and refers back to it where the same object comes again, so the next
    checkpoint of a resumed run would hold names read back from a file as new objects:
    the same contents in other bytes than the uninterrupted run's checkpoint."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        copy = type(obj)((interned(k), interned(v)) for k, v in obj.items())
        if hasattr(obj, "__dict__"):  # a state dict's `_metadata`: kept as it is
            vars(copy).update(vars(obj))
        return copy
    if isinstance(obj, list):
        return [interned(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(interned(v) for v in obj)
    return obj


@dataclass
class Checkpoints:
    """Where one training stage keeps its checkpoint, and how often it writes one."""

    directory: Path
    every: int | None  # iterations between checkpoints; None = only the final one
    key: str | None
    # The iteration of the checkpoint this run resumed from or last wrote (None: none).
    saved_iteration: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / FILE_NAME

    def due(self, iteration: int, total: int) -> bool:
        return iteration == total or (self.every is not None and iteration % self.every == 0)

    def load(self) -> dict[str, Any] | None:
        """The state to resume from, or None to start from the beginning."""
        if self.key is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a checkpoint we cannot read is one we cannot use
            log.warning("%s: unreadable checkpoint, starting over (%s)", self.path, exc)
            return None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            log.warning("%s: not an intrada checkpoint, starting over", self.path)
            return None
        if state["key"] != self.key:
            log.info("%s: made by another run (params, inputs or code), starting over", self.path)
            return None
        if state["complete"]:
            return None  # a finished run: this one is a deliberate re-run
        log.info("%s: resuming at iteration %d", self.path, state["iteration"])
        self.saved_iteration = int(state["iteration"])
        return interned(state)

    def save(self, state: dict[str, Any], complete: bool) -> None:
        state = {"format": CHECKPOINT_FORMAT, "key": self.key, "complete": complete, **state}
        with atomic_path(self.directory) as tmp:
            tmp.mkdir()
            save_torch(state, tmp / FILE_NAME)
            faults.point("checkpoint", tmp / FILE_NAME)
        self.saved_iteration = int(state["iteration"])
