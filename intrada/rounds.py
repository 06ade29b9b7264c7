"""Several rounds of intra-domain adaptation: rank again with the newest model, split,
pseudo-label the easy part and adapt easy -> hard again.

Round 1 is the DAG's own `score_entropy` -> `rank_splits` -> `pseudo_labels` ->
`train_intra` -> `evaluate`, ranking with the inter model. Round k >= 2 repeats those
stages as `<stage>_round_k`, ranking with round k-1's model (`models/intra/model.pt`
for k = 2, `models/round_<k-1>/model.pt` after) and writing its own splits,
pseudo-labels, model, curves and metrics:

    data/rounds/round_k/{entropy,splits,pseudo_labels}/   models/round_k/model.pt
    dvclive/round_k/   checkpoints/round_k/   metrics/rounds/round_k.json

Its intra training starts as `intra.init` says, where `inter` means "the model the
round ranked with" (round k-1's).

DVC's templating has no range, so the stages of rounds 2..N cannot come from
`intra.rounds` alone: `python -m intrada.rounds` writes them into dvc.yaml, between two
marker comments, derived from round 1's stage definitions by renaming their paths (so
a change to a round-1 stage reaches every round when they are written again).
`check_params` stops the DAG with one line when dvc.yaml holds another number of
rounds than params.yaml asks for.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from intrada.io import atomic_path

BEGIN = (
    "  # --- rounds 2 and later (intra.rounds): written by `python -m intrada.rounds`, do not edit"
)
END = "  # --- end of the later rounds"
# Round 1's stages that every later round repeats, in DAG order.
ROUND_STAGES = ("score_entropy", "rank_splits", "pseudo_labels", "train_intra", "evaluate")
NAME = re.compile(r"^(\w+)_round_(\d+)$")


def round_name(k: int) -> str:
    """`intra` for round 1 (its model is models/intra/model.pt), `round_<k>` after."""
    return "intra" if k == 1 else f"round_{k}"


def renamed_paths(k: int) -> dict[str, str]:
    """Round 1's paths and what they become in round k (k >= 2)."""
    name, previous = round_name(k), round_name(k - 1)
    return {
        # The model that ranks and pseudo-labels (and starts training with init: inter).
        "models/inter/model.pt": f"models/{previous}/model.pt",
        "models/intra/model.pt": f"models/{name}/model.pt",
        "data/entropy/": f"data/rounds/{name}/entropy/",
        "data/splits/": f"data/rounds/{name}/splits/",
        "data/pseudo_labels": f"data/rounds/{name}/pseudo_labels",
        "dvclive/intra": f"dvclive/{name}",
        "checkpoints/intra": f"checkpoints/{name}",
        "metrics/eval.json": f"metrics/rounds/{name}.json",
        "metrics/confusion": f"metrics/rounds/{name}/confusion",
        "plots/iou": f"plots/rounds/{name}/iou",
        "plots/panels": f"plots/rounds/{name}/panels",
    }


def _rename(obj: Any, pattern: re.Pattern, mapping: dict[str, str]) -> Any:
    """Every occurrence of a mapped path replaced in one pass (so `models/inter` ->
    `models/intra` is not renamed again by the `models/intra` rule)."""
    if isinstance(obj, dict):
        return {_rename(k, pattern, mapping): _rename(v, pattern, mapping) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rename(v, pattern, mapping) for v in obj]
    if isinstance(obj, str):
        return pattern.sub(lambda m: mapping[m.group(0)], obj)
    return obj


def later_round_stages(stages: dict[str, Any], rounds: int) -> dict[str, Any]:
    """dvc.yaml stage definitions of rounds 2..`rounds`, from round 1's (`stages`: the
    raw, unresolved `stages` mapping of dvc.yaml)."""
    out: dict[str, Any] = {}
    for k in range(2, rounds + 1):
        mapping = renamed_paths(k)
        pattern = re.compile("|".join(re.escape(p) for p in sorted(mapping, key=len, reverse=True)))
        for stage in ROUND_STAGES:
            definition = _rename(copy.deepcopy(stages[stage]), pattern, mapping)
            if stage == "train_intra":
                definition["cmd"] += f" --round {k}"
            if stage == "evaluate":
                # Round k's metrics: the model it ranked with against the one it trained.
                models = f"--model {round_name(k - 1)}=models/{round_name(k - 1)}/model.pt"
                models += f" --model {round_name(k)}=models/{round_name(k)}/model.pt"
                definition["cmd"] = re.sub(r"(--model \S+ ?)+", models + " ", definition["cmd"])
                definition["deps"] = [
                    d for d in definition["deps"] if d not in ("models/source_only/model.pt",)
                ]
            out[f"{stage}_round_{k}"] = definition
    return out


def _block(stages: dict[str, Any]) -> str:
    if not stages:
        return ""
    text = yaml.safe_dump(stages, sort_keys=False, width=88, default_flow_style=False)
    return "".join(f"  {line}\n" if line else "\n" for line in text.splitlines()) + "\n"


def split(text: str) -> tuple[str, str, str]:
    """dvc.yaml as (before the rounds block, the block, after it)."""
    if BEGIN not in text or END not in text:
        raise ValueError("dvc.yaml has no rounds markers")
    head, rest = text.split(BEGIN + "\n", 1)
    block, tail = rest.split(END + "\n", 1)
    return head, block, tail


def rounds_in(text: str) -> int:
    """How many rounds a dvc.yaml's stages hold (1: only the DAG's own)."""
    stages = yaml.safe_load(text)["stages"]
    numbers = [int(m.group(2)) for m in map(NAME.match, stages) if m]
    return max(numbers, default=1)


def with_rounds(text: str, rounds: int) -> str:
    """dvc.yaml's text with the stages of rounds 2..`rounds` (none for 1)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    head, _, tail = split(text)
    stages = yaml.safe_load(head + tail)["stages"]
    return head + BEGIN + "\n" + _block(later_round_stages(stages, rounds)) + END + "\n" + tail


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write the stages of intra rounds 2..N into dvc.yaml (N: intra.rounds "
        "of params.yaml, or the number given, which is then written to params.yaml too)."
    )
    parser.add_argument("rounds", type=int, nargs="?", help="N (default: params.yaml's)")
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    for path in (args.params, args.dvc_yaml):
        if not path.is_file():
            sys.exit(f"error: {path}: file not found; run this in the project's folder")
    params_text = args.params.read_text()
    rounds = args.rounds
    if rounds is None:
        rounds = int(yaml.safe_load(params_text)["intra"]["rounds"])
    elif rounds < 1:
        sys.exit(f"error: rounds = {rounds}: expected an integer >= 1")
    else:
        # Only the value after `rounds:` in the intra section changes (comments stay).
        section = re.search(r"^intra:.*?(?=^\S)", params_text, flags=re.S | re.M)
        if section is None or not re.search(r"^  rounds: *\d+", section.group(0), re.M):
            sys.exit(f"error: {args.params}: no intra.rounds key to set")
        updated = re.sub(r"^(  rounds: *)\d+", rf"\g<1>{rounds}", section.group(0), flags=re.M)
        with atomic_path(args.params) as tmp:
            tmp.write_text(params_text.replace(section.group(0), updated, 1))
    before = args.dvc_yaml.read_text()
    with atomic_path(args.dvc_yaml) as tmp:
        tmp.write_text(with_rounds(before, rounds))
    print(f"{args.dvc_yaml}: stages of {rounds} round(s) (was {rounds_in(before)})")


if __name__ == "__main__":
    main()
