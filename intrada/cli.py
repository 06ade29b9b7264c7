"""What every stage entry point shares: logging set-up, one-line user errors, the sweep
of what killed runs left, and the fault-injection hook (`intrada.faults`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from intrada import faults
from intrada.dag import declared_outputs
from intrada.errors import IntradaError
from intrada.io import sweep_stale_temps

log = logging.getLogger(__name__)


def sweep_pipeline_temps(dvc_yaml: str | Path = "dvc.yaml") -> list[Path]:
    """Remove the temporary folders killed writers left beside any output the pipeline
    declares (`io.sweep_stale_temps`; live writers' are kept). Each writer sweeps its
    own output's before writing; this also catches those of a stage that will not run
    again (a killed `dvc repro -f -s <stage>` that DVC then restored from its run
    cache) at the next stage that runs."""
    if not Path(dvc_yaml).is_file():
        return []
    root = Path(dvc_yaml).parent
    removed = []
    for folder, name in declared_outputs(dvc_yaml):
        removed += sweep_stale_temps(root / folder, name)
    return removed


def stage_name(main: Callable[[], None]) -> str:
    """`score_entropy` for the main() of `python -m stages.score_entropy`."""
    module = sys.modules.get(main.__module__)
    spec = getattr(module, "__spec__", None)
    return (spec.name if spec is not None else main.__module__).rpartition(".")[2]


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a user error prints one line `error: ...` and exits 1."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        faults.arm(stage_name(main))
        for path in sweep_pipeline_temps():
            log.info("removed %s, left by a killed run", path.as_posix())
        main()
    except IntradaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
