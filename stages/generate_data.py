"""Stage generate_data: write the embedded synthetic benchmark (source, target-train,
target-train ground truth, target-val), deterministic from `seed`."""

import argparse
from pathlib import Path

from intrada.cli import run_stage
from intrada.config import get, read_params
from intrada.synthetic import write_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("source", "target-train", "target-train-gt", "target-val"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()
    raw = read_params()
    seed, data = get(raw, "seed"), get(raw, "data")
    write_benchmark(
        seed, data, args.source, args.target_train, args.target_train_gt, args.target_val
    )


if __name__ == "__main__":
    run_stage(main)
