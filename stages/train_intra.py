"""Stage train_intra: intra-domain adaptation, the easy split with its pseudo-labels as
the source-like side against the hard split as the target.

At lambda = 1 every image is easy and there is no hard split: the step is the paper's
self-training control, cross-entropy on the pseudo-labels only.

Round k >= 2 of several (`intra.rounds`, `intrada.rounds`) runs this stage on its own
splits and pseudo-labels with `--round k`: `--inter-model` is then the model that round
ranked with (round k-1's), and its batches follow a stream of their own."""

import argparse
import dataclasses
from pathlib import Path

from intrada.cli import run_stage
from intrada.compute import processes
from intrada.config import class_set_of, get, read_params
from intrada.runs import declared_params, run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pseudo-labels",
        type=Path,
        required=True,
        help="index table of the easy split with pseudo-labels",
    )
    parser.add_argument("--hard", type=Path, required=True, help="hard split table")
    parser.add_argument(
        "--source-only-model",
        type=Path,
        required=True,
        help="start point when intra.init = source_only",
    )
    parser.add_argument(
        "--inter-model",
        type=Path,
        required=True,
        help="start point when intra.init = inter (in round k >= 2: round k-1's model)",
    )
    parser.add_argument("--round", type=int, default=1, help="the intra round (intra.rounds)")
    parser.add_argument("--model-out", type=Path, required=True)
    parser.add_argument("--live-dir", type=Path, required=True)
    parser.add_argument(
        "--checkpoint-dir", type=Path, required=True, help="resumable checkpoint (persisted)"
    )
    parser.add_argument(
        "--val", type=Path, required=True, help="target-val index (validation during training)"
    )
    parser.add_argument(
        "--probe",
        type=Path,
        required=True,
        help="target-train index (label-free snapshot criteria during training)",
    )
    args = parser.parse_args()
    raw = read_params()
    sections = {name: get(raw, name) for name in ("seed", "lambda", "data", "model", "intra")}
    cfg = sections["intra"]
    self_training = sections["lambda"] == 1
    if self_training:
        cfg = dataclasses.replace(cfg, method="source_only")
    with processes(get(raw, "compute"), __spec__.name) as compute:
        run_training(
            stage="intra",
            cfg=cfg,
            seed=sections["seed"],
            model_params=sections["model"],
            classes=class_set_of(sections["data"]),
            source_index=args.pseudo_labels,
            target_index=None if self_training else args.hard,
            init_path={"source_only": args.source_only_model, "inter": args.inter_model}.get(
                cfg.init
            ),
            model_out=args.model_out,
            live_dir=args.live_dir,
            params=declared_params(sections),
            compute=compute,
            checkpoint_dir=args.checkpoint_dir,
            val_index=args.val,
            probe_index=args.probe,
            # Round 1 keeps the stage's own stream; later rounds get streams of their own.
            run_key_of_stage=None if args.round == 1 else 100 + args.round,
            # Both sides are target images: the easy split and the hard split.
            source_size=sections["data"].target_size,
            target_size=sections["data"].target_size,
        )


if __name__ == "__main__":
    run_stage(main)
