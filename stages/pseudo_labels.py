"""Stage pseudo_labels: the inter model's prediction of each easy image becomes its
label (train ids, 255 = ignore), with an index table of the labelled easy set."""

import argparse
from pathlib import Path

from intrada.cli import run_stage
from intrada.io import atomic_path, read_parquet, write_parquet
from intrada.pseudo_labels import write_pseudo_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--easy", type=Path, required=True, help="easy split table")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for labels/ and index.parquet"
    )
    args = parser.parse_args()
    easy = read_parquet(args.easy, ("image_id", "image_path", "prediction_path"))
    with atomic_path(args.out) as out:
        index = write_pseudo_labels(easy, Path("."), out / "labels", args.out / "labels")
        write_parquet(out / "index.parquet", index)


if __name__ == "__main__":
    run_stage(main)
