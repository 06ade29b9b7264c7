"""Stage train_source_only: the baseline, trained on labelled source images only."""

import argparse
from pathlib import Path

from intrada.cli import run_stage
from intrada.compute import processes
from intrada.config import class_set_of, get, read_params
from intrada.runs import declared_params, run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="labelled index table")
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
    sections = {name: get(raw, name) for name in ("seed", "data", "model", "source_only")}
    with processes(get(raw, "compute"), __spec__.name) as compute:
        run_training(
            stage="source_only",
            cfg=sections["source_only"],
            seed=sections["seed"],
            model_params=sections["model"],
            classes=class_set_of(sections["data"]),
            source_index=args.source,
            target_index=None,
            init_path=None,
            model_out=args.model_out,
            live_dir=args.live_dir,
            params=declared_params(sections),
            compute=compute,
            checkpoint_dir=args.checkpoint_dir,
            val_index=args.val,
            probe_index=args.probe,
            source_size=sections["data"].source_size,
            target_size=sections["data"].target_size,
        )


if __name__ == "__main__":
    run_stage(main)
