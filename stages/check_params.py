"""Stage check_params: validate all of params.yaml before any other stage runs.

DVC deletes a stage's outputs before running it, so a stage that rejects its own
params has already lost its previous outputs. This stage runs first (every other
stage depends on its stamp) and stops the pipeline on a bad value. Its stamp never
changes while params are valid, so a valid change invalidates nothing by itself.
With `compute.device: cuda` it also checks that PyTorch sees a GPU, and it checks that
dvc.yaml holds the stages of `intra.rounds` rounds (`intrada.rounds`).
"""

import argparse
from pathlib import Path

from intrada.cli import run_stage
from intrada.config import ParamsError, check_all, get, read_params
from intrada.io import atomic_path
from intrada.rounds import rounds_in

STAMP = "params.yaml passed validation (this text is constant on purpose).\n"


def check_rounds(rounds: int, dvc_yaml: Path) -> None:
    """dvc.yaml must hold the stages of the rounds params.yaml asks for (DVC cannot make
    them from a number: `python -m intrada.rounds` writes them). Run outside a project
    (no dvc.yaml: the stage called by hand or by a test) there is nothing to check."""
    if not dvc_yaml.is_file():
        return
    written = rounds_in(dvc_yaml.read_text())
    if written != rounds:
        raise ParamsError(
            f"params.yaml: intra.rounds = {rounds} but {dvc_yaml} holds the stages of "
            f"{written} round(s): run `python -m intrada.rounds` to write them, then dvc repro"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--stamp", type=Path, required=True)
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"))
    args = parser.parse_args()
    raw = read_params(args.params)
    check_all(raw)
    check_rounds(get(raw, "intra").rounds, args.dvc_yaml)
    if get(raw, "compute").device == "cuda":
        # Imports torch (seconds), so only when asked: a GPU profile on a machine whose
        # PyTorch sees no GPU stops here, before any stage starts.
        from intrada.compute import require_cuda

        require_cuda()
    if not args.stamp.is_file() or args.stamp.read_text() != STAMP:
        with atomic_path(args.stamp) as tmp:
            tmp.write_text(STAMP)


if __name__ == "__main__":
    run_stage(main)
