"""Fault injection: make a stage fail at a named point inside its writing, on purpose.

For tests of what a fault leaves behind (`tests/test_faults.py`) and for anyone who wants
to see it with their own eyes. Set the environment variable

    INTRADA_FAULT=<stage>:<point>[@<n>][:<kind>]

and run the pipeline: the stage `<stage>` (its module name under `stages/`, e.g.
`score_entropy`, `generate_data`) fails the `<n>`-th time (default the first) it reaches
`<point>`. Kinds:

- `kill` (default): SIGKILL to the whole process group, as `kill -9` of a `dvc repro`
  started in its own session (a terminal's job, or `start_new_session=True`) would. Run
  it only in a process group of its own: it takes every process of the group with it.
- `enospc`: an `OSError(ENOSPC)` ("No space left on device") raised inside the write.

    INTRADA_FAULT=score_entropy:shard dvc repro             # killed after its first map
    INTRADA_FAULT=train_inter:trained@2 dvc repro           # after its second checkpoint
    INTRADA_FAULT=pseudo_labels:shard@4:enospc dvc repro    # a full disk at the 4th label

Nothing fires unless `intrada.cli.run_stage` armed the hook for the stage it runs, and an
unarmed `point()` returns at once: the variable unset, the hook costs one comparison.
"""

from __future__ import annotations

import errno
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from intrada.errors import IntradaError

ENV = "INTRADA_FAULT"
# Where a fault can fire; each is named once in the code that writes.
POINTS = {
    "rename": "io.atomic_path: an output written under its temporary name, before the rename",
    "shard": "artifacts.ShardWriter: just after an image's member is written into a shard",
    "checkpoint": "resume.Checkpoints.save: the checkpoint written under its temporary name",
    "model": "checkpoint.save_model: the model file written under its temporary name",
    "trained": "training.train: just after a checkpoint was saved, training not finished",
}
KINDS = ("kill", "enospc")
_SPEC = re.compile(r"(?P<stage>[\w@.-]+):(?P<point>\w+)(?:@(?P<n>\d+))?(?::(?P<kind>\w+))?")


@dataclass
class Fault:
    stage: str
    point: str
    n: int = 1
    kind: str = "kill"
    reached: int = 0


_armed: Fault | None = None


def parse(spec: str) -> Fault:
    """The fault an `INTRADA_FAULT` value asks for, or a one-line error."""
    match = _SPEC.fullmatch(spec.strip())
    expected = (
        f"expected <stage>:<point>[@<n>][:<kind>] with point one of {', '.join(POINTS)} "
        f"and kind one of {', '.join(KINDS)}"
    )
    if match is None:
        raise IntradaError(f"{ENV} = {spec!r}: {expected}")
    fault = Fault(match["stage"], match["point"], int(match["n"] or 1), match["kind"] or "kill")
    if fault.point not in POINTS or fault.kind not in KINDS or fault.n < 1:
        raise IntradaError(f"{ENV} = {spec!r}: {expected}")
    return fault


def arm(stage: str, environ: dict[str, str] | None = None) -> Fault | None:
    """Arm the hook for `stage` when `INTRADA_FAULT` names it (else disarm it)."""
    global _armed
    spec = (os.environ if environ is None else environ).get(ENV, "")
    fault = parse(spec) if spec else None
    _armed = fault if fault is not None and fault.stage == stage else None
    return _armed


def point(name: str, path: str | os.PathLike | None = None) -> None:
    """A named point inside a write (`path`: the file being written). Fires the armed
    fault when it is reached for the n-th time; does nothing when none is armed."""
    if _armed is None:
        return
    _reached(name, path)


def _reached(name: str, path: str | os.PathLike | None) -> None:
    fault = _armed
    if fault is None or name != fault.point:
        return
    fault.reached += 1
    if fault.reached != fault.n:
        return
    where = f" ({Path(path).as_posix()})" if path is not None else ""
    # Straight to the file descriptor: a killed process flushes nothing.
    os.write(2, f"{ENV}: {fault.kind} at {fault.stage}:{name}@{fault.n}{where}\n".encode())
    if fault.kind == "kill":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    raise OSError(
        errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else os.fspath(path)
    )
